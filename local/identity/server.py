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
    PRIVILEGED_ROLE_ADMINISTRATOR,
    WELL_KNOWN_TENANTS,
    IdentityPlatform,
    SignInError,
    TokenError,
)

Handler = Callable[[web.Request, dict[str, str]], Awaitable[web.StreamResponse]]
CONSENTING_ROLES = (GLOBAL_ADMINISTRATOR, PRIVILEGED_ROLE_ADMINISTRATOR)
PROMPTS = ("login", "none", "consent", "select_account")  # one value, no combinations (README: OpenID Connect sign-in)


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
                return template, (handler if method == allowed else None), m.groupdict()
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

    def _account_for(self, path_tenant: str) -> Any:
        """The signed-in account, which must belong to the tenant named in the path (unless organizations/common)."""
        admin = self.identity.signed_in()
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
            admin = self._account_for(params["tenant"])
        except SignInError as exc:
            return _signin_error(str(exc))
        answer: list[tuple[str, str]]
        if self.identity.deny:
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
            admin = self._account_for(params["tenant"])
            if self.identity.deny:
                raise _Refused("access_denied", "AADSTS65004: User declined to consent to access the app.")
            fields.append(("id_token", self.identity.id_token(admin, query["nonce"], query["client_id"])))
        except SignInError as exc:
            return _signin_error(str(exc))
        except _Refused as exc:
            fields += [("error", exc.error), ("error_description", exc.description)]
        if "state" in query:
            fields.append(("state", query["state"]))
        return _form_post(redirect_uri, fields)

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
