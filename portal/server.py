"""The reference console's backend: a development sign-in, and the public API forwarded with the session's token.

The pages (``static/``) call ``/api/...`` on this server, which forwards each call unchanged to the Directory Sync
API with ``Authorization: Bearer <portal token>`` of the signed-in session, as a portal backend does: the token is
minted here, from the organisation and role chosen on the sign-in page, and neither it nor the signing secret ever
reaches the browser. Development only: anybody who can open the sign-in page picks their organisation.
"""
from __future__ import annotations

import html
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import aiohttp
import jwt
from aiohttp import web

STATIC = Path(__file__).resolve().parent / "static"
ROLES = ("Owner", "Administrator", "User Manager")
SESSION_COOKIE = "console_session"
SESSION_HOURS = 8
PAGES = ("/directory-sync", "/directory-sync/{subscriptionId}", "/users", "/users/{userId}", "/groups")
# What the browser may send on to the API, and what comes back from it (nothing else, cookies least of all).
REQUEST_HEADERS = ("Content-Type", "Accept")
RESPONSE_HEADERS = ("Content-Type", "Location", "Retry-After")


@dataclass(frozen=True)
class Session:
    org: str
    role: str
    sub: str  # the portal user's id: the consent this session starts can be confirmed by it alone
    expires: float


@dataclass(frozen=True)
class TokenSettings:
    secret: str
    audience: str | None = None
    issuer: str | None = None


class Console:
    """The console's routes: sign-in, the pages, and ``/api/*`` forwarded to ``api`` (e.g. http://127.0.0.1:7071/api)."""

    def __init__(self, api: str, token: TokenSettings) -> None:
        self.api = api.rstrip("/")
        self.token = token
        self.sessions: dict[str, Session] = {}
        self._client: aiohttp.ClientSession | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024**2, middlewares=[_security_headers])
        app.router.add_get("/", _home)
        app.router.add_get("/signin", self._signin_page)
        app.router.add_post("/signin", self._signin)
        app.router.add_post("/signout", self._signout)
        app.router.add_get("/session", self._session_info)
        for path in PAGES:
            app.router.add_get(path, self._page)
        for name in ("console.css", "console.js"):
            app.router.add_get(f"/static/{name}", _static(name))
        app.router.add_route("*", "/api/{tail:.*}", self._forward)
        app.on_cleanup.append(self._close)
        return app

    def _session(self, request: web.Request) -> Session | None:
        session = self.sessions.get(request.cookies.get(SESSION_COOKIE, ""))
        if session is not None and session.expires < time.time():
            self.sessions.pop(request.cookies[SESSION_COOKIE], None)
            return None
        return session

    async def _signin_page(self, request: web.Request) -> web.Response:
        page = (STATIC / "signin.html").read_text(encoding="utf-8")
        error = ('<p class="error" role="alert">Enter an organisation (at most 256 characters) and pick a role.</p>'
                 if request.query.get("error") else "")
        page = page.replace("{{next}}", html.escape(_local_path(request.query.get("next")))).replace("{{error}}", error)
        return web.Response(text=page, content_type="text/html", headers={"Cache-Control": "no-store"})

    async def _signin(self, request: web.Request) -> web.Response:
        _same_origin(request)
        form = await request.post()
        org, role = str(form.get("organisation", "")).strip(), str(form.get("role", ""))
        target = _local_path(str(form.get("next", "")))
        if not org or len(org) > 256 or not org.isprintable() or role not in ROLES:
            return _see_other("/signin?error=invalid&next=" + quote(target, safe=""))
        sid = secrets.token_urlsafe(32)
        self.sessions[sid] = Session(org, role, "console-" + secrets.token_hex(8), time.time() + SESSION_HOURS * 3600)
        response = _see_other(target)
        response.set_cookie(SESSION_COOKIE, sid, httponly=True, samesite="Lax", path="/", max_age=SESSION_HOURS * 3600)
        return response

    async def _signout(self, request: web.Request) -> web.Response:
        _same_origin(request)
        self.sessions.pop(request.cookies.get(SESSION_COOKIE, ""), None)
        response = _see_other("/signin")
        response.del_cookie(SESSION_COOKIE, path="/")
        return response

    async def _session_info(self, request: web.Request) -> web.Response:
        session = self._session(request)
        if session is None:
            return _error(401, "signed_out", "Sign in to the console first.")
        return web.json_response({"organisation": session.org, "role": session.role})

    async def _page(self, request: web.Request) -> web.StreamResponse:
        if self._session(request) is None:
            return _see_other("/signin?next=" + quote(request.path_qs, safe=""))
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    def _mint(self, session: Session) -> str:
        claims = {"org": session.org, "sub": session.sub, "role": session.role, "exp": int(time.time()) + 600}
        if self.token.audience:
            claims["aud"] = self.token.audience
        if self.token.issuer:
            claims["iss"] = self.token.issuer
        return jwt.encode(claims, self.token.secret, algorithm="HS256")

    async def _forward(self, request: web.Request) -> web.Response:
        session = self._session(request)
        if session is None:
            return _error(401, "signed_out", "Your console session has ended: sign in again.")
        if request.method not in ("GET", "HEAD"):
            _same_origin(request)
        if self._client is None:
            self._client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        headers = {k: request.headers[k] for k in REQUEST_HEADERS if k in request.headers}
        headers["Authorization"] = f"Bearer {self._mint(session)}"
        url = f"{self.api}/{request.match_info['tail']}"
        try:
            async with self._client.request(request.method, url, params=request.rel_url.query, headers=headers,
                                            data=await request.read() if request.can_read_body else None,
                                            allow_redirects=False) as answer:
                body = await answer.read()
                kept = {k: answer.headers[k] for k in RESPONSE_HEADERS if k in answer.headers}
                return web.Response(status=answer.status, body=body, headers=kept)
        except aiohttp.ClientError as exc:
            return _error(502, "api_unreachable", f"The Directory Sync API did not answer: {exc}.")

    async def _close(self, _app: web.Application) -> None:
        if self._client is not None:
            await self._client.close()


async def _home(_request: web.Request) -> web.Response:
    return _see_other("/directory-sync")


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _local_path(value: str | None) -> str:
    """A path of this console to go on to after signing in (never another site)."""
    if value and value.startswith("/") and not value.startswith(("//", "/\\")) and value.isprintable():
        return value
    return "/directory-sync"


def _static(name: str):
    async def serve(_request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / name, headers={"Cache-Control": "no-cache"})
    return serve


def _same_origin(request: web.Request) -> None:
    """Writes only from the console's own pages (a form or script of another site cannot ride on the cookie)."""
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        raise web.HTTPForbidden(text='{"code": "cross_origin", "message": "Requests must come from the console."}',
                                content_type="application/json")


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message}, status=status)


@web.middleware
async def _security_headers(request: web.Request, handler) -> web.StreamResponse:
    response = await handler(request)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    # Scripts, styles and calls of this origin only (a file response has no content type yet: set on every answer).
    response.headers.setdefault("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; "
                                "form-action 'self'; frame-ancestors 'none'")
    return response
