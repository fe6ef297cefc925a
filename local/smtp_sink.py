"""A local SMTP sink: accepts mail on loopback and stores every message as an .eml file in an outbox folder.

    python -m local.smtp_sink --outbox DIR [--port N] [--auth-user U --auth-password P]

Each stored message gets two extra headers on top, X-Envelope-From and X-Envelope-To (comma-separated),
because the envelope recipients (Bcc included) are not otherwise visible in the message.

Faults, for tests: ``fail_next(...)`` answers the next MAIL/RCPT/DATA commands with an error; ``delay_next(...)``
makes them wait before answering. A delayed DATA waits after the whole message was received and before it is
stored: if the client goes away meanwhile (its process was killed, it timed out) the sink stores nothing, like a
relay that never took the message over (it never answered 250). ``holding()`` lists the commands waiting now.
The dev host exposes both through its control API (``control_routes``: ``/smtp/faults``).
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
from typing import Any, Callable

from aiohttp import web
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from local.server_thread import ServerThread

STAGES = ("MAIL", "RCPT", "DATA")
FAULT_FIELDS = {"stage", "times", "code", "message", "delayMs"}
DEFAULT_FAILURE = "Requested action aborted: local error in processing"


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
        self._delays: list[dict[str, Any]] = []
        self._holding: list[dict[str, Any]] = []
        self._counts = {"failed": 0, "held": 0, "cut": 0}
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

    def fail_next(self, code: int = 451, message: str = DEFAULT_FAILURE,
                  times: int = 1, stage: str = "DATA") -> None:
        """Answer the next `times` DATA (or RCPT/MAIL) commands with `code`: 4xx transient, 5xx permanent."""
        if not 400 <= code <= 599:
            raise ValueError("SMTP failure codes are 4xx or 5xx")
        stage = _stage(stage, times)
        with self._lock:
            self._faults.append({"code": code, "message": message, "times": times, "stage": stage})

    def delay_next(self, ms: float, times: int = 1, stage: str = "DATA") -> None:
        """Make the next `times` DATA (or RCPT/MAIL) commands wait `ms` milliseconds before they are answered.

        A DATA waits with the whole message received and not yet stored: a client that goes away while it waits
        (killed, timed out) leaves nothing in the outbox. A failure from ``fail_next`` is answered after the wait.
        """
        if not isinstance(ms, (int, float)) or isinstance(ms, bool) or ms <= 0:
            raise ValueError("a delay is a positive number of milliseconds")
        stage = _stage(stage, times)
        with self._lock:
            self._delays.append({"delayMs": ms, "times": times, "stage": stage})

    @staticmethod
    def check_fault(spec: Any) -> dict[str, Any]:
        """A fault as the control API takes it, validated: ``{"stage": "DATA", "times": 1, "code": 451,
        "message": "...", "delayMs": 0}``; a ``code`` fails the command (``fail_next``), a ``delayMs`` holds it
        (``delay_next``), both hold it and then fail it. Raises ValueError saying what is wrong."""
        if not isinstance(spec, dict):
            raise ValueError("a fault is a JSON object")
        unknown = set(spec) - FAULT_FIELDS
        if unknown:
            raise ValueError(f"unknown fault field(s): {', '.join(sorted(unknown))}")
        code, delay = spec.get("code"), spec.get("delayMs")
        if code is None and delay is None:
            raise ValueError("a fault needs a code or a delayMs")
        if code is not None and (not _whole(code) or not 400 <= code <= 599):
            raise ValueError("SMTP failure codes are 4xx or 5xx")
        if delay is not None and (not isinstance(delay, (int, float)) or isinstance(delay, bool) or delay <= 0):
            raise ValueError("a delay is a positive number of milliseconds")
        stage, times = spec.get("stage", "DATA"), spec.get("times", 1)
        if not isinstance(stage, str) or not _whole(times):
            raise ValueError("stage is MAIL, RCPT or DATA and times a positive whole number")
        message = spec.get("message", DEFAULT_FAILURE)
        if not isinstance(message, str) or "\r" in message or "\n" in message:
            raise ValueError("message is one line of text")
        return {"stage": _stage(stage, times), "times": times, "code": code, "message": message, "delayMs": delay}

    def add_fault(self, spec: Any) -> None:
        """Add a fault in the control API's shape (see ``check_fault``)."""
        f = self.check_fault(spec)
        if f["delayMs"] is not None:
            self.delay_next(f["delayMs"], times=f["times"], stage=f["stage"])
        if f["code"] is not None:
            self.fail_next(f["code"], f["message"], times=f["times"], stage=f["stage"])

    def faults(self) -> list[dict[str, Any]]:
        """Pending failures, then pending delays (each with what is left of its ``times``)."""
        with self._lock:
            return [dict(f) for f in self._faults] + [dict(d) for d in self._delays]

    def holding(self) -> list[dict[str, Any]]:
        """Commands waiting out a delay right now: stage, envelope so far, delay and since when."""
        with self._lock:
            return [dict(h, rcptTos=list(h["rcptTos"])) for h in self._holding]

    def counts(self) -> dict[str, int]:
        """Commands failed on purpose, commands held, and held commands whose client went away while held."""
        with self._lock:
            return dict(self._counts)

    def clear_faults(self) -> None:
        """Drop pending failures and delays (commands already held wait their delay out)."""
        with self._lock:
            self._faults.clear()
            self._delays.clear()

    def _take_fault(self, stage: str) -> str | None:
        fault = _take(self._lock, self._faults, stage)
        if fault is None:
            return None
        with self._lock:
            self._counts["failed"] += 1
        return f"{fault['code']} {fault['message']}"

    async def _hold(self, stage: str, envelope: Envelope, rcpt: str | None = None) -> None:
        """Wait out a pending delay of `stage`, if any; a client that goes away meanwhile cancels the wait."""
        delay = _take(self._lock, self._delays, stage)
        if delay is None:
            return
        held = {"stage": stage, "mailFrom": envelope.mail_from, "delayMs": delay["delayMs"], "since": time.time(),
                "rcptTos": [*envelope.rcpt_tos, *([rcpt] if rcpt else [])]}
        with self._lock:
            self._holding.append(held)
            self._counts["held"] += 1
        try:
            await asyncio.sleep(delay["delayMs"] / 1000)
        except asyncio.CancelledError:  # aiosmtpd cancels the session's handler when the connection is lost
            with self._lock:
                self._counts["cut"] += 1
            raise
        finally:
            with self._lock:
                self._holding.remove(held)

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
        """Delete stored messages and pending failures and delays."""
        with self._lock:
            self._faults.clear()
            self._delays.clear()
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


def _whole(n: Any) -> bool:
    return isinstance(n, int) and not isinstance(n, bool)


def _stage(stage: str, times: int) -> str:
    stage = stage.upper()
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}")
    if times < 1:
        raise ValueError("times must be >= 1")
    return stage


def _take(lock: threading.Lock, pending: list[dict[str, Any]], stage: str) -> dict[str, Any] | None:
    """The first pending fault of `stage`, counted down (and dropped once used up)."""
    with lock:
        for fault in pending:
            if fault["stage"] == stage:
                fault["times"] -= 1
                if fault["times"] <= 0:
                    pending.remove(fault)
                return dict(fault)
    return None


class _Handler:
    """aiosmtpd hooks: hold and fail commands as configured, store accepted messages."""

    def __init__(self, sink: SmtpSink):
        self.sink = sink

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        await self.sink._hold("MAIL", envelope)
        failure = self.sink._take_fault("MAIL")
        if failure:
            return failure
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        await self.sink._hold("RCPT", envelope, address)
        failure = self.sink._take_fault("RCPT")
        if failure:
            return failure
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        # The whole message is in `envelope` by now; a client cut off while this waits leaves nothing stored.
        await self.sink._hold("DATA", envelope)
        failure = self.sink._take_fault("DATA")
        if failure:
            return failure
        path = self.sink._store(envelope)
        return f"250 Message accepted for delivery as {path.stem}"


def control_routes(sink: Callable[[], SmtpSink | None], prefix: str = "/smtp") -> list[web.RouteDef]:
    """The dev host's control endpoints for the sink; 404 ``not_local`` when a real relay is configured.

    ``GET {prefix}/faults`` ``{"faults": [pending], "holding": [commands waiting now], "counts": {"failed", "held",
    "cut"}}``; ``POST`` a fault or a list of faults (see ``SmtpSink.add_fault``); ``DELETE`` clears pending ones.
    """

    def absent() -> web.Response:
        return web.json_response({"code": "not_local", "message": "a real SMTP relay is configured (SMTP_HOST)"},
                                 status=404)

    def status(s: SmtpSink) -> web.Response:
        return web.json_response({"faults": s.faults(), "holding": s.holding(), "counts": s.counts()})

    async def get_faults(_: web.Request) -> web.Response:
        s = sink()
        return status(s) if s else absent()

    async def add_faults(request: web.Request) -> web.Response:
        s = sink()
        if not s:
            return absent()
        try:
            body = await request.json()
            specs = body if isinstance(body, list) else [body]
            for spec in specs:  # all valid, or none added
                SmtpSink.check_fault(spec)
            for spec in specs:
                s.add_fault(spec)
        except ValueError as exc:
            return web.json_response({"code": "bad_fault", "message": str(exc)}, status=400)
        return status(s)

    async def clear_faults(_: web.Request) -> web.Response:
        s = sink()
        if not s:
            return absent()
        s.clear_faults()
        return status(s)

    return [web.get(f"{prefix}/faults", get_faults), web.post(f"{prefix}/faults", add_faults),
            web.delete(f"{prefix}/faults", clear_faults)]


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
