"""A portal's webhook receiver on loopback, for tests and ``make demo``: records every delivery (verified with the
``standardwebhooks`` library once it knows the secret) and answers what a test asks for.

    receiver = WebhookReceiver().start()
    receiver.secret = created["secret"]          # from POST /api/webhooks
    receiver.answers = [500]                     # the next delivery gets a 500 (then 204 again)
    receiver.wait_for(lambda d: d.type == "user.deactivated")

``python -m local.webhook_receiver --port 8765 --secret whsec_…`` prints each event as it arrives.
"""
from __future__ import annotations

import argparse
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered
    verified: bool | None  # None: no secret known yet
    at: float
    path: str = "/hooks"

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.body)

    @property
    def type(self) -> str:
        return self.json.get("type", "")

    @property
    def id(self) -> str:
        return self.headers.get("webhook-id", "")


class WebhookReceiver:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, on_delivery: Callable[[Delivery], None] | None = None):
        self.secret: str | None = None
        self.secrets: dict[str, str] = {}  # by path, when several webhooks deliver here
        self.answers: list[int] = []
        self.deliveries: list[Delivery] = []
        self._lock = threading.Lock()
        self._on_delivery = on_delivery
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                receiver._received(self, headers, body, self.path)

            def log_message(self, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhook-receiver", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/hooks"

    def start(self) -> "WebhookReceiver":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _received(self, handler: BaseHTTPRequestHandler, headers: dict[str, str], body: bytes, path: str) -> None:
        verified = None
        secret = self.secrets.get(path, self.secret)
        if secret:
            import standardwebhooks

            try:
                standardwebhooks.Webhook(secret).verify(body, headers)
                verified = True
            except standardwebhooks.WebhookVerificationError:
                verified = False
        with self._lock:
            status = self.answers.pop(0) if self.answers else 204
            delivery = Delivery(headers, body, status, verified, time.monotonic(), path)
            self.deliveries.append(delivery)
        handler.send_response(status)
        handler.send_header("Content-Length", "0")
        handler.end_headers()
        if self._on_delivery:
            self._on_delivery(delivery)

    def wait_for(self, predicate: Callable[[Delivery], bool], *, count: int = 1, timeout: float = 20.0) -> list[Delivery]:
        """The first ``count`` deliveries matching ``predicate``, polling until they came (AssertionError if not)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                found = [d for d in self.deliveries if predicate(d)]
            if len(found) >= count or time.monotonic() > deadline:
                assert len(found) >= count, f"{len(found)} of {count} deliveries came; got {[d.type for d in self.deliveries]}"
                return found[:count]
            time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description="A local webhook receiver that prints each event it gets.")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--secret", help="the webhook's secret (whsec_…), to verify signatures")
    args = parser.parse_args()

    def show(d: Delivery) -> None:
        mark = {True: "verified", False: "BAD SIGNATURE", None: "unverified"}[d.verified]
        data = d.json.get("data", {})
        print(f"[{mark}] #{data.get('sequence')} {d.type} {data.get('username') or data.get('status') or ''}", flush=True)

    receiver = WebhookReceiver(port=args.port, on_delivery=show)
    receiver.secret = args.secret
    receiver.start()
    print(f"listening on {receiver.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        receiver.stop()


if __name__ == "__main__":
    main()
