"""The alert mailer: send one admin alert once, whatever Service Bus redelivers (the invitation's claim, in its row).

An alert row (``sync/alerts.py`` records it) moves queued → sending (a claim with a lease) → sent, or failed. A
delivery that finds it sent does nothing; one that finds a live claim leaves it alone; one that finds a claim whose
lease ran out (its sender died) takes it over, and the next sync of the subscription re-queues such claims. So an
alert is never lost, and is sent twice only if a host dies after the relay took the message and before ``sent``
was written (the send itself may have been cut: at least once, then).
"""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from urllib.parse import urlencode, urljoin

from sync.alert_model import (
    CONFIRM_TTL,
    DIGESTED,
    FOLDED,
    SEND_LEASE,
    Alert,
    AlertJob,
    AlertKind,
    confirmation_nonce,
    digest_facts,
)
from sync.alert_recipients import confirmation_token
from sync.composition import Services
from sync.concurrency import optimistic
from sync.errors import SettingsError
from sync.logs import get_logger
from sync.model import EmailState

from .render import render_alert, render_confirmation, render_digest
from .senders import MailError, OutgoingEmail, relay_retry_delay

log = get_logger(__name__)


async def send_alert(svc: Services, job: AlertJob) -> str:
    """Send the alert ``job`` names; returns what happened (sent, already_sent, being_sent, retry_scheduled...)."""
    if svc.mail_sender is None or svc.alerts is None:
        raise SettingsError("MAIL_SENDER is 'none': admin alerts cannot be sent")
    alert = await _claim(svc, job)
    if isinstance(alert, str):
        return alert
    s = svc.settings
    folded: list[Alert] = []
    if alert.kind == AlertKind.CONFIRMATION:
        rendered = _confirmation(svc, alert)
    elif alert.kind == AlertKind.DIGEST:
        since = svc.clock() - timedelta(days=2)
        folded = [a for a in await svc.alerts.recent(alert.org, alert.subscription_id, since) if a.state == FOLDED]
        if not folded:  # told by an earlier digest (its marks were written, this one's claim was not)
            await _record(svc, alert, EmailState.FAILED, error="nothing left to tell")
            return "nothing_folded"
        items = digest_facts(folded)
        rendered = render_digest(portal_name=s.portal_name, portal_url=s.portal_base_url,
                                 subscription_name=alert.subscription_name, items=items,
                                 more=len(folded) - len(items), per_hour=s.alerts_per_hour,
                                 link=alert_link(s.portal_base_url, s.portal_consent_return_path, alert))
    else:
        rendered = render_alert(portal_name=s.portal_name, portal_url=s.portal_base_url, kind=alert.kind,
                                subscription_name=alert.subscription_name, run_id=alert.run_id, facts=alert.facts,
                                link=alert_link(s.portal_base_url, s.portal_consent_return_path, alert))
    email = OutgoingEmail(to_address=alert.recipients[0], to_name="", also_to=alert.recipients[1:],
                          subject=rendered.subject, html=rendered.html, text=rendered.text,
                          message_id_hint=job.message_id)
    ctx = {"org": alert.org, "subscription": alert.subscription_id, "alert": alert.id}
    try:
        refused = await svc.mail_sender.send(email) or ()
    except MailError as exc:
        if exc.permanent:
            await _record(svc, alert, EmailState.FAILED, error=str(exc))
            log.warning("admin alert refused permanently", extra=ctx)
            return "failed"
        return await _retry_later(svc, alert, job, str(exc))
    await _record(svc, alert, EmailState.SENT, refused=tuple(refused))
    for told in folded:  # each folded alert is told now (by this digest)
        await _record(svc, told, DIGESTED, error=f"told in {alert.id}")
    log.info("admin alert sent", extra={**ctx, "recipients": len(alert.recipients), "refused": len(refused)})
    return "sent"


def _confirmation(svc: Services, alert: Alert):
    """The confirmation e-mail of a ``notifyEmails`` address: its link goes to this app's anonymous confirm endpoint,
    beside the consent callback (CONSENT_REDIRECT_URI names this app's public /api/directory/consent)."""
    s = svc.settings
    asked = datetime.fromisoformat(alert.facts["askedAt"].replace("Z", "+00:00"))
    token = confirmation_token(s.signing_secret, alert.org, alert.subscription_id, confirmation_nonce(alert), asked)
    link = f"{urljoin(s.consent_redirect_uri, CONFIRM_ROUTE)}?{urlencode({'token': token})}"
    return render_confirmation(portal_name=s.portal_name, portal_url=s.portal_base_url,
                               subscription_name=alert.subscription_name, address=alert.recipients[0], link=link,
                               expires_at=asked + CONFIRM_TTL)


CONFIRM_ROUTE = "notify-emails/confirm"  # relative to .../api/directory/consent: .../api/directory/notify-emails/confirm


def alert_link(portal_base_url: str, return_path: str, alert: Alert) -> str:
    """The portal's directory page for the alert's subscription and run, query values URL-encoded."""
    query = {"subscriptionId": alert.subscription_id}
    if alert.run_id:
        query["runId"] = alert.run_id
    return f"{portal_base_url}{return_path}?{urlencode(query)}"


async def _claim(svc: Services, job: AlertJob) -> Alert | str:
    """Mark the alert as being sent (ETag, lease), or say why no e-mail is due."""
    reason = "gone"  # the subscription was deleted, and its alerts with it

    async def claim(alert: Alert) -> Alert | None:
        nonlocal reason
        now = svc.clock()
        if alert.state == EmailState.SENT:
            reason = "already_sent"
        elif alert.state == EmailState.FAILED:
            reason = "not_due"
        elif alert.state == EmailState.SENDING and alert.lease_until and alert.lease_until > now:
            reason = "being_sent"
        elif not alert.recipients:
            reason = "no_recipients"
            return replace(alert, state=EmailState.FAILED, error="no recipients", updated_at=now)
        else:
            return replace(alert, state=EmailState.SENDING, lease_until=now + SEND_LEASE, updated_at=now)
        return None

    claimed = await optimistic(lambda: svc.alerts.get(job.org, job.subscription_id, job.alert_id), claim,
                               svc.alerts.save)
    if claimed is None or claimed.state != EmailState.SENDING:
        return reason
    return claimed


async def _retry_later(svc: Services, alert: Alert, job: AlertJob, why: str) -> str:
    """The relay refused for now: try again later with growing delays, as invitations do."""
    mail = svc.settings.mail
    delay = relay_retry_delay(mail.retry_attempts, mail.retry_base_s, job.attempt)
    if delay is None:
        await _record(svc, alert, EmailState.FAILED, error=f"gave up after {job.attempt + 1} attempts: {why}")
        log.warning("admin alert abandoned", extra={"org": alert.org, "alert": alert.id, "attempts": job.attempt + 1})
        return "failed"
    await _record(svc, alert, EmailState.QUEUED)  # release the claim so the retry may send
    await svc.queue.send_alert_jobs([replace(job, attempt=job.attempt + 1)], delay_s=delay)
    log.info("admin alert retry scheduled", extra={"org": alert.org, "alert": alert.id, "in_s": int(delay), "why": why})
    return "retry_scheduled"


async def _record(svc: Services, alert: Alert, state: str, *, error: str | None = None,
                  refused: tuple[str, ...] = ()) -> None:
    """Write the outcome, re-reading if the row changed meanwhile (the outcome must not be lost)."""

    async def record(current: Alert) -> Alert:
        now = svc.clock()
        return replace(current, state=state, lease_until=None, error=error, refused=refused, updated_at=now,
                       sent_at=now if state in (EmailState.SENT, DIGESTED) else current.sent_at)

    await optimistic(lambda: svc.alerts.get(alert.org, alert.subscription_id, alert.id), record, svc.alerts.save)


async def handle_dead_lettered_alert(svc: Services, job: AlertJob, reason: str | None) -> None:
    """An alert gave up after its last delivery: record it on its row."""
    if svc.alerts is None:
        return
    alert = await svc.alerts.get(job.org, job.subscription_id, job.alert_id)
    if alert is not None and alert.state in (EmailState.QUEUED, EmailState.SENDING):
        await _record(svc, alert, EmailState.FAILED, error=f"delivery abandoned: {reason or 'repeated failures'}")
