"""A local SMTP sink: accepts mail on loopback and stores every message as an .eml file in an outbox folder.

    python -m local.smtp_sink --outbox DIR [--port N] [--auth-user U --auth-password P]

Each stored message gets two extra headers on top, X-Envelope-From and X-Envelope-To (comma-separated),
because the envelope recipients (Bcc included) are not otherwise visible in the message.
"""

from __future__ import annotations

import argparse
import asyncio
import email
import email.policy
import json
import logging
import os
import signal
import sys
import threading
import time
import uuid
import warnings
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from local.server_thread import ServerThread

STAGES = ("MAIL", "RCPT", "DATA")


class _QuietAuthWarnings(logging.Filter):
    """Drop aiosmtpd's per-connection warnings about AUTH without TLS and its own deprecated login_data use."""

    NOISE = ("auth_required == True but auth_require_tls == False", "Session.login_data is deprecated")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(record.getMessage().startswith(n) for n in self.NOISE)


logging.getLogger("mail.log").addFilter(_QuietAuthWarnings())


class SmtpSink(ServerThread):
    """An aiosmtpd server on its own thread that writes received mail to `outbox_dir`."""

    def __init__(self, outbox_dir: str | Path, host: str = "127.0.0.1", port: int = 0, auth_required: bool = False,
                 username: str | None = None, password: str | None = None):
        if auth_required and (username is None or password is None):
            raise ValueError("auth_required needs a username and a password")
        self.outbox = Path(outbox_dir)
        self.host = host
        self._requested_port = port
        self.port: int | None = None
        self.auth_required = auth_required
        self._credentials = (username, password)
        self._faults: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stored = threading.Condition(self._lock)
        self._server: asyncio.AbstractServer | None = None
        super().__init__()

    # --- lifecycle -----------------------------------------------------------------------------

    thread_name = "smtp-sink"

    async def _serve(self) -> None:
        self.outbox.mkdir(parents=True, exist_ok=True)
        self._server = await asyncio.get_running_loop().create_server(self._protocol, self.host, self._requested_port)
        self.port = self._server.sockets[0].getsockname()[1]

    def _protocol(self) -> SMTP:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")
            return self._smtp()

    def _smtp(self) -> SMTP:
        return SMTP(
            _Handler(self),
            hostname="smtp-sink.local",
            ident="local smtp sink",
            enable_SMTPUTF8=True,
            auth_required=self.auth_required,
            # Local only: AUTH over plain TCP is what the mailer does against this sink.
            auth_require_tls=False,
            authenticator=self._authenticate,
            loop=self._loop,
        )

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    # --- test helpers --------------------------------------------------------------------------

    def fail_next(self, code: int = 451, message: str = "Requested action aborted: local error in processing",
                  times: int = 1, stage: str = "DATA") -> None:
        """Answer the next `times` DATA (or RCPT/MAIL) commands with `code`: 4xx transient, 5xx permanent."""
        if not 400 <= code <= 599:
            raise ValueError("SMTP failure codes are 4xx or 5xx")
        stage = stage.upper()
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}")
        if times < 1:
            raise ValueError("times must be >= 1")
        with self._lock:
            self._faults.append({"code": code, "message": message, "times": times, "stage": stage})

    def _take_fault(self, stage: str) -> str | None:
        with self._lock:
            for fault in self._faults:
                if fault["stage"] == stage:
                    fault["times"] -= 1
                    if fault["times"] <= 0:
                        self._faults.remove(fault)
                    return f"{fault['code']} {fault['message']}"
        return None

    def paths(self) -> list[Path]:
        """Stored .eml files, oldest first."""
        return sorted(self.outbox.glob("*.eml"))

    def messages(self) -> list[EmailMessage]:
        """Stored messages parsed with the modern email policy, oldest first."""
        return [email.message_from_bytes(p.read_bytes(), policy=email.policy.default) for p in self.paths()]

    def wait_for_messages(self, count: int, timeout: float = 10.0) -> list[EmailMessage]:
        """Wait until at least `count` messages are stored (raises TimeoutError), then return them all."""
        deadline = time.monotonic() + timeout
        with self._stored:
            while len(self.paths()) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"expected {count} messages in {self.outbox}, have {len(self.paths())}")
                self._stored.wait(min(remaining, 0.2))
        return self.messages()

    def clear(self) -> None:
        """Delete stored messages and pending failures."""
        with self._lock:
            self._faults.clear()
            for path in self.paths():
                path.unlink(missing_ok=True)

    # --- server side ---------------------------------------------------------------------------

    def _authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                      auth_data: Any) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        if not self.auth_required:
            return AuthResult(success=True, auth_data=auth_data)
        username, password = self._credentials
        ok = (auth_data.login.decode(errors="replace") == username
              and auth_data.password.decode(errors="replace") == password)
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    def _store(self, envelope: Envelope) -> Path:
        content = envelope.original_content or b""
        if isinstance(envelope.content, bytes) and not content:
            content = envelope.content
        header = (f"X-Envelope-From: {envelope.mail_from}\r\n"
                  f"X-Envelope-To: {', '.join(envelope.rcpt_tos)}\r\n").encode()
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.eml"
        final = self.outbox / name
        partial = self.outbox / f".{name}.part"
        partial.write_bytes(header + content)
        # Readers polling the folder never see a half-written message.
        os.replace(partial, final)
        with self._stored:
            self._stored.notify_all()
        return final


class _Handler:
    """aiosmtpd hooks: inject configured failures, store accepted messages."""

    def __init__(self, sink: SmtpSink):
        self.sink = sink

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        failure = self.sink._take_fault("MAIL")
        if failure:
            return failure
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        failure = self.sink._take_fault("RCPT")
        if failure:
            return failure
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        failure = self.sink._take_fault("DATA")
        if failure:
            return failure
        path = self.sink._store(envelope)
        return f"250 Message accepted for delivery as {path.stem}"


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGINT/SIGTERM; prints `READY {"smtp": "host:port", "outbox": DIR}` once listening."""
    parser = argparse.ArgumentParser(prog="python -m local.smtp_sink", description=__doc__.splitlines()[0])
    parser.add_argument("--outbox", required=True, help="folder for the .eml files (created if missing)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--auth-user", help="require AUTH with this user name (and --auth-password)")
    parser.add_argument("--auth-password")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    sink = SmtpSink(args.outbox, host=args.host, port=args.port, auth_required=bool(args.auth_user),
                    username=args.auth_user, password=args.auth_password)
    sink.start()
    try:
        outbox = str(Path(args.outbox).resolve())
        print("READY " + json.dumps({"smtp": f"{args.host}:{sink.port}", "outbox": outbox}), flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        sink.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
