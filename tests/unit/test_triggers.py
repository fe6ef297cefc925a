"""Non-HTTP triggers called as the host calls them: timer and Service Bus, with real azure.functions objects."""
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
