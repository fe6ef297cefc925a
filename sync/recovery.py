"""Runs nobody will carry on: whoever looks next (a sync request, a change job, the recovery timer) sends or ends them.

A process can die at any line. Most of a run survives that by itself: its messages are redelivered, and the last
group to finish ends it. Two moments are not covered by a message: a Full Sync whose request died after writing the
run and before sending its group messages (the run is ``queued`` with nothing in any queue), and a run whose work is
all done but whose end was never written (its finalizer died; the run is ``running`` with every group finished).
Both are found through the subscription's active run and settled at once, instead of after RUN_STALE_AFTER_MINUTES.
"""
from __future__ import annotations

from dataclasses import replace

from . import invitations
from .composition import Services
from .concurrency import optimistic
from .errors import PreconditionFailed
from .logs import get_logger
from .model import GroupJob, Run, RunStatus
from .run_end import finalize, settled

log = get_logger(__name__)


async def mark_jobs_sent(svc: Services, run: Run) -> None:
    """Record that the run's group messages are sent (after sending them); ``run`` as last read or written."""

    async def sent(current: Run) -> Run | None:
        return None if current.jobs_sent else replace(current, jobs_sent=True)

    try:  # usually nobody wrote the run since: no read needed
        await svc.runs.save(replace(run, jobs_sent=True))
        return
    except PreconditionFailed:  # a worker moved it on meanwhile
        pass
    await optimistic(lambda: svc.runs.get(run.org, run.subscription_id, run.id), sent, svc.runs.save)


async def settle_active_run(svc: Services, org: str, sub_id: str) -> str | None:
    """Send the group messages of a queued run whose request died before sending them, or end a run whose work is
    all done; what was done (``sent``, ``ended``), or None."""
    sub = await svc.subscriptions.get(org, sub_id)
    if sub is None or not sub.active_run_id:
        return None
    view = await svc.runs.view(org, sub_id, sub.active_run_id)
    if view is None or view.run.status not in RunStatus.ACTIVE:
        return None  # a reservation not written yet, or a run over (its release is the finalizer's)
    run = view.run
    ctx = {"org": org, "subscription": sub_id, "run": run.id}
    if run.status == RunStatus.QUEUED and not run.jobs_sent:
        # Same message ids as the request's: if it did send them after all, duplicate detection drops these.
        jobs = [GroupJob(org, sub_id, run.id, g.group_id) for g in view.groups if not g.finished]
        await svc.queue.send_group_jobs(jobs)
        await mark_jobs_sent(svc, run)
        log.warning("a queued run's group messages were sent by a later look (its request had died)", extra=ctx)
        return "sent"
    if settled(view):
        log.warning("ending a run whose work was done but which never ended", extra=ctx)
        await finalize(svc, org, sub_id, run.id)
        return "ended"
    return None


async def sweep(svc: Services) -> dict[str, int]:
    """The recovery timer: settle every subscription's stranded run, re-queue invitations no run will send."""
    settled_runs = failed = 0
    for sub in await svc.subscriptions.with_active_run():
        try:
            if await settle_active_run(svc, sub.org, sub.id):
                settled_runs += 1
        except Exception:  # isolation: one subscription's failure must not stop the others
            failed += 1
            log.exception("a stranded run could not be settled", extra={"org": sub.org, "subscription": sub.id})
    summary = {"runs_settled": settled_runs, "runs_failed": failed}
    summary.update(await invitations.requeue_stuck(svc))
    return summary
