"""The enrollment invitation after its first e-mail: reminders, an expired link reissued, resend to one user or to
everyone not enrolled.

Every later invitation goes the way the first one does: the user's row is marked ``queued`` (with the reason, and
only if the user qualifies, conditionally on its ETag), indexed in the pending-invitation index before that
(``sync/invitations.py``: the recovery timer re-queues it should the message never leave), then one message goes to
the mailer queue under a message id of its own, so Service Bus duplicate detection never drops it as a repeat of an
earlier invitation, and the mailer's claim sends it once. The rules:

- Reminders: the subscription's ``enrollmentReminders`` (days after the first invitation). The reminder timer reads
  only the reminder index's rows due (``DueReminders``), never the org's users. A step is recorded on the user
  (``reminders_sent``) in the same conditional write that queues it, so however often the timer fires (or runs
  twice at once), each step goes out once; its message id names the step, so a retried send is dropped as a
  duplicate. After downtime only the latest step due is sent (the earlier ones count as passed).
- Every link not yet expired still enrolls (a link is a signed token, not a row); the first one used wins.
- Between two invitations of one user at least ``INVITATION_MIN_INTERVAL_SECONDS`` (the reminders are the
  subscription's own schedule and do not wait for it).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from .composition import Services
from .decisions import with_history
from .errors import Conflict, Gone, InvalidInput, TooSoon
from .logs import get_logger
from .model import (
    INVITED,
    Caller,
    EmailState,
    EnrollmentJob,
    HistoryEntry,
    InvitationReason,
    SourceType,
    Subscription,
    User,
    UserStatus,
)
from .ports import Stale
from .subscriptions import get as get_subscription
from .users import change_user, enrollment_claims, invitation_revoked, sent_to_current_address
from .users import get as get_user

log = get_logger(__name__)

REMINDERS_PER_FIRING = 1000  # index rows read per firing; the next firing takes the rest
SEND, WAIT, DROP = "send", "wait", "drop"
PENDING = (EmailState.QUEUED, EmailState.SENDING)


# --- decisions (plain functions) -------------------------------------------------------------------------------

def reminder_time(invited_at: datetime, days: tuple[int, ...], step: int, day_s: float) -> datetime | None:
    """When reminder number ``step + 1`` is due (``step`` reminders sent), or None after the last."""
    return invited_at + timedelta(seconds=days[step] * day_s) if step < len(days) else None


def due_step(invited_at: datetime, days: tuple[int, ...], sent: int, now: datetime, day_s: float) -> int | None:
    """The number of reminders sent once the step due now goes out: the latest step due (after downtime the earlier
    ones are passed over), or None when no step is due that was not sent yet."""
    due = [i for i, d in enumerate(days) if invited_at + timedelta(seconds=d * day_s) <= now]
    if not due or due[-1] < sent:
        return None
    return due[-1] + 1


def reminder_decision(user: User | None, sub: Subscription | None, now: datetime, day_s: float,
                      lease: timedelta) -> tuple[str, Any]:
    """What the reminder timer does with a user of its index: (SEND, step), (WAIT, when) or (DROP, None).

    Only an Active synced user of a subscription with reminders, not enrolled, with an e-mail, first invited."""
    if (user is None or sub is None or sub.deleting or user.source_type != SourceType.AD_SYNC
            or user.subscription_id != sub.id or user.status != UserStatus.ACTIVE or user.enrolled_at is not None
            or not user.email or user.invited_at is None or not sub.enrollment_reminders):
        return DROP, None
    days = sub.enrollment_reminders
    step = due_step(user.invited_at, days, user.reminders_sent, now, day_s)
    if step is None:
        later = reminder_time(user.invited_at, days, user.reminders_sent, day_s)
        return (WAIT, later) if later is not None else (DROP, None)
    if user.enrollment_email in PENDING:  # another invitation is on its way: look again once it is out
        return WAIT, now + lease
    return SEND, step


def refusal(user: User, now: datetime, min_interval_s: float) -> Exception | None:
    """Why ``user`` may not get another invitation now (an admin's resend, a reissue), or None."""
    if user.enrolled_at is not None:
        return Conflict("the user has already enrolled", code="already_enrolled")
    if user.status != UserStatus.ACTIVE:
        return Conflict("the user is inactive and cannot enroll", code="user_inactive")
    if not user.email:
        return Conflict("the user has no e-mail address to invite", code="no_email")
    last = max((t for t in (user.invitation_queued_at, user.enrollment_email_sent_at) if t is not None), default=None)
    if user.enrollment_email in PENDING and last is None:
        last = user.updated_at
    if last is not None:
        wait = (last + timedelta(seconds=min_interval_s) - now).total_seconds()
        if wait > 0 or user.enrollment_email in PENDING:
            return TooSoon("the user got an invitation a short while ago; try again later", code="invitation_too_soon",
                           retry_after=max(wait, 1.0))
    return None


def queued_again(user: User, reason: str, now: datetime) -> User:
    """``user`` with an invitation queued for ``reason``."""
    return replace(user, enrollment_email=EmailState.QUEUED, enrollment_email_lease_until=None,
                   enrollment_email_error=None, invitation_reason=reason, invitation_queued_at=now, updated_at=now)


def sent_invitation(user: User, now: datetime, expires: datetime, days: tuple[int, ...], day_s: float,
                    retention_days: int) -> User:
    """``user`` once an invitation went out: its link's expiry, the first invitation's time (reminders count from it)
    and the first reminder's, and an ``invited`` history entry with the reason."""
    out = replace(user, invitation_expires_at=expires)
    if user.invited_at is None:
        out = replace(out, invited_at=now, reminders_sent=0, next_reminder_at=reminder_time(now, days, 0, day_s))
    entry = HistoryEntry(at=now, run_id=None, trigger="mailer", change=INVITED,
                         reason=user.invitation_reason or InvitationReason.INVITATION)
    return with_history(out, entry, now - timedelta(days=retention_days))


def message_tag(reason: str, now: datetime) -> str:
    """A message id part of its own for an admin's (or a reissue's) invitation: duplicate detection must not drop it
    as a repeat of an earlier invitation; the min interval keeps two of one user apart."""
    return f"{reason}{int(now.timestamp() * 1000)}"


# --- use cases ----------------------------------------------------------------------------------------------------

def _lease(svc: Services) -> timedelta:
    return timedelta(seconds=svc.settings.invitation_lease_s)


async def _queue(svc: Services, org: str, user_id: str, reason: str, tag: str, check) -> User | None:
    """Mark the user's invitation queued if ``check(current)`` allows (raising or returning False refuses), index
    it, and send its message; the user as written, or None when ``check`` declined."""
    now = svc.clock()
    if svc.invitations is not None:  # indexed before the user holds it: a crash before the send is re-queued
        await svc.invitations.expect(org, [user_id], now + _lease(svc))

    async def mark(current: User) -> User | None:
        if not check(current):
            return None
        return queued_again(current, reason, now)

    written = await change_user(svc, org, user_id, mark)
    if written is None or written.invitation_queued_at != now or written.invitation_reason != reason:
        return None
    await svc.queue.send_enrollment_jobs([EnrollmentJob(org, user_id, None, tag=tag)])
    return written


def _admin_check(svc: Services):
    def check(current: User) -> bool:
        problem = refusal(current, svc.clock(), svc.settings.invitation_min_interval_s)
        if problem is not None:
            raise problem
        return True
    return check


async def resend(svc: Services, caller: Caller, user_id: str) -> User:
    """``POST /api/users/{userId}/invitation``: an administrator sends the user a new invitation (Manual users too)."""
    user = await get_user(svc, caller, user_id)
    problem = refusal(user, svc.clock(), svc.settings.invitation_min_interval_s)
    if problem is not None:  # refused before anything is indexed
        raise problem
    now = svc.clock()
    written = await _queue(svc, caller.org, user.id, InvitationReason.RESENT_BY_ADMIN,
                           message_tag("resent", now), _admin_check(svc))
    log.info("invitation resent by an administrator", extra={"org": caller.org, "user": user.id})
    return written or user


async def resend_not_enrolled(svc: Services, caller: Caller, sub_id: str, body: dict[str, Any]) -> dict[str, int]:
    """``POST /api/directory/subscriptions/{id}/invitations {"filter": "not_enrolled"}``: a new invitation to each of
    the subscription's Active users not enrolled with an e-mail; those invited within the minimum interval (or with
    one on its way) are ``skipped``. Each user's write is conditional, so two calls at once queue each user once."""
    sub = await get_subscription(svc, caller, sub_id)  # another org's id: 404 whatever the body
    unknown = sorted(set(body) - {"filter"})
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(unknown)}", code="unknown_field")
    if body.get("filter") != "not_enrolled":
        raise InvalidInput('filter must be "not_enrolled"', code="invalid_filter")
    now = svc.clock()
    interval = svc.settings.invitation_min_interval_s
    candidates: list[str] = []
    skipped = 0
    async for user in svc.users.subscription_users(caller.org, sub.id):
        if (user.source_type != SourceType.AD_SYNC or user.status != UserStatus.ACTIVE or user.enrolled_at is not None
                or not user.email):
            continue
        if refusal(user, now, interval) is not None:
            skipped += 1
        else:
            candidates.append(user.id)
    if svc.invitations is not None and candidates:
        await svc.invitations.expect(caller.org, candidates, now + _lease(svc))

    def check(current: User) -> bool:
        return refusal(current, now, interval) is None

    jobs: list[EnrollmentJob] = []
    tag = message_tag("resent", now)
    for uid in candidates:
        async def mark(current: User) -> User | None:
            return queued_again(current, InvitationReason.RESENT_BY_ADMIN, now) if check(current) else None
        try:
            written = await change_user(svc, caller.org, uid, mark)
        except Conflict:  # changed by someone else all along: left to the next call
            written = None
        if written is not None and written.invitation_queued_at == now:
            jobs.append(EnrollmentJob(caller.org, uid, None, tag=tag))
        else:
            skipped += 1
    if jobs:
        await svc.queue.send_enrollment_jobs(jobs)
    log.info("invitations resent to users not enrolled",
             extra={"org": caller.org, "subscription": sub.id, "queued": len(jobs), "skipped": skipped})
    return {"queued": len(jobs), "skipped": skipped}


async def reissue(svc: Services, caller: Caller, body: dict[str, Any]) -> User:
    """``POST /api/enrollment/reissue {"token"}``: a validly signed but expired link of an Active user not enrolled
    gets a new invitation (to the address the link was sent to, if the user still has it)."""
    claims = enrollment_claims(svc, caller, body)
    now = svc.clock()
    if claims["exp"] >= int(now.timestamp()):
        raise Conflict("the enrollment link has not expired: use it", code="token_not_expired")
    user = await svc.users.get(caller.org, claims["uid"])
    if user is None:
        raise InvalidInput("the token names no user of this organisation", code="invalid_token")
    if invitation_revoked(claims, user):
        raise Gone("this invitation was withdrawn when its directory was disconnected", code="invitation_revoked")
    issued = claims["exp"] - svc.settings.enrollment_token_ttl_hours * 3600
    if user.enrolled_at is None and user.email and not sent_to_current_address(claims, user, issued):
        raise Gone("this enrollment link was sent to an address the user no longer has; the current address gets "
                   "an invitation of its own", code="address_changed")
    problem = refusal(user, now, svc.settings.invitation_min_interval_s)
    if problem is not None:
        raise problem
    written = await _queue(svc, caller.org, user.id, InvitationReason.REISSUED, message_tag("reissued", now),
                           _admin_check(svc))
    log.info("expired invitation reissued", extra={"org": caller.org, "user": user.id})
    return written or user


@dataclass
class ReminderSummary:
    sent: int = 0
    waiting: int = 0
    dropped: int = 0
    failed: int = 0

    def to_log(self) -> dict[str, int]:
        return {"reminders_queued": self.sent, "reminders_waiting": self.waiting, "reminders_dropped": self.dropped,
                "reminders_failed": self.failed}


async def send_due_reminders(svc: Services) -> ReminderSummary:
    """The reminder timer: queue the due step's reminder of each user in the index whose next reminder is due."""
    summary = ReminderSummary()
    if svc.reminders is None:
        return summary
    s = svc.settings
    now = svc.clock()
    lease = _lease(svc)
    subs: dict[tuple[str, str], Subscription | None] = {}
    due: list[tuple[User, Subscription, int]] = []
    for org, uid in await svc.reminders.due(now, REMINDERS_PER_FIRING):
        try:
            user = await svc.users.get(org, uid)
            key = (org, user.subscription_id or "") if user else (org, "")
            if key not in subs:
                subs[key] = await svc.subscriptions.get(*key) if key[1] else None
            action, value = reminder_decision(user, subs[key], now, s.reminder_day_s, lease)
            if action == DROP:
                await svc.reminders.drop(org, uid)
                summary.dropped += 1
            elif action == WAIT:
                await svc.reminders.defer(org, uid, value)
                summary.waiting += 1
            else:
                due.append((user, subs[key], value))
        except Exception:  # isolation: one user's failure must not stop the others (its row is looked at again)
            summary.failed += 1
            log.exception("a reminder could not be decided", extra={"org": org, "user": uid})
    if svc.invitations is not None:  # indexed before the users hold them (a 100-row transaction per org's batch)
        by_org: dict[str, list[str]] = {}
        for user, _, _ in due:
            by_org.setdefault(user.org, []).append(user.id)
        for org, ids in by_org.items():
            await svc.invitations.expect(org, ids, now + lease)
    jobs: list[EnrollmentJob] = []
    for user, sub, step in due:
        try:
            job = await _queue_reminder(svc, sub, user, step, now)
        except Exception:  # isolation, as above
            summary.failed += 1
            log.exception("a reminder could not be queued", extra={"org": user.org, "user": user.id})
            continue
        if job is not None:
            jobs.append(job)
            summary.sent += 1
    if jobs:  # a crash before this leaves them queued, and the recovery timer re-queues them
        await svc.queue.send_enrollment_jobs(jobs)
    return summary


async def _queue_reminder(svc: Services, sub: Subscription, user: User, step: int,
                          now: datetime) -> EnrollmentJob | None:
    """Record step ``step`` on the user and queue it (once: the write is conditional on the row as read, ``user``,
    re-read if it changed since); the index row moves to the next step's time, or goes after the last. The user is
    already in the pending-invitation index."""
    s = svc.settings
    lease = _lease(svc)

    async def mark(current: User) -> User | None:
        action, value = reminder_decision(current, sub, now, s.reminder_day_s, lease)
        if action != SEND or value != step:
            return None
        nxt = reminder_time(current.invited_at, sub.enrollment_reminders, step, s.reminder_day_s)
        return replace(queued_again(current, InvitationReason.REMINDER, now), reminders_sent=step,
                       next_reminder_at=nxt)

    marked = await mark(user)
    if marked is None:
        return None
    [outcome] = await svc.users.update([(marked, user.username)])  # no second read when nobody wrote it since
    if isinstance(outcome, Stale):
        written = await change_user(svc, user.org, user.id, mark)
    else:
        written = getattr(outcome, "user", None)
    if written is None or written.reminders_sent != step or written.invitation_queued_at != now:
        return None  # someone else sent this step meanwhile (or the user no longer qualifies): the next look decides
    if written.next_reminder_at is None:
        await svc.reminders.drop(user.org, user.id)
    else:
        await svc.reminders.defer(user.org, user.id, written.next_reminder_at)
    # The step names the message: a second send of this step's message is dropped by duplicate detection.
    return EnrollmentJob(user.org, user.id, None, tag=f"reminder{step}")
