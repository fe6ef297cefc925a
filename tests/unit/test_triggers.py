"""Non-HTTP triggers called as the host calls them: timer and Service Bus, with real azure.functions objects."""
import dataclasses

import azure.functions.servicebus as sb
from azure.functions.timer import TimerRequest

from sync import runs
from sync.errors import Transient
from sync.model import ChangeJob, Trigger
from tests.helpers import functions_by_name
from tests.unit.syncdsl import TENANT, caller, connect

G = "g-sales"


def _message(job, delivery_count=1, dead_letter_reason=None):
    return sb.ServiceBusMessage(body=job.to_json().encode(), message_id=job.message_id, application_properties={},
                                user_properties={}, delivery_count=delivery_count, dead_letter_reason=dead_letter_reason)


async def _tenant(svc, users=3):
    t = svc.directory.tenant(TENANT)
    t.add_group(G, "Sales Team")
    for i in range(users):
        t.add_user(f"u{i}", groups=[G])


async def test_nightly_starts_eligible_skips_busy_and_survives_a_failure(svc):
    await _tenant(svc)
    svc.settings = dataclasses.replace(svc.settings, allow_shared_tenants=True)  # three orgs, one test tenant
    eligible = await connect(svc, groups=(G,))
    busy = await connect(svc, groups=(G,))
    await runs.start(svc, caller(), busy.id)
    await connect(svc, groups=(G,), nightlySync=False)
    await connect(svc)  # authorized but no groups
    await connect(svc, org="org-b", groups=(G,))
    broken = await connect(svc, org="org-c", groups=(G,))
    original = svc.queue.send_group_jobs

    async def flaky(jobs):
        if jobs and jobs[0].subscription_id == broken.id:
            raise Transient("service bus down")
        await original(jobs)
    svc.queue.send_group_jobs = flaky
    svc.queue.group_jobs.clear()
    await functions_by_name()["nightly_sync"].get_user_function()(TimerRequest(past_due=True))
    started = {j.subscription_id for j in svc.queue.group_jobs}
    assert eligible.id in started and busy.id not in started and len(started) == 2
    [view] = await runs.recent(svc, caller(), eligible.id)
    assert view.run.trigger == "nightly"
    broken_runs = await runs.recent(svc, caller("org-c"), broken.id)
    assert broken_runs[0].run.status == "failed"


async def test_group_worker_trigger_and_dead_letter_trigger(svc):
    await _tenant(svc)
    sub = await connect(svc, groups=(G,))
    run = await runs.start(svc, caller(), sub.id)
    [job] = svc.queue.take_group_jobs()
    svc.directory.fail[G] = Transient("graph 503")
    worker = functions_by_name()["group_worker"].get_user_function()
    try:
        await worker(_message(job))
    except Transient:
        pass
    else:
        raise AssertionError("a transient failure must propagate so Service Bus redelivers")
    await functions_by_name()["group_worker_dead_letters"].get_user_function()(
        _message(job, delivery_count=10, dead_letter_reason="MaxDeliveryCountExceeded"))
    view = await runs.get(svc, caller(), sub.id, run.id)
    assert view.run.status == "failed"
    assert "graph 503" in view.errors[0].message


async def test_a_dead_letter_trigger_completes_a_message_it_cannot_parse_and_logs_it_once(svc, caplog):
    """Issue 22 #4: raising would redeliver it from the dead-letter queue for ever (about 2.4 tracebacks a second)."""
    import logging

    triggers = ["group_worker_dead_letters", "mailer_dead_letters", "alert_mailer_dead_letters",
                "change_worker_dead_letters"]
    bodies = [b"not json", b"[]", b"{}", b'{"org": "o"}', b"\xff\xfe", b'{"org": "o", "subscriptionId": "s", "runId": '
              b'"r", "groupId": "g", "segment": "x"}', b"[" * 5000 + b"]" * 5000, b"null", b'"text"',
              b'{"org": "\\ud800", "subscriptionId": "s", "runId": "r", "groupId": "g", "userId": "u", "alertId": "a"}']
    with caplog.at_level(logging.INFO):
        for name in triggers:
            for body in bodies:
                msg = sb.ServiceBusMessage(body=body, message_id="m-1", application_properties={}, user_properties={},
                                           delivery_count=1, dead_letter_reason="MaxDeliveryCountExceeded")
                await functions_by_name()[name].get_user_function()(msg)  # returns: the message is completed
    lines = [r for r in caplog.records if "dead-lettered message is not a job" in r.getMessage()]
    assert len(lines) == len(triggers) * len(bodies) and all(r.levelname == "ERROR" for r in lines)
    assert {r.getMessage().split("queue=")[1].split()[0] for r in lines} == {"group-sync", "enrollment-email",
                                                                           "admin-alerts", "directory-changes"}
    assert not any("not json" in r.getMessage() for r in caplog.records)  # the body is never logged


async def test_change_dead_letter_trigger_fails_a_run_visibly_once(svc):
    await _tenant(svc)
    sub = await connect(svc, groups=(G,))
    job = ChangeJob(sub.org, sub.id, Trigger.CHANGE_NOTIFICATION, svc.clock())
    dead_letters = functions_by_name()["change_worker_dead_letters"].get_user_function()
    for _ in range(2):  # a dead letter delivered twice fails one run
        await dead_letters(_message(job, delivery_count=10, dead_letter_reason="MaxDeliveryCountExceeded"))
    [view] = await runs.recent(svc, caller(), sub.id)
    assert (view.run.status, view.run.trigger) == ("failed", "change_notification")
    [error] = view.errors
    assert error.code == "changes_not_applied" and "MaxDeliveryCountExceeded" in error.message
    stored = await svc.subscriptions.get(sub.org, sub.id)
    assert (stored.last_run_id, stored.active_run_id) == (view.run.id, None)
