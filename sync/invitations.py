"""Invitations no run will send again: the recovery timer re-queues them, whatever kind of run comes next.

An invitation is queued in the same write that creates its user, and its message is sent after; a process that dies
in between (or a mailer killed holding a claim, ``sending``) leaves it pending with no message. Runs re-queue only
their own (a redelivered message), so nothing else would ever send it. Every invitation is indexed before its user
holds it (``PendingInvitations``); the timer reads the index entries that are due, and re-queues each invitation still
``queued`` or ``sending`` past its lease under a message id of its own (Service Bus duplicate detection would drop a
repeated one). The mailer's claim keeps a re-queue from sending a second e-mail.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Iterable

from .composition import Services
from .logs import get_logger
from .model import EmailState, EnrollmentJob, User

log = get_logger(__name__)

SWEEP_LIMIT = 1000  # index entries read per firing; the next firing takes the rest
REQUEUE, WAIT, DROP = "requeue", "wait", "drop"


def lease(svc: Services) -> timedelta:
    return timedelta(seconds=svc.settings.invitation_lease_s)


async def expect(svc: Services, users: Iterable[User]) -> None:
    """Index the invitations of users about to be created with one queued (before their rows are written)."""
    by_org: dict[str, list[str]] = {}
    for u in users:
        if u.enrollment_email in (EmailState.QUEUED, EmailState.SENDING):
            by_org.setdefault(u.org, []).append(u.id)
    if svc.invitations is None:
        return
    due = svc.clock() + lease(svc)
    for org, ids in by_org.items():
        await svc.invitations.expect(org, ids, due)


def decide(user: User | None, now: datetime, lease_for: timedelta) -> tuple[str, datetime | None]:
    """What the timer does with an indexed invitation: re-queue it now, look again at a time, or forget it."""
    if user is None or user.enrollment_email not in (EmailState.QUEUED, EmailState.SENDING):
        return DROP, None
    if user.enrollment_email == EmailState.SENDING:
        until = user.enrollment_email_lease_until
        return (WAIT, until) if until is not None and until > now else (REQUEUE, None)
    # Queued: its message may still be on its way (or a relay retry is scheduled): a lease after it was queued.
    if user.updated_at + lease_for > now:
        return WAIT, user.updated_at + lease_for
    return REQUEUE, None


async def requeue_stuck(svc: Services) -> dict[str, int]:
    """Re-queue every due invitation still pending past its lease (a fresh message id each); forget the others."""
    if svc.invitations is None:
        return {"requeued": 0, "dropped": 0}
    now = svc.clock()
    lease_for = lease(svc)
    requeued: list[EnrollmentJob] = []
    dropped = 0
    tag = f"requeue{int(now.timestamp() * 1000)}"
    for org, uid in await svc.invitations.due(now, SWEEP_LIMIT):
        user = await svc.users.get(org, uid)
        action, until = decide(user, now, lease_for)
        if action == DROP:
            await svc.invitations.drop(org, uid)
            dropped += 1
        elif action == WAIT:
            await svc.invitations.defer(org, uid, until)
        else:
            requeued.append(EnrollmentJob(org, uid, user.last_run_id if user else None, tag=tag))
    if requeued:
        await svc.queue.send_enrollment_jobs(requeued)
        for job in requeued:  # looked at again a lease later: sent by then, or re-queued again
            await svc.invitations.defer(job.org, job.user_id, now + lease_for)
        log.warning("pending invitations re-queued", extra={"invitations": len(requeued)})
    return {"requeued": len(requeued), "dropped": dropped}
