"""What every HTTP function shares: caller authentication, JSON bodies, and errors as {"code","message"}."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import azure.functions as func

from .. import composition
from ..auth import authenticate, authorize
from ..errors import InvalidInput, PayloadTooLarge, SettingsError, SyncError, TooSoon, Transient
from ..inputs import loads_json
from ..logs import get_logger
from ..model import Caller

log = get_logger(__name__)

MAX_BODY_BYTES = 1024 * 1024
NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


@dataclass
class Reply:
    """A response other than a plain 200 with a JSON body."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


Action = Callable[[composition.Services, Caller], Awaitable[Any]]


async def handle(req: func.HttpRequest, action: Action, *, query_params: tuple[str, ...] = ()) -> func.HttpResponse:
    """Authenticate and authorize the portal caller, run ``action``, and answer JSON.

    Every endpoint answers an unknown query parameter alike (400 ``unknown_parameter``); ``query_params`` are the
    ones this endpoint reads.
    """
    started = time.perf_counter()
    seen: dict[str, str] = {}
    response = await _answer(req, action, query_params, seen)
    log_request(req, response.status_code, started, org=seen.get("org"), code=seen.get("code"))
    return response


async def _answer(req: func.HttpRequest, action: Action, query_params: tuple[str, ...],
                  seen: dict[str, str]) -> func.HttpResponse:
    try:
        unknown = sorted(set(query(req)) - set(query_params))
        if unknown:
            raise InvalidInput(f"unknown query parameter(s): {', '.join(unknown)[:200]}", code="unknown_parameter")
        svc = await composition.services()
        s = svc.settings
        caller = authorize(authenticate(req.headers, s.portal_token_secret, max_lifetime_s=s.portal_token_max_lifetime_s,
                                        audience=s.portal_token_audience, issuer=s.portal_token_issuer))
        seen["org"] = caller.org
        result = await action(svc, caller)
    except SyncError as exc:
        seen["code"] = exc.code
        return error_response(exc)
    except SettingsError as exc:
        return misconfigured_response(exc)
    except Exception:
        log.exception("unhandled error in an HTTP function", extra={"path": _path(req)})
        return json_response(500, {"code": "internal_error", "message": "an unexpected error occurred; it has been logged"})
    if isinstance(result, Reply):
        return json_response(result.status, result.body, result.headers)
    return json_response(200, result)


def misconfigured_response(exc: SettingsError) -> func.HttpResponse:
    """500 (or 503 while a Key Vault reference is unresolved) ``misconfigured``; the log names the keys, never a value."""
    log.error("the function app is misconfigured: %s", exc)
    return json_response(exc.status, {"code": "misconfigured", "message": "the service is misconfigured; see its logs"})


def log_request(req: func.HttpRequest, status: int, started: float, *, org: str | None = None,
                code: str | None = None) -> None:
    """One line per request: method, path (never its query: a function key may ride there), status, time, org."""
    level = logging.ERROR if status >= 500 else logging.WARNING if status >= 400 else logging.INFO
    fields: dict[str, Any] = {"method": req.method, "path": _path(req), "status": status,
                              "duration_ms": round((time.perf_counter() - started) * 1000, 1)}
    if org:
        fields["org"] = org
    if code:
        fields["code"] = code
    log.log(level, "http request", extra=fields)


def _path(req: func.HttpRequest) -> str:
    from urllib.parse import urlsplit

    return urlsplit(req.url).path[:300]


def json_body(req: func.HttpRequest) -> dict[str, Any]:
    """The request's JSON object; 413 when too large, 400 when malformed or not an object."""
    raw = req.get_body() or b""
    if len(raw) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"the body is larger than {MAX_BODY_BYTES // 1024} KiB")
    if not raw.strip():
        return {}
    try:
        body = loads_json(raw)
    except ValueError:  # UnicodeDecodeError is one; nesting too deep and lone surrogates become one
        raise InvalidInput("the body is not valid JSON", code="malformed_json") from None
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object", code="invalid_body")
    return body


def form_body(req: func.HttpRequest) -> dict[str, str]:
    """An application/x-www-form-urlencoded body (what a form_post page submits); empty when too large or not a form."""
    from urllib.parse import parse_qsl

    raw = req.get_body() or b""
    kind = (req.headers.get("content-type") or "").split(";")[0].strip().lower()
    if len(raw) > 64 * 1024 or kind != "application/x-www-form-urlencoded":
        return {}
    try:
        return dict(parse_qsl(raw.decode("ascii"), keep_blank_values=True, max_num_fields=20))
    except (UnicodeDecodeError, ValueError):
        return {}


def route(req: func.HttpRequest, name: str) -> str:
    return req.route_params.get(name, "")


def query(req: func.HttpRequest) -> dict[str, str]:
    """The query parameters, less ``code``: the Functions host's key parameter, never the app's."""
    return {k: v for k, v in req.params.items() if k != "code"}


def error_response(exc: SyncError) -> func.HttpResponse:
    body = {"code": exc.code, "message": exc.message, **exc.details}
    headers = {}
    if isinstance(exc, Transient):
        headers["Retry-After"] = str(max(1, int(exc.retry_after or 5)))
    elif isinstance(exc, TooSoon):
        headers["Retry-After"] = str(exc.details["retryAfterSeconds"])
    return json_response(exc.status, body, headers)


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> func.HttpResponse:
    if body is None:
        return func.HttpResponse(status_code=status, headers={**NO_STORE, **(headers or {})})
    return func.HttpResponse(json.dumps(body, ensure_ascii=False), status_code=status, mimetype="application/json",
                             charset="utf-8", headers={**NO_STORE, **(headers or {})})
