"""The mailer use case: send one invitation exactly once per user, whatever Service Bus redelivers."""
from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Callable

from sync import invitation_lifecycle as lifecycle
from sync.composition import Services
from sync.decisions import same_address
from sync.errors import SettingsError, Transient
from sync.logs import get_logger
from sync.model import EmailState, EnrollmentJob, InvitationReason, SourceType, User, UserStatus
from sync.users import change_user, enrollment_token

from .render import NAME_LIMIT, header_text, render_invitation
from .senders import MailError, OutgoingEmail, relay_retry_delay

log = get_logger(__name__)

# A claim older than INVITATION_LEASE_SECONDS (default 5 minutes) was left by a delivery that died: it is taken over.


async def send_invitation(svc: Services, job: EnrollmentJob) -> str:
    """Send the enrollment e-mail for ``job``; returns what happened (sent, already_sent, skipped...)."""
    if svc.mail_sender is None:
        raise SettingsError("MAIL_SENDER is 'none': enrollment e-mails cannot be sent")
    user = await _claim(svc, job)
    if isinstance(user, str):
        return user
    s = svc.settings
    now = svc.clock()
    expires = now + timedelta(hours=s.enrollment_token_ttl_hours)
    token = enrollment_token(s.signing_secret, user.org, user.id, user.email or "", expires, user.source_type)
    link = f"{s.portal_base_url}/enroll?token={token}"
    rendered = render_invitation(portal_name=s.portal_name, portal_url=s.portal_base_url,
                                 display_name=user.display_name, username=user.username, link=link, expires_at=expires,
                                 reminder=user.invitation_reason == InvitationReason.REMINDER)
    email = OutgoingEmail(to_address=user.email or "", to_name=header_text(user.display_name, NAME_LIMIT), subject=rendered.subject,
                          html=rendered.html, text=rendered.text, message_id_hint=job.message_id)
    # Everything the record needs is read (and the reminder index written) before the send: between the SMTP send
    # and its record, a host that dies makes the next delivery send again, so that window holds one write only.
    days = await _reminder_days(svc, user, now, expires)
    try:
        await svc.mail_sender.send(email)
    except MailError as exc:
        if exc.permanent:
            await _record(svc, user, EmailState.FAILED, error=str(exc))
            log.warning("invitation refused permanently", extra={"org": user.org, "user": user.id})
            return "failed"
        return await _retry_later(svc, user, job, str(exc))
    await _record_sent(svc, user, now, expires, days)
    log.info("invitation sent", extra={"org": user.org, "user": user.id, "run": job.run_id,
                                       "reason": user.invitation_reason or InvitationReason.INVITATION})
    return "sent"


async def _reminder_days(svc: Services, user: User, now, expires) -> tuple[int, ...]:
    """The reminder schedule a first invitation of a synced user starts (its subscription's ``enrollmentReminders``);
    such a user goes into the reminder index now, before the send (as every index entry goes in before the user
    says so: an entry of a user whose invitation then fails is dropped by the reminder timer)."""
    s = svc.settings
    first_of_synced = user.invited_at is None and user.source_type == SourceType.AD_SYNC and user.subscription_id
    sub = await svc.subscriptions.get(user.org, user.subscription_id) if first_of_synced else None
    days = sub.enrollment_reminders if sub is not None else ()
    first = lifecycle.sent_invitation(user, now, expires, days, s.reminder_day_s, s.history_retention_days)
    if first.next_reminder_at is not None and user.invited_at is None and svc.reminders is not None:
        await svc.reminders.expect(user.org, [user.id], first.next_reminder_at)
    return days


async def _record_sent(svc: Services, user: User, now, expires, days: tuple[int, ...]) -> None:
    """Record the invitation sent (its link's expiry, an ``invited`` history entry, the next reminder's time)."""
    s = svc.settings

    def sent(current: User) -> User:
        out = _outcome(current, EmailState.SENT, svc.clock(), sent=True)
        return lifecycle.sent_invitation(out, now, expires, days, s.reminder_day_s, s.history_retention_days)

    await _record(svc, user, EmailState.SENT, outcome=sent)


async def _retry_later(svc: Services, user: User, job: EnrollmentJob, why: str) -> str:
    """The relay refused for now: try again later with growing delays (not at once, which relays punish)."""
    mail = svc.settings.mail
    delay = relay_retry_delay(mail.retry_attempts, mail.retry_base_s, job.attempt)
    if delay is None:
        await _record(svc, user, EmailState.FAILED, error=f"gave up after {job.attempt + 1} attempts: {why}")
        log.warning("invitation abandoned", extra={"org": user.org, "user": user.id, "attempts": job.attempt + 1})
        return "failed"
    await _record(svc, user, EmailState.QUEUED)  # release the claim so the retry may send
    await svc.queue.send_enrollment_jobs([replace(job, attempt=job.attempt + 1)], delay_s=delay)
    if svc.invitations is not None:  # the recovery timer leaves it to the scheduled retry
        await svc.invitations.defer(user.org, user.id, svc.clock() + timedelta(seconds=delay + _lease_s(svc)))
    log.info("invitation retry scheduled", extra={"org": user.org, "user": user.id, "in_s": int(delay), "why": why})
    return "retry_scheduled"


async def _claim(svc: Services, job: EnrollmentJob) -> User | str:
    """Mark the user as being e-mailed (ETag), or say why no e-mail is due.

    A claim is a lease: a delivery that died holding it (between the claim and recording the outcome) leaves the
    user ``sending``; once the lease has run out the claim is taken over — by a later delivery, or by the recovery timer,
    which re-queues every invitation left ``queued`` or ``sending`` past its lease (sync/invitations.py), so none is
    lost.
    """
    reason = "user_gone"

    async def claim(user: User) -> User | None:
        nonlocal reason
        now = svc.clock()
        state = user.enrollment_email
        if state == EmailState.SENT:
            reason = "already_sent"
        elif state in (EmailState.FAILED, None):
            reason = "not_due"
        elif state == EmailState.SENDING and user.enrollment_email_lease_until and user.enrollment_email_lease_until > now:
            reason = "being_sent"
        elif user.status != UserStatus.ACTIVE or not user.email:
            reason = "skipped"
            return _outcome(user, EmailState.FAILED, now, error="the user is inactive or has no e-mail address")
        else:
            lease = timedelta(seconds=svc.settings.invitation_lease_s)
            return replace(user, enrollment_email=EmailState.SENDING, enrollment_email_lease_until=now + lease)
        return None

    claimed = await change_user(svc, job.org, job.user_id, claim)
    if claimed is None or claimed.enrollment_email != EmailState.SENDING:
        return reason
    return claimed


def _outcome(user: User, state: str, now, *, error: str | None = None, sent: bool = False) -> User:
    return replace(user, enrollment_email=state, enrollment_email_lease_until=None, enrollment_email_error=error,
                   updated_at=now, enrollment_email_sent_at=now if sent else user.enrollment_email_sent_at)


async def _record(svc: Services, user: User, state: str, *, error: str | None = None,
                  outcome: Callable[[User], User] | None = None) -> None:
    """Write the invitation's outcome, re-reading if the row changed meanwhile (the outcome must not be lost)."""

    async def record(current: User) -> User | None:
        if current.enrollment_email == EmailState.QUEUED and not same_address(current.email, user.email):
            return None  # the address changed meanwhile: its own invitation is due, not this one's outcome
        return outcome(current) if outcome else _outcome(current, state, svc.clock(), error=error)

    await change_user(svc, user.org, user.id, record)
    if state in (EmailState.SENT, EmailState.FAILED) and svc.invitations is not None:
        try:  # nothing pending any more; an entry left behind is dropped by the recovery timer
            await svc.invitations.drop(user.org, user.id)
        except Transient:
            log.warning("a sent invitation stays in the pending index", extra={"org": user.org, "user": user.id})


def _lease_s(svc: Services) -> float:
    """The invitation claim's lease, in seconds."""
    return svc.settings.invitation_lease_s


async def handle_dead_lettered(svc: Services, job: EnrollmentJob, reason: str | None) -> None:
    """An invitation gave up after its last delivery: record it on the user so the portal can show it."""
    user = await svc.users.get(job.org, job.user_id)
    if user is not None and user.enrollment_email in (EmailState.QUEUED, EmailState.SENDING):
        await _record(svc, user, EmailState.FAILED, error=f"delivery abandoned: {reason or 'repeated failures'}")
