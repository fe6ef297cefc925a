"""Linking existing Manual users in place (``linkExistingUsers``): shared by the group worker and the incremental run.

A worker asks ``Linker.resolve`` about the directory users it would create; each comes back linked (written now,
in one atomic write with its index entry), pointing at a user that is already the object's row (another worker or
an earlier delivery linked it: decide it like any stored user), refused (ambiguous, or the username is taken), or
not a link at all (created as before). The store's index entry and the user's ETag make concurrent and redelivered
links safe: exactly one write wins, and every other finds its entry.
"""
from __future__ import annotations

from dataclasses import dataclass

from .composition import Services
from .decisions import Desired, Skip, Stamp
from .errors import PreconditionFailed
from .linking import LINK_OFF, Candidate, Match, link_record, linked_user, match_links, still_matches
from .model import Subscription, User, UserChange
from .ports import AlreadyLinked, Stale, Updated, UsernameTaken

MAX_ROUNDS = 4


@dataclass(frozen=True)
class Linked:
    user: User  # as written
    record: UserChange


@dataclass(frozen=True)
class Known:
    """The object is already the row ``user_id`` (linked by another worker, or an earlier delivery)."""

    user_id: str


@dataclass(frozen=True)
class Taken:
    user: User  # the link that was refused
    outcome: UsernameTaken


Outcome = Linked | Known | Taken | Skip


class Linker:
    """One worker's view of the links: the subscription's index and the org's Manual users, each read once, lazily."""

    def __init__(self, svc: Services, sub: Subscription) -> None:
        self.svc, self.sub = svc, sub
        self._index: dict[str, str] | None = None
        self._candidates: list[Candidate] | None = None

    @property
    def on(self) -> bool:
        return self.sub.link_existing_users != LINK_OFF

    async def index(self) -> dict[str, str]:
        """Object id → user id of the subscription's linked users (read once per worker; kept up to date by it)."""
        if self._index is None:
            self._index = await self.svc.users.links(self.sub.org, self.sub.id)
        return self._index

    async def propose(self, wanted: dict[str, Desired]) -> dict[str, Match | Skip]:
        """The matches of directory users (by object id) who have no row: decided, nothing written."""
        if not self.on or not wanted:
            return {}
        if self._candidates is None:
            self._candidates = await self.svc.users.link_candidates(self.sub.org)
        return match_links(wanted, self._candidates, self.sub.link_existing_users)

    async def preview(self, wanted: dict[str, Desired], groups: dict[str, frozenset[str]],
                      stamp: Stamp) -> dict[str, Linked | Skip]:
        """What ``resolve`` would write, written nowhere (a dry run)."""
        proposed = await self.propose(wanted)
        matched = {oid: m for oid, m in proposed.items() if isinstance(m, Match)}
        stored = await self.svc.users.get_many(self.sub.org, [m.user_id for m in matched.values()]) if matched else {}
        out: dict[str, Linked | Skip] = {oid: s for oid, s in proposed.items() if isinstance(s, Skip)}
        for oid, m in matched.items():
            manual = stored.get(m.user_id)
            if manual is not None and still_matches(manual, wanted[oid], m):
                user = linked_user(manual, self.sub, wanted[oid], groups[oid], min(groups[oid], default=None),
                                   m.reason, stamp)
                out[oid] = Linked(user, link_record(user, min(groups[oid], default=None)))
        return out

    async def resolve(self, wanted: dict[str, Desired], groups: dict[str, frozenset[str]],
                      stamp: Stamp) -> dict[str, Outcome]:
        """Link the directory users (by object id, with the selected groups each is written as a member of) that
        match a Manual user; the ones missing from the answer are no link (create them as before)."""
        index = await self.index()
        if self.on:  # other workers (concurrent groups) link too: read what they linked since (one query)
            index.update(await self.svc.users.links(self.sub.org, self.sub.id))
        out: dict[str, Outcome] = {oid: Known(index[oid]) for oid in wanted if oid in index}
        proposed = await self.propose({oid: d for oid, d in wanted.items() if oid not in index})
        matched: dict[str, Match] = {}
        for oid, m in proposed.items():
            if isinstance(m, Skip):
                out[oid] = m
            else:
                matched[oid] = m
        for _ in range(MAX_ROUNDS):
            if not matched:
                break
            stored = await self.svc.users.get_many(self.sub.org, [m.user_id for m in matched.values()])
            writes: list[tuple[str, User, User]] = []
            for oid, m in matched.items():
                manual = stored.get(m.user_id)
                if manual is None or not still_matches(manual, wanted[oid], m):
                    continue  # changed meanwhile (deleted, linked, renamed): no link; created as before
                group = min(groups[oid], default=None)
                writes.append((oid, manual, linked_user(manual, self.sub, wanted[oid], groups[oid], group, m.reason,
                                                        stamp)))
            matched = {}
            outcomes = await self.svc.users.link([(new, old.username) for _, old, new in writes]) if writes else []
            for (oid, old, new), outcome in zip(writes, outcomes):
                if isinstance(outcome, Updated):
                    index[oid] = outcome.user.id
                    self._candidates = [c for c in self._candidates or () if c.id != outcome.user.id]
                    out[oid] = Linked(outcome.user, link_record(outcome.user, min(groups[oid], default=None)))
                elif isinstance(outcome, AlreadyLinked):
                    index[oid] = outcome.user_id
                    out[oid] = Known(outcome.user_id)
                elif isinstance(outcome, Stale):
                    matched[oid] = proposed[oid]  # type: ignore[assignment]  (read again and decide again)
                elif isinstance(outcome, UsernameTaken):
                    out[oid] = Taken(new, outcome)
        if matched:
            raise PreconditionFailed("Manual users kept changing while they were linked; retrying the message")
        return out
