"""Who holds a subscription: a run reserves it (``active_run_id``), ends, and frees it. The bottom of the runs' flow:
starting a sync, deleting a subscription, the group worker, the fan-in and the incremental runs all build on it,
and it builds on none of them (only the store ports and the alerts)."""
from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from . import alerts
from .composition import Services
from .concurrency import optimistic
from .errors import Conflict, PreconditionFailed
from .logs import get_logger
from .model import Run, RunError, RunStatus, Subscription

log = get_logger(__name__)

RESERVATION_GRACE = timedelta(minutes=2)  # a run id reserved on the subscription whose rows are not written yet


async def refuse_if_busy(svc: Services, sub: Subscription, action: str) -> None:
    """409 while a run of the subscription is starting, queued or running; a stalled run is failed instead."""
    if not sub.active_run_id:
        return
    now = svc.clock()
    view = await svc.runs.view(sub.org, sub.id, sub.active_run_id)
    if view is None:
        if now - sub.updated_at < RESERVATION_GRACE:
            raise Conflict(f"a sync of this directory is starting; {action} when it has finished",
                           code="sync_in_progress")
        return
    if view.run.status not in RunStatus.ACTIVE:
        return
    if now - view.last_activity > timedelta(minutes=svc.settings.run_stale_after_minutes):
        log.warning("abandoning a stalled run", extra={"org": sub.org, "subscription": sub.id, "run": view.run.id})
        await fail_run(svc, view.run, RunError("run_timed_out", "the run made no progress and was abandoned"), release=False)
        return
    raise Conflict(f"a sync of this directory is {view.run.status}; {action} when it has finished",
                   code="sync_in_progress")


async def fail_run(svc: Services, run: Run, error: RunError, *, release: bool = True) -> None:
    """End a run as failed (nothing is deprovisioned) and free the subscription for the next one."""

    async def fail(current: Run) -> Run | None:
        if current.status in RunStatus.TERMINAL:
            return None
        return replace(current, status=RunStatus.FAILED, errors=current.errors + (error,), finished_at=svc.clock(),
                       updated_at=svc.clock(), alert_due=RunStatus.FAILED)

    ended = await optimistic(lambda: svc.runs.get(run.org, run.subscription_id, run.id), fail, svc.runs.save)
    if release:
        await release_subscription(svc, run)
    if ended is not None:
        await alerts.run_ended(svc, run.org, run.subscription_id, run.id, quiet=True)




async def release_subscription(svc: Services, run: Run, *, remember: bool = True) -> None:
    """Clear the subscription's active run (if it is this one) and remember it as the last run (if ``remember``:
    never a dry run, so the portal's last sync stays the last real one)."""
    async def clear(sub: Subscription) -> Subscription:
        active = None if sub.active_run_id == run.id else sub.active_run_id
        last = run.id if remember and not run.dry_run else sub.last_run_id
        return replace(sub, active_run_id=active, last_run_id=last, updated_at=svc.clock())

    try:  # a subscription deleted meanwhile has nothing to free
        await optimistic(lambda: svc.subscriptions.get(run.org, run.subscription_id), clear, svc.subscriptions.save)
    except PreconditionFailed:
        raise Conflict("the subscription is being changed by someone else; try again", code="concurrent_update") from None
