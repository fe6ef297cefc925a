"""The fake Graph HTTP server: a Microsoft Graph v1.0 subset, Microsoft's admin-consent page, and /_fake controls.

Runs aiohttp on its own event loop in a daemon thread so synchronous tests and the CLI can both host it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import quote, unquote

from aiohttp import web

from ..identity.platform import (
    ADMIN_TOOL_ROLES,
    PROPAGATION_ERRORS,
    ROLE_TEMPLATES,
    Account,
    Admin,
    AppRegistration,
    IdentityPlatform,
    ManagedIdentity,
    TokenError,
)
from ..identity.server import AuthorityRoutes
from ..identity.tls import LocalCA
from ..server_thread import ServerThread
from .delta import DeltaService, DeltaSettings
from .notifications import NotificationHub
from .odata import (
    ADVANCED_HINT,
    GraphError,
    bad_request,
    decode_skiptoken,
    encode_skiptoken,
    parse_filter,
    parse_orderby,
    parse_search,
    parse_select,
    parse_top,
    unsupported,
)
from .tenant import PROPERTY_LOOKUP, RESOURCE, SORTABLE, TYPE_NAME, Tenant, load_tenant
from .throttling import THROTTLED_MESSAGE, GraphLimits

log = logging.getLogger("local.fake_graph")

JSON_TYPE = "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8"
ERROR_CODES = {
    400: "BadRequest",
    401: "InvalidAuthenticationToken",
    403: "Authorization_RequestDenied",
    404: "Request_ResourceNotFound",
    409: "Conflict",
    429: "TooManyRequests",
    500: "InternalServerError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
}
SYSTEM_OPTIONS = ("$select", "$top", "$filter", "$search", "$count", "$orderby", "$skiptoken", "$skip", "$expand",
                  "$format")
CAST = r"(?:/(?P<cast>(?:microsoft\.)?graph\.(?:user|group|device)))?"

Handler = Callable[[web.Request, "Tenant | None", dict[str, str]], Awaitable[web.StreamResponse]]

DEFAULT_SKIPTOKEN_LIFETIME_S = 120.0  # Graph documents none; Directory_ExpiredPageToken is seen in the field
DEFAULT_SEARCH_LAG_S = 5.0  # advanced queries read an eventually consistent index (aad-advanced-queries)
HIDDEN_ANSWERS = ("empty", "forbidden")  # a hidden-membership listing without Member.Read.Hidden (README)

# Application permissions that allow each kind of Graph call (any one suffices); from each API's permissions table.
USER_READ = frozenset({"User.Read.All", "User.ReadWrite.All", "Directory.Read.All", "Directory.ReadWrite.All"})
MEMBERSHIP_READ = frozenset({"GroupMember.Read.All", "Group.Read.All", "GroupMember.ReadWrite.All",
                             "Group.ReadWrite.All", "Directory.Read.All", "Directory.ReadWrite.All"})
DEVICE_READ = frozenset({"Device.Read.All", "Directory.Read.All", "Directory.ReadWrite.All"})
ORG_READ = frozenset({"Organization.Read.All", "Directory.Read.All", "Directory.ReadWrite.All"})
USER_WRITE = frozenset({"User.ReadWrite.All", "Directory.ReadWrite.All"})
GROUP_WRITE = frozenset({"Group.ReadWrite.All", "Directory.ReadWrite.All"})
DEVICE_WRITE = frozenset({"Device.ReadWrite.All", "Directory.ReadWrite.All"})
MEMBER_WRITE = frozenset({"GroupMember.ReadWrite.All", "Group.ReadWrite.All", "Directory.ReadWrite.All"})


def required_roles(method: str, template: str) -> list[frozenset[str]]:
    """The permission sets a call needs (one role of each set): memberships, and user objects where users are read."""
    if template == "/v1.0/organization":
        return [ORG_READ]
    if template.startswith("/v1.0/subscriptions"):
        return []  # depends on the subscription's resource: checked by the notification hub
    if method != "GET":
        if "/members" in template:
            return [MEMBER_WRITE]
        if template.startswith("/v1.0/devices"):
            return [DEVICE_WRITE]
        return [USER_WRITE] if template.startswith("/v1.0/users") else [GROUP_WRITE]
    needs: list[frozenset[str]] = []
    if template.startswith("/v1.0/groups") or "emberOf" in template:
        needs.append(MEMBERSHIP_READ)
    # Members listed (or counted) untyped or cast to users are user objects: reading them needs a user permission.
    untyped_members = re.search(r"/(members|transitiveMembers)(/\$count)?$", template) is not None
    if template.startswith("/v1.0/users") or untyped_members or ".user" in template:
        needs.append(USER_READ)
    if template.startswith("/v1.0/devices") or ".device" in template:
        needs.append(DEVICE_READ)
    return needs


class _Query:
    """The request's OData system query options, normalized (`top` or `$Top` both mean `$top`)."""

    def __init__(self, request: web.Request):
        self.items: list[tuple[str, str]] = []
        self.options: dict[str, str] = {}
        for key, value in request.query.items():
            name = key.lower()
            if not name.startswith("$") and f"${name}" in SYSTEM_OPTIONS:
                name = f"${name}"
            if name.startswith("$"):
                if name not in SYSTEM_OPTIONS:
                    raise bad_request(f"Query option '{key}' is not supported.", code="BadRequest")
                if name in self.options:
                    raise bad_request(f"Query option '{name}' was specified more than once, it must be specified at most once.",
                                      code="BadRequest")
                self.options[name] = value
            self.items.append((key, value))
        if "$skip" in self.options:
            raise bad_request("'$skip' is not supported by the service.")
        if "$expand" in self.options:
            raise unsupported("$expand is not supported by this fake Graph.")
        self.eventual = request.headers.get("ConsistencyLevel", "").strip().lower() == "eventual"
        count = self.options.get("$count")
        if count is not None and count.lower() not in ("true", "false"):
            raise bad_request(f"Invalid value '{count}' for $count, expected true or false.", code="BadRequest")
        # Without ConsistencyLevel: eventual, Graph silently ignores $count=true on directory objects.
        self.count = count is not None and count.lower() == "true" and self.eventual
        self.advanced = self.count

    def get(self, name: str) -> str | None:
        return self.options.get(name)


class FakeGraph(ServerThread):
    """A fake Microsoft Graph for one or more tenants, served over real HTTP from a background thread."""

    def __init__(self, tenants: list[dict | str | Path] | tuple = (), host: str = "127.0.0.1", port: int = 0,
                 latency_ms: float = 0, registration: AppRegistration | None = None,
                 managed_identity: ManagedIdentity | None = None, tls: LocalCA | None = None, authority_port: int = 0,
                 azure_limits: bool = False):
        self.tenants: dict[str, Tenant] = {}
        self.notifications = NotificationHub(self)
        self.delta_settings = DeltaSettings()
        self.delta = DeltaService(self.delta_settings)
        for source in tenants:
            self._install(Tenant(load_tenant(source)))
        self.host = host
        self._requested_port = port
        self.port: int | None = None
        self.latency_ms = float(latency_ms)
        self.skiptoken_lifetime_s = DEFAULT_SKIPTOKEN_LIFETIME_S
        self.short_pages = True
        self.hidden_answer = "empty"
        self.set_search_lag(DEFAULT_SEARCH_LAG_S)
        self._faults: list[dict[str, Any]] = []
        self.limits = GraphLimits(enabled=azure_limits)  # Graph's resource units per tenant (throttling.py)
        self._requests = 0
        self._by_route: Counter[str] = Counter()
        self.identity = IdentityPlatform(registration, managed_identity, tenant_lookup=self._lookup_tenant)
        self.identity.default_tenant = lambda: next(iter(self.tenants), None)
        self.identity.accounts_lookup = self._accounts
        self._authority_routes = AuthorityRoutes(self.identity)
        self.tls = tls
        self._requested_authority_port = authority_port
        self.authority_port: int | None = None
        super().__init__()
        self._runner: web.AppRunner | None = None
        self._authority_runner: web.AppRunner | None = None
        self._routes = self._build_routes()

    # --- lifecycle -----------------------------------------------------------------------------

    @property
    def origin(self) -> str:
        """Scheme, host and port, e.g. http://127.0.0.1:54321."""
        if self.port is None:
            raise RuntimeError("FakeGraph is not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The Graph base URL the SDK's request adapter should use."""
        return f"{self.origin}/v1.0"

    @property
    def authority(self) -> str:
        """The local Microsoft identity platform (AUTHORITY_HOST), e.g. https://127.0.0.1:54322."""
        if self.authority_port is None:
            raise RuntimeError("FakeGraph is not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.authority_port}"

    thread_name = "fake-graph"

    async def _serve(self) -> None:
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self._requested_port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        if self.tls is None:
            self.tls = await asyncio.get_running_loop().run_in_executor(None, LocalCA.create)
        authority = web.Application(client_max_size=1024**2)
        authority.router.add_route("*", "/{tail:.*}", self._handle_authority)
        self._authority_runner = web.AppRunner(authority, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await self._authority_runner.setup()
        await web.TCPSite(self._authority_runner, self.host, self._requested_authority_port,
                          ssl_context=self.tls.server_context()).start()
        self.authority_port = self._authority_runner.addresses[0][1]
        self.identity.origin = self.authority
        self.notifications.start()

    async def _close(self) -> None:
        await self.notifications.close()
        for runner in (self._authority_runner, self._runner):
            if runner is not None:
                await runner.cleanup()
        self._runner = self._authority_runner = None

    # --- Python control API (same effects as the /_fake endpoints) ----------------------------

    def stats(self) -> dict[str, Any]:
        """Request counts: {"requests": total, "byRoute": {"GET /v1.0/groups/{id}/...": n}}."""
        return self._call(self._stats)

    def reset_stats(self) -> None:
        """Zero the request counters."""
        self._call(self._reset_stats)

    def add_tenant(self, tenant: dict | str | Path) -> str:
        """Load (or replace) a tenant; returns its tenantId."""
        built = Tenant(load_tenant(tenant))
        self._call(self._install, built)
        return built.tenant_id

    def dump_tenant(self, tenant_id: str) -> dict:
        """The current state of a tenant in the tenant file format."""
        return self._call(lambda: self._tenant(tenant_id).to_dict())

    def add_fault(self, path: str = "", status: int | None = None, retry_after: float | None = None, times: int = 1,
                  delay_ms: float | None = None, method: str | None = None) -> None:
        """Make the next `times` requests whose path contains `path` fail with `status` and/or be slow."""
        spec = {"path": path, "status": status, "retryAfter": retry_after, "times": times, "delayMs": delay_ms,
                "method": method}
        self._call(self._add_faults, [{k: v for k, v in spec.items() if v is not None}])

    def clear_faults(self) -> None:
        """Drop all pending faults."""
        self._call(self._faults.clear)

    def set_consent(self, **changes: Any) -> dict:
        """Same as POST /_fake/consent: deny, tenant, wids, roles, propagationSeconds, propagationError, revoked,
        revokedTenant."""
        return self._call(self._set_consent, changes)

    def set_authority(self, **changes: Any) -> dict:
        """Same as POST /_fake/authority: tokenLifetimeSeconds, clientSecretExpired."""
        return self._call(self._set_authority, changes)

    def token_for(self, tenant_id: str, roles: tuple[str, ...] | list[str] | None = None,
                  lifetime_s: float | None = None) -> str:
        """Same as POST /_fake/token: a Graph token of a tenant admin's own tool (default roles: read and write all)."""
        body = {"tenant": tenant_id, "roles": None if roles is None else list(roles), "lifetimeSeconds": lifetime_s}
        return self._call(self._admin_token, body)["access_token"]

    def set_latency(self, ms: float) -> None:
        """Per-request latency for every Graph request."""
        self._call(setattr, self, "latency_ms", float(ms))

    def set_notifications(self, **changes: Any) -> dict:
        """Same as POST /_fake/notifications: allowHttpLoopback, retrySeconds, duplicate, delayMs, paused, reorder,
        timeoutSeconds, validationTimeoutSeconds, batchMs."""
        return self._call(self.notifications.configure, changes)

    def notifications_state(self) -> dict:
        """Same as GET /_fake/notifications: {"subscriptions", "delivered", "failed", "pending"}."""
        return self._call(self.notifications.state)

    def notifications_log(self) -> dict:
        """Same as GET /_fake/notifications/log: {"deliveries", "dropped", "lost", "settings"}."""
        return self._call(self.notifications.log_state)

    def send_lifecycle(self, subscription_id: str, event: str) -> dict:
        """Same as POST /_fake/notifications/lifecycle."""
        return self._call(self.notifications.lifecycle, subscription_id, event)

    def set_hidden(self, answer: str) -> dict:
        """Same as POST /_fake/hidden: how a hidden-membership group's member list answers without Member.Read.Hidden."""
        return self._call(self._set_hidden, {"answer": answer})

    def set_delta(self, **changes: Any) -> dict:
        """Same as POST /_fake/delta: tokenLifetimeSeconds, pageSize, replay, expiredStatus, expireAll, tenant."""
        return self._call(self._set_delta, changes)

    # --- state helpers (loop thread) -----------------------------------------------------------

    def _install(self, tenant: Tenant) -> None:
        self.tenants[tenant.tenant_id] = tenant
        tenant.changes.listeners.append(lambda change, tid=tenant.tenant_id: self.notifications.on_change(tid, change))

    def _lookup_tenant(self, name: str) -> tuple[str, str] | None:
        """A tenant named by id or verified domain, as (tenant id, domain)."""
        lowered = name.lower()
        for tenant in self.tenants.values():
            if lowered in (tenant.tenant_id.lower(), tenant.domain.lower()):
                return tenant.tenant_id, tenant.domain
        return None

    def _accounts(self, domain: str) -> list[Account]:
        """Who may sign in with a name @domain: the tenant's listed admins, or admin@domain / admin (a Global Admin)."""
        found = self._lookup_tenant(domain)
        if found is None:
            return []
        tenant = self.tenants[found[0]]
        if not tenant.admins:
            return [Account(f"admin@{tenant.domain}", "admin", Admin(tenant.tenant_id))]
        return [Account(a["userPrincipalName"], a["password"],
                        Admin(tenant.tenant_id, tuple(ROLE_TEMPLATES.get(r, r) for r in a.get("roles", [])),
                              username=a["userPrincipalName"], name=a.get("displayName") or a["userPrincipalName"]))
                for a in tenant.admins]

    def _tenant(self, tenant_id: str) -> Tenant:
        tenant = self.tenants.get(tenant_id)
        if tenant is None:
            raise GraphError(404, "Request_ResourceNotFound", f"Tenant '{tenant_id}' is not loaded.")
        return tenant

    def _stats(self) -> dict[str, Any]:
        return {"requests": self._requests, "byRoute": dict(self._by_route)}

    def _reset_stats(self) -> None:
        self._requests = 0
        self._by_route.clear()

    def _consent_state(self) -> dict[str, Any]:
        identity = self.identity
        admin = identity.admin
        return {"deny": identity.deny, "tenant": admin.tenant if admin else None,
                "wids": list(admin.wids) if admin else None, "revoked": sorted(identity.revoked),
                "roles": list(identity.next_grant[0]), "propagationSeconds": identity.next_grant[1],
                "propagationError": identity.next_propagation_error,
                "lastSignInPrompt": identity.last_prompt,
                "grants": [{"tenant": tid, "roles": list(g.roles), "at": g.at, "propagationSeconds": g.propagation_s,
                            "propagationError": g.propagation_error} for tid, g in identity.grants.items()]}

    def _set_consent(self, body: dict[str, Any]) -> dict[str, Any]:
        unknown = set(body) - {"deny", "tenant", "wids", "roles", "propagationSeconds", "propagationError", "revoked",
                               "revokedTenant"}
        if unknown:
            raise bad_request(f"Unknown consent settings: {', '.join(sorted(unknown))}.", code="BadRequest")
        identity = self.identity
        if "deny" in body:
            identity.deny = bool(body["deny"])
        if "tenant" in body or "wids" in body:
            tenant = body.get("tenant") or (identity.admin.tenant if identity.admin else None)
            wids = body.get("wids")
            if wids is not None and (not isinstance(wids, list) or not all(isinstance(w, str) for w in wids)):
                raise bad_request("'wids' must be a list of directory role template ids.", code="BadRequest")
            identity.admin = Admin(tenant, tuple(wids) if wids is not None else Admin(tenant).wids) if tenant else None
        if "roles" in body or "propagationSeconds" in body or "propagationError" in body:
            roles = body.get("roles", list(identity.next_grant[0]))
            seconds = body.get("propagationSeconds", 0)
            error = body.get("propagationError")
            if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
                raise bad_request("'roles' must be a list of application role names.", code="BadRequest")
            if not isinstance(seconds, (int, float)) or seconds < 0:
                raise bad_request("'propagationSeconds' must be a non-negative number.", code="BadRequest")
            if error is not None and (isinstance(error, bool) or error not in PROPAGATION_ERRORS or not seconds):
                raise bad_request("'propagationError' must be 65001 or 700016, with 'propagationSeconds' > 0 (the "
                                  "window in which token requests answer it).", code="BadRequest")
            identity.next_grant = (tuple(roles), float(seconds))
            identity.next_propagation_error = error
        if "revoked" in body:
            target = body.get("revokedTenant") or body.get("tenant")
            if body["revoked"]:
                target = target or next(iter(self.tenants), None)
                if target is None:
                    raise bad_request("No tenant to revoke consent for.", code="BadRequest")
                identity.revoke(target)
            elif target:
                identity.revoked.discard(target)
            else:
                identity.revoked.clear()
        return self._consent_state()

    def _authority_state(self) -> dict[str, Any]:
        secrets_ = self.identity.registration.secrets
        return {"tokenLifetimeSeconds": self.identity.token_lifetime_s,
                "clientSecretExpired": bool(secrets_) and all(s.expires_at <= time.time() for s in secrets_)}

    def _set_authority(self, body: dict[str, Any]) -> dict[str, Any]:
        unknown = set(body) - {"tokenLifetimeSeconds", "clientSecretExpired"}
        if unknown:
            raise bad_request(f"Unknown authority settings: {', '.join(sorted(unknown))}.", code="BadRequest")
        if "tokenLifetimeSeconds" in body:
            seconds = body["tokenLifetimeSeconds"]
            if not isinstance(seconds, int) or isinstance(seconds, bool) or not 1 <= seconds <= 86400:
                raise bad_request("'tokenLifetimeSeconds' must be an integer from 1 to 86400.", code="BadRequest")
            self.identity.token_lifetime_s = seconds
        if "clientSecretExpired" in body:
            for secret in self.identity.registration.secrets:
                secret.expires_at = time.time() - 1 if body["clientSecretExpired"] else float("inf")
        return self._authority_state()

    def _paging_state(self) -> dict[str, Any]:
        return {"skiptokenLifetimeSeconds": self.skiptoken_lifetime_s, "shortPages": self.short_pages}

    def _set_paging(self, body: dict[str, Any]) -> dict[str, Any]:
        unknown = set(body) - {"skiptokenLifetimeSeconds", "shortPages"}
        if unknown:
            raise bad_request(f"Unknown paging settings: {', '.join(sorted(unknown))}.", code="BadRequest")
        if "skiptokenLifetimeSeconds" in body:
            seconds = body["skiptokenLifetimeSeconds"]
            if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds < 0:
                raise bad_request("'skiptokenLifetimeSeconds' must be a non-negative number.", code="BadRequest")
            self.skiptoken_lifetime_s = float(seconds)
        if "shortPages" in body:
            self.short_pages = bool(body["shortPages"])
        return self._paging_state()

    def _set_hidden(self, body: dict[str, Any]) -> dict[str, Any]:
        if set(body) != {"answer"} or body["answer"] not in HIDDEN_ANSWERS:
            raise bad_request("The body is {\"answer\": \"empty\" | \"forbidden\"}.", code="BadRequest")
        self.hidden_answer = body["answer"]
        return {"answer": self.hidden_answer}

    @staticmethod
    def set_search_lag(seconds: float) -> None:
        """How long $search's index lags a write (same as POST /_fake/search {"lagSeconds"})."""
        Tenant.search_lag_s = float(seconds)

    def _set_delta(self, body: dict[str, Any]) -> dict[str, Any]:
        unknown = set(body) - {"tokenLifetimeSeconds", "pageSize", "replay", "expiredStatus", "expireAll", "tenant"}
        if unknown:
            raise bad_request(f"Unknown delta settings: {', '.join(sorted(unknown))}.", code="BadRequest")
        settings = self.delta_settings
        if "tokenLifetimeSeconds" in body:
            seconds = body["tokenLifetimeSeconds"]
            if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds < 0:
                raise bad_request("'tokenLifetimeSeconds' must be a non-negative number.", code="BadRequest")
            settings.token_lifetime_s = float(seconds)
        if "pageSize" in body:
            size = body["pageSize"]
            if not isinstance(size, int) or isinstance(size, bool) or size < 1:
                raise bad_request("'pageSize' must be a positive integer.", code="BadRequest")
            settings.page_size = size
        if "replay" in body:
            settings.replay = bool(body["replay"])
        if "expiredStatus" in body:
            status = body["expiredStatus"]
            if status not in (400, 404, 409, 410):
                raise bad_request("'expiredStatus' is one of 400, 404, 409, 410.", code="BadRequest")
            settings.expired_status = status
        if body.get("expireAll"):
            tenants = [self._tenant(body["tenant"])] if body.get("tenant") else list(self.tenants.values())
            for tenant in tenants:
                tenant.changes.generation += 1
        return settings.state()

    def set_paging(self, **changes: Any) -> dict:
        """Same as POST /_fake/paging: skiptokenLifetimeSeconds, shortPages."""
        return self._call(self._set_paging, changes)

    def _admin_token(self, body: dict[str, Any]) -> dict[str, Any]:
        tenant = body.get("tenant")
        if not isinstance(tenant, str) or tenant not in self.tenants:
            raise bad_request("'tenant' must be the id of a loaded tenant.", code="BadRequest")
        roles = body.get("roles")
        roles = tuple(ADMIN_TOOL_ROLES if roles is None else roles)
        token = self.identity.app_token(tenant, roles, body.get("lifetimeSeconds"), app_id="fake-admin-tool")
        return {"access_token": token, "token_type": "Bearer"}

    def _add_faults(self, specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        parsed = []
        for spec in specs:
            if not isinstance(spec, dict):
                raise bad_request("A fault is a JSON object.", code="BadRequest")
            unknown = set(spec) - {"path", "status", "retryAfter", "times", "delayMs", "method", "code", "message"}
            if unknown:
                raise bad_request(f"Unknown fault fields: {', '.join(sorted(unknown))}.", code="BadRequest")
            status, delay = spec.get("status"), spec.get("delayMs")
            if status is None and not delay:
                raise bad_request("A fault needs a status or a delayMs.", code="BadRequest")
            if status is not None and (not isinstance(status, int) or not 400 <= status <= 599):
                raise bad_request("Fault status must be an HTTP error status (400-599).", code="BadRequest")
            times = spec.get("times", 1)
            if not isinstance(times, int) or times < 1:
                raise bad_request("Fault times must be a positive integer.", code="BadRequest")
            parsed.append({"path": str(spec.get("path", "")), "status": status, "retryAfter": spec.get("retryAfter"),
                           "times": times, "delayMs": delay, "method": (spec.get("method") or "").upper() or None,
                           "code": spec.get("code"), "message": spec.get("message")})
        self._faults.extend(parsed)
        return self._faults

    def _take_fault(self, method: str, target: str) -> dict[str, Any] | None:
        for fault in self._faults:
            if fault["path"] in target and fault["method"] in (None, method):
                fault["times"] -= 1
                if fault["times"] <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    # --- HTTP entry point ----------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path == "/_fake" or path.startswith("/_fake/"):
            try:
                return await self._control(request)
            except GraphError as exc:
                return self._error(request, exc)
            except Exception:
                log.exception("fake graph control failed on %s %s", request.method, request.raw_path)
                return self._error(request, GraphError(500, "generalException", "An internal error occurred."))
        template, handler, params, route_error = self._resolve(request.method, path)
        self._requests += 1
        self._by_route[f"{request.method} {template}"] += 1
        try:
            if self.latency_ms > 0:
                await asyncio.sleep(self.latency_ms / 1000)
            fault = self._take_fault(request.method, unquote(request.raw_path))
            if fault is not None:
                if fault["delayMs"]:
                    await asyncio.sleep(fault["delayMs"] / 1000)
                if fault["status"] is not None:
                    raise self._fault_error(fault)
            if route_error is not None:
                raise route_error
            assert handler is not None
            tenant, roles = self._authenticate(request)
            claims = request["claims"]
            options = {"$" + k.lower().lstrip("$"): v for k, v in request.query.items()}
            cost, throttled = self.limits.check(request.method, template, options,
                                                str(claims.get("appid") or claims.get("azp") or "-"),
                                                tenant.tenant_id, len(tenant.users))
            if throttled is not None:
                raise GraphError(429, "TooManyRequests", THROTTLED_MESSAGE, throttled)
            limited: set[str] = set()
            member_listing = request.method == "GET" and ("/members" in template or "/transitiveMembers" in template)
            for needed in required_roles(request.method, template):
                if not roles & needed:
                    if member_listing and needed in (USER_READ, DEVICE_READ) and roles & MEMBERSHIP_READ:
                        # "Limited information returned for inaccessible member objects": id and type, the rest null
                        limited.add("user" if needed is USER_READ else "device")
                        continue
                    raise GraphError(403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.")
            request["roles"], request["limited"] = roles, frozenset(limited)
            response = await handler(request, tenant, params)
            if cost:
                response.headers["x-ms-resource-unit"] = str(cost)
            return response
        except GraphError as exc:
            return self._error(request, exc)
        except Exception:
            log.exception("fake graph failed on %s %s", request.method, request.raw_path)
            return self._error(request, GraphError(500, "generalException", "An internal error occurred in the fake."))

    @staticmethod
    def _fault_error(fault: dict[str, Any]) -> GraphError:
        status = fault["status"]
        headers = {}
        if fault["retryAfter"] is not None:
            retry_after = fault["retryAfter"]
            headers["Retry-After"] = str(int(retry_after)) if float(retry_after).is_integer() else str(retry_after)
        code = fault["code"] or ERROR_CODES.get(status, "UnknownError")
        message = fault["message"] or f"Injected fault: HTTP {status}."
        return GraphError(status, code, message, headers)

    def _authenticate(self, request: web.Request) -> tuple[Tenant, set[str]]:
        """The tenant and application roles of a valid bearer token; 401 InvalidAuthenticationToken otherwise."""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        challenge = {"WWW-Authenticate": 'Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/'
                                         'oauth2/authorize", client_id="00000003-0000-0000-c000-000000000000"'}
        if not header or scheme.lower() != "bearer" or not token:
            raise GraphError(401, "InvalidAuthenticationToken", "Access token is empty.", challenge)
        try:
            claims = self.identity.verify_access_token(token)
        except ValueError as exc:
            raise GraphError(401, "InvalidAuthenticationToken", str(exc), challenge) from None
        tenant = self.tenants.get(claims["tid"])
        if tenant is None:
            raise GraphError(401, "InvalidAuthenticationToken", "Access token validation failure. Invalid audience "
                             "or unknown tenant.", challenge)
        request["claims"] = claims
        roles = claims.get("roles")
        return tenant, set(roles) if isinstance(roles, list) else set()

    def _error(self, request: web.Request, exc: GraphError) -> web.Response:
        body = {"error": {"code": exc.code, "message": exc.message, "innerError": {
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
            "request-id": str(uuid.uuid4()),
            "client-request-id": request.headers.get("client-request-id") or str(uuid.uuid4()),
        }}}
        return self._json(request, body, exc.status, exc.headers)

    @staticmethod
    def _json(request: web.Request, body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
        text = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)
        response = web.Response(body=text.encode(), status=status, headers=headers, content_type=None)
        response.headers["Content-Type"] = JSON_TYPE
        response.headers["request-id"] = str(uuid.uuid4())
        if "client-request-id" in request.headers:
            response.headers["client-request-id"] = request.headers["client-request-id"]
        return response

    # --- routing -------------------------------------------------------------------------------

    def _build_routes(self) -> list[tuple[re.Pattern[str], dict[str, Handler], Callable[[re.Match[str]], str]]]:
        def fixed(template: str) -> Callable[[re.Match[str]], str]:
            return lambda _m: template

        def members_template(m: re.Match[str]) -> str:
            rel = "transitiveMembers" if m["rel"].lower() == "transitivemembers" else "members"
            cast = f"/microsoft.graph.{m['cast'].rsplit('.', 1)[1].lower()}" if m["cast"] else ""
            return f"/v1.0/groups/{{id}}/{rel}{cast}{'/$count' if m['count'] else ''}"

        routes = [
            (r"/v1\.0/organization", {"GET": self._organization}, fixed("/v1.0/organization")),
            (r"/v1\.0/(?P<coll>groups|users)/(?:microsoft\.graph\.)?delta(?:\(\))?", {"GET": self._delta},
             lambda m: f"/v1.0/{m['coll'].lower()}/delta"),
            (r"/v1\.0/subscriptions", {"GET": self._list_subscriptions, "POST": self._create_subscription},
             fixed("/v1.0/subscriptions")),
            (r"/v1\.0/subscriptions/(?P<id>[^/]+)", {"GET": self._get_subscription, "PATCH": self._update_subscription,
                                                     "DELETE": self._delete_subscription},
             fixed("/v1.0/subscriptions/{id}")),
            (r"/v1\.0/subscriptions/(?P<id>[^/]+)/reauthorize", {"POST": self._reauthorize_subscription},
             fixed("/v1.0/subscriptions/{id}/reauthorize")),
            (r"/v1\.0/(?P<coll>groups|users|devices)/\$count", {"GET": self._count_collection},
             lambda m: f"/v1.0/{m['coll'].lower()}/$count"),
            (r"/v1\.0/(?P<coll>groups|users|devices)",
             {"GET": self._list_collection, "POST": self._create}, lambda m: f"/v1.0/{m['coll'].lower()}"),
            (r"/v1\.0/(?P<coll>groups|users|devices)/(?P<id>[^/]+)",
             {"GET": self._get_object, "PATCH": self._update, "DELETE": self._delete},
             lambda m: f"/v1.0/{m['coll'].lower()}/{{id}}"),
            (r"/v1\.0/groups/(?P<id>[^/]+)/members/\$ref", {"POST": self._add_member},
             fixed("/v1.0/groups/{id}/members/$ref")),
            (r"/v1\.0/groups/(?P<id>[^/]+)/members/(?P<member>[^/]+)/\$ref", {"DELETE": self._remove_member},
             fixed("/v1.0/groups/{id}/members/{memberId}/$ref")),
            (r"/v1\.0/groups/(?P<id>[^/]+)/(?P<rel>members|transitiveMembers)" + CAST + r"(?P<count>/\$count)?",
             {"GET": self._list_members}, members_template),
            (r"/v1\.0/(?P<coll>users|groups)/(?P<id>[^/]+)/(?P<rel>memberOf|transitiveMemberOf)"
             r"(?:/(?P<cast>(?:microsoft\.)?graph\.group))?",
             {"GET": self._list_member_of},
             lambda m: (f"/v1.0/{m['coll'].lower()}/{{id}}/"
                        f"{'transitiveMemberOf' if m['rel'].lower().startswith('t') else 'memberOf'}"
                        f"{'/microsoft.graph.group' if m['cast'] else ''}")),
        ]
        return [(re.compile(pattern, re.IGNORECASE), methods, template) for pattern, methods, template in routes]

    def _resolve(self, method: str, path: str) -> tuple[str, Handler | None, dict[str, str], GraphError | None]:
        trimmed = path.rstrip("/") or "/"
        for pattern, methods, template in self._routes:
            m = pattern.fullmatch(trimmed)
            if m is None:
                continue
            params = {k: v for k, v in m.groupdict().items() if v is not None}
            if method not in methods:
                return template(m), None, params, GraphError(
                    405, "Request_BadRequest", f"The HTTP method '{method}' is not allowed for this resource.")
            return template(m), methods[method], params, None
        if trimmed.lower().startswith("/v1.0/") and "//" not in trimmed:
            segment = trimmed.split("/")[2]
            error = GraphError(400, "BadRequest", f"Resource not found for the segment '{segment}'.")
        else:
            error = GraphError(404, "NotFound", f"No such endpoint: {method} {path}")
        return "(unmatched)", None, {}, error

    # --- Graph handlers ------------------------------------------------------------------------

    def _context(self, request: web.Request, fragment: str, select: tuple[str, ...] | None = None,
                 entity: bool = False) -> str:
        selected = f"({','.join(select)})" if select else ""
        return f"{request.scheme}://{request.host}/v1.0/$metadata#{fragment}{selected}{'/$entity' if entity else ''}"

    def _page(self, request: web.Request, tenant: Tenant, query: _Query, source: tuple, kind: str | None,
              context: str, limited: frozenset[str] = frozenset()) -> web.Response:
        """One page of a directory collection, with @odata.nextLink/$skiptoken paging and $count."""
        resource = RESOURCE[kind]
        type_name = TYPE_NAME.get(kind, "microsoft.graph.directoryObject")
        select = parse_select(query.get("$select"), tenant.lookup(kind), type_name)
        top = parse_top(query.get("$top"))
        is_relationship = source[0] == "members"
        search_text, filter_text = query.get("$search"), query.get("$filter")
        orderby = parse_orderby(query.get("$orderby"), SORTABLE[kind])

        search = None
        if search_text is not None:
            if not query.eventual:
                raise unsupported("Request with $search query parameter only works through MSGraph with a special "
                                  "request header: 'ConsistencyLevel: eventual'")
            search = parse_search(search_text, PROPERTY_LOOKUP[kind], resource)
        predicate = None
        by_id = False
        if filter_text is not None:
            predicate, info = parse_filter(filter_text, PROPERTY_LOOKUP[kind], resource)
            by_id = info.by_id
            if info.advanced_operator and not query.advanced:
                raise unsupported(f"Operator '{info.advanced_operator}' is not supported because the required "
                                  f"parameters might be missing. {ADVANCED_HINT}")
            if is_relationship and not query.advanced:
                raise unsupported(f"Filtering a relationship requires advanced query parameters. {ADVANCED_HINT}")
        if orderby is not None and (filter_text is not None or is_relationship) and not query.advanced:
            raise unsupported("Sorting not supported for current query.")

        result = tenant.query(source, filter_text, predicate, search_text, search, orderby)
        start = 0
        token = query.get("$skiptoken")
        if token is not None:
            offset, last_id, issued_at = decode_skiptoken(token)
            if time.time() - issued_at > self.skiptoken_lifetime_s:
                raise GraphError(400, "Directory_ExpiredPageToken",
                                 "The specified page token value has expired and can no longer be included in your request.")
            start = result.position_after(offset, last_id)
        ids = result.ids[start:start + self._served(top, start, len(result.ids), by_id)]
        typed = kind is not None
        parts = ['{"@odata.context":', json.dumps(self._context(request, context, select))]
        if query.count and token is None:
            parts.append(f',"@odata.count":{len(result.ids)}')
        if start + len(ids) < len(result.ids):
            parts.append(',"@odata.nextLink":')
            skiptoken = encode_skiptoken(start + len(ids), ids[-1], time.time())
            parts.append(json.dumps(self._next_link(request, query, skiptoken)))
        parts.append(',"value":[')
        parts.append(",".join(self._limited_json(tenant, oid, select, typed) if tenant.kind[oid] in limited
                              else tenant.item_json(oid, select, typed) for oid in ids))
        parts.append("]}")
        return self._json(request, "".join(parts))

    def _served(self, top: int, start: int, total: int, by_id: bool) -> int:
        """How many items a page holds. Graph may serve fewer than `$top` on any collection and still link a next page
        (https://learn.microsoft.com/graph/paging); with shortPages (the default) every page that is not the last,
        and every page of a look-up by id even when all would fit, holds 1 to 7 fewer (at least one)."""
        left = max(0, min(top, total - start))
        if not self.short_pages or left < 2 or not (by_id or start + top < total):
            return left
        return max(1, left - 1 - start % 7)

    @staticmethod
    def _next_link(request: web.Request, query: _Query, token: str) -> str:
        items = [(k, v) for k, v in query.items if k.lower().lstrip("$") != "skiptoken"]
        items.append(("$skiptoken", token))
        qs = "&".join(f"{quote(k, safe='$')}={quote(v, safe=',()$')}" for k, v in items)
        return f"{request.scheme}://{request.host}{request.path}?{qs}"

    async def _list_collection(self, request: web.Request, tenant: Tenant, params: dict[str, str]) -> web.Response:
        coll = params["coll"].lower()
        kind = coll[:-1]
        return self._page(request, tenant, _Query(request), (coll,), kind, coll)

    async def _count_collection(self, request: web.Request, tenant: Tenant, params: dict[str, str]) -> web.Response:
        coll = params["coll"].lower()
        return self._count(request, tenant, (coll,), coll[:-1])

    def _count(self, request: web.Request, tenant: Tenant, source: tuple, kind: str | None) -> web.Response:
        query = _Query(request)
        if not query.eventual:
            raise bad_request("$count is not currently supported.")
        search = predicate = None
        if query.get("$search") is not None:
            search = parse_search(query.get("$search"), PROPERTY_LOOKUP[kind], RESOURCE[kind])
        if query.get("$filter") is not None:
            predicate, _ = parse_filter(query.get("$filter"), PROPERTY_LOOKUP[kind], RESOURCE[kind])
        result = tenant.query(source, query.get("$filter"), predicate, query.get("$search"), search)
        response = web.Response(text=str(len(result.ids)), content_type="text/plain")
        response.headers["request-id"] = str(uuid.uuid4())
        return response

    async def _get_object(self, request: web.Request, tenant: Tenant, params: dict[str, str]) -> web.Response:
        coll = params["coll"].lower()
        kind = coll[:-1]
        obj = tenant.get(kind, params["id"])
        query = _Query(request)
        select = parse_select(query.get("$select"), tenant.lookup(kind), TYPE_NAME[kind])
        body = {"@odata.context": self._context(request, coll, select, entity=True)}
        body.update(tenant.represent(obj["id"], select, typed=True))
        del body["@odata.type"]
        return self._json(request, body)

    @staticmethod
    def _cast_allowed(query: _Query, cast: bool) -> None:
        """A cast on transitiveMembers, memberOf or transitiveMemberOf filters on the OData type, which the docs allow
        only with the advanced query parameters: "This header and $count are required when using the $search,
        $filter, $orderby, or OData cast query parameters" (group-list-transitivemembers, user-list-memberof,
        user-list-transitivememberof, group-list-transitivememberof; aad-advanced-queries lists "Use of OData cast
        with transitive members list"). Graph's wording: its answer to a filter on these relationships without them."""
        if cast and not query.advanced:
            raise unsupported("The specified filter to the reference property query is currently not supported.")

    async def _list_members(self, request: web.Request, tenant: Tenant, params: dict[str, str]) -> web.Response:
        group = tenant.get("group", params["id"])
        transitive = params["rel"].lower() == "transitivemembers"
        kind = params["cast"].rsplit(".", 1)[1].lower() if "cast" in params else None
        source = ("members", group["id"], transitive, kind)
        # A group whose membership is hidden lists its members only to Member.Read.Hidden. Without it the docs
        # leave the answer open; the fake answers what is most dangerous to a sync, an empty collection, unless
        # POST /_fake/hidden asks for the other answer the docs allow ("required"): 403.
        hidden = str(group.get("visibility") or "").lower() == "hiddenmembership"
        if hidden and "Member.Read.Hidden" not in request.get("roles", set()):
            if self.hidden_answer == "forbidden":
                raise GraphError(403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.")
            source = ("members", None, transitive, kind)
        if "count" in params:
            return self._count(request, tenant, source, kind)
        query = _Query(request)
        self._cast_allowed(query, transitive and kind is not None)  # a cast of direct members needs nothing
        context = f"{kind}s" if kind else "directoryObjects"
        return self._page(request, tenant, query, source, kind, context, request.get("limited", frozenset()))

    async def _list_member_of(self, request: web.Request, tenant: Tenant, params: dict[str, str]) -> web.Response:
        """The groups a user or group is a member of (transitively: through nested groups too). Groups whose
        membership is hidden are left out without Member.Read.Hidden (the case most dangerous to a sync)."""
        kind = "user" if request.path.lower().startswith("/v1.0/users/") else "group"
        obj = tenant.get(kind, params["id"])
        transitive = params["rel"].lower() == "transitivememberof"
        see_hidden = "Member.Read.Hidden" in request.get("roles", set())
        source = ("memberOf", obj["id"], transitive, see_hidden)
        query = _Query(request)
        self._cast_allowed(query, "cast" in params)
        return self._page(request, tenant, query, source, "group", "groups" if "cast" in params else "directoryObjects")

    @staticmethod
    def _limited_json(tenant: Tenant, oid: str, select: tuple[str, ...] | None, typed: bool) -> str:
        """A member the token may not read: only @odata.type and id; every other property null."""
        full = tenant.represent(oid, select, typed)
        return json.dumps({k: (v if k in ("@odata.type", "id") else None) for k, v in full.items()})

    async def _organization(self, request: web.Request, tenant: Tenant, params: dict[str, str]) -> web.Response:
        org = {
            "id": tenant.tenant_id,
            "displayName": tenant.display_name,
            "tenantType": "AAD",
            "verifiedDomains": [{"name": tenant.domain, "isDefault": True, "isInitial": True, "type": "Managed",
                                 "capabilities": "Email, OfficeCommunicationsOnline"}],
        }
        return self._json(request, {"@odata.context": self._context(request, "organization"), "value": [org]})

    @staticmethod
    async def _read_json(request: web.Request) -> Any:
        try:
            return json.loads(await request.read())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise bad_request("Unable to read JSON request payload. Please ensure Content-Type header is set and "
                              "payload is of valid JSON format.", code="BadRequest")

    async def _body(self, request: web.Request) -> dict[str, Any]:
        body = await self._read_json(request)
        if not isinstance(body, dict):
            raise bad_request("The request body must be a JSON object.", code="BadRequest")
        return body

    async def _create(self, request: web.Request, tenant: Tenant, params: dict[str, str]) -> web.Response:
        coll = params["coll"].lower()
        body = await self._body(request)
        if coll == "users":
            obj = tenant.create_user(body)
        elif coll == "groups":
            obj = tenant.create_group(body)
        else:
            raise GraphError(405, "Request_BadRequest", "Devices cannot be created through this fake.")
        out = {"@odata.context": self._context(request, coll, entity=True)}
        out.update(tenant.represent(obj["id"], None, typed=True))
        del out["@odata.type"]
        return self._json(request, out, 201)

    async def _update(self, request: web.Request, tenant: Tenant, params: dict[str, str]) -> web.Response:
        tenant.update(params["coll"].lower()[:-1], params["id"], await self._body(request))
        return web.Response(status=204)

    async def _delete(self, request: web.Request, tenant: Tenant, params: dict[str, str]) -> web.Response:
        tenant.delete(params["coll"].lower()[:-1], params["id"])
        return web.Response(status=204)

    async def _add_member(self, request: web.Request, tenant: Tenant, params: dict[str, str]) -> web.Response:
        body = await self._body(request)
        tenant.add_member(params["id"], body.get("@odata.id"))
        return web.Response(status=204)

    async def _remove_member(self, request: web.Request, tenant: Tenant, params: dict[str, str]) -> web.Response:
        tenant.remove_member(params["id"], params["member"])
        return web.Response(status=204)

    # --- delta queries and change notifications (delta.py, notifications.py) ---------------------

    async def _delta(self, request: web.Request, tenant: Tenant, params: dict[str, str]) -> web.Response:
        coll = params["coll"].lower()
        context = f"{request.scheme}://{request.host}/v1.0/$metadata#{coll}"
        return self._json(request, self.delta.respond(request, tenant, coll[:-1], context))

    def _subscription_json(self, request: web.Request, sub: Any, client_state: bool) -> dict:
        return {"@odata.context": self._context(request, "subscriptions", entity=True), **sub.resource_json(client_state)}

    async def _create_subscription(self, request: web.Request, tenant: Tenant, params: dict[str, str]) -> web.Response:
        sub = await self.notifications.create(tenant.tenant_id, request["claims"], request["roles"],
                                              await self._body(request))
        return self._json(request, self._subscription_json(request, sub, client_state=True), 201)

    async def _list_subscriptions(self, request: web.Request, tenant: Tenant, params: dict[str, str]) -> web.Response:
        subs = self.notifications.list(tenant.tenant_id, request["claims"], request["roles"])
        return self._json(request, {"@odata.context": self._context(request, "subscriptions"),
                                    "value": [s.resource_json(client_state=False) for s in subs]})

    async def _get_subscription(self, request: web.Request, tenant: Tenant, params: dict[str, str]) -> web.Response:
        sub = self.notifications.get(tenant.tenant_id, request["claims"], request["roles"], params["id"])
        return self._json(request, self._subscription_json(request, sub, client_state=False))

    async def _update_subscription(self, request: web.Request, tenant: Tenant, params: dict[str, str]) -> web.Response:
        sub = await self.notifications.update(tenant.tenant_id, request["claims"], request["roles"], params["id"],
                                              await self._body(request))
        return self._json(request, self._subscription_json(request, sub, client_state=False))

    async def _delete_subscription(self, request: web.Request, tenant: Tenant, params: dict[str, str]) -> web.Response:
        self.notifications.delete(tenant.tenant_id, request["claims"], request["roles"], params["id"])
        return web.Response(status=204)

    async def _reauthorize_subscription(self, request: web.Request, tenant: Tenant,
                                        params: dict[str, str]) -> web.Response:
        self.notifications.reauthorize(tenant.tenant_id, request["claims"], request["roles"], params["id"])
        return web.Response(status=204)

    # --- the local Microsoft identity platform (HTTPS, its own port) -----------------------------

    async def _handle_authority(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path == "/_fake" or path.startswith("/_fake/"):
            return await self._handle(request)
        template, handler, params = self._authority_routes.resolve(request.method, path)
        self._requests += 1
        self._by_route[f"{request.method} {template}"] += 1
        try:
            fault = self._take_fault(request.method, unquote(request.raw_path))
            if fault is not None:
                if fault["delayMs"]:
                    await asyncio.sleep(fault["delayMs"] / 1000)
                if fault["status"] is not None:
                    if isinstance(fault["code"], int):  # an AADSTS code: the token endpoint's error shape
                        exc = TokenError(fault["status"], "invalid_grant" if fault["status"] < 500 else "temporarily_unavailable",
                                         fault["code"], fault["message"] or "Injected fault.")
                        return web.json_response(exc.body(self.authority), status=exc.status,
                                                 headers=self._fault_error(fault).headers)
                    raise self._fault_error(fault)
            if handler is None:
                status = 405 if template != "(unmatched authority)" else 404
                raise GraphError(status, "NotFound", f"No such endpoint: {request.method} {path}")
            return await handler(request, params)
        except GraphError as exc:
            return self._error(request, exc)
        except Exception:
            log.exception("local authority failed on %s %s", request.method, request.raw_path)
            return self._error(request, GraphError(500, "generalException", "An internal error occurred in the fake."))

    # --- /_fake control endpoints ------------------------------------------------------------

    async def _control(self, request: web.Request) -> web.Response:
        route = f"{request.method} {request.path.rstrip('/')}"
        if route == "GET /_fake/stats":
            return self._json(request, self._stats())
        if route == "POST /_fake/stats/reset":
            self._reset_stats()
            return self._json(request, self._stats())
        if route == "GET /_fake/consent":
            return self._json(request, self._consent_state())
        if route == "POST /_fake/consent":
            return self._json(request, self._set_consent(await self._body(request)))
        if route == "GET /_fake/authority":
            return self._json(request, self._authority_state())
        if route == "POST /_fake/authority":
            return self._json(request, self._set_authority(await self._body(request)))
        if route == "POST /_fake/token":
            return self._json(request, self._admin_token(await self._body(request)))
        if route == "GET /_fake/faults":
            return self._json(request, {"faults": self._faults})
        if route == "POST /_fake/faults":
            body = await self._read_json(request)
            specs = body if isinstance(body, list) else [body]
            return self._json(request, {"faults": self._add_faults(specs)})
        if route == "DELETE /_fake/faults":
            self._faults.clear()
            return self._json(request, {"faults": []})
        if route == "POST /_fake/search":
            body = await self._body(request)
            lag = body.get("lagSeconds")
            if set(body) - {"lagSeconds"} or not isinstance(lag, (int, float)) or isinstance(lag, bool) or lag < 0:
                raise bad_request("The body is {\"lagSeconds\": n} with n >= 0.", code="BadRequest")
            self.set_search_lag(float(lag))
            return self._json(request, {"lagSeconds": Tenant.search_lag_s})
        if route == "GET /_fake/search":
            return self._json(request, {"lagSeconds": Tenant.search_lag_s})
        if route == "GET /_fake/notifications":
            return self._json(request, self.notifications.state())
        if route == "POST /_fake/notifications":
            return self._json(request, self.notifications.configure(await self._body(request)))
        if route == "GET /_fake/notifications/log":
            return self._json(request, self.notifications.log_state())
        if route == "POST /_fake/notifications/lifecycle":
            body = await self._body(request)
            if set(body) - {"subscriptionId", "event"}:
                raise bad_request("The body is {\"subscriptionId\": id, \"event\": name}.", code="BadRequest")
            return self._json(request, self.notifications.lifecycle(body.get("subscriptionId"), body.get("event")))
        if route == "GET /_fake/delta":
            return self._json(request, self.delta_settings.state())
        if route == "POST /_fake/delta":
            return self._json(request, self._set_delta(await self._body(request)))
        if route == "GET /_fake/hidden":
            return self._json(request, {"answer": self.hidden_answer})
        if route == "POST /_fake/hidden":
            return self._json(request, self._set_hidden(await self._body(request)))
        if route == "GET /_fake/paging":
            return self._json(request, self._paging_state())
        if route == "POST /_fake/paging":
            return self._json(request, self._set_paging(await self._body(request)))
        if route == "GET /_fake/limits":
            return self._json(request, self.limits.state())
        if route == "POST /_fake/limits":
            try:
                return self._json(request, self.limits.configure(await self._body(request)))
            except ValueError as exc:
                raise bad_request(str(exc), code="BadRequest") from None
        if route == "POST /_fake/latency":
            body = await self._body(request)
            ms = body.get("ms")
            if not isinstance(ms, (int, float)) or ms < 0:
                raise bad_request("latency 'ms' must be a non-negative number.", code="BadRequest")
            self.latency_ms = float(ms)
            return self._json(request, {"ms": self.latency_ms})
        if route == "POST /_fake/reset":
            self._faults.clear()
            self._reset_stats()
            self.latency_ms = 0.0
            self.skiptoken_lifetime_s, self.short_pages = DEFAULT_SKIPTOKEN_LIFETIME_S, True
            self.hidden_answer = "empty"
            self.set_search_lag(DEFAULT_SEARCH_LAG_S)
            self.identity.reset()
            self.notifications.reset()
            self.delta_settings.__init__()  # type: ignore[misc]
            self.limits.reset()
            return self._json(request, {"reset": True})
        if route == "GET /_fake/tenants":
            return self._json(request, {"tenants": [
                {"tenantId": t.tenant_id, "domain": t.domain, "users": len(t.users), "groups": len(t.groups),
                 "devices": len(t.devices)} for t in self.tenants.values()]})
        if route == "POST /_fake/tenants":
            return await self._load_tenant(request)
        m = re.fullmatch(r"(GET|DELETE) /_fake/tenants/([^/]+)", route)
        if m:
            tenant = self._tenant(m.group(2))
            if m.group(1) == "DELETE":
                del self.tenants[tenant.tenant_id]
                return web.Response(status=204)
            return self._json(request, tenant.to_dict())
        raise GraphError(404, "NotFound", f"No such control endpoint: {route}")

    async def _load_tenant(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        loop = asyncio.get_running_loop()

        def build() -> Tenant:
            from .generator import generate_tenant

            data = generate_tenant(**body["generate"]) if "generate" in body else body
            return Tenant(load_tenant(data))

        try:
            tenant = await loop.run_in_executor(None, build)
        except (ValueError, TypeError) as exc:
            raise bad_request(f"Invalid tenant: {exc}", code="BadRequest")
        self._install(tenant)
        return self._json(request, {"tenantId": tenant.tenant_id, "users": len(tenant.users),
                                    "groups": len(tenant.groups), "devices": len(tenant.devices)}, 201)
