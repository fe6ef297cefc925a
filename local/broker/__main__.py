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

from .queues import as_settings, declared_queues
from .server import LocalServiceBus


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, serve until a signal arrives, return the exit code."""
    parser = argparse.ArgumentParser(prog="python -m local.broker", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5672, help="port to listen on; 0 picks a free one")
    parser.add_argument("--max-delivery-count", type=int, default=None,
                        help="deliveries before a message is dead-lettered (default: infra/queues.json)")
    parser.add_argument("--lock-duration", type=float, default=None,
                        help="peek-lock duration in seconds (default: infra/queues.json)")
    parser.add_argument("--queue", action="append", default=[], dest="queues",
                        help="declare one more queue by name (repeatable); the queues of infra/queues.json always exist")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())

    queues = declared_queues(lock_duration_s=args.lock_duration, max_delivery_count=args.max_delivery_count)
    queues += as_settings(args.queues, lock_duration_s=args.lock_duration or 60.0,
                          max_delivery_count=args.max_delivery_count or 10)
    bus = LocalServiceBus(host=args.host, port=args.port, queues=queues)
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
