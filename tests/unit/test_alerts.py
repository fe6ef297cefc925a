"""Admin alerts on fakes: one e-mail per event (run failed, run needs review, consent lost) whatever is redelivered,
none without notifyEmails, and directory text that can never become markup or a header."""
from dataclasses import replace
from urllib.parse import parse_qs, urlsplit

import azure.functions.servicebus as sb
import pytest

from notifications.alert_mailer import handle_dead_lettered_alert, send_alert
from notifications.render import render_alert
from notifications.senders import MailError
from notifications.smtp import build_message
from sync import group_sync, runs, subscriptions
from sync.alert_model import SEND_LEASE, AlertJob, AlertKind
from sync.errors import NotFound, Transient
from sync.model import EmailState
from tests.helpers import functions_by_name
from tests.unit.syncdsl import TENANT, caller, connect, full_sync

SALES, ENG = "g-sales", "g-eng"
ADMINS = ["ops@contoso.example", "Lead@Contoso.example"]


@pytest.fixture
def tenant(svc):
    t = svc.directory.tenant(TENANT)
    t.add_group(SALES, "Sales Team")
    t.add_group(ENG, "Engineering")
    for i in range(30):
        t.add_user(f"staff{i:02d}", groups=[SALES])
    t.add_user("eng", groups=[ENG])
    return t


def alerts_of(svc):
    """The subscription's alerts of events (not the confirmations of its notifyEmails addresses)."""
    return sorted((a for a in svc.alerts.rows.values() if a.kind != AlertKind.CONFIRMATION), key=lambda a: a.created_at)


async def send_all(svc, *, times=1):
    """Hand every queued alert message to the mailer ``times`` times (redeliveries); their outcomes."""
    outcomes = []
    while svc.queue.alert_jobs:
        jobs, svc.queue.alert_jobs = svc.queue.alert_jobs, []
        for job in jobs:
            for _ in range(times):
                outcomes.append(await send_alert(svc, job))
    return outcomes


async def failing_run(svc, sub, *, times=1):
    svc.directory.fail[ENG] = NotFound("no group")
    try:
        return await full_sync(svc, sub, times=times)
    finally:
        svc.directory.fail.pop(ENG)


async def test_a_failed_run_sends_one_alert_to_every_admin_however_often_it_is_redelivered(svc, tenant):
    sub = await connect(svc, groups=(SALES, ENG), notifyEmails=ADMINS)
    view = await failing_run(svc, sub, times=3)  # every group message delivered three times
    assert view.run.status == "failed" and view.run.alert_due is None
    [alert] = alerts_of(svc)
    assert (alert.id, alert.kind, alert.recipients) == (f"run:{view.run.id}:failed", AlertKind.RUN_FAILED, tuple(ADMINS))
    assert len(svc.queue.alert_jobs) == 1
    outcomes = await send_all(svc, times=3)
    assert outcomes == ["sent", "already_sent", "already_sent"]
    [email] = svc.mail_sender.sent
    assert email.recipients == tuple(ADMINS)
    assert email.subject == "Directory Sync failed"  # fixed text: the name is in the body only
    for body in (email.text, email.html):
        assert view.run.id in body and "Contoso" in body and "Engineering" in body and "group_not_found" in body
        assert "nobody was deactivated" in body
        assert "deselect it" in body  # what to do about group_not_found
    link = f"https://portal.example/directory-sync?subscriptionId={sub.id}&runId={view.run.id}"
    assert link in email.text and link.replace("&", "&amp;") in email.html
    assert alerts_of(svc)[0].state == EmailState.SENT and alerts_of(svc)[0].sent_at
    message = build_message(email, "Portal <no-reply@portal.example>")
    assert [a.addr_spec for a in message["To"].addresses] == ADMINS


async def test_a_run_that_needs_review_sends_one_alert_and_its_approval_none(svc, tenant):
    sub = await connect(svc, groups=(SALES,), notifyEmails=ADMINS[:1])
    await full_sync(svc, sub)
    assert alerts_of(svc) == []  # a run that succeeded tells nobody
    for i in range(20):
        tenant.remove(SALES, f"staff{i:02d}")
    view = await full_sync(svc, sub, times=2)
    assert view.run.status == "needs_review"
    [alert] = alerts_of(svc)
    assert alert.kind == AlertKind.RUN_NEEDS_REVIEW and alert.facts["pendingDeactivations"] == 20
    await runs.approve(svc, caller(), sub.id, view.run.id)
    assert len(alerts_of(svc)) == 1  # the approval ended the run succeeded: no event
    assert await send_all(svc, times=2) == ["sent", "already_sent"]
    [email] = svc.mail_sender.sent
    assert email.subject == "Directory Sync needs your review" and email.recipients == (ADMINS[0],)
    assert "20 user(s) would be deactivated" in email.text and "approve the run" in email.text
    assert f"runId={view.run.id}" in email.text


async def test_consent_lost_mid_run_is_one_alert_and_the_failed_run_another(svc, tenant):
    sub = await connect(svc, groups=(SALES, ENG), notifyEmails=ADMINS)
    svc.directory.revoked.add(TENANT)
    view = await full_sync(svc, sub, times=2)
    assert view.run.status == "failed"
    assert (await subscriptions.get(svc, caller(), sub.id)).status == "consent_revoked"
    kinds = sorted(a.kind for a in alerts_of(svc))
    assert kinds == [AlertKind.CONSENT_LOST, AlertKind.RUN_FAILED]
    consent = next(a for a in alerts_of(svc) if a.kind == AlertKind.CONSENT_LOST)
    assert consent.id.startswith("consent:") and consent.run_id == view.run.id
    await send_all(svc, times=2)
    subjects = sorted(e.subject for e in svc.mail_sender.sent)
    assert subjects == ["Directory Sync failed", "Directory Sync lost access to a directory"]
    lost = next(e for e in svc.mail_sender.sent if "lost access" in e.subject)
    assert TENANT in lost.text and "authorizes the directory again" in lost.text and view.run.id in lost.text
    failed = next(e for e in svc.mail_sender.sent if "failed" in e.subject)
    assert "consent_revoked" in failed.text and "must authorize the directory again" in failed.text


async def test_consent_lost_found_by_a_search_alerts_once_and_again_after_a_new_consent(svc, tenant):
    from tests.unit.syncdsl import confirm, consent_as

    sub = await connect(svc, groups=(SALES,), notifyEmails=ADMINS)
    svc.directory.revoked.add(TENANT)
    for _ in range(3):
        with pytest.raises(Exception) as err:
            await subscriptions.search_groups(svc, caller(), sub.id, "Sales")
        assert getattr(err.value, "code", None) == "consent_revoked"
    [alert] = alerts_of(svc)
    assert alert.kind == AlertKind.CONSENT_LOST and alert.run_id is None
    await send_all(svc)
    [email] = svc.mail_sender.sent
    assert f"?subscriptionId={sub.id}\n" in email.text and "runId" not in email.text
    # Consent given again and lost again: a new event, a new alert.
    svc.directory.revoked.clear()
    svc.clock.advance(minutes=30)
    await confirm(svc, caller(), sub.id, await consent_as(svc, caller(), sub.id, TENANT))
    svc.directory.revoked.add(TENANT)
    svc.clock.advance(minutes=30)  # past the propagation grace of the new consent
    with pytest.raises(Exception):
        await subscriptions.search_groups(svc, caller(), sub.id, "Sales")
    assert [a.kind for a in alerts_of(svc)] == [AlertKind.CONSENT_LOST] * 2
    await send_all(svc)
    assert len(svc.mail_sender.sent) == 2


async def test_without_notify_emails_nothing_is_recorded_or_sent(svc, tenant):
    sub = await connect(svc, groups=(SALES, ENG))
    view = await failing_run(svc, sub)
    assert view.run.status == "failed" and view.run.alert_due is None
    svc.directory.revoked.add(TENANT)
    await full_sync(svc, sub)
    assert alerts_of(svc) == [] and svc.queue.alert_jobs == [] and svc.mail_sender.sent == []


async def test_mail_off_records_no_alert(tenant):
    from sync import composition
    from tests.fakes import make_services

    svc = make_services(MAIL_SENDER="none")
    svc.directory.tenants = {TENANT: tenant}
    composition.override(svc)
    try:
        sub = await connect(svc, groups=(SALES, ENG), notifyEmails=ADMINS)
        assert (await failing_run(svc, sub)).run.status == "failed"
    finally:
        composition.override(None)
    assert alerts_of(svc) == [] and svc.queue.alert_jobs == []


async def test_a_worker_that_dies_before_the_alert_is_queued_leaves_it_to_the_redelivery(svc, tenant):
    sub = await connect(svc, groups=(ENG,), notifyEmails=ADMINS)
    await runs.start(svc, caller(), sub.id)
    [job] = svc.queue.take_group_jobs()
    svc.directory.fail[ENG] = NotFound("no group")
    svc.queue.fail_alerts = Transient("service bus down")
    with pytest.raises(Transient):
        await group_sync.handle_group_job(svc, job)
    run = await svc.runs.get(sub.org, sub.id, job.run_id)
    assert run.status == "failed" and run.alert_due == "failed"  # the run ended; its alert is still owed
    [alert] = alerts_of(svc)
    assert alert.state == EmailState.QUEUED and svc.queue.alert_jobs == []
    await group_sync.handle_group_job(svc, job, redelivered=True)
    assert (await svc.runs.get(sub.org, sub.id, job.run_id)).alert_due is None
    assert len(svc.queue.alert_jobs) == 1
    await group_sync.handle_group_job(svc, job, redelivered=True)  # once more: nothing left to tell
    assert len(svc.queue.alert_jobs) == 1
    assert await send_all(svc) == ["sent"]


async def test_a_run_failed_by_the_api_alerts_and_a_lost_alert_is_told_by_the_next_sync(svc, tenant):
    sub = await connect(svc, groups=(SALES,), notifyEmails=ADMINS)
    svc.queue.fail_next = Transient("service bus down")  # the group messages cannot be queued...
    svc.queue.fail_alerts = Transient("service bus down")  # ...nor, a moment later, the alert
    with pytest.raises(Transient):
        await runs.start(svc, caller(), sub.id)
    [failed] = await runs.recent(svc, caller(), sub.id)
    assert failed.run.status == "failed" and failed.run.alert_due == "failed"
    assert svc.queue.alert_jobs == []
    await full_sync(svc, sub)  # the next sync tells it
    assert [j.alert_id for j in svc.queue.alert_jobs] == [f"run:{failed.run.id}:failed"]
    assert await send_all(svc) == ["sent"]
    assert "queue_unavailable" in svc.mail_sender.sent[0].text


async def test_a_claim_left_by_a_sender_that_died_is_taken_over_or_requeued_by_the_next_sync(svc, tenant):
    sub = await connect(svc, groups=(SALES, ENG), notifyEmails=ADMINS)
    await failing_run(svc, sub)
    [job] = svc.queue.alert_jobs
    [alert] = alerts_of(svc)
    await svc.alerts.save(replace(alert, state=EmailState.SENDING, lease_until=svc.clock() + SEND_LEASE))
    assert await send_alert(svc, job) == "being_sent"  # within the lease the claimer may be sending
    svc.clock.advance(seconds=SEND_LEASE.total_seconds() + 1)
    svc.queue.alert_jobs.clear()
    await full_sync(svc, sub)  # succeeds; re-queues the abandoned claim under a message id of its own
    [again] = svc.queue.alert_jobs
    assert again.alert_id == job.alert_id and again.message_id != job.message_id
    assert await send_all(svc, times=2) == ["sent", "already_sent"]
    assert len(svc.mail_sender.sent) == 1


async def test_relay_refusals_are_retried_later_or_recorded(svc, tenant):
    sub = await connect(svc, groups=(SALES, ENG), notifyEmails=ADMINS)
    await failing_run(svc, sub)
    [job] = svc.queue.alert_jobs
    svc.queue.alert_jobs.clear()
    svc.mail_sender.failures.append(MailError("451 try later", permanent=False))
    assert await send_alert(svc, job) == "retry_scheduled"
    [retry] = svc.queue.alert_jobs
    assert retry.attempt == 1 and retry.message_id != job.message_id and svc.queue.alert_delays[-1] == 60
    assert alerts_of(svc)[0].state == EmailState.QUEUED
    assert await send_alert(svc, retry) == "sent"
    assert await send_alert(svc, job) == "already_sent"
    # Another event, refused for good: recorded, never retried.
    for i in range(20):
        tenant.remove(SALES, f"staff{i:02d}")
    svc.queue.alert_jobs.clear()
    await full_sync(svc, sub)
    [review] = svc.queue.alert_jobs
    svc.mail_sender.failures.append(MailError("550 no such mailbox", permanent=True))
    assert await send_alert(svc, review) == "failed"
    stored = await svc.alerts.get(sub.org, sub.id, review.alert_id)
    assert stored.state == EmailState.FAILED and "550" in stored.error
    assert await send_alert(svc, review) == "not_due"


async def test_trigger_and_dead_letter_trigger(svc, tenant):
    sub = await connect(svc, groups=(SALES, ENG), notifyEmails=ADMINS)
    await failing_run(svc, sub)
    [job] = svc.queue.alert_jobs
    msg = sb.ServiceBusMessage(body=job.to_json().encode(), message_id=job.message_id, application_properties={},
                               user_properties={}, delivery_count=1)
    functions = functions_by_name()
    await functions["alert_mailer"].get_user_function()(msg)
    assert len(svc.mail_sender.sent) == 1
    assert AlertJob.from_json(job.to_json()) == job and len(job.message_id) <= 128
    # A dead-lettered alert that was never sent is recorded as failed; a sent one stays sent.
    await handle_dead_lettered_alert(svc, job, "MaxDeliveryCountExceeded")
    assert alerts_of(svc)[0].state == EmailState.SENT
    await svc.alerts.save(replace(alerts_of(svc)[0], state=EmailState.QUEUED))
    dead = sb.ServiceBusMessage(body=job.to_json().encode(), message_id=job.message_id, application_properties={},
                                user_properties={}, delivery_count=3, dead_letter_reason="MaxDeliveryCountExceeded")
    await functions["alert_mailer_dead_letters"].get_user_function()(dead)
    assert alerts_of(svc)[0].state == EmailState.FAILED and "MaxDeliveryCountExceeded" in alerts_of(svc)[0].error


async def test_deleting_the_subscription_deletes_its_alerts(svc, tenant):
    sub = await connect(svc, groups=(SALES, ENG), notifyEmails=ADMINS)
    await failing_run(svc, sub)
    [job] = svc.queue.alert_jobs
    await subscriptions.delete(svc, caller(), sub.id)
    assert alerts_of(svc) == []
    assert await send_alert(svc, job) == "gone" and svc.mail_sender.sent == []


HOSTILE = 'Fabrikam <script>alert(1)</script> & "Co"\u2028Bcc: attacker@evil.example\u202egnp.exe'


async def test_hostile_names_are_text_in_the_html_and_never_in_the_subject(svc, tenant):
    tenant.add_group("g-evil", '<img src=x onerror=alert(1)> "Sales" & Co')
    sub = await connect(svc, groups=(SALES, "g-evil"), notifyEmails=ADMINS)
    sub = await subscriptions.update(svc, caller(), sub.id, {"name": HOSTILE})
    svc.directory.fail["g-evil"] = NotFound("no group")
    assert (await full_sync(svc, sub)).run.status == "failed"
    await send_all(svc)
    [email] = svc.mail_sender.sent
    assert "<script>" not in email.html and "<img" not in email.html
    assert "Fabrikam &lt;script&gt;alert(1)&lt;/script&gt; &amp; &#34;Co&#34;" in email.html
    assert "&lt;img src=x onerror=alert(1)&gt; &#34;Sales&#34; &amp; Co" in email.html
    assert '<img src=x onerror=alert(1)> "Sales" & Co' in email.text
    # The org's name for the directory: labelled, on one line, no direction override; never in the subject.
    assert 'Directory (its name in Identity Portal): Fabrikam <script>alert(1)</script> & "Co" Bcc: ' \
           'attacker@evil.example' in email.text
    assert email.subject == "Directory Sync failed" and not any(c in email.text for c in "\u2028\u202e")
    message = build_message(email, "Portal <no-reply@portal.example>")
    headers = message.as_string().split("\n\n", 1)[0]
    assert message["Bcc"] is None and "\nBcc:" not in headers
    assert all(line[:1] in (" ", "\t") or ":" in line.split(" ", 1)[0] for line in headers.splitlines())


def test_the_link_encodes_its_query_values_and_the_subject_never_names_the_directory():
    from notifications.alert_mailer import alert_link
    from sync.alert_model import Alert

    alert = Alert(org="o", subscription_id="a&b=c d", id="run:r:failed", kind=AlertKind.RUN_FAILED,
                  subscription_name="x", recipients=("a@b.example",), run_id="r#1?")
    link = alert_link("https://portal.example", "/directory-sync", alert)
    assert link == "https://portal.example/directory-sync?subscriptionId=a%26b%3Dc+d&runId=r%231%3F"
    assert parse_qs(urlsplit(link).query) == {"subscriptionId": ["a&b=c d"], "runId": ["r#1?"]}
    rendered = render_alert(portal_name="P", portal_url="https://p.example", kind=AlertKind.CONSENT_LOST,
                            subscription_name="N" * 500, run_id=None, facts={"tenantId": "t", "consentedAt": None,
                                                                              "detectedAt": "2026-11-27T09:00:00.000Z"},
                            link=link)
    assert rendered.subject == "Directory Sync lost access to a directory"
    assert "N" * 199 + "…" in rendered.text  # the body names it (as long as a name may be: 200)
