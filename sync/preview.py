"""What a dry run's workers in this process decided, standing in for the store as the referee.

A real run needs no coordination to record a user's change once: the store referees (an insert meets the row another
worker inserted, an update meets a changed ETag, a username claim meets its holder). A dry run writes nothing, so
the workers of one process share a ledger per dry run instead: which users exist and which usernames are taken (read
once, from the org's username claims: every user holds one), the usernames its would-be users take, and which group
recorded each user's change. Workers in other processes keep ledgers of their own; the dry run's finalizer drops
the duplicates they may leave in the change list.
"""
from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import AsyncIterator, Callable

from .decisions import username_claim


class RunLedger:
    """One dry run's view of the org, and what its workers (of this process) would have written."""

    def __init__(self, claims: dict[str, tuple[str, str]]) -> None:
        self._claims = claims  # claim -> (user id, username)
        self.existing = {uid for uid, _ in claims.values()}  # users with a row
        self._changed: dict[str, str] = {}  # user id -> the group that records its change

    def take(self, user_id: str, group_id: str) -> bool:
        """May ``group_id`` record this user's change? The first group to ask may (again, when redelivered)."""
        return self._changed.setdefault(user_id, group_id) == group_id

    def changed_by(self, user_id: str) -> str | None:
        return self._changed.get(user_id)

    def claim(self, user_id: str, username: str, old_username: str | None = None) -> tuple[str, str] | None:
        """Take ``username`` for the user (giving up ``old_username``); the (id, username) of its holder when
        another user holds it."""
        name = username_claim(username)
        holder = self._claims.get(name)
        if holder is not None and holder[0] != user_id:
            return holder
        self._claims[name] = (user_id, username)
        if old_username is not None and username_claim(old_username) != name:
            old = username_claim(old_username)
            if self._claims.get(old, ("",))[0] == user_id:
                del self._claims[old]
        return None


class PreviewLedgers:
    """The ledgers of the latest dry runs of this process (each is read from the store once)."""

    def __init__(self, keep: int = 2) -> None:
        self._keep = keep
        self._ledgers: OrderedDict[str, asyncio.Future[RunLedger]] = OrderedDict()

    async def of(self, run_id: str, claims: Callable[[], AsyncIterator[tuple[str, str]]]) -> RunLedger:
        """The run's ledger, loading the org's username claims the first time any worker asks."""
        found = self._ledgers.get(run_id)
        if found is None:
            found = self._ledgers[run_id] = asyncio.ensure_future(_load(claims))
            while len(self._ledgers) > self._keep:
                self._ledgers.popitem(last=False)
        self._ledgers.move_to_end(run_id)
        try:
            return await asyncio.shield(found)
        except BaseException:
            if self._ledgers.get(run_id) is found and found.done():
                del self._ledgers[run_id]  # a failed read is tried again by the next delivery
            raise


async def _load(claims: Callable[[], AsyncIterator[tuple[str, str]]]) -> RunLedger:
    taken: dict[str, tuple[str, str]] = {}
    async for username, user_id in claims():
        taken[username_claim(username)] = (user_id, username)
    return RunLedger(taken)
