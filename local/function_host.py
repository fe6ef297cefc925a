"""A local Functions host: indexes ``function_app.app`` like the real host and runs its own registered triggers.

HTTP routes are served at ``/api/<route>`` (aiohttp), Service Bus queue triggers are consumed with the real
azure-servicebus client (complete on success, abandon on an exception, so redelivery and dead-lettering are the
broker's), timer triggers fire on their NCRONTAB schedule, and ``POST /admin/functions/{name}`` runs a
non-HTTP function on demand as the Functions admin API does. Run by the dev host (``python -m local``) as a child
process, so that killing it mid-run is a real crash; it can also run alone against any settings in the environment.
"""
from __future__ import annotations

import argparse
import asyncio
import functools
import inspect
import json
import logging
import os
import re
import signal
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from aiohttp import web

from local.receiving import receive_into

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("local.host")


@dataclass
class HttpFunction:
    name: str
    route: str
    methods: frozenset[str]
    pattern: re.Pattern
    literals: int
    call: Callable
    auth_level: str = "FUNCTION"  # FUNCTION, ANONYMOUS or ADMIN (the trigger's authLevel)


@dataclass
class QueueFunction:
    name: str
    queue: str
    dead_letter: bool
    call: Callable


@dataclass
class TimerFunction:
    name: str
    schedule: str
    call: Callable


def resolve(value: str, env: dict[str, str]) -> str:
    """Binding expressions like ``%GROUP_SYNC_QUEUE%`` read app settings, as the Functions host does."""
    def setting(match: re.Match) -> str:
        key = match.group(1)
        if key not in env or not env[key]:
            raise RuntimeError(f"app setting {key} (used by a binding) is not set")
        return env[key]
    return re.sub(r"%([A-Za-z0-9_]+)%", setting, value)


def route_pattern(template: str) -> tuple[re.Pattern, int]:
    """A regex for a Functions route template (``{name}``, ``{name:constraint}``, ``{*rest}``) and its literal count."""
    parts = []
    literals = 0
    for segment in template.strip("/").split("/"):
        match = re.fullmatch(r"\{(\*?)([A-Za-z0-9_]+)(?::[^}]*)?(\?)?\}", segment)
        if match:
            catch_all, name, _ = match.groups()
            parts.append(f"(?P<{name}>.+)" if catch_all else f"(?P<{name}>[^/]+)")
        else:
            literals += 1
            parts.append(re.escape(segment))
    return re.compile("^" + "/".join(parts) + "/?$", re.IGNORECASE), literals


def index(app: Any, env: dict[str, str]) -> tuple[list[HttpFunction], list[QueueFunction], list[TimerFunction]]:
    """Read the app's functions and bindings the way the host's worker indexing does."""
    http: list[HttpFunction] = []
    queues: list[QueueFunction] = []
    timers: list[TimerFunction] = []
    for fn in app.get_functions():
        spec = json.loads(fn.get_function_json())
        trigger = next(b for b in spec["bindings"] if b["direction"] == "IN" and b["type"].endswith("Trigger"))
        name = fn.get_function_name()
        user = fn.get_user_function()
        if trigger["type"] == "httpTrigger":
            pattern, literals = route_pattern(trigger.get("route") or name)
            http.append(HttpFunction(name, trigger.get("route") or name, frozenset(m.upper() for m in trigger["methods"]),
                                     pattern, literals, user, str(trigger.get("authLevel") or "FUNCTION").upper()))
        elif trigger["type"] == "serviceBusTrigger":
            queue = resolve(trigger["queueName"], env)
            dead = queue.lower().endswith("/$deadletterqueue")
            queues.append(QueueFunction(name, queue.split("/")[0] if dead else queue, dead, user))
        elif trigger["type"] == "timerTrigger":
            timers.append(TimerFunction(name, resolve(trigger["schedule"], env), user))
        else:
            raise RuntimeError(f"{name}: trigger type {trigger['type']} is not supported by the local host")
    http.sort(key=lambda f: -f.literals)  # literal segments win over parameters, as in ASP.NET routing
    return http, queues, timers


async def invoke(name: str, call: Callable, arg: Any) -> Any:
    """Run one function invocation with the host's log lines around it."""
    invocation = uuid.uuid4()
    started = time.perf_counter()
    log.info("Executing 'Functions.%s' (Id=%s)", name, invocation)
    try:
        result = call(arg)
        if inspect.isawaitable(result):
            result = await result
    except Exception:
        log.exception("Executed 'Functions.%s' (Failed, Id=%s, Duration=%dms)", name, invocation,
                      (time.perf_counter() - started) * 1000)
        raise
    log.info("Executed 'Functions.%s' (Succeeded, Id=%s, Duration=%dms)", name, invocation,
             (time.perf_counter() - started) * 1000)
    return result


class FunctionKeys:
    """The host's access keys, as Azure checks them (Core Tools checks none): a FUNCTION-level route takes any host key
    or the master key, an ADMIN-level route and the admin API only the master key, in the ``x-functions-key`` header
    or the ``code`` query parameter; anything else is a 401 with an empty body before the function runs
    (learn.microsoft.com/azure/azure-functions/function-keys-how-to). The keys live in a JSON file,
    ``{"master": "...", "host": {"default": "...", ...}}``, read on every request: a key set while the host runs
    (``az functionapp keys set``; the dev host's control API) counts from the next request on, as in Azure."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def allows(self, level: str, presented: str | None) -> bool:
        import hmac

        if level == "ANONYMOUS":
            return True
        if not presented:
            return False
        keys = json.loads(self.path.read_text())
        valid = [keys["master"]] + ([] if level == "ADMIN" else list(keys.get("host", {}).values()))
        return any(hmac.compare_digest(presented.encode(), k.encode()) for k in valid if k)

    @staticmethod
    def presented(request: web.Request) -> str | None:
        return request.headers.get("x-functions-key") or request.query.get("code")


class FunctionHost:
    """Hosts one function app: HTTP, Service Bus and timer triggers, plus the admin API."""

    def __init__(self, app: Any, env: dict[str, str], host_json: dict[str, Any], port: int, host: str = "127.0.0.1",
                 keys: FunctionKeys | None = None):
        self.keys = keys  # None: no key is checked (Core Tools' behaviour, the default)
        self.env = env
        self.http, self.queues, self.timers = index(app, env)
        sb = host_json.get("extensions", {}).get("serviceBus", {})
        self.max_concurrent_calls = int(sb.get("maxConcurrentCalls", 16))
        self.lock_renewal_s = _duration(sb.get("maxAutoLockRenewalDuration", "00:05:00"))
        self.port = port
        self.host = host
        self._tasks: list[asyncio.Task] = []
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        web_app = web.Application(client_max_size=100 * 1024 * 1024)  # the Functions host's request limit
        web_app.router.add_route("POST", "/admin/functions/{name}", self._admin)
        web_app.router.add_route("*", r"/api/{tail:[\s\S]*}", self._http)  # any path, newlines (%0A) too
        self._runner = web.AppRunner(web_app, access_log=None)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self.host, self.port).start()
        except OSError as exc:
            from local.lifecycle import PORT_IN_USE

            print(f"port {self.port} is in use ({exc.strerror}); start with --port N (0: any free port)",
                  file=sys.stderr, flush=True)
            raise SystemExit(PORT_IN_USE) from None
        if self.queues:
            connection = self.env.get("ServiceBusConnection")
            if not connection:
                raise RuntimeError("app setting ServiceBusConnection is not set (queue triggers need it)")
            for fn in self.queues:
                self._tasks.append(asyncio.create_task(self._consume(fn, connection), name=f"consume:{fn.name}"))
        for fn in self.timers:
            self._tasks.append(asyncio.create_task(self._timer(fn), name=f"timer:{fn.name}"))

    async def stop(self) -> None:
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner:
            await self._runner.cleanup()
        from sync import composition

        await composition.reset()

    # ------------------------------------------------------------ HTTP

    async def _http(self, request: web.Request) -> web.StreamResponse:
        import azure.functions as func

        path = request.match_info["tail"]
        allowed: set[str] = set()
        for fn in self.http:
            match = fn.pattern.match(path)
            if not match:
                continue
            if request.method not in fn.methods:
                allowed |= fn.methods
                continue
            if self.keys is not None and not self.keys.allows(fn.auth_level, self.keys.presented(request)):
                return web.Response(status=401)
            body = await request.read()
            req = func.HttpRequest(request.method, str(request.url), headers=dict(request.headers),
                                   params=dict(request.query), route_params=match.groupdict(), body=body)
            try:
                resp = await invoke(fn.name, fn.call, req)
            except Exception:
                return web.json_response({"code": "internal_error", "message": "the function failed; see the host log"},
                                         status=500)
            return _to_aiohttp(resp)
        if allowed:
            return web.json_response({"code": "method_not_allowed", "message": f"use {', '.join(sorted(allowed))}"},
                                     status=405, headers={"Allow": ", ".join(sorted(allowed))})
        return web.json_response({"code": "not_found", "message": "no function serves this route"}, status=404)

    async def _admin(self, request: web.Request) -> web.Response:
        """``POST /admin/functions/{name}``: run a timer (or queue) function now, like Core Tools' admin API."""
        name = request.match_info["name"]
        if self.keys is not None and not self.keys.allows("ADMIN", self.keys.presented(request)):
            return web.Response(status=401)
        for fn in self.timers:
            if fn.name == name:
                asyncio.create_task(self._run_timer(fn, past_due=False))
                return web.Response(status=202)
        return web.json_response({"code": "not_found", "message": f"no timer function named {name}"}, status=404)

    # ------------------------------------------------------------ Service Bus

    async def _consume(self, fn: QueueFunction, connection: str) -> None:
        from azure.servicebus import ServiceBusSubQueue
        from azure.servicebus.aio import ServiceBusClient
        from azure.servicebus.exceptions import ServiceBusError

        slots = asyncio.Semaphore(self.max_concurrent_calls)
        running: set[asyncio.Task] = set()
        while not self._stopping.is_set():
            try:
                async with ServiceBusClient.from_connection_string(connection) as client:
                    receiver = client.get_queue_receiver(
                        fn.queue, sub_queue=ServiceBusSubQueue.DEAD_LETTER if fn.dead_letter else None, prefetch_count=0)
                    async with receiver:
                        await receive_into(receiver, slots, self.max_concurrent_calls, self._stopping,
                                           functools.partial(self._deliver, fn, receiver, slots=slots), running)
            except asyncio.CancelledError:
                for task in running:
                    task.cancel()
                raise
            except (ServiceBusError, OSError, ValueError) as exc:
                # ValueError: the SDK shut its handler down after an unexpected error (e.g. on its management link)
                log.warning("queue consumer for %s lost its connection (%s); reconnecting", fn.name, type(exc).__name__)
                await asyncio.sleep(1)

    async def _deliver(self, fn: QueueFunction, receiver: Any, message: Any, slots: asyncio.Semaphore) -> None:
        from azure.servicebus.aio import AutoLockRenewer

        # One renewer per message, closed once the message is settled or its settling failed: a message that could
        # not be settled (its receiver was shut down) must stop being renewed, so the broker redelivers it soon.
        renewer = AutoLockRenewer(max_lock_renewal_duration=self.lock_renewal_s)
        renewer.register(receiver, message)
        try:
            try:
                await invoke(fn.name, fn.call, _to_function_message(message))
            except Exception:
                await _settle(receiver.abandon_message, message)
                return
            await _settle(receiver.complete_message, message)
        finally:
            # The message is settled (or left to redelivery): its slot is free now. Closing the renewer waits for
            # its loop to wake (it sleeps a second at a time), which must not hold up the next message.
            slots.release()
            await renewer.close()

    # ------------------------------------------------------------ timers

    async def _timer(self, fn: TimerFunction) -> None:
        from .cron import parse

        schedule = parse(fn.schedule)
        while True:
            now = datetime.now(timezone.utc)
            due = schedule.next_after(now)
            await asyncio.sleep((due - now).total_seconds())
            late = (datetime.now(timezone.utc) - due).total_seconds() > 60
            await self._run_timer(fn, past_due=late)

    async def _run_timer(self, fn: TimerFunction, *, past_due: bool) -> None:
        from azure.functions.timer import TimerRequest

        try:
            await invoke(fn.name, fn.call, TimerRequest(past_due=past_due))
        except Exception:
            pass  # logged by invoke; a timer failure waits for the next firing


async def _settle(action: Callable, message: Any) -> None:
    from azure.servicebus.exceptions import ServiceBusError

    try:
        await action(message)
    except (ServiceBusError, ValueError) as exc:  # lock lost, or receiver shut down (ValueError): the broker
        log.warning("settling a message failed: %s", type(exc).__name__)  # redelivers; handlers are at-least-once


def _to_function_message(message: Any) -> Any:
    """The azure.functions ServiceBusMessage the Python worker would build (delivery count is 1-based there)."""
    import azure.functions.servicebus as sb

    def text_keys(props: Any) -> dict[str, Any]:
        return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                for k, v in (props or {}).items()}

    body = b"".join(message.body) if not isinstance(message.body, (bytes, str)) else message.body
    if isinstance(body, str):
        body = body.encode()
    return sb.ServiceBusMessage(
        body=body,
        message_id=message.message_id or "",
        content_type=message.content_type,
        correlation_id=message.correlation_id,
        delivery_count=(message.delivery_count or 0) + 1,
        dead_letter_reason=message.dead_letter_reason,
        dead_letter_error_description=message.dead_letter_error_description,
        enqueued_time_utc=message.enqueued_time_utc,
        sequence_number=message.sequence_number,
        lock_token=str(message.lock_token) if message.lock_token else None,
        subject=message.subject,
        application_properties=text_keys(message.application_properties),
        user_properties=text_keys(message.application_properties),
    )


def _to_aiohttp(resp: Any) -> web.Response:
    headers = {k: v for k, v in resp.headers.items() if k.lower() != "content-type"}
    content_type = resp.mimetype or "text/plain"
    if resp.charset and content_type.startswith(("text/", "application/json")):
        content_type = f"{content_type}; charset={resp.charset}"
    body = resp.get_body()
    if resp.status_code in (204, 304) or (not body and resp.status_code in (301, 302, 303, 307, 308)):
        return web.Response(status=resp.status_code, headers=headers)
    return web.Response(status=resp.status_code, body=body, headers={**headers, "Content-Type": content_type})


def _duration(text: str) -> float:
    h, m, s = (float(x) for x in text.split(":"))
    return h * 3600 + m * 60 + s


def configure_logging() -> None:
    """Readable host logs on stderr (our loggers already write their structured fields into the message)."""
    logging.basicConfig(level=os.environ.get("LOCAL_LOG_LEVEL", "INFO"), stream=sys.stderr, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("azure", "uamqp", "httpx", "aiohttp.access", "kiota", "msgraph"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


async def serve(port: int, host: str) -> None:
    sys.path.insert(0, str(ROOT))
    import function_app

    host_json = json.loads((ROOT / "host.json").read_text())
    keys_file = os.environ.get("LOCAL_FUNCTION_KEYS_FILE")  # set by the dev host's --require-function-keys
    server = FunctionHost(function_app.app, dict(os.environ), host_json, port, host,
                          keys=FunctionKeys(Path(keys_file)) if keys_file else None)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    names = {"http": [f.name for f in server.http], "queues": [f.name for f in server.queues],
             "timers": [f.name for f in server.timers]}
    print("HOST-READY " + json.dumps({"api": f"http://{host}:{port}/api", "functions": names}), flush=True)
    await stop.wait()
    await server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=7071)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    configure_logging()
    asyncio.run(serve(args.port, args.host))


if __name__ == "__main__":
    main()
