"""The decisions of a sync as plain functions: who a directory user becomes, what changed, whom to deprovision."""
from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Iterable

from .attribute_mapping import clean
from .mailbox import is_single_address
from .model import (
    ChangeKind,
    ChangeReason,
    DirectoryUser,
    EmailState,
    HistoryEntry,
    MemberState,
    ScopeState,
    SourceType,
    StatusReason,
    Subscription,
    User,
    UserChange,
    UserStatus,
)
from .phones import e164

MAX_USERNAME_LENGTH = 256
HISTORY_MAX_ENTRIES = 50  # per user row; older ones go (and, after the retention days, any)
PROPAGATION_FIRST_WAIT_S = 5.0  # a job that meets a still-propagating consent waits this long, then twice as long...
PROPAGATION_MAX_WAIT_S = 60.0  # ...up to this: a 10-minute window is about fourteen scheduled copies, not 120
IN_PROCESS_WAIT_S = 5.0  # the Graph adapter waits out a Retry-After up to this long itself (WORKER_WAIT_S)
MAX_RETRY_AFTER_S = 900.0  # a longer Retry-After is honoured for 15 minutes, then the job tries again


class Change:
    CREATED = ChangeKind.CREATED
    UPDATED = ChangeKind.UPDATED
    REACTIVATED = ChangeKind.REACTIVATED
    DEACTIVATED = ChangeKind.DEACTIVATED
    LINKED = ChangeKind.LINKED
    UNCHANGED = "unchanged"


@dataclass(frozen=True)
class Stamp:
    """Who changes users and when: a run (``run_id`` None for an administrator in the portal), its trigger, the time,
    and the oldest history entry still kept (the retention setting)."""

    run_id: str | None
    trigger: str
    now: datetime
    keep_since: datetime

    @classmethod
    def of(cls, run_id: str | None, trigger: str, now: datetime, retention_days: int) -> "Stamp":
        return cls(run_id, trigger, now, now - timedelta(days=retention_days))


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
    phone: str | None = None  # E.164
    department: str | None = None
    job_title: str | None = None
    employee_id: str | None = None
    office_location: str | None = None
    custom_attributes: dict[str, str] = field(default_factory=dict, hash=False)
    phone_refused: bool = False  # the mapped phone was no valid number: synced without it (an invalid_phone error)


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


def desired_user(user: DirectoryUser, sub: Subscription, default_region: str | None = None) -> Desired | Skip:
    """The portal user a directory user maps to under the subscription's options and attribute mapping, or why it is
    skipped. Mapped values are trimmed (empty is none) and a phone is put in E.164, read in the user's
    ``usageLocation`` or else ``default_region``: so values compare equal whenever the directory has not changed."""
    username = user.attribute(sub.username_attribute)
    label = user.display_name or user.user_principal_name or user.id
    if username is None:
        return Skip("missing_username_attribute", f"{label} ({user.id}) has no {sub.username_attribute}")
    if len(username) > MAX_USERNAME_LENGTH or any(ord(c) < 32 or ord(c) == 127 for c in username):
        return Skip("invalid_username", f"{label} ({user.id}) has a {sub.username_attribute} that cannot be a username")
    mapping = sub.attribute_mapping
    blocked = sub.deactivate_blocked_users and user.account_enabled is False

    def mapped(portal_field: str) -> str | None:
        source = mapping.source(portal_field)
        return clean(user.value(source)) if source else None

    email_source = mapping.source("email")
    email = email_of(user) if email_source == "mail" else mapped("email")
    if email_source != "mail" and email is not None and "#EXT#" in email.upper():
        email = None  # a guest's external UPN receives no mail, whichever property holds it
    refused = email is not None and not is_single_address(email)

    def named(portal_field: str) -> str | None:
        # A name from its namesake as Graph has it (not trimmed: as it was synced before mappings existed).
        return user.value(portal_field) if mapping.source(portal_field) == portal_field else mapped(portal_field)

    phone, phone_refused = e164(mapped("phone"), clean(user.value("usageLocation")) or default_region)
    return Desired(
        azure_object_id=user.id,
        username=username,
        email=None if refused else email,
        email_refused=refused,
        display_name=(named("displayName") or username).strip(),
        given_name=named("givenName"),
        surname=named("surname"),
        status=UserStatus.INACTIVE if blocked else UserStatus.ACTIVE,
        status_reason=StatusReason.BLOCKED if blocked else None,
        phone=phone,
        phone_refused=phone_refused,
        department=mapped("department"),
        job_title=mapped("jobTitle"),
        employee_id=mapped("employeeId"),
        office_location=mapped("officeLocation"),
        custom_attributes={name: v for name, source in mapping.custom if (v := clean(user.value(source))) is not None},
    )


def _fields(u: User | Desired | MemberState) -> tuple:
    return (u.username, u.email, u.display_name, u.given_name, u.surname, u.status, u.status_reason, u.phone,
            u.department, u.job_title, u.employee_id, u.office_location, tuple(sorted(u.custom_attributes.items())))


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
            "status_reason": desired.status_reason, "phone": desired.phone, "department": desired.department,
            "job_title": desired.job_title, "employee_id": desired.employee_id,
            "office_location": desired.office_location, "custom_attributes": dict(desired.custom_attributes)}


_API_NAMES = (("username", "username"), ("email", "email"), ("display_name", "displayName"),
              ("given_name", "givenName"), ("surname", "surname"), ("status", "status"),
              ("status_reason", "statusReason"), ("phone", "phone"), ("department", "department"),
              ("job_title", "jobTitle"), ("employee_id", "employeeId"), ("office_location", "officeLocation"),
              ("custom_attributes", "customAttributes"))


def field_changes(old: User | None, new: User | Desired) -> dict[str, list]:
    """``{api name: [old, new]}`` for the fields the directory decides that differ (all set ones for a new user)."""
    out: dict[str, list] = {}
    for attr, name in _API_NAMES:
        before = getattr(old, attr) if old is not None else None
        after = getattr(new, attr)
        if attr == "custom_attributes":  # no custom attributes at all shows as null, as a missing field would
            before, after = dict(before) if before else None, dict(after) if after else None
        if before != after:
            out[name] = [before, after]
    return out


def reason_of(change: str, old: User | None, new: User | Desired) -> str:
    """Why a run changed a user, from the user before and after."""
    if change == Change.CREATED:
        return new.status_reason if new.status == UserStatus.INACTIVE and new.status_reason else ChangeReason.JOINED
    if change == Change.DEACTIVATED:
        return new.status_reason or ChangeReason.REMOVED
    if change == Change.REACTIVATED:
        return ChangeReason.UNBLOCKED if old is not None and old.status_reason == StatusReason.BLOCKED \
            else ChangeReason.RETURNED
    if old is not None and old.status_reason != new.status_reason and new.status_reason:
        return new.status_reason  # inactive either way, for another reason now (removed, then blocked)
    return ChangeReason.ATTRIBUTES


def with_history(user: User, entry: HistoryEntry, keep_since: datetime) -> User:
    """``user`` with ``entry`` first in its history: one entry per (run, change) however often a run's message is
    delivered, entries older than ``keep_since`` dropped, at most HISTORY_MAX_ENTRIES kept."""
    history = _history_with(user.history, entry, keep_since)
    return user if history is user.history else replace(user, history=history)


def _history_with(history: tuple[HistoryEntry, ...], entry: HistoryEntry,
                  keep_since: datetime) -> tuple[HistoryEntry, ...]:
    if entry.run_id is not None and any(e.run_id == entry.run_id and e.change == entry.change for e in history):
        return history
    return (entry, *(e for e in history if e.at >= keep_since))[:HISTORY_MAX_ENTRIES]


def pruned_history(user: User, keep_since: datetime) -> User | None:
    """``user`` without the history entries older than ``keep_since``; None when none is."""
    kept = tuple(e for e in user.history if e.at >= keep_since)
    return None if len(kept) == len(user.history) else replace(user, history=kept)


def _entry(stamp: Stamp, change: str, reason: str, fields: dict[str, list], group_id: str | None) -> HistoryEntry:
    return HistoryEntry(at=stamp.now, run_id=stamp.run_id, trigger=stamp.trigger, change=change, reason=reason,
                        fields=fields, group_id=group_id)


def change_record(old: User | None, new: User, change: str, group_id: str | None) -> UserChange:
    """The change list's line for a user a run changed (or, in a dry run, would change)."""
    return UserChange(user_id=new.id, username=new.username, display_name=new.display_name, change=change,
                      reason=reason_of(change, old, new), fields=field_changes(old, new), group_id=group_id,
                      email_queued=change == Change.CREATED and new.enrollment_email == EmailState.QUEUED)


def recovered_record(user: User, entry: HistoryEntry) -> UserChange:
    """The change list's line for a change an earlier delivery of the same message made (read from the user's
    history): the line that delivery would have recorded had it finished."""
    fields = entry.fields if entry.change != Change.CREATED else field_changes(None, user)
    return UserChange(user_id=user.id, username=user.username, display_name=user.display_name, change=entry.change,
                      reason=entry.reason, fields=dict(fields), group_id=entry.group_id,
                      email_queued=entry.change == Change.CREATED and user.enrollment_email is not None)


def removal_record(user_id: str, username: str, display_name: str) -> UserChange:
    """The change list's line for an active user the run deactivates because no selected group lists them."""
    return UserChange(user_id=user_id, username=username, display_name=display_name, change=Change.DEACTIVATED,
                      reason=ChangeReason.REMOVED,
                      fields={"status": [UserStatus.ACTIVE, UserStatus.INACTIVE], "statusReason": [None, StatusReason.REMOVED]})


def username_claim(username: str) -> str:
    """What makes two usernames the same within an org (the store keeps one claim per this)."""
    return username.strip().casefold()


def new_user(org: str, sub: Subscription, desired: Desired, group_id: str, stamp: Stamp) -> User:
    """A user first seen in this run; invitations are decided here, atomically with the row's creation. The history
    entry of a creation lists no fields: they are the user's first values."""
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
        last_run_id=stamp.run_id,
        last_change=Change.CREATED,
        created_at=stamp.now,
        updated_at=stamp.now,
        history=(_entry(stamp, Change.CREATED, reason_of(Change.CREATED, None, desired), {}, group_id),),
    )


def updated_user(existing: User, desired: Desired, group_id: str, selected: Iterable[str], stamp: Stamp) -> User:
    """``existing`` brought in line with the directory, as a member of ``group_id``; memberships of groups no longer
    ``selected`` are dropped on the way (a row holds at most 252 properties). A change goes into its history, and a
    new address of a user invited but not enrolled gets an invitation of its own (``reinvited``)."""
    change = change_of(existing, desired)
    history = existing.history
    if change != Change.UNCHANGED:
        entry = _entry(stamp, change, reason_of(change, existing, desired), field_changes(existing, desired), group_id)
        history = _history_with(history, entry, stamp.keep_since)
    invitation = {}
    if (existing.enrollment_email is not None and existing.enrolled_at is None and desired.email is not None
            and desired.status == UserStatus.ACTIVE and not same_address(existing.email, desired.email)):
        # Decided with the row's write, so a redelivered message finds the new address already stored: once.
        invitation = {"enrollment_email": EmailState.QUEUED, "enrollment_email_lease_until": None,
                      "enrollment_email_error": None, "enrollment_email_sent_at": None, "invitation_reason": None}
    return replace(
        existing,
        **_directory_fields(desired),
        **invitation,
        group_ids=existing.group_ids.intersection(selected) | {group_id},
        last_run_id=stamp.run_id,
        last_change=change,
        updated_at=stamp.now,
        history=history,
    )


def same_address(a: str | None, b: str | None) -> bool:
    """Do two addresses name the same mailbox, as far as an invitation link cares (case aside)?"""
    return (a or "").casefold() == (b or "").casefold()


def address_tag(email: str | None) -> str:
    """A short digest of the address an invitation went to: binds its link (and its message id) to that address
    without putting the address itself into a URL."""
    return hashlib.sha256((email or "").casefold().encode()).hexdigest()[:16]


def reinvited(old: User, new: User) -> bool:
    """Did ``updated_user`` queue an invitation to ``new``'s address, because it replaced ``old``'s?"""
    return new.enrollment_email == EmailState.QUEUED and new.email is not None and not same_address(old.email, new.email)


def in_scope(user: User | ScopeState, group_ids: Iterable[str]) -> bool:
    """Is the user a member of any of the run's groups?"""
    return not user.group_ids.isdisjoint(group_ids)


def should_deprovision(user: User | ScopeState, group_ids: Iterable[str]) -> bool:
    """An active synced user who is in none of the selected groups any more."""
    return user.source_type == SourceType.AD_SYNC and user.status == UserStatus.ACTIVE and not in_scope(user, group_ids)


def deprovisioned(user: User, stamp: Stamp) -> User:
    """Inactive because the directory no longer lists the user in a selected group; never deleted. It is a member of
    no selected group, so the memberships it still holds (of groups since deselected) go."""
    fields = {"status": [user.status, UserStatus.INACTIVE], "statusReason": [user.status_reason, StatusReason.REMOVED]}
    entry = _entry(stamp, Change.DEACTIVATED, ChangeReason.REMOVED, fields, None)
    return replace(user, status=UserStatus.INACTIVE, status_reason=StatusReason.REMOVED, last_run_id=stamp.run_id,
                   last_change=Change.DEACTIVATED, group_ids=frozenset(), updated_at=stamp.now,
                   history=_history_with(user.history, entry, stamp.keep_since))


def switched_by_admin(user: User, active: bool, stamp: Stamp) -> User:
    """A Manual user activated or deactivated by an administrator in the portal, with the entry in its history."""
    out = replace(user, status=UserStatus.ACTIVE if active else UserStatus.INACTIVE,
                  status_reason=None if active else StatusReason.BY_ADMIN, updated_at=stamp.now)
    change, reason = ((Change.REACTIVATED, ChangeReason.ACTIVATED_BY_ADMIN) if active
                      else (Change.DEACTIVATED, ChangeReason.DEACTIVATED_BY_ADMIN))
    return with_history(out, _entry(stamp, change, reason, field_changes(user, out), None), stamp.keep_since)


def created_by_admin(user: User, stamp: Stamp) -> User:
    """A Manual user as an administrator created it, with the entry in its history."""
    return with_history(user, _entry(stamp, Change.CREATED, ChangeReason.CREATED_BY_ADMIN, {}, None), stamp.keep_since)


def history_entry_of(user: User, run_id: str, group_id: str) -> HistoryEntry | None:
    """The entry a run's worker of ``group_id`` left in the user's history, if any."""
    return next((e for e in user.history if e.run_id == run_id and e.group_id == group_id), None)


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


def propagation_wait(attempt: int, left: float) -> float:
    """How long a job that met a still-propagating consent waits before its next try: 5 s, doubling with each
    scheduled copy (``attempt``), at most 60 s, and never past the end of the window (``left`` seconds).

    The window, not a count of copies, bounds the waiting: the next try after the window has passed finds
    ``consent_propagation_left`` at 0 and counts the same answer as consent lost.
    """
    return max(0.0, min(PROPAGATION_FIRST_WAIT_S * 2 ** min(attempt, 16), PROPAGATION_MAX_WAIT_S, left))


def throttled_wait(retry_after: float | None) -> float | None:
    """The delay a job is rescheduled with when Graph asked for a pause longer than the adapter sits out itself
    (at most MAX_RETRY_AFTER_S); None: no such pause, so the job is retried as usual (redelivery)."""
    if retry_after is None or retry_after <= IN_PROCESS_WAIT_S:
        return None
    return min(retry_after, MAX_RETRY_AFTER_S)
