"""Crash recovery on fakes (issue 29): a process dies at a chosen line (a BaseException no code handles, as SIGKILL
would leave things), and whoever comes next carries on: the message's redelivery, the next request, the timer."""
from datetime import timedelta

import pytest

from notifications.mailer import send_invitation
from sync import changes, invitations, recovery, runs
from sync.errors import Conflict
from sync.model import ChangeJob, EmailState, EnrollmentJob, Trigger
from tests.fakes import make_services
from tests.unit.syncdsl import TENANT, caller, changes_of, connect, deliver, full_sync, users_of

SALES, ENG = "g-sales", "g-eng"


class Killed(BaseException):
    """The process died here: nothing after this line, no except clause, runs."""


@pytest.fixture
def svc():
    from sync import composition

    services = make_services(NOTIFICATION_URL="https://dirsync.example/api/directory/notifications?code=k",
                             DEPROVISION_GUARD_MIN_USERS="100")
    composition.override(services)
    yield services
    composition.override(None)


@pytest.fixture
def tenant(svc):
    t = svc.directory.tenant(TENANT)
    t.add_group(SALES, "Sales Team")
    t.add_group(ENG, "Engineering")
    t.add_user("ann", groups=[SALES])
    t.add_user("bob", groups=[SALES, ENG])
    t.add_user("cat", groups=[ENG])
    return t


async def synced(svc):
    sub = await connect(svc, groups=(SALES, ENG), deactivateBlockedUsers=True, sendEnrollmentEmail=True)
    assert (await full_sync(svc, sub)).run.status == "succeeded"
    for job in svc.queue.enrollment_jobs:
        await send_invitation(svc, job)
    svc.queue.enrollment_jobs.clear()
    svc.mail_sender.sent.clear()
    svc.clock.advance(seconds=5)
    return sub


def kill_once(obj, name: str) -> None:
    """The next call of ``obj.name`` kills the process (after nothing of it was done)."""
    real = getattr(obj, name)

    async def dying(*args, **kwargs):
        setattr(obj, name, real)
        raise Killed()

    setattr(obj, name, dying)


async def crashed_change_job(svc, sub, where: tuple) -> ChangeJob:
    svc.clock.advance(seconds=1)
    job = ChangeJob(sub.org, sub.id, Trigger.CHANGE_NOTIFICATION, svc.clock())
    kill_once(*where)
    with pytest.raises(Killed):
        await changes.handle_change_job(svc, job, delivery=1)
    return job


async def test_a_redelivered_change_job_takes_over_its_run_lists_each_change_once_and_invites_once(svc, tenant):
    sub = await synced(svc)
    tenant.block("cat")
    tenant.add_user("eve", groups=[ENG])
    tenant.add_user("fay", groups=[SALES])
    # Killed after the users were written and before their invitations were queued.
    job = await crashed_change_job(svc, sub, (svc.queue, "send_enrollment_jobs"))
    [stalled] = [v for v in await runs.recent(svc, caller(), sub.id) if v.run.status == "running"]
    assert users_of(svc)["eve@contoso.example"].enrollment_email == EmailState.QUEUED
    assert svc.queue.enrollment_jobs == []
    with pytest.raises(Conflict):  # the run is not stale: only its own message's redelivery may take it over
        await runs.start(svc, caller(), sub.id)

    svc.clock.advance(seconds=30)  # the lock ran out: Service Bus delivers the message again
    await changes.handle_change_job(svc, job, delivery=2)
    await deliver(svc)
    view = await runs.get(svc, caller(), sub.id, stalled.run.id)
    assert (view.run.status, view.run.job_delivery) == ("succeeded", 2)
    assert (view.counts.created, view.counts.deactivated, view.counts.emailsQueued) == (2, 1, 2)
    listed = await changes_of(svc, sub, stalled.run.id)
    assert sorted((c["username"], c["change"]) for c in listed) == [
        ("cat@contoso.example", "deactivated"), ("eve@contoso.example", "created"), ("fay@contoso.example", "created")]
    users = users_of(svc)
    assert sorted(j.user_id for j in svc.queue.enrollment_jobs) == sorted(
        users[n].id for n in ("eve@contoso.example", "fay@contoso.example"))
    for j in list(svc.queue.enrollment_jobs):
        await send_invitation(svc, j)
    assert sorted(e.to_address for e in svc.mail_sender.sent) == ["eve@contoso.example", "fay@contoso.example"]
    assert (await runs.start(svc, caller(), sub.id)).status == "queued"  # a new sync is accepted


async def test_a_change_job_killed_before_its_run_ended_is_ended_by_the_next_look(svc, tenant):
    sub = await synced(svc)
    tenant.block("cat")
    # Killed once every change was applied, while ending the run: nothing will redeliver (say it was the last
    # delivery), but the run's work is all done.
    job = await crashed_change_job(svc, sub, (svc.runs, "view"))
    del job
    [stalled] = [v for v in await runs.recent(svc, caller(), sub.id) if v.run.status == "running"]
    assert not stalled.run.applying
    assert await recovery.sweep(svc) == {"runs_settled": 1, "runs_failed": 0, "requeued": 0, "dropped": 0}
    ended = await runs.get(svc, caller(), sub.id, stalled.run.id)
    assert ended.run.status == "succeeded" and ended.counts.deactivated == 1
    assert (await runs.start(svc, caller(), sub.id)).status == "queued"


async def test_the_next_request_finishes_a_settled_run_at_once(svc, tenant):
    sub = await synced(svc)
    tenant.block("cat")
    await crashed_change_job(svc, sub, (svc.runs, "view"))
    svc.clock.advance(seconds=1)
    run = await runs.start(svc, caller(), sub.id)  # not 409: the stranded run is ended first
    assert run.status == "queued"
    assert [v.run.status for v in await runs.recent(svc, caller(), sub.id)][:2] == ["queued", "succeeded"]


async def test_a_full_sync_whose_request_died_before_sending_is_sent_by_the_next_request(svc, tenant):
    sub = await synced(svc)
    kill_once(svc.queue, "send_group_jobs")
    with pytest.raises(Killed):
        await runs.start(svc, caller(), sub.id)
    [queued] = [v for v in await runs.recent(svc, caller(), sub.id) if v.run.status == "queued"]
    assert not queued.run.jobs_sent and svc.queue.group_jobs == []
    with pytest.raises(Conflict) as refused:  # the retry finds the run and sends its messages: it is in progress now
        await runs.start(svc, caller(), sub.id)
    assert refused.value.code == "sync_in_progress"
    assert sorted(j.group_id for j in svc.queue.group_jobs) == [ENG, SALES]
    await deliver(svc)
    assert (await runs.get(svc, caller(), sub.id, queued.run.id)).run.status == "succeeded"


async def test_the_recovery_timer_sends_a_queued_run_whose_request_died(svc, tenant):
    sub = await synced(svc)
    kill_once(svc.queue, "send_group_jobs")
    with pytest.raises(Killed):
        await runs.start(svc, caller(), sub.id)
    assert (await recovery.sweep(svc))["runs_settled"] == 1
    await deliver(svc)
    assert (await runs.recent(svc, caller(), sub.id))[0].run.status == "succeeded"
    assert (await recovery.sweep(svc))["runs_settled"] == 0


async def test_an_orphaned_queued_invitation_is_requeued_under_a_fresh_message_id_and_sent_once(svc, tenant):
    sub = await synced(svc)
    tenant.add_user("eve", groups=[ENG])
    kill_once(svc.queue, "send_enrollment_jobs")  # a Full Sync's worker dies before queueing eve's invitation
    run = await runs.start(svc, caller(), sub.id)
    with pytest.raises(Killed):
        await deliver(svc)
    eve = users_of(svc)["eve@contoso.example"]
    assert eve.enrollment_email == EmailState.QUEUED and (eve.org, eve.id) in svc.invitations.rows
    svc.queue.group_jobs.clear()
    svc.queue.enrollment_jobs.clear()
    assert (await invitations.requeue_stuck(svc))["requeued"] == 0  # within its lease: its message may be on its way
    svc.clock.advance(seconds=svc.settings.invitation_lease_s + 1)
    assert (await invitations.requeue_stuck(svc))["requeued"] == 1
    [job] = svc.queue.enrollment_jobs
    assert job.user_id == eve.id and job.message_id != EnrollmentJob(eve.org, eve.id, run.id).message_id
    assert (await invitations.requeue_stuck(svc))["requeued"] == 0  # deferred a lease: not re-queued every firing
    await send_invitation(svc, job)
    await send_invitation(svc, EnrollmentJob(eve.org, eve.id, run.id))  # the original, should it come after all
    assert [e.to_address for e in svc.mail_sender.sent] == ["eve@contoso.example"]
    assert (eve.org, eve.id) not in svc.invitations.rows  # sent: out of the index


async def test_a_sending_claim_past_its_lease_is_requeued_without_any_run(svc, tenant):
    sub = await synced(svc)
    tenant.add_user("eve", groups=[ENG])
    await full_sync(svc, sub)
    [job] = svc.queue.enrollment_jobs
    svc.queue.enrollment_jobs.clear()
    kill_once(svc.mail_sender, "send")  # the mailer dies holding the claim
    with pytest.raises(Killed):
        await send_invitation(svc, job)
    assert users_of(svc)["eve@contoso.example"].enrollment_email == EmailState.SENDING
    svc.clock.advance(seconds=svc.settings.invitation_lease_s - 5)
    assert (await invitations.requeue_stuck(svc))["requeued"] == 0  # the claim's lease still holds
    svc.clock.advance(seconds=10)
    assert (await recovery.sweep(svc))["requeued"] == 1
    [again] = svc.queue.enrollment_jobs
    assert again.message_id != job.message_id
    assert await send_invitation(svc, again) == "sent"
    assert [e.to_address for e in svc.mail_sender.sent] == ["eve@contoso.example"]


async def test_index_entries_of_users_with_nothing_pending_are_dropped(svc, tenant):
    await synced(svc)
    svc.clock.advance(seconds=svc.settings.invitation_lease_s + 1)
    await svc.invitations.expect("org-a", ["no-such-user"], svc.clock() - timedelta(seconds=1))
    summary = await invitations.requeue_stuck(svc)
    assert summary["requeued"] == 0 and ("org-a", "no-such-user") not in svc.invitations.rows


async def test_a_dead_lettered_change_job_ends_the_run_it_left_applying(svc, tenant):
    sub = await synced(svc)
    tenant.block("cat")
    job = await crashed_change_job(svc, sub, (svc.users, "update"))
    await changes.handle_dead_lettered_change_job(svc, job, "MaxDeliveryCountExceeded")
    [failed] = [v for v in await runs.recent(svc, caller(), sub.id) if v.run.trigger == "change_notification"]
    assert failed.run.status == "failed" and [e.code for e in failed.run.errors] == ["incremental_interrupted"]
    svc.clock.advance(seconds=1)
    assert (await runs.start(svc, caller(), sub.id)).status == "queued"


async def test_a_change_job_ends_a_settled_run_it_meets_and_applies_its_own_changes(svc, tenant):
    sub = await synced(svc)
    tenant.block("cat")
    await crashed_change_job(svc, sub, (svc.runs, "view"))
    tenant.block("bob")
    svc.clock.advance(seconds=1)
    await changes.handle_change_job(svc, ChangeJob(sub.org, sub.id, Trigger.CHANGE_NOTIFICATION, svc.clock()))
    await deliver(svc)
    assert [v.run.status for v in await runs.recent(svc, caller(), sub.id)] == ["succeeded"] * 3
    assert {n: u.status for n, u in users_of(svc).items() if n[:3] in ("bob", "cat")} == {
        "bob@contoso.example": "Inactive", "cat@contoso.example": "Inactive"}


async def test_a_failure_the_job_settles_itself_ends_its_run_since_no_redelivery_comes(svc, tenant):
    from sync.errors import AuthorizationLost

    sub = await synced(svc)
    tenant.block("cat")
    svc.clock.advance(seconds=svc.settings.consent_propagation_grace_s + 1)

    async def consent_gone(changes):
        raise AuthorizationLost("Authorization_RequestDenied")

    svc.users.update = consent_gone
    await changes.handle_change_job(svc, ChangeJob(sub.org, sub.id, Trigger.CHANGE_NOTIFICATION, svc.clock()))
    [failed] = [v for v in await runs.recent(svc, caller(), sub.id) if v.run.trigger == "change_notification"]
    assert failed.run.status == "failed"
