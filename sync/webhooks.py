"""Webhooks, the use case: the portal's endpoints (add, list, delete, rotate, enable) and delivering events to them.

Deliveries follow the Standard Webhooks specification (standardwebhooks.com): headers ``webhook-id`` (the event's
id, the same on every retry), ``webhook-timestamp`` (seconds) and ``webhook-signature`` (``v1,`` + base64 of
HMAC-SHA256 over ``{id}.{timestamp}.{body}`` keyed with the secret's bytes). One worker at a time delivers to an
endpoint (a lease on its row), in sequence order, so a user's events arrive in the order they were applied; a
failed attempt waits out the retry schedule (its own delayed message) before anything after it is sent.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import secrets
import time
import uuid
from dataclasses import replace
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from . import alerts
from .alert_model import Alert, confirmed_recipients
from .composition import Services
from .errors import Conflict, DeliveryFailed, InvalidInput, NotFound, PreconditionFailed
from .event_model import Event, EventType, Webhook, WebhookJob, WebhookStatus
from .logs import get_logger

log = get_logger(__name__)

MAX_WEBHOOKS = 5
MAX_URL = 2048
SECRET_BYTES = 32
SECRET_PREFIX = "whsec_"
TIMEOUT_S = 10.0
# After the first attempt: about 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h; then the endpoint is failing.
RETRY_DELAYS_S = (5, 300, 1800, 7200, 18000, 36000, 36000)
BATCH = 50
LEASE = timedelta(seconds=60)
TIME_BUDGET_S = 120.0
LOOPBACK_NAMES = ("localhost",)
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# Public by its number, yet Azure's platform endpoint inside every virtual network (DHCP, DNS, health probes, the VM
# agent): learn.microsoft.com/azure/virtual-network/what-is-ip-address-168-63-129-16
AZURE_PLATFORM = ipaddress.IPv4Address("168.63.129.16")


# ---------------------------------------------------------------- where a webhook may point


def address_allowed(address: str, *, allow_loopback: bool) -> bool:
    """A public unicast address (loopback too when the setting allows it); never private, link-local, reserved…"""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        # An IPv4 address inside an IPv6 one (mapped, 6to4, NAT64) is judged as that IPv4 address.
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip.sixtofour is not None:
            ip = ip.sixtofour
        elif ip in NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.is_loopback:
        return allow_loopback
    return ip != AZURE_PLATFORM and ip.is_global and not ip.is_multicast and not ip.is_reserved and not ip.is_unspecified


def _is_loopback_host(host: str) -> bool:
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: Any, *, allow_loopback: bool) -> str:
    """The URL if a webhook may point there; InvalidInput ``invalid_webhook_url`` otherwise."""
    def bad(why: str) -> InvalidInput:
        return InvalidInput(f"url {why}", code="invalid_webhook_url")

    if not isinstance(url, str) or not url:
        raise bad("is required (a string)")
    if len(url) > MAX_URL:
        raise bad(f"is longer than {MAX_URL} characters")
    if any(c.isspace() or ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise bad("holds spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise bad("is not a valid URL") from None
    host = (parts.hostname or "").rstrip(".")
    if parts.scheme not in ("https", "http") or not host:
        raise bad("must be an absolute https URL")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise bad("must not hold user information")
    if port == 0:
        raise bad("has an invalid port")
    loopback = _is_loopback_host(host)
    if parts.scheme == "http" and not (allow_loopback and loopback):
        raise bad("must use https")
    if loopback and not allow_loopback:
        raise bad("must not point to a loopback address")
    try:
        ipaddress.ip_address(host)
        literal = True
    except ValueError:
        literal = False
    if literal and not loopback and not address_allowed(host, allow_loopback=False):
        raise bad("must not point to a private, link-local or otherwise special address")
    if not literal and ("." not in host and not loopback):
        raise bad("must name a fully qualified host")
    return url


async def check_resolved(svc: Services, url: str) -> None:
    """Refuse a host name that resolves to an address a webhook may not reach (checked again at every send)."""
    host = (urlsplit(url).hostname or "").rstrip(".")
    allow = svc.settings.webhook_allow_http_loopback
    addresses = await svc.webhook_sender.addresses(host) if svc.webhook_sender is not None else []
    if any(not address_allowed(a, allow_loopback=allow) for a in addresses):
        raise InvalidInput("url resolves to a private, loopback, link-local or otherwise special address",
                           code="invalid_webhook_url")


def event_types(value: Any) -> tuple[str, ...]:
    if value is None:
        return EventType.ALL
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise InvalidInput("events must be a non-empty list of event types", code="invalid_event_type")
    unknown = sorted(set(value) - set(EventType.ALL))
    if unknown:
        raise InvalidInput(f"unknown event type(s): {', '.join(unknown)[:200]}; known: {', '.join(EventType.ALL)}",
                           code="invalid_event_type")
    return tuple(t for t in EventType.ALL if t in value)


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


# ---------------------------------------------------------------- the endpoints


async def create(svc: Services, org: str, body: Any) -> dict[str, Any]:
    """Add an endpoint; the answer carries its secret (shown here and on rotation only)."""
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object", code="invalid_body")
    unknown = sorted(set(body) - {"url", "events"})
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(unknown)[:200]}", code="unknown_field")
    url = check_url(body.get("url"), allow_loopback=svc.settings.webhook_allow_http_loopback)
    types = event_types(body.get("events"))
    await check_resolved(svc, url)
    if len(await svc.webhooks.list(org)) >= MAX_WEBHOOKS:
        raise Conflict(f"an organisation has at most {MAX_WEBHOOKS} webhooks", code="too_many_webhooks")
    hook = Webhook(org=org, id=str(uuid.uuid4()), url=url, secret=new_secret(), events=types,
                   created_at=svc.clock(), cursor=await svc.events.last_sequence(org))
    hook = await svc.webhooks.add(hook)
    log.info("webhook added", extra={"org": org, "webhook": hook.id})
    return {**hook.to_api(), "secret": hook.secret}


async def listed(svc: Services, org: str) -> dict[str, Any]:
    hooks = sorted(await svc.webhooks.list(org), key=lambda h: (h.created_at, h.id))
    return {"webhooks": [h.to_api() for h in hooks]}


async def _get(svc: Services, org: str, webhook_id: str) -> Webhook:
    hook = await svc.webhooks.get(org, webhook_id) if len(webhook_id) <= 64 else None
    if hook is None:
        raise NotFound("no such webhook", code="webhook_not_found")
    return hook


async def delete(svc: Services, org: str, webhook_id: str) -> None:
    await _get(svc, org, webhook_id)
    await svc.webhooks.delete(org, webhook_id)
    log.info("webhook deleted", extra={"org": org, "webhook": webhook_id})


async def _change(svc: Services, org: str, webhook_id: str, change) -> Webhook:
    for _ in range(10):
        hook = await _get(svc, org, webhook_id)
        try:
            return await svc.webhooks.save(change(hook))
        except PreconditionFailed:
            continue
    raise Conflict("the webhook kept changing; try again", code="webhook_busy")


async def rotate_secret(svc: Services, org: str, webhook_id: str) -> dict[str, str]:
    """A new secret; every delivery from now on is signed with it."""
    secret = new_secret()
    # The lease goes too: a worker still signing with the old secret loses its next write and stops; the nudge
    # hands what is pending to one that signs with the new one.
    hook = await _change(svc, org, webhook_id, lambda h: replace(h, secret=secret, lease_until=None))
    if hook.status == WebhookStatus.ENABLED:
        await svc.queue.send_webhook_jobs([WebhookJob(org, hook.id)])
    log.info("webhook secret rotated", extra={"org": org, "webhook": webhook_id})
    return {"secret": secret}


async def enable(svc: Services, org: str, webhook_id: str) -> dict[str, Any]:
    """Deliver again to a failing endpoint, from the event it failed at."""
    hook = await _change(svc, org, webhook_id, lambda h: replace(
        h, status=WebhookStatus.ENABLED, attempts=0, next_attempt_at=None, failing_since=None, lease_until=None))
    await svc.queue.send_webhook_jobs([WebhookJob(org, hook.id, tag=f"enable{int(time.time())}")])
    return hook.to_api()


# ---------------------------------------------------------------- delivering


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """Standard Webhooks' ``v1,<base64 HMAC-SHA256>`` of ``{id}.{timestamp}.{body}``."""
    key = base64.b64decode(secret[len(SECRET_PREFIX):] if secret.startswith(SECRET_PREFIX) else secret)
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def delivery(hook: Webhook, event: Event, now_s: int) -> tuple[dict[str, str], bytes]:
    body = json.dumps(event.body(), separators=(",", ":"), ensure_ascii=False).encode()
    headers = {"content-type": "application/json", "user-agent": "directory-sync-webhooks/1",
               "webhook-id": event.id, "webhook-timestamp": str(now_s),
               "webhook-signature": signature(hook.secret, event.id, now_s, body)}
    return headers, body


async def deliver(svc: Services, job: WebhookJob) -> str:
    """Deliver what the endpoint has not had yet, in order; returns what happened (for logs and tests)."""
    hook = await svc.webhooks.get(job.org, job.webhook_id)
    if hook is None or hook.status != WebhookStatus.ENABLED:
        return "inactive"
    now = svc.clock()
    if hook.next_attempt_at is not None and hook.next_attempt_at > now + timedelta(seconds=1):
        return "waiting"  # its retry message comes then
    if hook.lease_until is not None and hook.lease_until > now:
        # The holder looks again for new events before it lets go; should it die holding the lease, this look
        # (one per lease: its message id is the lease's) takes over once the lease has run out.
        wait = (hook.lease_until - now).total_seconds() + 1
        await svc.queue.send_webhook_jobs([WebhookJob(job.org, hook.id, tag=f"lease{int(hook.lease_until.timestamp())}")],
                                          delay_s=wait)
        return "busy"
    try:
        hook = await svc.webhooks.save(replace(hook, lease_until=now + LEASE))
    except PreconditionFailed:
        return "busy"
    started = time.monotonic()
    outcome = "delivered"
    try:
        while True:
            events = await svc.events.after(job.org, hook.cursor, BATCH)
            if not events:
                break
            for event in events:
                if event.type not in hook.events:
                    hook = replace(hook, cursor=event.sequence)
                    continue
                ok, detail = await _attempt(svc, hook, event)
                if ok:
                    hook = await svc.webhooks.save(replace(hook, cursor=event.sequence, attempts=0,
                                                           next_attempt_at=None, lease_until=svc.clock() + LEASE))
                    continue
                await _failed(svc, hook, event, detail)
                return "failed"
            hook = await svc.webhooks.save(replace(hook, lease_until=svc.clock() + LEASE))
            if time.monotonic() - started > TIME_BUDGET_S:
                outcome = "continued"
                break
        hook = await svc.webhooks.save(replace(hook, lease_until=None))
    except PreconditionFailed:
        return "busy"  # someone changed the endpoint (rotated, disabled, another worker after our lease)
    if outcome == "continued" or await svc.events.after(job.org, hook.cursor, 1):
        await svc.queue.send_webhook_jobs([WebhookJob(job.org, hook.id, tag=f"more{hook.cursor}")])
    return outcome


async def _attempt(svc: Services, hook: Webhook, event: Event) -> tuple[bool, str]:
    headers, body = delivery(hook, event, int(svc.clock().timestamp()))
    allow = svc.settings.webhook_allow_http_loopback
    try:
        status = await svc.webhook_sender.post(hook.url, headers, body, timeout_s=TIMEOUT_S,
                                               allowed=lambda ip: address_allowed(ip, allow_loopback=allow))
    except DeliveryFailed as exc:
        return False, str(exc)[:200]
    return 200 <= status < 300, f"HTTP {status}"


async def _failed(svc: Services, hook: Webhook, event: Event, detail: str) -> None:
    """Wait out the next delay of the schedule, or, past the last, mark the endpoint failing and tell the admins."""
    now = svc.clock()
    attempts = hook.attempts + 1
    ctx = {"org": hook.org, "webhook": hook.id, "event": event.id, "attempts": attempts, "detail": detail}
    if attempts > len(RETRY_DELAYS_S):
        await svc.webhooks.save(replace(hook, attempts=attempts, status=WebhookStatus.FAILING, failing_since=now,
                                        next_attempt_at=None, lease_until=None))
        log.warning("webhook failing: deliveries paused until it is enabled", extra=ctx)
        await _alert(svc, hook, event, detail, now)
        return
    delay = RETRY_DELAYS_S[attempts - 1]
    # The retry's message first: should the write below fail, that message still comes (and tries once more).
    await svc.queue.send_webhook_jobs([WebhookJob(hook.org, hook.id, tag=f"retry{event.sequence}.{attempts}")],
                                      delay_s=delay)
    await svc.webhooks.save(replace(hook, attempts=attempts, next_attempt_at=now + timedelta(seconds=delay),
                                    lease_until=None))
    log.info("webhook delivery failed; retrying later", extra={**ctx, "delay_s": delay})


async def _alert(svc: Services, hook: Webhook, event: Event, detail: str, now) -> None:
    """One alert per time the endpoint became failing, to the notifyEmails of the org's subscriptions."""
    facts = {"webhookId": hook.id, "url": hook.url[:300], "eventId": event.id, "eventType": event.type,
             "lastError": detail, "failingSince": now.isoformat()}
    for sub in await svc.subscriptions.list(hook.org):
        if confirmed_recipients(sub) and not sub.deleting:  # only addresses that agreed to get alerts
            alert = Alert(org=hook.org, subscription_id=sub.id, id=f"webhook:{hook.id}:{int(now.timestamp())}",
                          kind="webhook_failing", subscription_name=sub.name, recipients=confirmed_recipients(sub),
                          facts=facts, created_at=now, updated_at=now)
            try:
                await alerts.tell(svc, alert, sub)
            except Exception:  # the endpoint stays failing either way; the log tells
                log.warning("webhook failing alert could not be recorded", exc_info=True,
                            extra={"org": hook.org, "webhook": hook.id})
