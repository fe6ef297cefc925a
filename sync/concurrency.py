"""Optimistic concurrency: read, change, write conditionally on the ETag, and start over when someone else won."""
from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator, Awaitable, Callable, Hashable, TypeVar

from .errors import PreconditionFailed

T = TypeVar("T")
R = TypeVar("R")


async def optimistic(read: Callable[[], Awaitable[T | None]], change: Callable[[T], Awaitable[T | None]],
                     write: Callable[[T], Awaitable[R]], *, attempts: int = 10) -> R | None:
    """Apply ``change`` to the latest ``read`` and ``write`` it; None when there is nothing (left) to do.

    ``write`` must raise PreconditionFailed when the row changed since it was read; the loop then re-reads,
    so concurrent writers never lose each other's updates.
    """
    for _ in range(attempts):
        current = await read()
        if current is None:
            return None
        new = await change(current)
        if new is None:
            return None
        try:
            return await write(new)
        except PreconditionFailed:
            continue
    raise PreconditionFailed("the row kept changing; giving up for now")


class KeyedLocks:
    """One asyncio lock per key while anyone holds or waits for it (this process only)."""

    def __init__(self) -> None:
        self._locks: dict[Hashable, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (None, 0))
        lock = lock or asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)
