"""The decisions of a sync as plain functions: who a directory user becomes, what changed, whom to deprovision."""
from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Iterable

from .mailbox import is_single_address
from .model import (
    DirectoryUser,
    EmailState,
    MemberState,
    ScopeState,
    SourceType,
    StatusReason,
    Subscription,
    User,
    UserStatus,
)

MAX_USERNAME_LENGTH = 256


class Change:
    CREATED = "created"
    UPDATED = "updated"
    REACTIVATED = "reactivated"
    DEACTIVATED = "deactivated"
    UNCHANGED = "unchanged"


@dataclass(frozen=True)
class Desired:
    """What the directory says a portal user should look like."""

    azure_object_id: str
    username: str
    email: str | None
    display_name: str
    given_name: str | None
    surname: str | None
    status: str
    status_reason: str | None
    email_refused: bool = False  # the directory's mail was not exactly one address: synced without e-mail


@dataclass(frozen=True)
class Skip:
    """A directory user we do not write, and why."""

    code: str
    message: str


def synced_user_id(org: str, subscription_id: str, azure_object_id: str) -> str:
    """The stable id of a synced user: the same Azure user in the same subscription is always the same row."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"dirsync:{org}:{subscription_id}:{azure_object_id}"))


def email_of(user: DirectoryUser) -> str | None:
    """``mail``, else the UPN unless it is a guest's external UPN (``…#EXT#@…``), which receives no mail."""
    if user.mail and user.mail.strip():
        return user.mail.strip()
    upn = (user.user_principal_name or "").strip()
    if upn and "#EXT#" not in upn.upper() and "@" in upn:
        return upn
    return None


def desired_user(user: DirectoryUser, sub: Subscription) -> Desired | Skip:
    """The portal user a directory user maps to under the subscription's options, or why it is skipped."""
    username = user.attribute(sub.username_attribute)
    label = user.display_name or user.user_principal_name or user.id
    if username is None:
        return Skip("missing_username_attribute", f"{label} ({user.id}) has no {sub.username_attribute}")
    if len(username) > MAX_USERNAME_LENGTH or any(ord(c) < 32 or ord(c) == 127 for c in username):
        return Skip("invalid_username", f"{label} ({user.id}) has a {sub.username_attribute} that cannot be a username")
    blocked = sub.deactivate_blocked_users and user.account_enabled is False
    email = email_of(user)
    refused = email is not None and not is_single_address(email)
    return Desired(
        azure_object_id=user.id,
        username=username,
        email=None if refused else email,
        email_refused=refused,
        display_name=(user.display_name or username).strip(),
        given_name=user.given_name,
        surname=user.surname,
        status=UserStatus.INACTIVE if blocked else UserStatus.ACTIVE,
        status_reason=StatusReason.BLOCKED if blocked else None,
    )


def _fields(u: User | Desired | MemberState) -> tuple:
    return (u.username, u.email, u.display_name, u.given_name, u.surname, u.status, u.status_reason)


def fingerprint(u: User | Desired | MemberState) -> bytes:
    """8 bytes that change when anything the directory decides about a user changes (to compare, not to store)."""
    return hashlib.blake2b(repr(_fields(u)).encode(), digest_size=8).digest()


def change_of(existing: User | None, desired: Desired) -> str:
    """How writing ``desired`` over ``existing`` is counted."""
    if existing is None:
        return Change.CREATED
    if _fields(existing) == _fields(desired):
        return Change.UNCHANGED
    if existing.status == UserStatus.INACTIVE and desired.status == UserStatus.ACTIVE:
        return Change.REACTIVATED
    if existing.status == UserStatus.ACTIVE and desired.status == UserStatus.INACTIVE:
        return Change.DEACTIVATED
    return Change.UPDATED


def _directory_fields(desired: Desired) -> dict[str, str | None]:
    """The User fields the directory decides."""
    return {"username": desired.username, "email": desired.email, "display_name": desired.display_name,
            "given_name": desired.given_name, "surname": desired.surname, "status": desired.status,
            "status_reason": desired.status_reason}


def new_user(org: str, sub: Subscription, desired: Desired, group_id: str, run_id: str, now: datetime) -> User:
    """A user first seen in this run; invitations are decided here, atomically with the row's creation."""
    invite = sub.send_enrollment_email and desired.status == UserStatus.ACTIVE and desired.email is not None
    return User(
        org=org,
        id=synced_user_id(org, sub.id, desired.azure_object_id),
        **_directory_fields(desired),
        source_type=SourceType.AD_SYNC,
        subscription_id=sub.id,
        azure_object_id=desired.azure_object_id,
        group_ids=frozenset({group_id}),
        enrollment_email=EmailState.QUEUED if invite else None,
        last_run_id=run_id,
        last_change=Change.CREATED,
        created_at=now,
        updated_at=now,
    )


def updated_user(existing: User, desired: Desired, group_id: str, selected: Iterable[str], run_id: str,
                 now: datetime) -> User:
    """``existing`` brought in line with the directory, as a member of ``group_id``; memberships of groups no longer
    ``selected`` are dropped on the way (a row holds at most 252 properties)."""
    return replace(
        existing,
        **_directory_fields(desired),
        group_ids=existing.group_ids.intersection(selected) | {group_id},
        last_run_id=run_id,
        last_change=change_of(existing, desired),
        updated_at=now,
    )


def in_scope(user: User | ScopeState, group_ids: Iterable[str]) -> bool:
    """Is the user a member of any of the run's groups?"""
    return not user.group_ids.isdisjoint(group_ids)


def should_deprovision(user: User | ScopeState, group_ids: Iterable[str]) -> bool:
    """An active synced user who is in none of the selected groups any more."""
    return user.source_type == SourceType.AD_SYNC and user.status == UserStatus.ACTIVE and not in_scope(user, group_ids)


def deprovisioned(user: User, run_id: str, now: datetime) -> User:
    """Inactive because the directory no longer lists the user in a selected group; never deleted. It is a member of
    no selected group, so the memberships it still holds (of groups since deselected) go."""
    return replace(user, status=UserStatus.INACTIVE, status_reason=StatusReason.REMOVED, last_run_id=run_id,
                   last_change=Change.DEACTIVATED, group_ids=frozenset(), updated_at=now)


def guard_trips(to_deactivate: int, active_synced: int, percent: float, min_users: int) -> bool:
    """True when deactivating this many users looks like a mistake that a person should confirm."""
    return to_deactivate > min_users and to_deactivate * 100 > active_synced * percent


def consent_propagation_left(consented_at: datetime | None, now: datetime, grace_s: float) -> float:
    """Seconds left of the window after a consent in which Microsoft may still answer as if it were missing.

    Microsoft documents that a fresh consent takes a while to replicate: tokens can come without the new roles and
    token requests can fail with AADSTS65001/700016 (https://learn.microsoft.com/entra/identity-platform/
    reference-error-codes). Inside the window such answers mean "wait", outside it "consent lost".
    """
    if consented_at is None:
        return 0.0
    return max(0.0, grace_s - (now - consented_at).total_seconds())
