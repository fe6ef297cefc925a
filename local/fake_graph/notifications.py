"""Change notifications: /v1.0/subscriptions for users and groups, the webhook handshake, and delivery.

A subscription is created only once its notificationUrl (and lifecycleNotificationUrl) echoed Graph's validation
token. Then every change in the tenant's change log that matches a live subscription becomes a change notification,
batched per URL, POSTed from a background task (never inside the write that caused it), retried with backoff when
the receiver fails, and dropped once the retry window is over. Rules and their sources: README.md, "Change
notifications and delta".
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import ssl
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import aiohttp

from .changes import ADDED, CREATED, DELETED, REMOVED, UPDATED, Change
from .odata import GraphError, bad_request

if TYPE_CHECKING:
    from .server import FakeGraph

log = logging.getLogger("local.fake_graph")

MAX_EXPIRATION_MINUTES = 41760  # user, group, other directory resources: "41,760 minutes (under 29 days)"
MAX_CLIENT_STATE = 128
MAX_PER_APP_AND_TENANT = 100  # user/group quotas (change-notifications-overview, supported resources)
MAX_PER_TENANT = 1000
MAX_PER_APP = 50000
# Application permissions that allow subscribing to each resource: the read permission in subscription-post-
# subscriptions' table and the broader read permission; "subscriptions don't support write access permissions
# when only read access permissions are needed", so *.ReadWrite.All alone is refused.
SUBSCRIBE_ROLES = {"user": frozenset({"User.Read.All", "Directory.Read.All"}),
                   "group": frozenset({"Group.Read.All", "Directory.Read.All"})}
RESOURCES = {"users": "user", "groups": "group"}
CHANGE_TYPES = ("created", "updated", "deleted")
SUPPORTED_CHANGE_TYPES = ("updated", "deleted")  # "User and group change notifications support updated and deleted"
TLS_VERSIONS = ("v1_0", "v1_1", "v1_2", "v1_3")
LIFECYCLE_EVENTS = ("reauthorizationRequired", "subscriptionRemoved", "missed")
LOOPBACK_NAMES = ("localhost",)
WRITABLE = frozenset({"changeType", "notificationUrl", "lifecycleNotificationUrl", "resource", "expirationDateTime",
                      "clientState", "latestSupportedTlsVersion", "includeResourceData", "encryptionCertificate",
                      "encryptionCertificateId", "notificationUrlAppId", "notificationQueryOptions"})
VALIDATION_PREFIX = "Validation: Testing client application reachability for subscription Request-Id: "


def graph_time(epoch: float) -> str:
    """Graph's DateTimeOffset form, seven fractional digits: 2016-11-20T18:23:45.9356910Z."""
    dt = datetime.fromtimestamp(epoch, timezone.utc)
    return f"{dt:%Y-%m-%dT%H:%M:%S}.{dt.microsecond:06d}0Z"


def parse_time(value: Any) -> float:
    if not isinstance(value, str) or not value.strip():
        raise bad_request("Invalid value for 'expirationDateTime': an ISO 8601 date and time is expected.",
                          code="InvalidRequest")
    text = value.strip()
    try:
        if "." in text:  # Graph writes seven fractional digits; Python reads at most six
            head, _, rest = text.partition(".")
            digits = len(rest) - len(rest.lstrip("0123456789"))
            text = head + "." + rest[:min(digits, 6)] + rest[digits:]
        dt = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise bad_request(f"Invalid value '{value}' for 'expirationDateTime'.", code="InvalidRequest") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)  # "The time is in UTC"
    return dt.timestamp()


@dataclass
class Subscription:
    id: str
    tenant_id: str
    kind: str  # "user" or "group"
    resource: str  # as the app wrote it
    change_types: tuple[str, ...]
    notification_url: str
    lifecycle_url: str | None
    expiration: float
    client_state: str | None
    tls_version: str
    application_id: str
    creator_id: str
    reauthorization_required: bool = False

    def expired(self, now: float | None = None) -> bool:
        return self.expiration <= (time.time() if now is None else now)

    def resource_json(self, client_state: bool) -> dict[str, Any]:
        return {
            "id": self.id, "resource": self.resource, "applicationId": self.application_id,
            "changeType": ",".join(self.change_types), "clientState": self.client_state if client_state else None,
            "notificationUrl": self.notification_url, "notificationQueryOptions": None,
            "lifecycleNotificationUrl": self.lifecycle_url, "expirationDateTime": graph_time(self.expiration),
            "creatorId": self.creator_id, "includeResourceData": False, "latestSupportedTlsVersion": self.tls_version,
            "encryptionCertificate": None, "encryptionCertificateId": None, "notificationUrlAppId": None,
        }


@dataclass
class NotificationSettings:
    """POST /_fake/notifications."""

    allow_http_loopback: bool = True  # the one local concession: http://127.0.0.1 / localhost receivers
    retry_s: float = 30.0  # Graph retries for up to 4 hours; locally short
    duplicate: bool = False  # every POST is sent a second time, delayMs later
    delay_ms: int = 0  # every POST waits this long (with `duplicate`, so does the copy: it arrives late)
    paused: bool = False  # nothing is sent; notifications queue (pending) until unpaused
    reorder: bool = False  # the notifications of a POST are sent in reverse order
    timeout_s: float = 3.0  # "Notifications are published using an HTTP client with a 3-second timeout"
    validation_timeout_s: float = 10.0  # the handshake: "respond ... within 10 seconds"
    batch_ms: int = 50  # changes this close together share one POST

    def state(self) -> dict[str, Any]:
        return {"allowHttpLoopback": self.allow_http_loopback, "retrySeconds": self.retry_s,
                "duplicate": self.duplicate, "delayMs": self.delay_ms, "paused": self.paused,
                "reorder": self.reorder, "timeoutSeconds": self.timeout_s,
                "validationTimeoutSeconds": self.validation_timeout_s, "batchMs": self.batch_ms}


@dataclass
class _Item:
    url: str
    payload: dict[str, Any]
    lifecycle: bool = False


@dataclass
class _Stats:
    delivered: int = 0  # notifications acknowledged with a 2xx (duplicates included)
    failed: int = 0  # delivery attempts (POSTs) that failed: non-2xx, timeout, no connection
    dropped: int = 0  # notifications given up after the retry window
    lost: int = 0  # changes not notified: the subscription awaited reauthorization
    log: deque = field(default_factory=lambda: deque(maxlen=500))


class NotificationHub:
    """Subscriptions of every tenant, their validation, and the delivery of their notifications."""

    def __init__(self, server: FakeGraph):
        self.server = server
        self.settings = NotificationSettings()
        self.subscriptions: dict[str, Subscription] = {}
        self.stats = _Stats()
        self._pending: dict[str, list[_Item]] = {}
        self._flush: dict[str, asyncio.Task] = {}
        self._tasks: set[asyncio.Task] = set()
        self._inflight = 0
        self._session: aiohttp.ClientSession | None = None
        self._ssl: ssl.SSLContext | None = None
        self._sweeper: asyncio.Task | None = None

    # --- lifecycle (the server's loop) --------------------------------------------------------------------

    def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def close(self) -> None:
        for task in [self._sweeper, *self._flush.values(), *self._tasks]:
            if task is not None:
                task.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _spawn(self, coro: Any) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _sweep(self) -> None:
        """Graph deletes subscriptions that were not renewed in time."""
        while True:
            await asyncio.sleep(0.25)
            self.remove_expired()

    def remove_expired(self) -> None:
        now = time.time()
        for sub_id in [s.id for s in self.subscriptions.values() if s.expired(now)]:
            del self.subscriptions[sub_id]

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(auto_decompress=True)
        return self._session

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
            tls = self.server.tls
            if tls is not None:  # receivers may use the local CA's certificates
                self._ssl.load_verify_locations(cafile=str(tls.ca_file))
        return self._ssl

    # --- the subscription API --------------------------------------------------------------------------

    @staticmethod
    def _kind(resource: Any) -> str:
        if not isinstance(resource, str) or not resource.strip():
            raise bad_request("The 'resource' property is required.", code="InvalidRequest")
        kind = RESOURCES.get(resource.strip().strip("/").lower())
        if kind is None:
            raise bad_request(f"Resource '{resource}' is not supported by this fake Graph: subscriptions are "
                              "modelled for 'users' and 'groups' only.", code="InvalidRequest")
        return kind

    @staticmethod
    def _may_subscribe(kind: str, roles: set[str], operation: str) -> None:
        if not roles & SUBSCRIBE_ROLES[kind]:
            needed = " or ".join(sorted(SUBSCRIBE_ROLES[kind]))
            raise GraphError(403, "ExtensionError", f"Operation: {operation}; Exception: [Status Code: Forbidden; "
                             f"Reason: The application needs {needed} to subscribe to {kind}s]")

    def _check_url(self, value: Any, name: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise bad_request(f"The '{name}' property is required.", code="InvalidRequest")
        parts = urlsplit(value.strip())
        if parts.scheme == "https" and parts.hostname:
            return value.strip()
        if parts.scheme == "http" and parts.hostname and self.settings.allow_http_loopback and _loopback(parts.hostname):
            return value.strip()
        raise bad_request(f"Invalid '{name}': the URL must use the HTTPS protocol.", code="InvalidRequest")

    @staticmethod
    def _expiration(value: Any) -> float:
        expiration = parse_time(value)
        now = time.time()
        if expiration <= now:
            raise bad_request("Subscription expiration must be in the future.", code="InvalidRequest")
        if expiration > now + MAX_EXPIRATION_MINUTES * 60:
            raise bad_request(f"Subscription expiration can only be {MAX_EXPIRATION_MINUTES} minutes in the future.",
                              code="InvalidRequest")
        return expiration

    def _mine(self, tenant_id: str, claims: dict[str, Any], sub_id: str) -> Subscription:
        sub = self.subscriptions.get(sub_id)
        if sub is not None and sub.expired():
            del self.subscriptions[sub_id]
            sub = None
        if sub is None or sub.tenant_id != tenant_id or sub.application_id != claims.get("appid"):
            raise GraphError(404, "ResourceNotFound", f"The object '{sub_id}' was not found.")
        return sub

    async def create(self, tenant_id: str, claims: dict[str, Any], roles: set[str], body: dict[str, Any]) -> Subscription:
        unknown = [k for k in body if k not in WRITABLE and not k.startswith("@odata.")]
        if unknown:
            raise bad_request(f"Property '{unknown[0]}' does not exist on type 'microsoft.graph.subscription'.",
                              code="InvalidRequest")
        kind = self._kind(body.get("resource"))
        self._may_subscribe(kind, roles, "Create")
        raw_types = body.get("changeType")
        if not isinstance(raw_types, str) or not raw_types.strip():
            raise bad_request("The 'changeType' property is required.", code="InvalidRequest")
        change_types = tuple(dict.fromkeys(t.strip() for t in raw_types.split(",")))
        for change_type in change_types:
            if change_type not in CHANGE_TYPES:
                raise bad_request(f"Invalid change type '{change_type}'. Valid values: created, updated, deleted.",
                                  code="InvalidRequest")
            if change_type not in SUPPORTED_CHANGE_TYPES:
                raise bad_request(f"Change type '{change_type}' is not supported for resource '{body['resource']}'. "
                                  "Supported change types: updated, deleted.", code="InvalidRequest")
        url = self._check_url(body.get("notificationUrl"), "notificationUrl")
        lifecycle = body.get("lifecycleNotificationUrl")
        lifecycle = self._check_url(lifecycle, "lifecycleNotificationUrl") if lifecycle is not None else None
        expiration = self._expiration(body.get("expirationDateTime"))
        client_state = body.get("clientState")
        if client_state is not None and (not isinstance(client_state, str) or len(client_state) > MAX_CLIENT_STATE):
            raise bad_request(f"'clientState' is limited to {MAX_CLIENT_STATE} characters.", code="InvalidRequest")
        tls_version = body.get("latestSupportedTlsVersion", "v1_2") or "v1_2"
        if tls_version not in TLS_VERSIONS:
            raise bad_request(f"Invalid 'latestSupportedTlsVersion' '{tls_version}'. Valid values: "
                              f"{', '.join(TLS_VERSIONS)}.", code="InvalidRequest")
        if body.get("includeResourceData"):
            raise bad_request(f"Rich notifications (includeResourceData) are not supported for resource "
                              f"'{body['resource']}'.", code="InvalidRequest")
        app_id = str(claims.get("appid") or claims.get("azp") or "")
        self.remove_expired()
        live = [s for s in self.subscriptions.values() if s.tenant_id == tenant_id]
        for sub in live:
            if sub.application_id == app_id and sub.kind == kind and set(sub.change_types) == set(change_types):
                raise GraphError(409, "Conflict",
                                 f"Subscription Id {sub.id} already exists for the requested combination")
        if sum(1 for s in live if s.application_id == app_id) >= MAX_PER_APP_AND_TENANT:
            raise GraphError(403, "ExtensionError", "Operation: Create; Exception: [Status Code: Forbidden; Reason: "
                             f"App '{app_id}' has reached its limit of '{MAX_PER_APP_AND_TENANT}' subscriptions on "
                             f"tenant '{tenant_id}']")
        if sum(1 for s in self.subscriptions.values() if s.application_id == app_id) >= MAX_PER_APP:
            raise GraphError(403, "ExtensionError", "Operation: Create; Exception: [Status Code: Forbidden; Reason: "
                             f"App '{app_id}' has reached its limit of '{MAX_PER_APP}' subscriptions]")
        if len(live) >= MAX_PER_TENANT:
            raise GraphError(403, "ExtensionError", "Operation: Create; Exception: [Status Code: Forbidden; Reason: "
                             f"Tenant '{tenant_id}' has reached its limit of '{MAX_PER_TENANT}' subscriptions]")
        await self.validate(url)
        if lifecycle is not None:
            await self.validate(lifecycle)
        sub = Subscription(str(uuid.uuid4()), tenant_id, kind, body["resource"], change_types, url, lifecycle,
                           expiration, client_state, tls_version, app_id, str(claims.get("oid") or ""))
        self.subscriptions[sub.id] = sub
        return sub

    def list(self, tenant_id: str, claims: dict[str, Any], roles: set[str]) -> list[Subscription]:
        """Subscriptions this app created in this tenant, for resources it may still read."""
        self.remove_expired()
        return [s for s in self.subscriptions.values() if s.tenant_id == tenant_id
                and s.application_id == claims.get("appid") and roles & SUBSCRIBE_ROLES[s.kind]]

    def get(self, tenant_id: str, claims: dict[str, Any], roles: set[str], sub_id: str) -> Subscription:
        sub = self._mine(tenant_id, claims, sub_id)
        self._may_subscribe(sub.kind, roles, "Get")
        return sub

    async def update(self, tenant_id: str, claims: dict[str, Any], roles: set[str], sub_id: str,
                     body: dict[str, Any]) -> Subscription:
        sub = self._mine(tenant_id, claims, sub_id)
        self._may_subscribe(sub.kind, roles, "Update")
        unknown = [k for k in body if k not in ("expirationDateTime", "notificationUrl") and not k.startswith("@odata.")]
        if unknown:
            raise bad_request(f"Property '{unknown[0]}' cannot be updated on a subscription: only expirationDateTime "
                              "and notificationUrl can.", code="InvalidRequest")
        expiration = self._expiration(body["expirationDateTime"]) if "expirationDateTime" in body else sub.expiration
        url = sub.notification_url
        if "notificationUrl" in body:
            url = self._check_url(body["notificationUrl"], "notificationUrl")
            if url != sub.notification_url:
                await self.validate(url)
        sub.expiration, sub.notification_url = expiration, url
        sub.reauthorization_required = False  # "renewing your subscription also reauthorizes your endpoint"
        return sub

    def delete(self, tenant_id: str, claims: dict[str, Any], roles: set[str], sub_id: str) -> None:
        sub = self._mine(tenant_id, claims, sub_id)
        self._may_subscribe(sub.kind, roles, "Delete")
        del self.subscriptions[sub.id]

    def reauthorize(self, tenant_id: str, claims: dict[str, Any], roles: set[str], sub_id: str) -> None:
        sub = self._mine(tenant_id, claims, sub_id)
        self._may_subscribe(sub.kind, roles, "Reauthorize")
        sub.reauthorization_required = False

    # --- the validation handshake ------------------------------------------------------------------------

    async def validate(self, url: str) -> None:
        """POST {url}?validationToken=...; 200, text/plain and the token exactly, within the time limit."""
        token = VALIDATION_PREFIX + str(uuid.uuid4())
        target = url + ("&" if "?" in url else "?") + "validationToken=" + quote(token, safe="")
        failed = "Subscription validation request failed."
        try:
            async with asyncio.timeout(self.settings.validation_timeout_s):
                async with self._client().post(target, data=b"", allow_redirects=False,
                                               ssl=self._ssl_context() if target.startswith("https") else None,
                                               headers={"Content-Type": "text/plain; charset=utf-8"}) as response:
                    status, reason = response.status, response.reason or str(response.status)
                    media = response.content_type
                    text = await response.read()
        except TimeoutError:
            raise GraphError(400, "ValidationError", "Subscription validation request timed out.") from None
        except (aiohttp.ClientError, OSError, ssl.SSLError) as exc:
            raise GraphError(400, "ValidationError", f"{failed} Notification endpoint must respond with 200 OK to "
                             f"validation request. ({type(exc).__name__})") from None
        if status != 200:
            raise GraphError(400, "ValidationError", f"{failed} HTTP status code is '{reason}'. Notification endpoint "
                             "must respond with 200 OK to validation request.")
        if media != "text/plain":
            raise GraphError(400, "ValidationError", f"{failed} The response must have a content type of "
                             f"'text/plain', not '{media}'.")
        try:
            echoed = text.decode("utf-8")
        except UnicodeDecodeError:
            echoed = None
        if echoed != token:
            raise GraphError(400, "ValidationError",
                             f"{failed} Response must exactly match validationToken query parameter.")

    # --- delivery ----------------------------------------------------------------------------------------

    def on_change(self, tenant_id: str, change: Change) -> None:
        """A tenant's change log grew: queue a notification for every live subscription it concerns."""
        change_type = notification_change_type(change)
        if change_type is None:
            return
        name = "Users" if change.kind == "user" else "Groups"
        now = time.time()
        for sub in list(self.subscriptions.values()):
            if sub.tenant_id != tenant_id or sub.kind != change.kind or sub.expired(now):
                continue
            if change_type not in sub.change_types:
                continue
            if sub.reauthorization_required:
                self.stats.lost += 1  # "notifications ... when the change notification delivery pauses ... are lost"
                continue
            self._enqueue(_Item(sub.notification_url, {
                "id": uuid.uuid4().hex, "subscriptionId": sub.id,
                "subscriptionExpirationDateTime": graph_time(sub.expiration), "changeType": change_type,
                "resource": f"{name}/{change.oid}",
                "resourceData": {"@odata.type": f"#Microsoft.Graph.{name[:-1]}", "@odata.id": f"{name}/{change.oid}",
                                 "id": change.oid},
                "clientState": sub.client_state, "tenantId": tenant_id,
            }))

    def lifecycle(self, sub_id: Any, event: Any) -> dict[str, Any]:
        """POST /_fake/notifications/lifecycle: send one lifecycle notification of a subscription."""
        sub = self.subscriptions.get(sub_id) if isinstance(sub_id, str) else None
        if sub is None:
            raise GraphError(404, "NotFound", f"No subscription '{sub_id}'.")
        if event not in LIFECYCLE_EVENTS:
            raise bad_request(f"'event' is one of {', '.join(LIFECYCLE_EVENTS)}.", code="BadRequest")
        if sub.lifecycle_url is None:
            raise bad_request("The subscription has no lifecycleNotificationUrl: Graph sends it no lifecycle "
                              "notifications.", code="BadRequest")
        payload = {"subscriptionId": sub.id, "subscriptionExpirationDateTime": graph_time(sub.expiration),
                   "tenantId": sub.tenant_id, "clientState": sub.client_state, "lifecycleEvent": event}
        self._enqueue(_Item(sub.lifecycle_url, payload, lifecycle=True))
        if event == "reauthorizationRequired":
            sub.reauthorization_required = True
        elif event == "subscriptionRemoved":
            del self.subscriptions[sub.id]
        return {"subscriptionId": sub.id, "event": event, "url": sub.lifecycle_url}

    def _enqueue(self, item: _Item) -> None:
        self._pending.setdefault(item.url, []).append(item)
        if not self.settings.paused:
            self._schedule(item.url)

    def _schedule(self, url: str) -> None:
        if url in self._flush:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # the server is not running: the notification waits (pending) for resume()
            return
        self._flush[url] = loop.create_task(self._flush_later(url))

    def resume(self) -> None:
        for url in list(self._pending):
            self._schedule(url)

    async def _flush_later(self, url: str) -> None:
        try:
            await asyncio.sleep(self.settings.batch_ms / 1000)
        finally:
            self._flush.pop(url, None)
        if self.settings.paused:
            return
        items = self._pending.pop(url, [])
        if items:
            self._inflight += len(items)
            self._spawn(self._deliver(url, items))

    async def _deliver(self, url: str, items: list[_Item]) -> None:
        settings = self.settings
        try:
            if settings.reorder:
                items = items[::-1]
            body = json.dumps({"value": [i.payload for i in items]}, ensure_ascii=False).encode()
            if settings.delay_ms:
                await asyncio.sleep(settings.delay_ms / 1000)
            started = time.monotonic()
            attempt = 0
            while True:
                attempt += 1
                ok = await self._post(url, body, len(items), attempt)
                if ok:
                    self.stats.delivered += len(items)
                    if settings.duplicate:
                        self._spawn(self._duplicate(url, body, len(items)))
                    return
                self.stats.failed += 1
                elapsed = time.monotonic() - started
                if elapsed >= settings.retry_s:
                    self.stats.dropped += len(items)
                    return
                # "Notifications that can't be delivered are retried at exponential backoff intervals."
                await asyncio.sleep(min(0.25 * 2 ** (attempt - 1), 10.0, settings.retry_s - elapsed))
        finally:
            self._inflight -= len(items)

    async def _duplicate(self, url: str, body: bytes, count: int) -> None:
        await asyncio.sleep(self.settings.delay_ms / 1000)
        if await self._post(url, body, count, 0, duplicate=True):
            self.stats.delivered += count

    async def _post(self, url: str, body: bytes, count: int, attempt: int, duplicate: bool = False) -> bool:
        status: int | str
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                async with self._client().post(url, data=body, allow_redirects=False,
                                               ssl=self._ssl_context() if url.startswith("https") else None,
                                               headers={"Content-Type": "application/json; charset=utf-8"}) as resp:
                    status = resp.status
                    await resp.read()
        except TimeoutError:
            status = "timeout"
        except (aiohttp.ClientError, OSError, ssl.SSLError) as exc:
            status = type(exc).__name__
        ok = isinstance(status, int) and 200 <= status < 300
        self.stats.log.append({"url": url, "count": count, "attempt": attempt, "status": status, "ok": ok,
                               "duplicate": duplicate, "at": time.time()})
        return ok

    # --- controls ------------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """GET /_fake/notifications."""
        self.remove_expired()
        subs = [{**s.resource_json(client_state=True), "tenantId": s.tenant_id,
                 "reauthorizationRequired": s.reauthorization_required} for s in self.subscriptions.values()]
        pending = sum(len(items) for items in self._pending.values()) + self._inflight
        return {"subscriptions": subs, "delivered": self.stats.delivered, "failed": self.stats.failed,
                "pending": pending}

    def log_state(self) -> dict[str, Any]:
        """GET /_fake/notifications/log: every POST made (most recent 500), and what was given up."""
        return {"deliveries": list(self.stats.log), "dropped": self.stats.dropped, "lost": self.stats.lost,
                "settings": self.settings.state()}

    def configure(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST /_fake/notifications."""
        names = {"allowHttpLoopback": "allow_http_loopback", "retrySeconds": "retry_s", "duplicate": "duplicate",
                 "delayMs": "delay_ms", "paused": "paused", "reorder": "reorder", "timeoutSeconds": "timeout_s",
                 "validationTimeoutSeconds": "validation_timeout_s", "batchMs": "batch_ms"}
        unknown = set(body) - set(names) - {"reset"}
        if unknown:
            raise bad_request(f"Unknown notification settings: {', '.join(sorted(unknown))}.", code="BadRequest")
        if body.get("reset"):
            self.settings = NotificationSettings()
        for key, attr in names.items():
            if key not in body:
                continue
            value = body[key]
            if attr in ("allow_http_loopback", "duplicate", "paused", "reorder"):
                if not isinstance(value, bool):
                    raise bad_request(f"'{key}' must be true or false.", code="BadRequest")
            elif not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise bad_request(f"'{key}' must be a non-negative number.", code="BadRequest")
            elif attr in ("delay_ms", "batch_ms"):
                value = int(value)
            else:
                value = float(value)
            setattr(self.settings, attr, value)
        if not self.settings.paused:
            self.resume()
        return self.settings.state()

    def reset(self) -> None:
        """Settings and counters back to their defaults (subscriptions stay, like tenants)."""
        self.settings = NotificationSettings()
        self.stats = _Stats()
        self.resume()


def notification_change_type(change: Change) -> str | None:
    """The changeType Graph notifies for a change, or None when it notifies nothing.

    Creation and soft deletion of users and groups are `updated` (change-notifications-overview); only a permanent
    deletion is `deleted`. Membership changes are `updated` on the group. A membership that ends because the member
    object was deleted raises no group notification: the docs leave it open, and silence is the dangerous case.
    """
    if change.op in (CREATED, UPDATED):
        return "updated"
    if change.op == DELETED:
        return "deleted" if change.reason == "deleted" else "updated"
    if change.op in (ADDED, REMOVED):
        return None if change.cascade else "updated"
    return None


def _loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
