"""Run the fake Graph: python -m local.fake_graph --tenant FILE [--tenant FILE2] [--port N] [--latency-ms N]."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from . import DEMO_TENANT, FakeGraph


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGINT/SIGTERM; prints `READY {"graph": base_url}` once listening."""
    parser = argparse.ArgumentParser(prog="python -m local.fake_graph", description=__doc__)
    parser.add_argument("--tenant", action="append", default=[], metavar="FILE",
                        help="tenant JSON file (repeatable; default: the demo tenant)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency-ms", type=float, default=0, help="added to every Graph request")
    args = parser.parse_args(argv)

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    fake = FakeGraph(tenants=args.tenant or [DEMO_TENANT], host=args.host, port=args.port,
                     latency_ms=args.latency_ms)
    fake.start()
    try:
        print("READY " + json.dumps({"graph": fake.base_url}), flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
