"""Run the local Service Bus standalone: ``python -m local.broker --port 5672``.

Prints one line ``READY {"serviceBus": "<connection string>"}`` on stdout once
listening, logs to stderr, and exits cleanly on SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading

from .server import LocalServiceBus


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, serve until a signal arrives, return the exit code."""
    parser = argparse.ArgumentParser(prog="python -m local.broker", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5672, help="port to listen on; 0 picks a free one")
    parser.add_argument("--max-delivery-count", type=int, default=10,
                        help="deliveries before a message is dead-lettered (default 10)")
    parser.add_argument("--lock-duration", type=float, default=30.0, help="peek-lock duration in seconds")
    parser.add_argument("--queue", action="append", default=[], dest="queues",
                        help="pre-declare a queue (repeatable); others are created on first use")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())

    bus = LocalServiceBus(
        host=args.host,
        port=args.port,
        max_delivery_count=args.max_delivery_count,
        lock_duration_s=args.lock_duration,
        queues=tuple(args.queues),
    )
    try:
        bus.start()
    except OSError as error:
        print(f"cannot listen on {args.host}:{args.port}: {error}", file=sys.stderr)
        return 1
    print("READY " + json.dumps({"serviceBus": bus.connection_string}), flush=True)
    try:
        while not stop.wait(1.0):
            if not bus.running:
                print("the broker event loop stopped unexpectedly", file=sys.stderr)
                return 1
    finally:
        bus.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
