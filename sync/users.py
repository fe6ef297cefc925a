"""Use cases of the Users grid and Groups grid, manual users, and completing enrollment."""
from __future__ import annotations

import hmac
import re
import uuid
from dataclasses import replace
from datetime import datetime
from typing import Any, Awaitable, Callable

from . import signing
from .composition import Services
from .concurrency import optimistic
from .decisions import Stamp, address_tag, created_by_admin, switched_by_admin
from .errors import Conflict, Gone, InvalidInput, NotFound, PreconditionFailed
from .inputs import page_size
from .model import Caller, SourceType, SyncedGroup, User, UserStatus
from .ports import Created, Stale, UserFilter, UsernameTaken

ENROLLMENT_PURPOSE = "enrollment"
MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 50
MAX_TEXT = 256
EMAIL = re.compile(r"^[^@\s<>\"',;]+@[^@\s<>\"',;]+\.[^@\s<>\"',;]+$")


async def group_names(svc: Services, org: str) -> dict[str, str]:
    """Names of the groups currently selected by the org's subscriptions."""
    return {g.id: g.display_name for sub in await svc.subscriptions.list(org) if not sub.deleting for g in sub.groups}


async def page(svc: Services, caller: Caller, params: dict[str, str]) -> dict[str, Any]:
    """One page of the Users grid, filtered."""
    allowed = {"status", "sourceType", "search", "enrollment", "pageSize", "continuationToken"}
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise InvalidInput(f"unknown query parameter(s): {', '.join(unknown)}", code="unknown_parameter")
    status = params.get("status") or None
    if status not in (None, UserStatus.ACTIVE, UserStatus.INACTIVE):
        raise InvalidInput("status must be Active or Inactive", code="invalid_status")
    source = params.get("sourceType") or None
    if source not in (None, SourceType.AD_SYNC, SourceType.MANUAL):
        raise InvalidInput("sourceType must be AdSync or Manual", code="invalid_source_type")
    enrollment = params.get("enrollment") or None
    if enrollment not in (None, "enrolled", "not_enrolled"):
        raise InvalidInput("enrollment must be enrolled or not_enrolled", code="invalid_enrollment")
    search = params.get("search") or None
    if search is not None and (len(search) > MAX_TEXT or any(ord(c) < 32 for c in search)):
        raise InvalidInput(f"search must be at most {MAX_TEXT} printable characters", code="invalid_search")
    size = page_size(params.get("pageSize"), default=DEFAULT_PAGE_SIZE, maximum=MAX_PAGE_SIZE)
    users, token = await svc.users.page(caller.org, UserFilter(status, source, search, enrollment), size,
                                        params.get("continuationToken") or None)
    names = await group_names(svc, caller.org)
    return {"users": [u.to_api(names) for u in users], "continuationToken": token}


async def get(svc: Services, caller: Caller, user_id: str) -> User:
    user = await svc.users.get(caller.org, user_id) if _plausible_id(user_id) else None
    if user is None:
        raise NotFound("no such user", code="user_not_found")
    return user


async def history(svc: Services, caller: Caller, user_id: str) -> dict[str, Any]:
    """``GET /api/users/{userId}/history``: what changed the user and why, newest first, within the retention."""
    user = await get(svc, caller, user_id)
    keep_since = _admin_stamp(svc).keep_since  # also before the nightly has dropped what expired
    return {"history": [e.to_api() for e in user.history if e.at >= keep_since]}


def _admin_stamp(svc: Services) -> Stamp:
    return Stamp.of(None, "manual", svc.clock(), svc.settings.history_retention_days)


async def create_manual(svc: Services, caller: Caller, body: dict[str, Any]) -> User:
    """A user the admins manage by hand in the portal."""
    unknown = sorted(set(body) - {"username", "email", "displayName"})
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(unknown)}", code="unknown_field")
    username = _text(body.get("username"), "username")
    display = _text(body.get("displayName", username), "displayName")
    email = body.get("email")
    if email is not None:
        email = _text(email, "email")
        if not EMAIL.match(email):
            raise InvalidInput("email is not an e-mail address", code="invalid_email")
    now = svc.clock()
    user = User(org=caller.org, id=str(uuid.uuid4()), username=username, email=email, display_name=display,
                source_type=SourceType.MANUAL, created_at=now, updated_at=now)
    user = created_by_admin(user, _admin_stamp(svc))
    [outcome] = await svc.users.create([user])
    if isinstance(outcome, UsernameTaken):
        raise Conflict(f"the username '{username}' is already taken in this organisation", code="username_taken")
    assert isinstance(outcome, Created)
    return outcome.user


async def change_user(svc: Services, org: str, user_id: str,
                      change: Callable[[User], Awaitable[User | None]]) -> User | None:
    """Read-change-write one user conditionally on its ETag (re-reading when someone else won); keeps the username."""

    async def write(user: User) -> User:
        [outcome] = await svc.users.update([(user, user.username)])
        if isinstance(outcome, Stale):
            raise PreconditionFailed("the user changed meanwhile")
        return outcome.user

    try:
        return await optimistic(lambda: svc.users.get(org, user_id), change, write)
    except PreconditionFailed:
        raise Conflict("the user is being changed by someone else; try again", code="concurrent_update") from None


async def set_active(svc: Services, caller: Caller, user_id: str, active: bool) -> User:
    """Activate or deactivate a Manual user; synced users are managed in Azure only."""
    user = await get(svc, caller, user_id)
    status = UserStatus.ACTIVE if active else UserStatus.INACTIVE

    async def switch(current: User) -> User | None:
        if current.source_type == SourceType.AD_SYNC:
            action = ("unblock sign-in or add them to a synced group" if active
                      else "block sign-in or remove them from the synced groups")
            raise Conflict(f"{current.username} is synced from Azure Active Directory: {action} in Azure (Entra ID)",
                           code="managed_by_directory")
        if current.status == status:
            return None
        return switched_by_admin(current, active, _admin_stamp(svc))

    return await change_user(svc, caller.org, user.id, switch) or await get(svc, caller, user_id)


async def synced_groups(svc: Services, caller: Caller) -> list[SyncedGroup]:
    """The Groups grid: synced groups that are still selected, by name."""
    selected = {(sub.id, g.id) for sub in await svc.subscriptions.list(caller.org) if not sub.deleting for g in sub.groups}
    groups = [g for g in await svc.groups.list(caller.org) if (g.subscription_id, g.id) in selected]
    return sorted(groups, key=lambda g: g.display_name.lower())


def enrollment_token(secret: str, org: str, user_id: str, email: str, expires: datetime,
                     source_type: str = SourceType.AD_SYNC) -> str:
    """The signed token in an invitation link: names the org, the user and (as a digest) the address it was sent to,
    and expires. A link is good only while the user still has that address. A Manual user's link (an administrator's
    resend) says so (``src``): a synced user's link is withdrawn when its directory is disconnected, that one is not."""
    claims = {"org": org, "uid": user_id, "to": address_tag(email), "exp": int(expires.timestamp())}
    if source_type != SourceType.AD_SYNC:
        claims["src"] = source_type
    return signing.sign(secret, ENROLLMENT_PURPOSE, claims)


def invitation_revoked(claims: dict[str, Any], user: User) -> bool:
    """Was the link sent while the user was synced, and its directory disconnected since (the invitation went with
    it)? Links without ``src`` were sent to synced users."""
    return user.source_type != claims.get("src", SourceType.AD_SYNC)


def enrollment_claims(svc: Services, caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
    """The claims of the enrollment link in ``body`` (``{"token"}``), signed by us for the caller's org: expired or
    not (each use case decides that)."""
    unknown = sorted(set(body) - {"token"})
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(unknown)}", code="unknown_field")
    token = body.get("token")
    if not isinstance(token, str) or not token:
        raise InvalidInput("token is required", code="invalid_token")
    claims = signing.verify(svc.settings.signing_secret, ENROLLMENT_PURPOSE, token)
    if (claims.get("org") != caller.org or not isinstance(claims.get("uid"), str)
            or not isinstance(claims.get("exp"), int) or ("to" in claims and not isinstance(claims["to"], str))):
        raise InvalidInput("the token is not valid for this organisation", code="invalid_token")
    return claims


async def complete_enrollment(svc: Services, caller: Caller, body: dict[str, Any]) -> User:
    """The portal reports that the user behind an invitation token finished enrolling."""
    claims = enrollment_claims(svc, caller, body)
    if claims["exp"] < int(svc.clock().timestamp()):
        raise Gone("the enrollment link has expired; ask an administrator for a new invitation", code="token_expired")
    issued = claims["exp"] - svc.settings.enrollment_token_ttl_hours * 3600

    async def enrol(user: User) -> User:
        if user.enrolled_at is not None:
            raise Conflict("this enrollment link was already used", code="token_used")
        if invitation_revoked(claims, user):
            # The directory that invited them was disconnected: the invitation went with it.
            raise Gone("this invitation was withdrawn when its directory was disconnected", code="invitation_revoked")
        if not user.email or not sent_to_current_address(claims, user, issued):
            # The directory corrected the address: only the invitation sent to the new one may enrol.
            raise Gone("this enrollment link was sent to an address the user no longer has; the current address gets "
                       "an invitation of its own", code="address_changed")
        if user.status != UserStatus.ACTIVE:
            raise Conflict("this user is not active (blocked or removed in the directory) and cannot enroll",
                           code="user_inactive")
        return replace(user, enrolled_at=svc.clock(), updated_at=svc.clock())

    user = await change_user(svc, caller.org, claims["uid"], enrol)
    if user is None:
        raise InvalidInput("the token names no user of this organisation", code="invalid_token")
    return user


def sent_to_current_address(claims: dict[str, Any], user: User, issued: int) -> bool:
    """Does the user still have the address the link was sent to? A link names it (as a digest); one minted before
    links did (no ``to``) was sent to the address the user had then: the user's history tells whether it changed."""
    if "to" in claims:
        return hmac.compare_digest(claims["to"], address_tag(user.email))
    return not any("email" in e.fields and e.at.timestamp() >= issued for e in user.history)


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{name} must be a non-empty string", code="invalid_field")
    value = value.strip()
    if len(value) > MAX_TEXT or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise InvalidInput(f"{name} must be at most {MAX_TEXT} printable characters", code="invalid_field")
    return value


def _plausible_id(value: str) -> bool:
    return bool(value) and len(value) <= 64 and all(c.isalnum() or c == "-" for c in value)
