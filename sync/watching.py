"""Graph subscriptions ("watches") on a connected tenant's users and groups, and the delta links runs leave behind.

Kept apart from the incremental runs (sync/changes.py) so the layers below them — deleting a subscription, losing
consent, the fan-in of a run — can subscribe, renew and forget without importing the runs that build on them.
"""
from __future__ import annotations

import hashlib
import secrets
from dataclasses import replace
from datetime import timedelta

from .composition import Services
from .errors import AuthorizationLost, NotFound, PreconditionFailed, SyncError
from .logs import get_logger
from .model import DeltaState, Run, RunStatus, Subscription, SubscriptionStatus, Watch

log = get_logger(__name__)

RESOURCES = ("users", "groups")


def client_state_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def url_hash(url: str) -> str:
    """What a watch records of its notification URL (the URL itself carries the function key)."""
    return hashlib.sha256(("notification-url:" + url).encode("utf-8", "surrogatepass")).hexdigest()


async def after_run(svc: Services, run: Run, status: str) -> None:
    """A run ended: its links become the subscription's delta state (unless it failed: the older links then replay
    what it did, which is idempotent), and a subscription that syncs gets its watches."""
    if svc.watches is None or run.delta_links is None or run.dry_run or status == RunStatus.FAILED:
        return
    sub = await svc.subscriptions.get(run.org, run.subscription_id)
    if sub is None or sub.deleting or sub.status != SubscriptionStatus.AUTHORIZED:
        return
    current = await svc.watches.get_delta(run.org, run.subscription_id)
    if current is not None and current.taken_at > run.started_at:
        return  # a later run's links are there already
    state = DeltaState(run.org, run.subscription_id, run.delta_links.users_link, run.delta_links.groups_link,
                       tuple(sorted(run.group_ids)), run.started_at, etag=current.etag if current else None,
                       mapping_tag=run.delta_links.mapping_tag)
    try:
        await svc.watches.save_delta(state)
    except PreconditionFailed:
        return
    try:
        await ensure_watches(svc, sub)
    except SyncError as exc:  # the next renewal round tries again
        log.warning("could not subscribe to the tenant's changes", extra={"org": sub.org, "subscription": sub.id,
                                                                         "code": exc.code})


async def ensure_watches(svc: Services, sub: Subscription) -> int:
    """Create the watches a subscription lacks (none without NOTIFICATION_URL); returns how many were created."""
    url = svc.settings.notification_url
    if not url or svc.changes is None or svc.watches is None or not sub.azure_tenant_id:
        return 0
    have = {w.resource for w in await svc.watches.of_subscription(sub.org, sub.id)}
    created = 0
    for resource in RESOURCES:
        if resource in have:
            continue
        secret = secrets.token_urlsafe(32)
        expires = svc.clock() + timedelta(hours=svc.settings.watch_lifetime_hours)
        watch_id, expires = await svc.changes.subscribe(sub.azure_tenant_id, resource, url, secret, expires)
        await svc.watches.save(Watch(watch_id, sub.org, sub.id, sub.azure_tenant_id, resource,
                                     client_state_hash(secret), expires, url_hash=url_hash(url)))
        created += 1
        log.info("subscribed to the tenant's changes", extra={"org": sub.org, "subscription": sub.id,
                                                             "resource": resource, "expires": expires.isoformat()})
    return created


async def forget(svc: Services, org: str, sub_id: str, tenant_id: str | None) -> None:
    """The subscription is being deleted (or lost its consent): drop its watches at Graph and here, and its links."""
    if svc.watches is None:
        return
    for watch in await svc.watches.of_subscription(org, sub_id):
        if svc.changes is not None and tenant_id:
            try:
                await svc.changes.unsubscribe(tenant_id, watch.id)
            except SyncError:  # consent already gone, or Graph down: the subscription expires on its own
                log.info("could not delete a Graph subscription; it expires on its own",
                         extra={"org": org, "subscription": sub_id})
        await svc.watches.delete(watch.id)
    await svc.watches.delete_delta(org, sub_id)


async def renew_watches(svc: Services) -> dict[str, int]:
    """The renewal timer: renew watches that expire within WATCH_RENEW_BEFORE_HOURS, move those created for another
    NOTIFICATION_URL (a redeploy or a rotated function key: Graph's deliveries to the old URL get 401 before our code
    runs), recreate lost ones (Graph answers 404 for a watch it removed), and drop those of gone subscriptions."""
    if svc.watches is None or svc.changes is None:
        return {"renewed": 0, "moved": 0, "created": 0, "dropped": 0}
    lifetime = timedelta(hours=svc.settings.watch_lifetime_hours)
    url = svc.settings.notification_url
    current = url_hash(url) if url else None
    due = {w.id: w for w in await svc.watches.expiring(svc.clock() + timedelta(hours=svc.settings.watch_renew_before_hours))}
    if current is not None:
        due.update({w.id: w for w in await svc.watches.elsewhere(current)})
    renewed = moved = created = dropped = 0
    for watch in due.values():
        sub = await svc.subscriptions.get(watch.org, watch.subscription_id)
        if sub is None or sub.deleting or sub.status != SubscriptionStatus.AUTHORIZED:
            await forget(svc, watch.org, watch.subscription_id, watch.tenant_id)
            dropped += 1
            continue
        move = current is not None and watch.url_hash != current
        try:
            expires = await svc.changes.renew(watch.tenant_id, watch.id, svc.clock() + lifetime,
                                              notification_url=url if move else None)
            await svc.watches.save(replace(watch, expires_at=expires, url_hash=current if move else watch.url_hash))
            if move:
                moved += 1
                log.info("moved a Graph subscription to the current notification URL",
                         extra={"org": watch.org, "subscription": watch.subscription_id, "resource": watch.resource})
            else:
                renewed += 1
        except NotFound:  # Graph removed it (expired, or the tenant's admin deleted it): subscribe again below
            await svc.watches.delete(watch.id)
        except AuthorizationLost:
            await forget(svc, watch.org, watch.subscription_id, None)
            dropped += 1
        except SyncError as exc:  # e.g. the new URL failed Graph's validation: the next round tries again
            log.warning("could not renew a Graph subscription", extra={"org": watch.org, "code": exc.code,
                                                                      "moving": move})
    for state in await svc.watches.with_delta():
        sub = await svc.subscriptions.get(state.org, state.subscription_id)
        if sub is None or sub.deleting or sub.status != SubscriptionStatus.AUTHORIZED:
            continue
        try:
            created += await ensure_watches(svc, sub)
        except SyncError as exc:
            log.warning("could not subscribe to the tenant's changes", extra={"org": sub.org, "code": exc.code})
    return {"renewed": renewed, "moved": moved, "created": created, "dropped": dropped}
