"""Use cases of the "Directory Sync" page: subscriptions, username attribute, groups (admin consent: consent.py)."""
from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any, Awaitable, Callable

from . import alert_recipients, alerts, events
from .alert_model import notify_emails, pending_asks, with_notify_emails
from .attribute_mapping import parse_mapping
from .composition import Services
from .concurrency import optimistic
from .decisions import consent_propagation_left
from .errors import (
    AuthorizationLost,
    Conflict,
    CredentialInvalid,
    InvalidInput,
    NotFound,
    PreconditionFailed,
    Transient,
)
from .linking import LINK_MODES
from .logs import get_logger
from .model import (
    USERNAME_ATTRIBUTES,
    Caller,
    GroupRef,
    SourceType,
    Subscription,
    SubscriptionStatus,
    User,
)
from .ports import Stale, Updated
from .run_lock import refuse_if_busy
from .watching import forget

log = get_logger(__name__)

MAX_NAME_LENGTH = 200
MAX_GROUPS = 200  # each selected group is a property on every member's row; Table entities allow 252
MIN_SEARCH = 4
MAX_SEARCH = 256
SEARCH_LIMIT = 50
PATCHABLE = ("name", "usernameAttribute", "deactivateBlockedUsers", "sendEnrollmentEmail", "enrollmentReminders",
             "nightlySync", "notifyEmails")
MAX_REMINDERS = 5
REMINDER_DAYS = (1, 60)
PATCHABLE += ("attributeMapping",)  # the directory property of each portal field (sync/attribute_mapping.py)
PATCHABLE += ("linkExistingUsers",)  # link existing Manual users in place (sync/linking.py)


async def create(svc: Services, caller: Caller, body: dict[str, Any]) -> Subscription:
    """A new, not yet authorized subscription of the caller's org."""
    _only(body, ("name",))
    name = _name(body.get("name", "Active Directory"))
    limit = svc.settings.max_subscriptions_per_org
    if len(await svc.subscriptions.list(caller.org)) >= limit:  # those being deleted count until they are gone
        raise Conflict(f"an organisation may have at most {limit} directories; delete one first",
                       code="too_many_subscriptions", limit=limit)
    now = svc.clock()
    sub = Subscription(org=caller.org, id=str(uuid.uuid4()), name=name,
                       created_at=now, updated_at=now)
    sub = await svc.subscriptions.add(sub)
    log.info("subscription created", extra={"org": caller.org, "subscription": sub.id})
    return sub


async def get(svc: Services, caller: Caller, sub_id: str, *, deleting: bool = False) -> Subscription:
    """The subscription if it belongs to the caller's org; 404 otherwise, whoever owns it."""
    sub = await svc.subscriptions.get(caller.org, sub_id) if _plausible_id(sub_id) else None
    if sub is None or (sub.deleting and not deleting):
        raise NotFound("no such subscription", code="subscription_not_found")
    return sub


async def list_all(svc: Services, caller: Caller) -> list[Subscription]:
    return [s for s in await svc.subscriptions.list(caller.org) if not s.deleting]


async def update(svc: Services, caller: Caller, sub_id: str, body: dict[str, Any]) -> Subscription:
    """Change the name, username attribute or options."""
    if not body:
        raise InvalidInput(f"send at least one of {', '.join(PATCHABLE)}", code="empty_patch")
    _only(body, PATCHABLE)
    changes: dict[str, Any] = {}
    if "name" in body:
        changes["name"] = _name(body["name"])
    if "usernameAttribute" in body:
        value = body["usernameAttribute"]
        if value not in USERNAME_ATTRIBUTES:
            raise InvalidInput(f"usernameAttribute must be one of {', '.join(USERNAME_ATTRIBUTES)}",
                               code="invalid_username_attribute")
        changes["username_attribute"] = value
    if "linkExistingUsers" in body:
        if body["linkExistingUsers"] not in LINK_MODES:
            raise InvalidInput(f"linkExistingUsers must be one of {', '.join(LINK_MODES)}",
                               code="invalid_link_existing_users")
        changes["link_existing_users"] = body["linkExistingUsers"]
    for field, attr in (("deactivateBlockedUsers", "deactivate_blocked_users"),
                        ("sendEnrollmentEmail", "send_enrollment_email"), ("nightlySync", "nightly_sync")):
        if field in body:
            if not isinstance(body[field], bool):
                raise InvalidInput(f"{field} must be true or false", code="invalid_field")
            changes[attr] = body[field]
    if "attributeMapping" in body:  # validated whole before anything is saved: a bad key changes nothing
        changes["attribute_mapping"] = parse_mapping(body["attributeMapping"])
    if "enrollmentReminders" in body:
        changes["enrollment_reminders"] = enrollment_reminders(body["enrollmentReminders"])
    addresses = notify_emails(body["notifyEmails"]) if "notifyEmails" in body else None
    asks: list = []

    async def change(sub: Subscription) -> Subscription:
        nonlocal asks
        sub = replace(sub, **changes, updated_at=svc.clock())
        if addresses is not None:  # new addresses are pending until their owners confirm (alert_recipients)
            sub, asks = with_notify_emails(sub, addresses, svc.clock())
        return sub

    sub = await modify(svc, caller, sub_id, change)
    if addresses is not None:
        # Also the addresses still pending: a confirmation whose row or message was lost is queued again; one that
        # went out finds its row sent and is not sent twice.
        await alert_recipients.ask(svc, sub, asks + pending_asks(sub, asks))
    return sub


def enrollment_reminders(value: Any) -> tuple[int, ...]:
    """Whole days after the first invitation, strictly increasing, each 1-60, at most 5 (``[]``: no reminders)."""
    low, high = REMINDER_DAYS
    if (not isinstance(value, list) or len(value) > MAX_REMINDERS
            or any(type(d) is not int or not low <= d <= high for d in value)
            or any(a >= b for a, b in zip(value, value[1:]))):
        raise InvalidInput(f"enrollmentReminders must be at most {MAX_REMINDERS} whole numbers of days, strictly "
                           f"increasing, each {low}-{high}", code="invalid_enrollment_reminders")
    return tuple(value)


async def delete(svc: Services, caller: Caller, sub_id: str) -> None:
    """Disconnect: the subscription's users become Manual and keep their status; refused while a run is active.

    The subscription is first marked as being deleted (which also stops new syncs), so a crash half-way leaves
    a state that the next DELETE finishes.
    """


    async def mark(sub: Subscription) -> Subscription:
        await refuse_if_busy(svc, sub, "delete the directory")
        return replace(sub, deleting=True, nightly_sync=False, updated_at=svc.clock())

    sub = await modify(svc, caller, sub_id, mark, deleting=True)
    await forget(svc, caller.org, sub.id, sub.azure_tenant_id)  # no more notifications, no delta links
    released = await _release_users(svc, caller.org, sub.id)
    await svc.users.unlink_all(caller.org, sub.id)  # after the release: a crash before it leaves the entries to redo
    await svc.groups.delete(caller.org, sub.id)
    await svc.runs.delete_all(caller.org, sub.id)
    if svc.alerts is not None:
        await svc.alerts.delete_all(caller.org, sub.id)
    await svc.subscriptions.delete(replace(sub, etag=None))
    log.info("subscription deleted", extra={"org": caller.org, "subscription": sub.id, "users_released": released})


async def _release_users(svc: Services, org: str, sub_id: str) -> int:
    """Hand the subscription's users back to the admins (Manual), keeping their status."""

    def manual(user: User) -> tuple[User, str]:
        return replace(user, source_type=SourceType.MANUAL, subscription_id=None, azure_object_id=None,
                       group_ids=frozenset(), updated_at=svc.clock()), user.username

    released = 0
    batch = [manual(u) async for u in svc.users.subscription_users(org, sub_id)]
    while batch:
        outcomes = await svc.users.update(batch)
        await events.users_unlinked(svc, org, sub_id, [u for (u, _), o in zip(batch, outcomes) if isinstance(o, Updated)])
        stale = [user.id for (user, _), outcome in zip(batch, outcomes) if isinstance(outcome, Stale)]
        released += len(batch) - len(stale)
        fresh = await svc.users.get_many(org, stale)
        batch = [manual(u) for u in fresh.values() if u.subscription_id == sub_id]
    return released


async def modify(svc: Services, caller: Caller, sub_id: str,
                 change: Callable[[Subscription], Awaitable[Subscription]], *, deleting: bool = False) -> Subscription:
    """Read, change and write a subscription, retrying when another writer got there first."""
    try:
        return await optimistic(lambda: get(svc, caller, sub_id, deleting=deleting), change, svc.subscriptions.save)
    except PreconditionFailed:
        raise Conflict("the subscription is being changed by someone else; try again", code="concurrent_update") from None


# ---------------------------------------------------------------- groups


async def search_groups(svc: Services, caller: Caller, sub_id: str, text: str | None) -> list[dict[str, Any]]:
    """Groups of the subscription's tenant whose name matches ``text`` (at least 4 characters)."""
    text = (text or "").strip()
    if len(text) < MIN_SEARCH:
        raise InvalidInput(f"type at least {MIN_SEARCH} characters to search groups", code="search_too_short")
    if len(text) > MAX_SEARCH:
        raise InvalidInput(f"the search text is longer than {MAX_SEARCH} characters", code="search_too_long")
    if any(ord(c) < 32 for c in text):
        raise InvalidInput("the search text contains control characters", code="invalid_search")
    sub = await _authorized(svc, caller, sub_id)
    groups = await _directory_call(svc, sub, svc.directory.search_groups(sub.azure_tenant_id, text, SEARCH_LIMIT))
    # Whether a sync can read each group's members (a hidden membership needs Member.Read.Hidden): the admin sees it
    # before selecting. The token the search just used tells; no further Graph request.
    granted = await _directory_call(svc, sub, svc.directory.granted_permissions(sub.azure_tenant_id))
    return [g.to_api(granted) for g in groups]


async def select_groups(svc: Services, caller: Caller, sub_id: str, body: dict[str, Any]) -> Subscription:
    """Store the groups to sync, validated against the directory (names kept for the grids)."""
    _only(body, ("groupIds",))
    ids = body.get("groupIds")
    if not isinstance(ids, list) or not all(isinstance(i, str) and i.strip() for i in ids):
        raise InvalidInput("groupIds must be a list of group ids", code="invalid_group_ids")
    unique = list(dict.fromkeys(i.strip() for i in ids))
    if len(unique) > MAX_GROUPS:
        raise InvalidInput(f"select at most {MAX_GROUPS} groups", code="too_many_groups")
    malformed = [i for i in unique if not _plausible_id(i)]
    if malformed:
        raise InvalidInput(f"not group ids of this directory: {', '.join(malformed[:20])}", code="unknown_groups",
                           unknownIds=malformed)
    sub = await _authorized(svc, caller, sub_id)
    found = await _directory_call(svc, sub, svc.directory.get_groups(sub.azure_tenant_id, unique)) if unique else {}
    unknown = [i for i in unique if i not in found]
    if unknown:
        raise InvalidInput(f"not group ids of this directory: {', '.join(unknown[:20])}", code="unknown_groups",
                           unknownIds=unknown)
    refs = tuple(GroupRef(i, found[i].display_name, found[i].hidden_membership) for i in unique)

    async def choose(current: Subscription) -> Subscription:
        return replace(current, groups=refs, updated_at=svc.clock())

    return await modify(svc, caller, sub_id, choose)


async def _authorized(svc: Services, caller: Caller, sub_id: str) -> Subscription:
    sub = await get(svc, caller, sub_id)
    if sub.status == SubscriptionStatus.CONSENT_REVOKED:
        raise AuthorizationLost("the directory's admin consent was revoked; authorize again", code="consent_revoked")
    if sub.status != SubscriptionStatus.AUTHORIZED or not sub.azure_tenant_id:
        raise Conflict("authorize this directory first (admin consent)", code="not_authorized")
    return sub


async def _directory_call(svc: Services, sub: Subscription, call: Awaitable[Any]) -> Any:
    try:
        return await call
    except AuthorizationLost as exc:
        left = consent_propagation_left(sub.consented_at, svc.clock(), svc.settings.consent_propagation_grace_s)
        if exc.may_be_propagating and left > 0:
            log.info("consent still propagating", extra={"org": sub.org, "subscription": sub.id})
            raise Transient("Microsoft is still applying the new admin consent; try again in a few seconds",
                            retry_after=min(5.0, left), code="consent_propagating") from None
        await mark_consent_revoked(svc, sub.org, sub.id)
        raise AuthorizationLost("the directory no longer grants access; ask a Global Admin to authorize again",
                                code="consent_revoked") from None
    except CredentialInvalid:
        raise CredentialInvalid("the service's own Microsoft credential is invalid or expired; the operator has been "
                                "alerted in the logs") from None
    except Transient as exc:
        raise Transient("Microsoft Graph is busy or unavailable; try again shortly",
                        retry_after=exc.retry_after or 5, code="directory_unavailable") from None


async def mark_consent_revoked(svc: Services, org: str, sub_id: str, *, run_id: str | None = None) -> None:
    """Record that the tenant withdrew consent, so the portal asks for it again, and tell the admins (once: only
    the call that moves the subscription from ``authorized`` does). ``run_id``: the run that found out."""
    caller = Caller(org=org, subject="directory-sync", role="Owner")

    async def revoke(sub: Subscription) -> Subscription | None:
        if sub.status != SubscriptionStatus.AUTHORIZED:
            return None  # already marked (by another worker, or a search): not a new event
        return replace(sub, status=SubscriptionStatus.CONSENT_REVOKED, updated_at=svc.clock())

    try:
        revoked = await modify(svc, caller, sub_id, revoke)
    except NotFound:
        return
    if revoked is not None:
        log.warning("admin consent revoked", extra={"org": org, "subscription": sub_id})
        await alerts.consent_lost(svc, revoked, run_id=run_id)
        try:
            await events.consent_revoked(svc, revoked, run_id)
        except Exception:  # like the alert: the caller is answering the loss itself; the status still tells
            log.warning("consent_revoked event could not be recorded", exc_info=True,
                        extra={"org": org, "subscription": sub_id})
    await forget(svc, org, sub_id, None)  # Graph cannot be asked any more; its subscriptions expire on their own


# ---------------------------------------------------------------- helpers


def _only(body: dict[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(unknown)}; allowed: {', '.join(allowed)}", code="unknown_field")


def _name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput("name must be a non-empty string", code="invalid_name")
    value = value.strip()
    if len(value) > MAX_NAME_LENGTH or any(ord(c) < 32 for c in value):
        raise InvalidInput(f"name must be at most {MAX_NAME_LENGTH} printable characters", code="invalid_name")
    return value


def _plausible_id(value: str) -> bool:
    """Ids we hand out and Entra object ids are short and printable; anything else cannot exist."""
    return bool(value) and len(value) <= 128 and all(c.isalnum() or c in "-_." for c in value)
