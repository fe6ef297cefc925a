"""Admin alerts, the use case: record each event once and queue its e-mail (``notifications/alert_mailer.py`` sends it).

Events and who tells them:
- a run ended ``failed`` or ``needs_review``: whoever made the run's terminal transition. That transition also wrote
  the owed alert on the run (``Run.alert_due``), and it is cleared only once the alert row exists and its message
  is queued, so a worker that dies in between leaves it to the redelivered message (the finalizer calls again);
- the subscription lost its admin consent: whoever marked it ``consent_revoked`` (``subscriptions``).

The alert row is keyed by the event (``run:<run id>:<status>``, ``consent:<consent time>``) and inserted only if
absent: recording an event again finds the first row and never makes a second e-mail.
"""
from __future__ import annotations

from dataclasses import replace

from .alert_model import AlertJob, consent_alert, run_alert, stuck
from .composition import Services
from .concurrency import optimistic
from .logs import get_logger
from .model import EmailState, Run, Subscription

log = get_logger(__name__)


async def run_ended(svc: Services, org: str, sub_id: str, run_id: str, *, quiet: bool = False) -> str:
    """Tell the alert a run owes (``Run.alert_due``), then clear it; any number of calls make one alert.

    ``quiet``: a failure is logged instead of raised (the API's own failure paths, which must answer their error);
    the owed alert then stays on the run and the next sync of the subscription tells it (``recover``).
    """
    try:
        run = await svc.runs.get(org, sub_id, run_id)
        if run is None or run.alert_due is None:
            return "not_due"
        status = run.alert_due
        sub = await svc.subscriptions.get(org, sub_id)
        outcome = "no_recipients"
        if sub is not None and not sub.deleting and sub.notify_emails:
            view = await svc.runs.view(org, sub_id, run_id)
            if view is not None:
                outcome = await _tell(svc, run_alert(sub, view, status, svc.clock()))
        await _settle(svc, run, status)
        return outcome
    except Exception:
        if not quiet:
            raise
        log.warning("admin alert of a run could not be recorded now", exc_info=True,
                    extra={"org": org, "subscription": sub_id, "run": run_id})
        return "deferred"


async def consent_lost(svc: Services, sub: Subscription, *, run_id: str | None = None) -> str:
    """Tell that ``sub`` (just marked ``consent_revoked``) lost its admin consent; ``run_id``: the run that found out.

    Never raises: the caller is answering the loss itself (409 to the portal, the group failed). Nothing retries a
    consent alert that could not be recorded at this moment; the subscription's status and the run's own alert
    still tell.
    """
    if not sub.notify_emails:
        return "no_recipients"
    try:
        return await _tell(svc, consent_alert(sub, run_id, svc.clock()))
    except Exception:
        log.warning("admin alert of a lost consent could not be recorded", exc_info=True,
                    extra={"org": sub.org, "subscription": sub.id})
        return "failed"


async def recover(svc: Services, sub: Subscription) -> int:
    """At the start of a sync: tell what earlier ones left untold, as invitations are re-queued by the next run.

    The last run's owed alert (its recording failed), and alerts whose claim a dying delivery left (``sending``
    past its lease) or whose message was lost (``queued`` past every retry): re-queued with a message id of their
    own, so duplicate detection does not drop them. Returns how many alerts were re-queued.
    """
    if sub.last_run_id:
        await run_ended(svc, sub.org, sub.id, sub.last_run_id, quiet=True)
    if svc.alerts is None:
        return 0
    now = svc.clock()
    left = [a for a in await svc.alerts.unsent(sub.org, sub.id) if stuck(a, now)]
    if left:
        tag = f"requeue{int(now.timestamp())}"
        await svc.queue.send_alert_jobs([AlertJob.of(a, tag=tag) for a in left])
        log.info("untold admin alerts re-queued", extra={"org": sub.org, "subscription": sub.id, "alerts": len(left)})
    return len(left)


async def tell(svc: Services, alert) -> str:
    """Record ``alert`` once and queue its e-mail (another capability's alert, e.g. a failing webhook)."""
    return await _tell(svc, alert)


async def _tell(svc: Services, alert) -> str:
    """Insert the event's row if absent and queue its message (again while it is still queued: the first send may
    have been lost; the mailer's claim keeps a duplicate from sending twice)."""
    ctx = {"org": alert.org, "subscription": alert.subscription_id, "alert": alert.id}
    if svc.alerts is None or svc.settings.mail is None:
        log.warning("admin alert not sent: e-mail is off (MAIL_SENDER=none)", extra=ctx)
        return "mail_off"
    stored, created = await svc.alerts.add(alert)
    if not created and stored.state != EmailState.QUEUED:
        return "already_told"
    await svc.queue.send_alert_jobs([AlertJob.of(stored)])
    log.info("admin alert queued", extra={**ctx, "kind": alert.kind, "recipients": len(alert.recipients)})
    return "queued"


async def _settle(svc: Services, run: Run, status: str) -> None:
    """The alert is recorded and queued: the run owes nothing any more (unless it has since ended otherwise)."""

    async def clear(current: Run) -> Run | None:
        return replace(current, alert_due=None) if current.alert_due == status else None

    await optimistic(lambda: svc.runs.get(run.org, run.subscription_id, run.id), clear, svc.runs.save)
