"""What the nightly run drops: user history entries and run change lists older than HISTORY_RETENTION_DAYS.

Without rewriting every row every night: a user row carries the date of its oldest history entry
(``historyOldest``), so only rows with an entry past the retention come back from the store and are rewritten; and
change lists go by run (their rows' keys start with the run id, which sorts by start time).
"""
from __future__ import annotations

from datetime import timedelta

from . import events
from .composition import Services
from .decisions import pruned_history
from .logs import get_logger
from .model import User
from .ports import Updated

log = get_logger(__name__)

BATCH = 100


async def apply(svc: Services) -> dict[str, int]:
    """Drop expired history entries (every org) and the change lists of expired runs (of nightly subscriptions)."""
    keep_since = svc.clock() - timedelta(days=svc.settings.history_retention_days)
    pruned = 0
    batch: list[tuple[User, str]] = []
    async for user in svc.users.expired_history(keep_since):
        kept = pruned_history(user, keep_since)
        if kept is not None:
            batch.append((kept, user.username))
        if len(batch) >= BATCH:
            pruned += await _write(svc, batch)
            batch = []
    pruned += await _write(svc, batch)
    expired = 0
    for sub in await svc.subscriptions.nightly_candidates():
        expired += await svc.runs.expire_changes(sub.org, sub.id, keep_since)
    events_expired = await events.expire(svc)
    log.info("retention applied", extra={"users_pruned": pruned, "change_rows_expired": expired,
                                         "events_expired": events_expired})
    return {"historyPruned": pruned, "changeRowsExpired": expired, "eventsExpired": events_expired}


async def _write(svc: Services, batch: list[tuple[User, str]]) -> int:
    """Rewrite the rows (conditional on their ETags: a row changed meanwhile waits for the next night)."""
    if not batch:
        return 0
    return sum(isinstance(o, Updated) for o in await svc.users.update(batch))
