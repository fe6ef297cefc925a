"""Run the fake Graph: python -m local.fake_graph --tenant FILE [--tenant FILE2] [--port N] [--latency-ms N]."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from ..identity import LocalApp
from . import DEMO_TENANT, FakeGraph


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGINT/SIGTERM; prints `READY {"graph", "authority", "authorityCa", ...}` once listening."""
    parser = argparse.ArgumentParser(prog="python -m local.fake_graph", description=__doc__)
    parser.add_argument("--tenant", action="append", default=[], metavar="FILE",
                        help="tenant JSON file (repeatable; default: the demo tenant)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency-ms", type=float, default=0, help="added to every Graph request")
    parser.add_argument("--authority-port", type=int, default=0, help="HTTPS port of the local identity platform")
    parser.add_argument("--client-id", default="00000000-0000-0000-0000-00000000d5c1", help="the app registration")
    parser.add_argument("--client-secret", default=None, help="its client secret (default: a new random one)")
    parser.add_argument("--redirect-uri", action="append", help="a redirect URI of the registration (repeatable)")
    parser.add_argument("--azure-limits", action="store_true",
                        help="meter each tenant's resource units per 10 s as Graph does (429 Retry-After)")
    args = parser.parse_args(argv)

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    parser_app = LocalApp.create(args.client_id, args.redirect_uri or [], client_secret=args.client_secret)
    fake = FakeGraph(tenants=args.tenant or [DEMO_TENANT], host=args.host, port=args.port,
                     latency_ms=args.latency_ms, registration=parser_app.registration,
                     managed_identity=parser_app.managed_identity, tls=parser_app.tls,
                     authority_port=args.authority_port, azure_limits=args.azure_limits)
    fake.start()
    try:
        settings = parser_app.app_settings("secret", fake.authority)
        print("READY " + json.dumps({"graph": fake.base_url, "authority": fake.authority,
                                     "authorityCa": settings["SSL_CERT_FILE"],
                                     "clientSecret": settings["GRAPH_CLIENT_SECRET"],
                                     "clientCertificate": str(parser_app.certificate_path)}), flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
