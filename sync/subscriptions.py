"""Use cases of the "Directory Sync" page: subscriptions, admin consent, username attribute, groups."""
from __future__ import annotations

import secrets
import uuid
from dataclasses import replace
from datetime import timedelta
from typing import Any, Awaitable, Callable
from urllib.parse import urlencode

from . import signing
from .composition import Services
from .concurrency import optimistic
from .errors import (
    AuthorizationLost,
    Conflict,
    InvalidInput,
    NotFound,
    PreconditionFailed,
    SyncError,
    Transient,
)
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
from .ports import Stale

log = get_logger(__name__)

CONSENT_STATE_PURPOSE = "consent-state"
CONSENT_STATE_TTL = timedelta(minutes=10)
MAX_NAME_LENGTH = 200
MAX_GROUPS = 200  # each selected group is a property on every member's row; Table entities allow 252
MIN_SEARCH = 4
MAX_SEARCH = 256
SEARCH_LIMIT = 50
PATCHABLE = ("name", "usernameAttribute", "deactivateBlockedUsers", "sendEnrollmentEmail", "nightlySync")


async def create(svc: Services, caller: Caller, body: dict[str, Any]) -> Subscription:
    """A new, not yet authorized subscription of the caller's org."""
    _only(body, ("name",))
    now = svc.clock()
    sub = Subscription(org=caller.org, id=str(uuid.uuid4()), name=_name(body.get("name", "Active Directory")),
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
    for field, attr in (("deactivateBlockedUsers", "deactivate_blocked_users"),
                        ("sendEnrollmentEmail", "send_enrollment_email"), ("nightlySync", "nightly_sync")):
        if field in body:
            if not isinstance(body[field], bool):
                raise InvalidInput(f"{field} must be true or false", code="invalid_field")
            changes[attr] = body[field]

    async def change(sub: Subscription) -> Subscription:
        return replace(sub, **changes, updated_at=svc.clock())

    return await modify(svc, caller, sub_id, change)


async def delete(svc: Services, caller: Caller, sub_id: str) -> None:
    """Disconnect: the subscription's users become Manual and keep their status; refused while a run is active.

    The subscription is first marked as being deleted (which also stops new syncs), so a crash half-way leaves
    a state that the next DELETE finishes.
    """

    from .runs import refuse_if_busy  # runs builds on this module; the check is shared with starting a sync

    async def mark(sub: Subscription) -> Subscription:
        await refuse_if_busy(svc, sub, "delete the directory")
        return replace(sub, deleting=True, nightly_sync=False, updated_at=svc.clock())

    sub = await modify(svc, caller, sub_id, mark, deleting=True)
    released = await _release_users(svc, caller.org, sub.id)
    await svc.groups.delete(caller.org, sub.id)
    await svc.runs.delete_all(caller.org, sub.id)
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


# ---------------------------------------------------------------- admin consent


async def authorize_url(svc: Services, caller: Caller, sub_id: str) -> str:
    """The Microsoft admin-consent URL a Global Admin of the customer's tenant must open."""
    nonce = secrets.token_urlsafe(16)

    async def remember(sub: Subscription) -> Subscription:
        return replace(sub, consent_nonce=nonce, updated_at=svc.clock())

    sub = await modify(svc, caller, sub_id, remember)
    s = svc.settings
    expires = int((svc.clock() + CONSENT_STATE_TTL).timestamp())
    state = signing.sign(s.signing_secret, CONSENT_STATE_PURPOSE, {"org": sub.org, "sub": sub.id, "n": nonce, "exp": expires})
    query = urlencode({"client_id": s.graph_client_id, "scope": "https://graph.microsoft.com/.default",
                       "redirect_uri": s.consent_redirect_uri, "state": state})
    return f"{s.authority_host}/organizations/v2.0/adminconsent?{query}"


async def complete_consent(svc: Services, params: dict[str, str]) -> str:
    """Handle Microsoft's redirect after admin consent; returns where to send the browser (always the portal)."""
    s = svc.settings
    back = f"{s.portal_base_url}{s.portal_consent_return_path}"
    try:
        claims = _consent_claims(svc, params.get("state", ""))
    except SyncError as exc:
        log.warning("consent callback refused", extra={"reason": exc.code})
        return f"{back}?{urlencode({'consent': 'error', 'error': exc.code})}"
    outcome = {"subscriptionId": claims["sub"]}
    error = params.get("error")
    if error:
        # Consumes the state too, so the same link cannot be replayed later.
        try:
            await _consume(svc, claims, tenant=None)
        except SyncError:  # already used (a reload of Microsoft's error page) or the subscription is gone
            pass
        outcome.update(consent="error", error=_safe_code(error))
        return f"{back}?{urlencode(outcome)}"
    tenant = (params.get("tenant") or "").strip()
    if params.get("admin_consent", "").lower() != "true" or not _plausible_id(tenant):
        outcome.update(consent="error", error="consent_not_granted")
        return f"{back}?{urlencode(outcome)}"
    try:
        await _consume(svc, claims, tenant=tenant)
    except SyncError as exc:
        outcome.update(consent="error", error=exc.code)
        return f"{back}?{urlencode(outcome)}"
    outcome["consent"] = "granted"
    return f"{back}?{urlencode(outcome)}"


def _consent_claims(svc: Services, state: str) -> dict[str, Any]:
    if not state:
        raise InvalidInput("the consent callback carried no state", code="missing_state")
    claims = signing.verify(svc.settings.signing_secret, CONSENT_STATE_PURPOSE, state)
    if not all(isinstance(claims.get(k), str) for k in ("org", "sub", "n")) or not isinstance(claims.get("exp"), int):
        raise InvalidInput("the consent state is malformed", code="invalid_state")
    if claims["exp"] < int(svc.clock().timestamp()):
        raise InvalidInput("the consent link has expired; start again from the portal", code="state_expired")
    return claims


async def _consume(svc: Services, claims: dict[str, Any], tenant: str | None) -> None:
    """Use the state's nonce once; with a tenant, record consent."""
    caller = Caller(org=claims["org"], subject="microsoft-consent", role="Owner")

    async def apply(sub: Subscription) -> Subscription:
        if sub.consent_nonce is None or not secrets.compare_digest(sub.consent_nonce, claims["n"]):
            raise InvalidInput("this consent link was already used or replaced by a newer one", code="state_used")
        if tenant is None:
            return replace(sub, consent_nonce=None, updated_at=svc.clock())
        if sub.azure_tenant_id and sub.azure_tenant_id != tenant:
            raise Conflict("consent came from a different tenant than this directory is connected to",
                           code="tenant_mismatch")
        return replace(sub, consent_nonce=None, azure_tenant_id=tenant, status=SubscriptionStatus.AUTHORIZED,
                       updated_at=svc.clock())

    try:
        sub = await modify(svc, caller, claims["sub"], apply)
    except NotFound:
        raise InvalidInput("the subscription no longer exists", code="subscription_not_found") from None
    if tenant:
        log.info("admin consent recorded", extra={"org": sub.org, "subscription": sub.id})


def _safe_code(text: str) -> str:
    """Microsoft's error code, reduced to characters that cannot smuggle anything into the portal URL."""
    cleaned = "".join(c for c in text if c.isalnum() or c == "_")[:64]
    return cleaned or "consent_error"


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
    return [g.to_api() for g in groups]


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
    refs = tuple(GroupRef(i, found[i].display_name) for i in unique)

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
    except AuthorizationLost:
        await mark_consent_revoked(svc, sub.org, sub.id)
        raise AuthorizationLost("the directory no longer grants access; ask a Global Admin to authorize again",
                                code="consent_revoked") from None
    except Transient as exc:
        raise Transient("Microsoft Graph is busy or unavailable; try again shortly",
                        retry_after=exc.retry_after or 5, code="directory_unavailable") from None


async def mark_consent_revoked(svc: Services, org: str, sub_id: str) -> None:
    """Record that the tenant withdrew consent, so the portal asks for it again."""
    caller = Caller(org=org, subject="directory-sync", role="Owner")

    async def revoke(sub: Subscription) -> Subscription:
        return replace(sub, status=SubscriptionStatus.CONSENT_REVOKED, updated_at=svc.clock())

    try:
        await modify(svc, caller, sub_id, revoke)
        log.warning("admin consent revoked", extra={"org": org, "subscription": sub_id})
    except NotFound:
        pass


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
