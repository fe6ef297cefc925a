"""Shared test helpers: portal tokens and calling the app's functions the way the host does."""
from __future__ import annotations

import json
import time
from functools import lru_cache
from typing import Any

import azure.functions as func
import jwt

from tests.fakes import SECRET


def token(org: str = "org-a", role: str = "Administrator", sub: str = "admin@portal", *, secret: str = SECRET,
          exp: float | None = None, alg: str = "HS256", **claims: Any) -> str:
    """A portal token; pass claim=None to leave a claim out."""
    payload = {"org": org, "sub": sub, "role": role, "exp": int(exp if exp is not None else time.time() + 6 * 3600), **claims}  # outlives a long test session
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, secret, algorithm=alg)


@lru_cache(maxsize=1)
def functions_by_name() -> dict[str, Any]:
    """The app's functions by name (indexed once: the SDK refuses a second get_functions() on one app)."""
    from function_app import app

    return {f.get_function_name(): f for f in app.get_functions()}


def http_function_names() -> list[str]:
    """Names of the app's HTTP-triggered functions."""
    return sorted(n for n, f in functions_by_name().items()
                  if json.loads(f.get_function_json())["bindings"][0]["type"] == "httpTrigger")


def http_route_of(name: str) -> tuple[str, list[str]]:
    fn = functions_by_name()[name]
    trigger = json.loads(fn.get_function_json())["bindings"][0]
    return trigger["route"], trigger["methods"]


async def call(name: str, *, method: str | None = None, body: Any = None, raw: bytes | None = None,
               params: dict[str, str] | None = None, route: dict[str, str] | None = None,
               auth: str | None = "default", headers: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
    """Invoke the HTTP function ``name`` with a real func.HttpRequest; returns (status, json or None, headers)."""
    fn = functions_by_name()[name]
    template, methods = http_route_of(name)
    hdrs = dict(headers or {})
    if auth == "default":
        hdrs["Authorization"] = f"Bearer {token()}"
    elif auth is not None:
        hdrs["Authorization"] = auth
    if raw is None:
        raw = b"" if body is None else json.dumps(body).encode()
    path = template
    for k, v in (route or {}).items():
        path = path.replace("{" + k + "}", v)
    req = func.HttpRequest(method or methods[0], f"http://localhost/api/{path}", headers=hdrs, params=params or {},
                           route_params=route or {}, body=raw)
    resp = await fn.get_user_function()(req)
    content = resp.get_body()
    data = json.loads(content) if content and resp.mimetype == "application/json" else None
    return resp.status_code, data, dict(resp.headers)


def svc_of_triggers() -> Any:
    """The Services every trigger uses in logic tests (installed by the ``svc`` fixture)."""
    from sync import composition

    assert composition._override is not None, "use the svc fixture"
    return composition._override
