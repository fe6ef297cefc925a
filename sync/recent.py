"""What this process's workers wrote recently, so workers of overlapping groups do not race to create one user.

A user in several selected groups is met by several group workers of the same run, often at the same moment in the
same process (Service Bus hands a host several messages at once). Without coordination each would try to insert the
user, and all but one insert would fail and cost a read. Here a worker reserves the users it is about to create;
another worker meeting them waits for that outcome, or uses what was already written, and only merges its group's
membership. It is an optimization only: across processes the store's insert-or-exists path stays the referee.
"""
from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Iterable


class RecentUsers:
    """Fingerprints of users written by this process during a run, and creations in flight.

    Entries are per run: between runs other writers (deprovisioning, the mailer, a released subscription) change
    users, so a fingerprint is only trusted within the run whose workers wrote it.
    """

    def __init__(self, capacity: int = 200_000) -> None:
        self._capacity = capacity
        self._known: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._pending: dict[tuple[str, str], asyncio.Future[bytes | None]] = {}

    def reserve(self, run_id: str, user_ids: Iterable[str]) -> tuple[list[str], dict[str, bytes], dict[str, asyncio.Future]]:
        """Split ids into: mine to create, already written (their fingerprint), and being created by another worker."""
        mine: list[str] = []
        known: dict[str, bytes] = {}
        waiting: dict[str, asyncio.Future] = {}
        for uid in user_ids:
            key = (run_id, uid)
            if key in self._known:
                known[uid] = self._known[key]
            elif key in self._pending:
                waiting[uid] = self._pending[key]
            else:
                self._pending[key] = asyncio.get_running_loop().create_future()
                mine.append(uid)
        return mine, known, waiting

    def settle(self, run_id: str, user_id: str, fingerprint: bytes | None) -> None:
        """The outcome of a reserved creation: the stored user's fingerprint, or None (waiters find out themselves)."""
        future = self._pending.pop((run_id, user_id), None)
        if fingerprint is not None:
            self.remember(run_id, user_id, fingerprint)
        if future is not None and not future.done():
            future.set_result(fingerprint)

    def known(self, run_id: str, user_id: str) -> bytes | None:
        """The fingerprint of a user this process wrote during the run, if any."""
        return self._known.get((run_id, user_id))

    def remember(self, run_id: str, user_id: str, fingerprint: bytes) -> None:
        key = (run_id, user_id)
        self._known[key] = fingerprint
        self._known.move_to_end(key)
        while len(self._known) > self._capacity:
            self._known.popitem(last=False)
