"""A fault-injecting HTTP proxy for Table Storage: 5xx answers, dropped connections, lost answers and latency.

``python -m local --table-proxy`` puts it between the function host and Azurite. It lives in the dev host (the
supervisor), so its faults and counters survive function-host restarts, and it is configured at runtime through
the dev host's control API (see ``control_routes``):

- ``POST {control}/tables/faults`` a fault or a list of faults; ``GET`` lists the pending ones, ``DELETE`` clears;
- ``GET {control}/tables/stats`` requests forwarded, faults injected by kind and Azurite's own error answers by
  status (412 ETag conflicts, 409 conflicts...); ``POST /tables/stats/reset`` zeroes them.

A fault: ``{"match": "text", "method": "PUT", "times": 1, "delayMs": 0, "status": 503, "retryAfter": 1,
"mode": "status" | "reset" | "lose"}``. ``match`` is a substring (or a list of substrings that must all appear) of
the request line and body: an org id, a table name, ``$batch``...; faults are taken in order and consumed. Modes:

- ``status`` (the default when ``status`` is given): answer ``status`` (503 ServerBusy, 500, 429...) without
  forwarding, as Table Storage does when it throttles or fails;
- ``reset``: close the connection without answering and without forwarding (after ``delayMs``): what a client sees
  when a request times out or a gateway drops it;
- ``lose``: forward the request, then close the connection instead of answering: the write landed, its answer was
  lost, and the client's retry meets its own earlier write (409 exists, 412 ETag mismatch);
- no status and no mode: only ``delayMs`` of latency, then forward.

With ``limits`` on (``python -m local --azure-limits``, or ``POST {control}/tables/limits {"enabled": true}``) the
proxy also meters Table Storage's scalability targets, entities per partition and per account per second, and answers
beyond them 503 ServerBusy as Azure does (``local/table_limits.py``); ``GET {control}/tables/limits`` shows the
settings and how many requests were throttled. Injected faults are taken first.
"""
from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from typing import Any, Callable

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

from local.server_thread import ServerThread
from local.table_limits import LimitError, TableLimits

MODES = ("status", "reset", "lose", "delay")
FIELDS = {"match", "method", "times", "delayMs", "status", "retryAfter", "mode"}
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "upgrade", "te", "trailer"}
ERROR_CODES = {429: "TooManyRequests", 500: "InternalError", 503: "ServerBusy", 504: "OperationTimedOut"}


class FaultError(ValueError):
    """A fault specification that cannot be used."""


def parse_fault(spec: Any) -> dict[str, Any]:
    """A validated fault (see the module docstring) with defaults filled in."""
    if not isinstance(spec, dict):
        raise FaultError("a fault is a JSON object")
    unknown = set(spec) - FIELDS
    if unknown:
        raise FaultError(f"unknown fault field(s): {', '.join(sorted(unknown))}")
    status = spec.get("status")
    mode = spec.get("mode") or ("status" if status is not None else "delay")
    if mode not in MODES:
        raise FaultError(f"mode must be one of {', '.join(MODES)}")
    if mode == "status" and not (isinstance(status, int) and 400 <= status <= 599):
        raise FaultError("a status fault needs an HTTP error status (400-599)")
    times, delay = spec.get("times", 1), spec.get("delayMs", 0)
    if not isinstance(times, int) or times < 1:
        raise FaultError("times must be a positive whole number")
    if not isinstance(delay, (int, float)) or delay < 0:
        raise FaultError("delayMs must be a non-negative number")
    if mode == "delay" and not delay:
        raise FaultError("a fault needs a status, a mode or a delayMs")
    match = spec.get("match") or []
    match = [match] if isinstance(match, str) else match
    if not isinstance(match, list) or not all(isinstance(m, str) for m in match):
        raise FaultError("match is a string or a list of strings")
    return {"match": match, "method": (spec.get("method") or "").upper() or None,
            "times": times, "delayMs": delay, "status": status if mode == "status" else None,
            "retryAfter": spec.get("retryAfter"), "mode": mode}


class FaultProxy(ServerThread):
    """Forwards every request to ``upstream`` (Azurite) unless a pending fault matches it. Runs on its own thread."""

    def __init__(self, upstream_host: str, upstream_port: int, host: str = "127.0.0.1", port: int = 0,
                 limits: TableLimits | None = None) -> None:
        self.upstream = f"http://{upstream_host}:{upstream_port}"
        self.limits = limits or TableLimits()
        self.host = host
        self.port = port
        self._faults: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        super().__init__()
        self._runner: web.AppRunner | None = None
        self._session: ClientSession | None = None

    # ------------------------------------------------------------ control (thread-safe)

    def add_faults(self, specs: list[Any]) -> list[dict[str, Any]]:
        parsed = [parse_fault(s) for s in specs]
        with self._lock:
            self._faults.extend(parsed)
            return [dict(f) for f in self._faults]

    def faults(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(f) for f in self._faults]

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            def part(prefix: str) -> dict[str, int]:
                return {k[len(prefix):]: v for k, v in self._counts.items() if k.startswith(prefix)}
            return {"requests": self._counts["requests"], "forwarded": self._counts["forwarded"],
                    "injected": part("injected:"), "upstreamErrors": part("upstream:"),
                    "throttled": part("throttled:")}

    def reset_stats(self) -> None:
        with self._lock:
            self._counts.clear()

    def _take(self, method: str, text: str) -> dict[str, Any] | None:
        with self._lock:
            self._counts["requests"] += 1
            for fault in self._faults:
                if all(m in text for m in fault["match"]) and fault["method"] in (None, method):
                    fault["times"] -= 1
                    if fault["times"] <= 0:
                        self._faults.remove(fault)
                    kind = fault["mode"] if fault["mode"] != "status" else f"status_{fault['status']}"
                    self._counts[f"injected:{kind}"] += 1
                    return dict(fault)
            return None

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    # ------------------------------------------------------------ lifecycle

    thread_name = "table-fault-proxy"

    async def _serve(self) -> None:
        self._session = ClientSession(connector=TCPConnector(limit=64), auto_decompress=False,
                                      timeout=ClientTimeout(total=120))
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._proxy)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001 - the bound port of port 0

    async def _close(self) -> None:
        if self._runner:
            await self._runner.cleanup()
        if self._session:
            await self._session.close()

    # ------------------------------------------------------------ the proxy

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        fault = self._take(request.method, f"{request.method} {request.raw_path}\n{body.decode('latin-1')}")
        if fault and fault["delayMs"]:
            await asyncio.sleep(fault["delayMs"] / 1000)
        mode = fault["mode"] if fault else None
        if mode == "status":
            return _error(fault["status"], fault.get("retryAfter"))
        if mode == "reset":
            return _drop(request)
        busy = self.limits.admit(request.method, request.raw_path, body) if mode is None else None
        if busy is not None:
            self._count(f"throttled:{busy[0]}")
            return _error(503, None, busy[1])
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        async with self._session.request(request.method, self.upstream + request.raw_path, headers=headers,
                                         data=body, skip_auto_headers=("Content-Type", "User-Agent", "Accept",
                                                                       "Accept-Encoding")) as upstream:
            payload = await upstream.read()
            self._count("forwarded")
            self.limits.charge_answer(request.method, request.raw_path, body, upstream.status, payload)
            if upstream.status >= 400:  # e.g. 412: ETag conflicts between concurrent writers, 409: already exists
                self._count(f"upstream:{upstream.status}")
            if mode == "lose":
                return _drop(request)
            out = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
            return web.Response(status=upstream.status, body=payload, headers=out)


def _error(status: int, retry_after: Any, message: str | None = None) -> web.Response:
    code = ERROR_CODES.get(status, "InjectedFault")
    text = message or f"Injected fault: HTTP {status}."
    body = {"odata.error": {"code": code, "message": {"lang": "en-US", "value": text}}}
    headers = {"x-ms-error-code": code}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return web.Response(status=status, body=json.dumps(body).encode(), headers=headers,
                        content_type="application/json")


def _drop(request: web.Request) -> web.StreamResponse:
    """Close the client's connection without an answer (the client sees a reset / server disconnect)."""
    if request.transport is not None:
        request.transport.abort()
    raise asyncio.CancelledError()  # aiohttp drops the handler's connection without writing anything


def control_routes(proxy: Callable[[], FaultProxy | None], prefix: str = "/tables") -> list[web.RouteDef]:
    """The dev host's control endpoints for the proxy; 404 ``not_local`` when it runs without ``--table-proxy``."""

    def absent() -> web.Response:
        return web.json_response({"code": "not_local", "message": "start the dev host with --table-proxy"}, status=404)

    async def get_faults(_: web.Request) -> web.Response:
        p = proxy()
        return web.json_response({"faults": p.faults()}) if p else absent()

    async def add_faults(request: web.Request) -> web.Response:
        p = proxy()
        if not p:
            return absent()
        try:
            body = await request.json()
            return web.json_response({"faults": p.add_faults(body if isinstance(body, list) else [body])})
        except (ValueError, FaultError) as exc:
            return web.json_response({"code": "bad_fault", "message": str(exc)}, status=400)

    async def clear_faults(_: web.Request) -> web.Response:
        p = proxy()
        if not p:
            return absent()
        p.clear_faults()
        return web.json_response({"faults": []})

    async def stats(_: web.Request) -> web.Response:
        p = proxy()
        return web.json_response(p.stats()) if p else absent()

    async def reset_stats(_: web.Request) -> web.Response:
        p = proxy()
        if not p:
            return absent()
        p.reset_stats()
        return web.json_response(p.stats())

    async def get_limits(_: web.Request) -> web.Response:
        p = proxy()
        return web.json_response(p.limits.state()) if p else absent()

    async def set_limits(request: web.Request) -> web.Response:
        p = proxy()
        if not p:
            return absent()
        try:
            return web.json_response(p.limits.configure(await request.json()))
        except (ValueError, LimitError) as exc:
            return web.json_response({"code": "bad_limits", "message": str(exc)}, status=400)

    return [web.get(f"{prefix}/limits", get_limits), web.post(f"{prefix}/limits", set_limits),
            web.get(f"{prefix}/faults", get_faults), web.post(f"{prefix}/faults", add_faults),
            web.delete(f"{prefix}/faults", clear_faults), web.get(f"{prefix}/stats", stats),
            web.post(f"{prefix}/stats/reset", reset_stats)]
