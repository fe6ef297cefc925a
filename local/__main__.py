"""The dev host: ``python -m local`` runs the whole function app on one machine with the real SDKs.

It starts Azurite (unless TABLES_CONNECTION_STRING is given), the local Service Bus broker (unless
ServiceBusConnection is given), the fake Entra tenant (unless GRAPH_BASE_URL is given) and the SMTP sink
(unless SMTP_HOST is given), then runs the function host as a child process on --port, restarting it if it
dies, and the reference console (``portal/``) on --console-port. It prints one line ``READY {json}`` and stops
everything on Ctrl-C or SIGTERM.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from .azurite import Azurite, connection_string, free_port
from .lifecycle import PORT_IN_USE

ROOT = Path(__file__).resolve().parents[1]
# Local defaults, documented in the README so a developer can mint a portal token for curl. Never used in Azure.
LOCAL_PORTAL_TOKEN_SECRET = "local-dev-portal-token-secret-not-for-production"
LOCAL_SIGNING_SECRET = "local-dev-signing-secret-not-for-production-00"
LOCAL_CLIENT_ID = "00000000-0000-0000-0000-00000000d5c1"
APP_SETTINGS = set(json.loads((ROOT / "local.settings.sample.json").read_text())["Values"])


class DevHost:
    """Owns the local stand-ins and the function host child process."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.port = args.port or free_port()
        self.azurite: Azurite | None = None
        self.broker: Any = None
        self.graph: Any = None
        self.smtp: Any = None
        self.table_proxy: Any = None
        self.host_proc: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.stopping = False
        self.failed: str | None = None
        self.done = asyncio.Event()
        self.settings: dict[str, str] = {}
        self.process_env: dict[str, str] = {}  # not app settings: what the platform gives the host (CA trust, MSI)
        self.identity_folder: Path | None = None  # the local CA and the app's certificate, removed on stop
        self._host_ready = asyncio.Event()
        self._control: web.AppRunner | None = None
        self.control_port = args.control_port or 0  # 0: bound to any free port at start (no pick-then-bind race)
        self.keys_file: Path | None = None  # --require-function-keys: the host's keys (local/function_host.py)
        self._console: web.AppRunner | None = None
        # The reference console (portal/): on 3000 under `make run` (a fixed --port), else only when asked for.
        self.console_port: int | None = args.console_port if args.console_port is not None else (
            3000 if args.port else None)
        self.console_url = f"http://127.0.0.1:{self.console_port}" if self.console_port else ""

    def given(self, key: str) -> str | None:
        value = os.environ.get(key)
        return value if value else None

    def start_stand_ins(self) -> None:
        s: dict[str, str] = {}
        if not self.given("TABLES_CONNECTION_STRING") and not self.given("TABLES_ENDPOINT"):
            self.azurite = Azurite(location=self.args.data).start()
            s["TABLES_CONNECTION_STRING"] = self.azurite.connection_string
            if self.args.table_proxy or self.args.azure_limits:
                from .fault_proxy import FaultProxy
                from .table_limits import TableLimits

                self.table_proxy = FaultProxy(self.azurite.host, self.azurite.port,
                                              limits=TableLimits(enabled=self.args.azure_limits)).start()
                s["TABLES_CONNECTION_STRING"] = connection_string(self.table_proxy.host, self.table_proxy.port)
        from .broker.queues import load_definition

        # The queues of infra/queues.json (the deployment's), under the names the settings give them.
        declared = {setting: os.environ.get(setting) or q.name for setting, q in load_definition().items()}
        queues = (declared["GROUP_SYNC_QUEUE"], declared["ENROLLMENT_QUEUE"], declared["CHANGE_QUEUE"],
                  declared["ALERT_QUEUE"], declared["WEBHOOK_QUEUE"])
        if not self.given("ServiceBusConnection") and not self.given("ServiceBusConnection__fullyQualifiedNamespace"):
            from .broker import LocalServiceBus

            self.broker = LocalServiceBus.declared(declared, port=self.args.servicebus_port,
                                                   max_delivery_count=self.args.max_delivery_count,
                                                   lock_duration_s=self.args.lock_duration)
            self.broker.start()
            s["ServiceBusConnection"] = self.broker.connection_string
            # The app knows the queues' max delivery count as it does in Azure (main.bicep sets it from queues.json).
            s["MAX_DELIVERY_COUNT"] = str(self.args.max_delivery_count
                                          or load_definition()["CHANGE_QUEUE"].max_delivery_count)
        redirect_uri = os.environ.get("CONSENT_REDIRECT_URI") or f"http://127.0.0.1:{self.port}/api/directory/consent"
        if not self.given("GRAPH_BASE_URL"):
            from .fake_graph import DEMO_TENANT, FakeGraph
            from .identity import LocalApp

            client_id = os.environ.get("GRAPH_CLIENT_ID") or LOCAL_CLIENT_ID
            app = LocalApp.create(client_id, [redirect_uri], client_secret=self.given("GRAPH_CLIENT_SECRET"))
            self.identity_folder = app.tls.folder
            if self.args.port:  # `make run` (a fixed port): where `python -m local.browser` and curl --cacert find it
                known = ROOT / ".local" / "authority-ca.pem"
                known.parent.mkdir(parents=True, exist_ok=True)
                known.write_bytes(app.tls.bundle_file.read_bytes())
            tenants = self.args.tenant or [str(DEMO_TENANT)]
            self.graph = FakeGraph(tenants=tenants, port=self.args.graph_port, latency_ms=self.args.latency_ms,
                                   registration=app.registration, managed_identity=app.managed_identity,
                                   tls=app.tls, authority_port=self.args.authority_port,
                                   azure_limits=self.args.azure_limits).start()
            # A person clicks Microsoft's sign-in and consent pages (local/identity/README.md, "Interactive sign-in").
            self.graph.identity.interactive = bool(self.args.interactive_sign_in)
            identity = app.app_settings(os.environ.get("GRAPH_CREDENTIAL") or "secret", self.graph.authority)
            self.process_env = {k: identity.pop(k) for k in ("SSL_CERT_FILE", "IDENTITY_ENDPOINT", "IDENTITY_HEADER")
                                if k in identity}
            s.update(GRAPH_BASE_URL=self.graph.base_url, **identity)
        if not self.given("SMTP_HOST"):
            from .smtp_sink import SmtpSink

            self.smtp = SmtpSink(self.args.outbox, port=self.args.smtp_port)
            self.smtp.start()
            s.update(SMTP_HOST="127.0.0.1", SMTP_PORT=str(self.smtp.port), SMTP_SECURITY="none")
        defaults = {
            "PORTAL_TOKEN_SECRET": LOCAL_PORTAL_TOKEN_SECRET,
            "SIGNING_SECRET": LOCAL_SIGNING_SECRET,
            "GROUP_SYNC_QUEUE": queues[0],
            "ENROLLMENT_QUEUE": queues[1],
            "CHANGE_QUEUE": queues[2],
            "ALERT_QUEUE": queues[3],
            "WEBHOOK_QUEUE": queues[4],
            "WEBHOOK_ALLOW_HTTP_LOOPBACK": "true",  # the portal's receiver in tests and `make demo` listens on loopback
            "NIGHTLY_SYNC_SCHEDULE": "0 0 2 * * *",
            "WATCH_RENEWAL_SCHEDULE": "0 17 * * * *",
            "RECOVERY_SCHEDULE": "30 * * * * *",
            "ENROLLMENT_REMINDERS_SCHEDULE": "0 5 * * * *",
            # Graph's change notifications come to the dev host itself (the fake accepts http on loopback only).
            "NOTIFICATION_URL": f"http://127.0.0.1:{self.port}/api/directory/notifications",
            "GRAPH_CLIENT_ID": LOCAL_CLIENT_ID,
            "CONSENT_REDIRECT_URI": redirect_uri,
            "PORTAL_BASE_URL": self.console_url or "http://localhost:3000",
            "PORTAL_NAME": "Contoso Identity Portal",
            "MAIL_FROM": "Contoso Identity Portal <no-reply@portal.localhost>",
        }
        if self.args.require_function_keys:
            import secrets
            import tempfile

            self.keys_file = Path(tempfile.mkdtemp(prefix="dirsync-keys-")) / "keys.json"
            self.keys_file.write_text(json.dumps({"master": secrets.token_urlsafe(32),
                                                  "host": {"default": secrets.token_urlsafe(32)}}))
            self.process_env["LOCAL_FUNCTION_KEYS_FILE"] = str(self.keys_file)
            defaults["NOTIFICATION_URL"] += "?code=" + self.function_keys()["default"]  # as infra/main.bicep builds it
        # Precedence: what the developer put in the environment, then the stand-ins' addresses, then defaults.
        self.settings = {**defaults, **s, **{k: os.environ[k] for k in APP_SETTINGS if os.environ.get(k)}}

    def function_keys(self) -> dict[str, str]:
        """{"master": …, <host key name>: …} with --require-function-keys, else {}."""
        if self.keys_file is None:
            return {}
        keys = json.loads(self.keys_file.read_text())
        return {"master": keys["master"], **keys["host"]}

    async def set_function_key(self, name: str, value: str) -> None:
        """Set a host key (``az functionapp keys set``). The ``default`` key is the one in the dev host's own
        NOTIFICATION_URL: setting it also rewrites that setting and restarts the function host, as a deployment of
        infra/main.bicep with a new key does (the key and the notification-url secret change together)."""
        assert self.keys_file is not None
        keys = json.loads(self.keys_file.read_text())
        if name == "master":
            keys["master"] = value
        else:
            keys["host"][name] = value
        self.keys_file.write_text(json.dumps(keys))
        url = self.settings["NOTIFICATION_URL"]
        own = f"http://127.0.0.1:{self.port}/api/directory/notifications?code="
        if name == "default" and url.startswith(own) and not os.environ.get("NOTIFICATION_URL"):
            self.settings["NOTIFICATION_URL"] = own + value
            await self.restart_function_host()

    async def restart_function_host(self) -> None:
        """Stop the host and start it with the current settings (App Service restarts the app on a setting change)."""
        proc, self.host_proc = self.host_proc, None  # its watcher then leaves the restart to us
        await _terminate(proc)
        await self.start_function_host()

    async def start_function_host(self) -> None:
        env = {**os.environ, **self.process_env, **self.settings, "PYTHONPATH": str(ROOT)}
        self._host_ready.clear()
        from .lifecycle import die_with_parent

        self.host_proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "local.function_host", "--port", str(self.port),
            cwd=str(ROOT), env=env, stdout=asyncio.subprocess.PIPE, stderr=None, preexec_fn=die_with_parent)
        asyncio.create_task(self._watch(self.host_proc))
        await asyncio.wait_for(self._host_ready.wait(), timeout=60)

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        """Relay the host's output, notice READY, and restart the host if it dies (a crash, not a shutdown)."""
        assert proc.stdout
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            if line.startswith("HOST-READY "):
                self._host_ready.set()
            else:
                print(line, file=sys.stderr, flush=True)
        code = await proc.wait()
        if code == PORT_IN_USE and not self.stopping:
            self.failed = f"port {self.port} is in use: stop what listens there, or start with --port N (0: any free port)"
            self.done.set()
            return
        if not self.stopping and proc is self.host_proc:
            self.restarts += 1
            print(f"function host exited with {code}; restarting (restart #{self.restarts})", file=sys.stderr, flush=True)
            await asyncio.sleep(0.5)
            if not self.stopping:
                await self.start_function_host()

    async def start_control(self) -> None:
        """A small control API for tests and the demo: host status, broker, Table Storage and SMTP sink faults."""
        app = web.Application()

        async def status(_: web.Request) -> web.Response:
            return web.json_response({"hostPid": self.host_proc.pid if self.host_proc else None,
                                      "restarts": self.restarts})

        async def bus_stats(_: web.Request) -> web.Response:
            if not self.broker:
                return web.json_response({"code": "not_local", "message": "a real Service Bus is configured"}, status=404)
            return web.json_response(self.broker.stats())

        async def bus_faults(request: web.Request) -> web.Response:
            if not self.broker:
                return web.json_response({"code": "not_local", "message": "a real Service Bus is configured"}, status=404)
            body = await request.json()
            self.broker.set_faults(duplicate_deliveries=bool(body.get("duplicateDeliveries")))
            return web.json_response({"duplicateDeliveries": bool(body.get("duplicateDeliveries"))})

        async def set_key(request: web.Request) -> web.Response:
            if self.keys_file is None:
                return web.json_response({"code": "keys_not_required", "message": "start with --require-function-keys"},
                                         status=404)
            import secrets

            body = await request.json() if request.can_read_body else {}
            value = body.get("value") or secrets.token_urlsafe(32)
            await self.set_function_key(request.match_info["name"], value)
            return web.json_response({"name": request.match_info["name"], "value": value})

        app.router.add_get("/status", status)
        app.router.add_post("/function-keys/{name}", set_key)
        app.router.add_get("/servicebus/stats", bus_stats)
        app.router.add_post("/servicebus/faults", bus_faults)
        from .fault_proxy import control_routes

        app.add_routes(control_routes(lambda: self.table_proxy))
        from .smtp_sink import control_routes as smtp_control_routes

        app.add_routes(smtp_control_routes(lambda: self.smtp))
        self._control = web.AppRunner(app, access_log=None)
        await self._control.setup()
        site = web.TCPSite(self._control, "127.0.0.1", self.control_port)
        await site.start()
        self.control_port = self._control.addresses[0][1]  # the port bound (any free one when asked for 0)

    async def start_console(self) -> None:
        """The reference console (portal/), playing the portal backend against this host's API."""
        if self.console_port is None:
            return
        from portal.server import Console, TokenSettings

        token = TokenSettings(self.settings["PORTAL_TOKEN_SECRET"], self.settings.get("PORTAL_TOKEN_AUDIENCE") or None,
                              self.settings.get("PORTAL_TOKEN_ISSUER") or None)
        self._console = web.AppRunner(Console(f"http://127.0.0.1:{self.port}/api", token).app(), access_log=None)
        await self._console.setup()
        await web.TCPSite(self._console, "127.0.0.1", self.console_port).start()
        if not self.console_port:  # 0: a free port; Microsoft's consent returns to PORTAL_BASE_URL, so set it now
            self.console_port = self._console.addresses[0][1]
            self.console_url = f"http://127.0.0.1:{self.console_port}"
            if not os.environ.get("PORTAL_BASE_URL"):
                self.settings["PORTAL_BASE_URL"] = self.console_url

    def ready_line(self) -> str:
        return "READY " + json.dumps({
            "api": f"http://127.0.0.1:{self.port}/api",
            "console": self.console_url,
            "graph": self.settings["GRAPH_BASE_URL"],
            "authority": self.settings.get("AUTHORITY_HOST", ""),
            "authorityCa": self.process_env.get("SSL_CERT_FILE", ""),
            "serviceBus": self.settings.get("ServiceBusConnection", ""),
            "tables": self.settings.get("TABLES_CONNECTION_STRING", ""),
            "outbox": str(Path(self.args.outbox).resolve()),
            "control": f"http://127.0.0.1:{self.control_port}",
            **({"functionKeys": self.function_keys()} if self.keys_file else {}),
        })

    async def stop(self) -> None:
        self.stopping = True
        await _terminate(self.host_proc)
        if self._control:
            await self._control.cleanup()
        if self._console:
            await self._console.cleanup()
        for stop in (self.table_proxy and self.table_proxy.stop, self.smtp and self.smtp.stop,
                     self.graph and self.graph.stop, self.broker and self.broker.stop, self.azurite and self.azurite.stop):
            if stop:
                stop()
        import shutil

        if self.identity_folder is not None:
            shutil.rmtree(self.identity_folder, ignore_errors=True)
        if self.keys_file is not None:
            shutil.rmtree(self.keys_file.parent, ignore_errors=True)


async def run(args: argparse.Namespace) -> int:
    from .lifecycle import port_free

    if not port_free("127.0.0.1", args.port):
        print(f"port {args.port} is in use: stop what listens there, or start with --port N (0: any free port)",
              file=sys.stderr, flush=True)
        return 2
    host = DevHost(args)
    if host.console_port and not port_free("127.0.0.1", host.console_port):
        print(f"port {host.console_port} (the console) is in use: stop what listens there, or start with "
              "--console-port N (0: any free port)", file=sys.stderr, flush=True)
        return 2
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, host.done.set)
    try:
        host.start_stand_ins()
        await host.start_control()
        await host.start_console()
        started = asyncio.ensure_future(host.start_function_host())
        await asyncio.wait([started, asyncio.ensure_future(host.done.wait())], return_when=asyncio.FIRST_COMPLETED)
        if host.failed or host.done.is_set() and not started.done():
            started.cancel()
        else:
            await started
            line = host.ready_line()
            if host.args.port:  # `make run`: where `python -m local.azure_admin` finds the fake tenant
                (ROOT / ".local").mkdir(exist_ok=True)
                (ROOT / ".local" / "ready.json").write_text(line.split(" ", 1)[1])
            print(line, flush=True)
            if host.console_url:
                account = ("admin@<tenant domain> / admin" if host.args.interactive_sign_in
                           else "consent is automatic without --interactive-sign-in")
                print(f"Console: {host.console_url}  (Microsoft's sign-in: {account})", flush=True)
            await host.done.wait()
    finally:
        await host.stop()
    if host.failed:
        print(host.failed, file=sys.stderr, flush=True)
        return 2
    return 0


async def _terminate(proc: Any) -> None:
    """End a function host process: SIGTERM, then SIGKILL after 15 s."""
    if proc and proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), timeout=15)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m local", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=7071, help="HTTP port of the function app (0: a free one)")
    parser.add_argument("--tenant", action="append", help="fake tenant JSON file (repeatable; default the demo tenant)")
    parser.add_argument("--outbox", default=str(ROOT / ".local" / "outbox"), help="where the SMTP sink writes .eml files")
    parser.add_argument("--data", default=None, help="keep Azurite's data in this folder (default: in memory)")
    parser.add_argument("--latency-ms", type=int, default=0, help="delay every fake Graph answer, like a real network")
    parser.add_argument("--graph-port", type=int, default=0)
    parser.add_argument("--authority-port", type=int, default=0, help="HTTPS port of the local identity platform")
    parser.add_argument("--servicebus-port", type=int, default=0)
    parser.add_argument("--smtp-port", type=int, default=0)
    parser.add_argument("--control-port", type=int, default=0)
    parser.add_argument("--table-proxy", action="store_true",
                        help="put a fault-injecting proxy between the app and Azurite (control: /tables/faults)")
    parser.add_argument("--azure-limits", action="store_true",
                        help="enforce Azure's scalability targets: Table Storage's entities per partition and account "
                             "per second (503 ServerBusy; implies --table-proxy) and Graph's resource units per tenant "
                             "per 10 s (429 Retry-After); control: /tables/limits and the fake's /_fake/limits")
    parser.add_argument("--lock-duration", type=float, default=None,
                        help="Service Bus message lock, seconds (default: infra/queues.json's, 5 minutes)")
    parser.add_argument("--max-delivery-count", type=int, default=None,
                        help="deliveries before Service Bus dead-letters a message (default: infra/queues.json's)")
    parser.add_argument("--require-function-keys", action="store_true",
                        help="check function keys on FUNCTION- and ADMIN-level routes as Azure does (Core Tools, and "
                             "so the default here, checks none); the keys are in READY's functionKeys")
    parser.add_argument("--console-port", type=int, default=None,
                        help="serve the reference console (portal/) on this port (0: a free one); default 3000 when "
                             "--port is fixed (make run), else no console")
    parser.add_argument("--interactive-sign-in", action="store_true",
                        help="the local identity platform shows sign-in and consent pages a person clicks (default: "
                             "it signs in and consents at once, as the tests expect)")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    Path(args.outbox).mkdir(parents=True, exist_ok=True)
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
