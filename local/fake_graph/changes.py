"""The change log of one fake tenant: every write to a user, a group or a membership, in order.

Delta queries read it (a delta token is a position in it) and change notifications are raised from it.
Every entry gets the next sequence number; nothing is ever rewritten. Runs on the server's loop thread.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Callable

# What happened to the object (for a group: also "added"/"removed", a membership that began or ended).
CREATED, UPDATED, DELETED, ADDED, REMOVED = "created", "updated", "deleted", "added", "removed"


@dataclass(frozen=True)
class Change:
    seq: int
    at: float  # time.time()
    kind: str  # "user" or "group" (the object the change is about)
    oid: str
    op: str
    props: frozenset[str] = frozenset()  # UPDATED: the properties written
    member: str | None = None  # ADDED/REMOVED: the member's id
    member_kind: str | None = None  # ADDED/REMOVED: "user", "group" or "device"
    reason: str | None = None  # DELETED: "changed" (restorable, soft-deleted) or "deleted" (permanently)
    cascade: bool = False  # REMOVED because the member object itself was deleted


log = logging.getLogger("local.fake_graph")

Listener = Callable[[Change], None]


class ChangeLog:
    """Append-only list of changes; `epoch` names this log (a token of another tenant load is foreign)."""

    def __init__(self) -> None:
        self.entries: list[Change] = []
        self.epoch = uuid.uuid4().hex[:12]
        self.generation = 0  # bumped by POST /_fake/delta {"expireAll": true}: every earlier token is refused
        self.removed: dict[str, tuple[str, str]] = {}  # oid -> (kind, reason) of its deletion
        self.listeners: list[Listener] = []

    @property
    def seq(self) -> int:
        """The sequence number of the latest change (0: none yet)."""
        return len(self.entries)

    def record(self, kind: str, oid: str, op: str, **details: object) -> Change:
        change = Change(self.seq + 1, time.time(), kind, oid, op, **details)  # type: ignore[arg-type]
        self.entries.append(change)
        if op == DELETED:
            self.removed[oid] = (kind, str(change.reason))
        for listener in list(self.listeners):
            try:
                listener(change)
            except Exception:  # a listener never fails the write that raised the change
                log.exception("change listener failed on %s", change)
        return change

    def between(self, since: int, upto: int) -> list[Change]:
        """Changes with since < seq <= upto."""
        return self.entries[max(since, 0):max(upto, 0)]
