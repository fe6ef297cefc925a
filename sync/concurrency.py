"""Optimistic concurrency: read, change, write conditionally on the ETag, and start over when someone else won."""
from __future__ import annotations

from typing import Awaitable, Callable, TypeVar

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
