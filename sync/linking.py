"""The decisions of linking: which existing Manual portal user a directory user is, and the user it becomes.

Plain functions over plain dataclasses (no store, no SDK): ``sync.links`` reads and writes around them.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Mapping

from .decisions import (
    Change,
    Desired,
    Skip,
    Stamp,
    _directory_fields,
    _entry,
    _history_with,
    field_changes,
    username_claim,
)
from .model import ChangeReason, SourceType, Subscription, User, UserChange

LINK_OFF = "off"
LINK_USERNAME = "username"
LINK_USERNAME_OR_EMAIL = "usernameOrEmail"
LINK_MODES = (LINK_OFF, LINK_USERNAME, LINK_USERNAME_OR_EMAIL)
AMBIGUOUS = "link_ambiguous"


@dataclass(frozen=True)
class Candidate:
    """A Manual user as matching reads it (the org's Manual users are read once, these columns only)."""

    id: str
    username: str
    email: str | None


@dataclass(frozen=True)
class Match:
    """The Manual user ``user_id`` is the directory user, found by ``reason`` (matched_username / matched_email)."""

    user_id: str
    reason: str


def _mail_key(email: str | None) -> str | None:
    return email.strip().casefold() if email and email.strip() else None


def match_links(wanted: Mapping[str, Desired], candidates: Iterable[Candidate], mode: str) -> dict[str, Match | Skip]:
    """For each directory user (by object id) the Manual user it links to, or why it is left alone
    (``link_ambiguous``); users missing from the answer match nobody and are created as before.

    A username match (case-insensitive, as usernames are unique) wins over an e-mail match (``usernameOrEmail``
    only). A match must be unique both ways: several Manual users of one e-mail, or one Manual user matched by
    several directory users, link nobody and create nobody for them."""
    if mode not in (LINK_USERNAME, LINK_USERNAME_OR_EMAIL) or not wanted:
        return {}
    by_name: dict[str, Candidate] = {}
    by_mail: dict[str, list[Candidate]] = {}
    for c in candidates:
        by_name[username_claim(c.username)] = c
        if (mail := _mail_key(c.email)) is not None:
            by_mail.setdefault(mail, []).append(c)
    out: dict[str, Match | Skip] = {}
    for oid, d in wanted.items():
        named = by_name.get(username_claim(d.username))
        if named is not None:
            out[oid] = Match(named.id, ChangeReason.MATCHED_USERNAME)
            continue
        mail = _mail_key(d.email) if mode == LINK_USERNAME_OR_EMAIL else None
        found = by_mail.get(mail, []) if mail else []
        if len(found) == 1:
            out[oid] = Match(found[0].id, ChangeReason.MATCHED_EMAIL)
        elif found:
            ids = ", ".join(sorted(c.id for c in found))
            out[oid] = Skip(AMBIGUOUS, f"{d.display_name} ({oid}) has the e-mail of {len(found)} Manual users "
                                       f"({ids}): nobody linked or created; make the address unique in the portal")
    targets: dict[str, list[str]] = {}
    for oid, m in out.items():
        if isinstance(m, Match):
            targets.setdefault(m.user_id, []).append(oid)
    for target, oids in targets.items():
        if len(oids) > 1:
            for oid in oids:
                out[oid] = Skip(AMBIGUOUS, f"{wanted[oid].display_name} ({oid}) and {len(oids) - 1} other directory "
                                           f"user(s) ({', '.join(sorted(set(oids) - {oid}))}) match Manual user "
                                           f"{target}: nobody linked or created")
    return out


def still_matches(user: User, desired: Desired, match: Match) -> bool:
    """Is the stored user (read fresh before its write) still a Manual user the match names?"""
    if user.source_type != SourceType.MANUAL or user.id != match.user_id:
        return False
    if match.reason == ChangeReason.MATCHED_USERNAME:
        return username_claim(user.username) == username_claim(desired.username)
    return _mail_key(user.email) is not None and _mail_key(user.email) == _mail_key(desired.email)


def linked_user(manual: User, sub: Subscription, desired: Desired, group_ids: frozenset[str], group_id: str | None,
                reason: str, stamp: Stamp) -> User:
    """The Manual user taken over by the directory in place: its id, creation, enrollment and invitation stay; its
    fields, status and memberships are the directory's, and it is synced from now on. No invitation is decided
    (it is a portal user already). The history entry lists what changed, the source and (always) the status."""
    fields = field_changes(manual, desired)
    fields["sourceType"] = [SourceType.MANUAL, SourceType.AD_SYNC]
    fields.setdefault("status", [manual.status, desired.status])
    entry = _entry(stamp, Change.LINKED, reason, fields, group_id)
    return replace(manual, **_directory_fields(desired), source_type=SourceType.AD_SYNC, subscription_id=sub.id,
                   azure_object_id=desired.azure_object_id, group_ids=frozenset(group_ids),
                   last_run_id=stamp.run_id, last_change=Change.LINKED, updated_at=stamp.now,
                   history=_history_with(manual.history, entry, stamp.keep_since))


def link_record(user: User, group_id: str | None) -> UserChange:
    """The change list's line of a link, from the entry ``linked_user`` put first in the user's history."""
    entry = next(e for e in user.history if e.change == Change.LINKED and e.run_id == user.last_run_id)
    return UserChange(user_id=user.id, username=user.username, display_name=user.display_name, change=Change.LINKED,
                      reason=entry.reason, fields=dict(entry.fields), group_id=group_id)
