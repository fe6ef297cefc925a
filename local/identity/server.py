"""HTTP of the local Microsoft identity platform: token, authorize (OIDC sign-in), admin consent, discovery, keys, MSI.

Served over HTTPS by the fake tenant's server thread (``local/fake_graph/server.py``) on a port of its own, next
to Graph; both share one ``IdentityPlatform`` so tokens the authority issues are the ones Graph checks.
"""
from __future__ import annotations

import html
import re
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from aiohttp import web

from .platform import (
    GLOBAL_ADMINISTRATOR,
    PERMISSION_NAMES,
    PRIVILEGED_ROLE_ADMINISTRATOR,
    WELL_KNOWN_TENANTS,
    Admin,
    IdentityPlatform,
    SignInError,
    TokenError,
)

Handler = Callable[[web.Request, dict[str, str]], Awaitable[web.StreamResponse]]
CONSENTING_ROLES = (GLOBAL_ADMINISTRATOR, PRIVILEGED_ROLE_ADMINISTRATOR)
PROMPTS = ("login", "none", "consent", "select_account")  # one value, no combinations (README: OpenID Connect sign-in)
SESSION_COOKIE = "ESTSAUTH"  # the name of Microsoft's session cookie on login.microsoftonline.com
WRONG_PASSWORD = "Your account or password is incorrect."  # AADSTS50126 as the sign-in page words it
BROWSER_PAGES = ("/{tenant}/v2.0/adminconsent", "/{tenant}/oauth2/v2.0/authorize")  # a form posts back with --interactive


class AuthorityRoutes:
    """Routes of login.microsoftonline.com (and the App Service managed identity endpoint) that the app uses."""

    def __init__(self, identity: IdentityPlatform) -> None:
        self.identity = identity
        self._routes: list[tuple[re.Pattern[str], str, str, Handler]] = [
            (re.compile(p, re.IGNORECASE), method, template, handler) for p, method, template, handler in (
                (r"/(?P<tenant>[^/]+)/oauth2/v2\.0/token", "POST", "/{tenant}/oauth2/v2.0/token", self._token),
                (r"/(?P<tenant>[^/]+)/oauth2/v2\.0/authorize", "GET", "/{tenant}/oauth2/v2.0/authorize", self._authorize),
                (r"/(?P<tenant>[^/]+)/v2\.0/adminconsent", "GET", "/{tenant}/v2.0/adminconsent", self._admin_consent),
                (r"/(?P<tenant>[^/]+)/v2\.0/\.well-known/openid-configuration", "GET",
                 "/{tenant}/v2.0/.well-known/openid-configuration", self._discovery),
                (r"/(?P<tenant>[^/]+)/discovery/v2\.0/keys", "GET", "/{tenant}/discovery/v2.0/keys", self._keys),
                (r"/msi/token", "GET", "/msi/token", self._msi),
            )]

    def resolve(self, method: str, path: str) -> tuple[str, Handler | None, dict[str, str]]:
        """The route template (for statistics), its handler and path parameters; no handler: 404/405."""
        for pattern, allowed, template, handler in self._routes:
            m = pattern.fullmatch(path.rstrip("/"))
            if m:
                posted = method == "POST" and self.identity.interactive and template in BROWSER_PAGES
                return template, (handler if method == allowed or posted else None), m.groupdict()
        return "(unmatched authority)", None, {}

    # --- token endpoint ---------------------------------------------------------------------------

    async def _token(self, request: web.Request, params: dict[str, str]) -> web.Response:
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        token_url = f"{self.identity.origin}/{params['tenant']}/oauth2/v2.0/token"
        try:
            body = self.identity.client_credentials(params["tenant"], form, token_url)
        except TokenError as exc:
            return web.json_response(exc.body(self.identity.origin), status=exc.status)
        return web.json_response(body, headers={"Cache-Control": "no-store, no-cache", "Pragma": "no-cache"})

    async def _msi(self, request: web.Request, params: dict[str, str]) -> web.Response:
        try:
            body = self.identity.managed_identity_token(dict(request.query), request.headers.get("X-IDENTITY-HEADER"))
        except TokenError as exc:
            return web.json_response({"statusCode": exc.status, "message": exc.description}, status=exc.status)
        return web.json_response(body)

    # --- browser pages ----------------------------------------------------------------------------

    def _check_app(self, query: Any) -> str:
        """The registered redirect URI a browser page may send the user to; SignInError for anything else."""
        reg = self.identity.registration
        for required in ("client_id", "redirect_uri"):
            if not query.get(required):
                raise SignInError(f"AADSTS900144: The request body must contain the following parameter: '{required}'.")
        if query["client_id"] != reg.client_id:
            raise SignInError(f"AADSTS700016: Application with identifier '{query['client_id']}' was not found in "
                              "the directory.")
        if query["redirect_uri"] not in reg.redirect_uris:
            raise SignInError(f"AADSTS50011: The redirect URI '{query['redirect_uri']}' specified in the request does "
                              f"not match the redirect URIs configured for the application '{reg.client_id}'.")
        return query["redirect_uri"]

    def _account_for(self, path_tenant: str, admin: Admin | None = None) -> Admin:
        """The signed-in account, which must belong to the tenant named in the path (unless organizations/common)."""
        admin = admin or self.identity.signed_in()
        if path_tenant.lower() not in WELL_KNOWN_TENANTS:
            tenant = self.identity.resolve_tenant(path_tenant)
            if tenant is None:
                raise SignInError(f"AADSTS90002: Tenant '{path_tenant}' not found.")
            if tenant != admin.tenant:
                raise SignInError(f"AADSTS50020: User account from identity provider does not exist in tenant "
                                  f"'{tenant}' and cannot access the application in that tenant.")
        return admin

    async def _admin_consent(self, request: web.Request, params: dict[str, str]) -> web.Response:
        query = request.query
        try:
            redirect_uri = self._check_app(query)
        except SignInError as exc:
            return _signin_error(str(exc))
        declined = self.identity.deny
        account: Admin | None = None
        cookie: str | None = None
        if self.identity.interactive:  # a person signs in, reads the permissions and clicks Accept or Cancel
            account, cookie, page = await self._interactive_sign_in(request)
            if page is not None:
                return page
            form = await request.post() if request.method == "POST" else {}
            choice = form.get("consent")
            if choice not in ("accept", "cancel"):
                try:
                    self._account_for(params["tenant"], account)
                except SignInError as exc:
                    return _signin_error(str(exc))
                return _with_cookie(self._consent_page(request, account), cookie)
            declined = declined or choice == "cancel"
        try:
            admin = self._account_for(params["tenant"], account)
        except SignInError as exc:
            return _signin_error(str(exc))
        answer: list[tuple[str, str]]
        if declined:
            answer = [("error", "access_denied"), ("error_subcode", "cancel"),
                      ("error_description", "AADSTS65004: User declined to consent to access the app.")]
        elif not set(admin.wids) & set(CONSENTING_ROLES):
            return _signin_error("AADSTS90094: Admin consent is required: granting application permissions of Microsoft "
                                 "Graph needs a Global Administrator or Privileged Role Administrator.")
        else:
            self.identity.consent(admin.tenant, *self.identity.next_grant,
                                  propagation_error=self.identity.next_propagation_error)
            answer = [("admin_consent", "True"), ("tenant", admin.tenant)]
            if query.get("scope"):
                answer.append(("scope", query["scope"]))
        if "state" in query:
            answer.append(("state", query["state"]))
        return web.Response(status=302, headers={"Location": _with_query(redirect_uri, answer)})

    # --- the pages a person clicks (--interactive-sign-in) ----------------------------------------

    async def _interactive_sign_in(self, request: web.Request, *, ask_again: bool = False
                                   ) -> tuple[Admin | None, str | None, web.Response | None]:
        """The browser's account (and a new session cookie), or the sign-in page to show instead."""
        form = await request.post() if request.method == "POST" else {}
        if "loginfmt" in form:
            username, password = str(form["loginfmt"]), str(form.get("passwd", ""))
            admin = self.identity.sign_in(username, password)
            if admin is None:
                return None, None, _sign_in_page(request.path_qs, username, WRONG_PASSWORD)
            return admin, self.identity.open_session(admin), None
        account = self.identity.sessions.get(request.cookies.get(SESSION_COOKIE, ""))
        if account is None or ask_again:
            return None, None, _sign_in_page(request.path_qs)
        return account, None, None

    def _consent_page(self, request: web.Request, admin: Admin) -> web.Response:
        reg = self.identity.registration
        roles = self.identity.next_grant[0]
        items = "".join(f'<li><strong>{html.escape(PERMISSION_NAMES.get(r, r))}</strong> '
                        f'<span class="muted">({html.escape(r)}, Microsoft Graph)</span></li>' for r in roles)
        body = (f'<p class="who">{html.escape(self.identity.username_of(admin))}</p>'
                f'<h1>Permissions requested</h1><p class="muted">Review for your organization</p>'
                f'<p class="app"><strong>{html.escape(reg.display_name)}</strong><br>'
                f'<span class="muted">unverified</span></p>'
                f'<p>This application is not published by Microsoft or your organization.</p>'
                f'<p>This app would like to:</p><ul>{items}</ul>'
                f'<p class="muted">If you accept, this app will get access to the specified resources for all users in '
                f'your organization. No one else will be prompted to review these permissions.</p>'
                f'<form method="POST" action="{html.escape(request.path_qs)}" class="buttons">'
                f'<button type="submit" name="consent" value="cancel" class="secondary">Cancel</button>'
                f'<button type="submit" name="consent" value="accept">Accept</button></form>')
        return _page("Permissions requested", body)

    def _account_picker(self, request: web.Request, admin: Admin) -> web.Response:
        who = html.escape(self.identity.username_of(admin))
        body = (f'<h1>Pick an account</h1><form method="POST" action="{html.escape(request.path_qs)}">'
                f'<button type="submit" name="account" value="{who}" class="account">{html.escape(admin.name)}<br>'
                f'<span class="muted">{who}</span></button></form>')
        return _page("Pick an account", body)

    async def _authorize(self, request: web.Request, params: dict[str, str]) -> web.Response:
        """OpenID Connect sign-in; only ``response_type=id_token`` with ``response_mode=form_post`` is modelled."""
        query = request.query
        try:
            redirect_uri = self._check_app(query)
            if "prompt" in query and query["prompt"] not in PROMPTS:
                raise SignInError("AADSTS90023: Unsupported 'prompt' value.")
        except SignInError as exc:
            return _signin_error(str(exc))
        # select_account: the account picker is shown even to a browser with a session, and the account picked is
        # the one signed in (POST /_fake/consent {"tenant", "wids"}); login/consent: asked again, same account; none:
        # the session's account silently (this browser always has one). Recorded for GET /_fake/consent.
        self.identity.last_prompt = query.get("prompt")
        account: Admin | None = None
        cookie: str | None = None
        if self.identity.interactive:  # the browser's own session: sign in, or pick its account
            form = await request.post() if request.method == "POST" else {}
            chosen = "account" in form and request.method == "POST"
            account, cookie, page = await self._interactive_sign_in(
                request, ask_again=query.get("prompt") == "login" and not chosen and "loginfmt" not in form)
            if page is not None:
                return page
            if query.get("prompt") == "select_account" and cookie is None and not chosen:
                return self._account_picker(request, account)
        fields: list[tuple[str, str]] = []
        try:
            if query.get("response_type") != "id_token":
                raise _Refused("unsupported_response_type", "AADSTS700054: response_type 'id_token' is the only one "
                               "this local authority serves.")
            if query.get("response_mode") != "form_post":
                raise _Refused("invalid_request", "AADSTS900148: an id_token is only returned with response_mode "
                               "form_post or fragment; this local authority serves form_post.")
            if "openid" not in (query.get("scope") or "").split():
                raise _Refused("invalid_request", "AADSTS900144: The request must contain 'openid' in scope.")
            if not query.get("nonce"):
                raise _Refused("invalid_request", "AADSTS90014: The required field 'nonce' is missing.")
            if not self.identity.registration.id_tokens_enabled:
                raise _Refused("unsupported_response_type", "AADSTS700054: response_type 'id_token' is not enabled "
                               "for the application.")
            admin = self._account_for(params["tenant"], account)
            if self.identity.deny:
                raise _Refused("access_denied", "AADSTS65004: User declined to consent to access the app.")
            fields.append(("id_token", self.identity.id_token(admin, query["nonce"], query["client_id"])))
        except SignInError as exc:
            return _signin_error(str(exc))
        except _Refused as exc:
            fields += [("error", exc.error), ("error_description", exc.description)]
        if "state" in query:
            fields.append(("state", query["state"]))
        return _with_cookie(_form_post(redirect_uri, fields), cookie)

    async def _discovery(self, request: web.Request, params: dict[str, str]) -> web.Response:
        return web.json_response(self.identity.discovery(params["tenant"]))

    async def _keys(self, request: web.Request, params: dict[str, str]) -> web.Response:
        return web.json_response(self.identity.jwks())


class _Refused(Exception):
    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error, self.description = error, description


def _with_query(url: str, extra: list[tuple[str, str]]) -> str:
    parts = urlsplit(url)
    existing = parse_qsl(parts.query, keep_blank_values=True)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(existing + extra), parts.fragment))


def _form_post(action: str, fields: list[tuple[str, str]]) -> web.Response:
    """Microsoft's form_post answer: a page whose script posts the fields to the redirect URI."""
    inputs = "".join(f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}" />' for k, v in fields)
    page = (f'<html><head><title>Working...</title></head><body><form method="POST" name="hiddenform" '
            f'action="{html.escape(action)}">{inputs}<noscript><p>Script is disabled. Click Submit to continue.</p>'
            f'<input type="submit" value="Submit" /></noscript></form>'
            f'<script language="javascript">document.forms[0].submit();</script></body></html>')
    return web.Response(text=page, content_type="text/html")


STYLE = ("body{font-family:'Segoe UI',system-ui,sans-serif;background:#f2f2f2;margin:0;color:#1b1b1b}"
         "main{background:#fff;max-width:440px;margin:8vh auto;padding:44px;box-shadow:0 2px 6px rgba(0,0,0,.2)}"
         ".brand{font-weight:600;color:#5e5e5e;margin-bottom:16px}h1{font-size:24px;font-weight:600;margin:8px 0 16px}"
         "label{display:block;margin:12px 0 4px}input{width:100%;box-sizing:border-box;padding:6px 0;font-size:15px;"
         "border:0;border-bottom:1px solid #666}input:focus{outline:2px solid #0067b8}.error{color:#e81123}"
         ".muted{color:#5e5e5e;font-size:13px}.buttons{display:flex;gap:8px;justify-content:flex-end;margin-top:24px}"
         "button{background:#0067b8;color:#fff;border:0;padding:8px 24px;font-size:15px;cursor:pointer;min-width:108px}"
         "button.secondary{background:#ccc;color:#000}button.account{background:#fff;color:#1b1b1b;text-align:left;"
         "width:100%;border:1px solid #ccc;padding:12px}button:focus-visible{outline:2px solid #000;outline-offset:2px}")


def _page(title: str, body: str, status: int = 200) -> web.Response:
    """A page of the local sign-in screens (README, "Interactive sign-in")."""
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">'
            f'<style>{STYLE}</style></head><body><main><div class="brand">Microsoft (local identity platform)</div>'
            f'{body}</main></body></html>')
    return web.Response(status=status, text=page, content_type="text/html",
                        headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY"})


def _sign_in_page(action: str, username: str = "", error: str | None = None) -> web.Response:
    alert = f'<p id="passwordError" class="error" role="alert">{html.escape(error)}</p>' if error else ""
    body = (f'<h1>Sign in</h1>{alert}<form method="POST" action="{html.escape(action)}">'
            f'<label for="i0116">Email, phone, or Skype</label>'
            f'<input type="email" id="i0116" name="loginfmt" value="{html.escape(username)}" autocomplete="username" '
            f'required autofocus>'
            f'<label for="i0118">Password</label>'
            f'<input type="password" id="i0118" name="passwd" autocomplete="current-password"'
            f'{" aria-describedby=passwordError" if error else ""}>'
            f'<div class="buttons"><button type="submit" id="idSIButton9">Sign in</button></div></form>')
    return _page("Sign in to your account", body)


def _with_cookie(response: web.Response, session: str | None) -> web.Response:
    """Microsoft's session cookie for a browser that has just signed in (HTTPS only, not readable by scripts)."""
    if session is not None:
        response.set_cookie(SESSION_COOKIE, session, path="/", secure=True, httponly=True, samesite="None")
    return response


def _signin_error(message: str) -> web.Response:
    page = (f"<!DOCTYPE html><html><head><title>Sign in to your account</title></head><body>"
            f"<h1>Sorry, but we're having trouble signing you in.</h1><p>{html.escape(message)}</p></body></html>")
    return web.Response(status=400, text=page, content_type="text/html")


def parse_form_post(page: str) -> tuple[str, dict[str, str]]:
    """The action and fields of a form_post page (what a browser's script would submit)."""
    action = re.search(r'<form method="POST" name="hiddenform" action="([^"]*)"', page)
    if action is None:
        raise ValueError("not a form_post page")
    fields = {html.unescape(k): html.unescape(v)
              for k, v in re.findall(r'<input type="hidden" name="([^"]*)" value="([^"]*)" />', page)}
    return html.unescape(action.group(1)), fields
