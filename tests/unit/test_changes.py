"""Near-real-time sync on fakes: notifications queue incremental runs that apply the tenant's delta."""
from dataclasses import replace

import pytest

from sync import changes, runs, subscriptions, watching
from sync.model import ChangeJob, Trigger
from sync.watching import client_state_hash
from tests.fakes import make_services
from tests.unit.syncdsl import TENANT, caller, connect, deliver, full_sync, users_of

SALES, ENG, NESTED, OTHER = "g-sales", "g-eng", "g-nested", "g-other"
URL = "https://dirsync.example/api/directory/notifications?code=function-key"


@pytest.fixture
def svc():
    from sync import composition

    services = make_services(NOTIFICATION_URL=URL, DEPROVISION_GUARD_MIN_USERS="100")
    composition.override(services)
    yield services
    composition.override(None)


@pytest.fixture
def tenant(svc):
    t = svc.directory.tenant(TENANT)
    for gid, name in [(SALES, "Sales Team"), (ENG, "Engineering"), (NESTED, "Platform"), (OTHER, "Unrelated")]:
        t.add_group(gid, name)
    t.add_user("ann", groups=[SALES])
    t.add_user("bob", groups=[SALES, ENG])
    t.add_user("cat", groups=[ENG])
    t.add_user("dan", groups=[OTHER])
    return t


async def synced(svc, **options):
    sub = await connect(svc, groups=(SALES, ENG), deactivateBlockedUsers=True, **options)
    view = await full_sync(svc, sub)
    assert view.run.status == "succeeded"
    svc.clock.advance(seconds=5)
    return sub


async def notified(svc, sub, trigger=Trigger.CHANGE_NOTIFICATION):
    """A change job as the webhook (or the nightly) queues it, handled, with the group jobs it fans out."""
    svc.clock.advance(seconds=1)
    await changes.handle_change_job(svc, ChangeJob(sub.org, sub.id, trigger, svc.clock()))
    await deliver(svc)
    svc.clock.advance(seconds=1)
    latest = (await runs.recent(svc, caller(), sub.id))[0]
    return latest


async def test_a_full_sync_leaves_delta_links_and_watches_on_users_and_groups(svc, tenant):
    sub = await synced(svc)
    state = await svc.watches.get_delta(sub.org, sub.id)
    assert state is not None and set(state.group_ids) == {SALES, ENG}
    watches = await svc.watches.of_subscription(sub.org, sub.id)
    assert sorted(w.resource for w in watches) == ["groups", "users"]
    graph = svc.changes.subscriptions
    assert {s["resource"] for s in graph.values()} == {"users", "groups"} and all(s["url"] == URL for s in graph.values())
    # Only a hash of each secret is kept; Graph holds the secret itself.
    for w in watches:
        assert w.client_state_hash == client_state_hash(graph[w.id]["clientState"])
        assert graph[w.id]["clientState"] not in w.client_state_hash


async def test_a_blocked_user_is_deactivated_by_the_next_notification_without_reading_a_group(svc, tenant):
    sub = await synced(svc)
    tenant.block("cat")
    pages = svc.directory.requests
    run = await notified(svc, sub)
    assert (run.run.trigger, run.run.status) == ("change_notification", "succeeded")
    assert users_of(svc)["cat@contoso.example"].status_reason == "blocked_in_directory"
    assert run.counts.deactivated == 1 and run.counts.unchanged == 2
    assert svc.directory.requests == pages  # no member pages: only the delta and a look-up by id


async def test_members_added_and_removed_are_applied_and_invited(svc, tenant):
    sub = await synced(svc, sendEnrollmentEmail=True)
    svc.queue.enrollment_jobs.clear()
    tenant.add_user("eve", groups=[ENG])
    tenant.remove(SALES, "ann")
    run = await notified(svc, sub)
    users = users_of(svc)
    assert users["eve@contoso.example"].group_ids == {ENG} and users["eve@contoso.example"].status == "Active"
    assert [j.user_id for j in svc.queue.enrollment_jobs] == [users["eve@contoso.example"].id]
    assert (users["ann@contoso.example"].status, users["ann@contoso.example"].status_reason) == (
        "Inactive", "removed_from_directory")
    assert (run.counts.created, run.counts.deactivated) == (1, 1)
    assert users["bob@contoso.example"].group_ids == {SALES, ENG}  # bob is untouched
    grid = {g.id: g.user_count for g in svc.groups.rows.values()}
    assert grid == {SALES: 1, ENG: 3}


async def test_a_user_deleted_in_azure_is_deprovisioned(svc, tenant):
    sub = await synced(svc)
    tenant.delete_user("bob")
    run = await notified(svc, sub)
    bob = users_of(svc)["bob@contoso.example"]
    assert (bob.status, bob.status_reason, bob.group_ids) == ("Inactive", "removed_from_directory", frozenset())
    assert run.counts.deactivated == 1


async def test_a_nested_group_change_rereads_the_selected_groups_above_it(svc, tenant):
    sub = await synced(svc)
    tenant.add_user("fay", groups=[NESTED])
    tenant.members[ENG].append(NESTED)  # Platform nested into Engineering
    run = await notified(svc, sub)
    assert [g.group_id for g in run.groups if g.pages] == [ENG]  # read again in full; Sales not
    assert run.run.status == "succeeded"


async def test_without_member_read_hidden_an_incremental_run_ends_no_membership_of_a_hidden_group(svc, tenant):
    tenant.permissions.add("Member.Read.Hidden")
    tenant.hide(SALES)
    sub = await synced(svc)  # the Full Sync read the hidden group with the permission
    tenant.permissions.discard("Member.Read.Hidden")  # consented again without it
    tenant.remove(ENG, "bob")  # bob's only readable selected group: transitiveMemberOf now names none of his groups
    tenant.members[ENG].append("ann")  # ann's hidden Sales membership is not in her transitiveMemberOf either
    run = await notified(svc, sub)
    assert run.run.status == "succeeded" and run.counts.deactivated == 0
    users = users_of(svc)
    assert (users["bob@contoso.example"].status, users["bob@contoso.example"].group_ids) == ("Active", {SALES})
    assert users["ann@contoso.example"].group_ids == {SALES, ENG}


async def test_with_member_read_hidden_an_incremental_run_sees_hidden_memberships_end(svc, tenant):
    tenant.permissions.add("Member.Read.Hidden")
    tenant.hide(SALES)
    sub = await synced(svc)
    tenant.remove(SALES, "bob")
    tenant.remove(ENG, "bob")
    run = await notified(svc, sub)
    bob = users_of(svc)["bob@contoso.example"]
    assert (bob.status, bob.group_ids) == ("Inactive", frozenset()) and run.counts.deactivated == 1


async def test_changes_outside_the_selected_scope_make_no_run(svc, tenant):
    sub = await synced(svc)
    before = await runs.recent(svc, caller(), sub.id)
    tenant.add_user("gus", groups=[OTHER])
    tenant.block("dan")
    await notified(svc, sub)
    assert len(await runs.recent(svc, caller(), sub.id)) == len(before)
    assert "gus@contoso.example" not in users_of(svc)


async def test_the_guard_holds_a_mass_deactivation_by_notification(svc, tenant):
    from sync import composition

    svc = make_services(NOTIFICATION_URL=URL, DEPROVISION_GUARD_MIN_USERS="1", DEPROVISION_GUARD_PERCENT="20")
    composition.override(svc)
    t = svc.directory.tenant(TENANT)
    t.add_group(SALES, "Sales Team")
    t.add_group(ENG, "Engineering")
    for n in range(10):
        t.add_user(f"u{n}", groups=[SALES])
    sub = await synced(svc)
    for n in range(5):
        t.remove(SALES, f"u{n}")
    run = await notified(svc, sub)
    assert run.run.status == "needs_review" and run.run.pending_deactivations == 5
    assert all(u.status == "Active" for u in users_of(svc).values())


async def test_an_expired_delta_link_makes_the_run_a_full_sync_and_says_so(svc, tenant):
    sub = await synced(svc)
    state = await svc.watches.get_delta(sub.org, sub.id)
    svc.changes.expired.add(state.users_link.rsplit("?", 1)[0])
    tenant.block("ann")
    run = await notified(svc, sub)
    assert [e.code for e in run.run.errors] == ["delta_expired"]
    assert run.groups_done == 2 and all(g.pages for g in run.groups)  # every group read again
    assert users_of(svc)["ann@contoso.example"].status == "Inactive"


async def test_a_changed_selection_makes_the_run_a_full_sync(svc, tenant):
    sub = await synced(svc)
    await subscriptions.select_groups(svc, caller(), sub.id, {"groupIds": [SALES]})
    run = await notified(svc, sub)
    assert [e.code for e in run.run.errors] == ["selection_changed"] and run.run.group_ids == (SALES,)


async def test_the_nightly_with_a_delta_reads_no_member_pages(svc, tenant):
    sub = await synced(svc)
    await subscriptions.update(svc, caller(), sub.id, {"nightlySync": True})
    pages = svc.directory.requests
    summary = await runs.nightly(svc)
    assert summary["started"] == 1 and svc.queue.group_jobs == []
    [job] = svc.queue.take_change_jobs()
    assert job.trigger == "nightly"
    svc.clock.advance(seconds=1)
    await changes.handle_change_job(svc, job)
    run = (await runs.recent(svc, caller(), sub.id))[0]
    assert (run.run.trigger, run.run.status, run.counts.unchanged) == ("nightly", "succeeded", 3)
    assert svc.directory.requests == pages


async def test_a_redelivered_change_job_writes_and_invites_once(svc, tenant):
    sub = await synced(svc, sendEnrollmentEmail=True)
    svc.queue.enrollment_jobs.clear()
    tenant.add_user("eve", groups=[SALES])
    svc.clock.advance(seconds=1)
    job = ChangeJob(sub.org, sub.id, Trigger.CHANGE_NOTIFICATION, svc.clock())
    await changes.handle_change_job(svc, job)
    await changes.handle_change_job(svc, job)  # Service Bus delivers it again
    assert len(svc.queue.enrollment_jobs) == 1
    assert len([u for u in users_of(svc) if u.startswith("eve")]) == 1


async def test_a_busy_subscription_reschedules_the_job(svc, tenant):
    sub = await synced(svc)
    tenant.block("ann")  # something to apply (a notification about nothing synced reserves nothing)
    await runs.start(svc, caller(), sub.id)  # a Full Sync is queued
    svc.clock.advance(seconds=1)
    job = ChangeJob(sub.org, sub.id, Trigger.CHANGE_NOTIFICATION, svc.clock())
    await changes.handle_change_job(svc, job)
    [later] = svc.queue.take_change_jobs()
    assert later.attempt == 1 and svc.queue.change_delays[-1] > 0


async def test_the_webhook_queues_only_proven_notifications(svc, tenant):
    sub = await synced(svc)
    watch = (await svc.watches.of_subscription(sub.org, sub.id))[0]
    secret = svc.changes.subscriptions[watch.id]["clientState"]

    def note(**kw):
        return {"subscriptionId": watch.id, "clientState": secret, "changeType": "updated", "tenantId": TENANT,
                "resource": "Users/x", **kw}

    import json

    body = {"value": [note(), note(), note(clientState="forged"), note(subscriptionId="not-ours"),
                      note(tenantId="99999999-2222-3333-4444-555555555555")]}
    result = await changes.receive(svc, json.dumps(body).encode())
    assert result == {"accepted": 2, "ignored": 3, "queued": 1}
    [job] = svc.queue.take_change_jobs()
    assert (job.org, job.subscription_id, job.trigger) == (sub.org, sub.id, "change_notification")
    assert svc.queue.change_delays[-1] == svc.settings.change_debounce_s  # a burst shares one run
    forged = {"value": [note(clientState="forged")]}
    assert (await changes.receive(svc, json.dumps(forged).encode()))["queued"] == 0
    assert svc.queue.change_jobs == []


@pytest.mark.parametrize("body", [b"", b"not json", b"[]", b'{"value": 3}', b'{"other": []}'])
async def test_the_webhook_refuses_what_is_not_a_notification_collection(svc, body):
    from sync.errors import InvalidInput

    with pytest.raises(InvalidInput):
        await changes.receive(svc, body)


async def test_lifecycle_events_renew_and_recreate_watches(svc, tenant):
    import json

    sub = await synced(svc)
    users_watch, groups_watch = sorted(await svc.watches.of_subscription(sub.org, sub.id), key=lambda w: w.resource)[::-1]
    graph = svc.changes.subscriptions
    lifecycle = {"value": [
        {"subscriptionId": users_watch.id, "clientState": graph[users_watch.id]["clientState"],
         "lifecycleEvent": "reauthorizationRequired", "tenantId": TENANT},
        {"subscriptionId": groups_watch.id, "clientState": graph[groups_watch.id]["clientState"],
         "lifecycleEvent": "subscriptionRemoved", "tenantId": TENANT}]}
    graph.pop(groups_watch.id)  # Graph removed it
    svc.clock.advance(hours=10)
    await changes.receive(svc, json.dumps(lifecycle).encode())
    [job] = svc.queue.take_change_jobs()
    await changes.handle_change_job(svc, job)
    watches = {w.resource: w for w in await svc.watches.of_subscription(sub.org, sub.id)}
    assert watches["users"].id == users_watch.id and watches["users"].expires_at > users_watch.expires_at
    assert watches["groups"].id != groups_watch.id and watches["groups"].id in graph


async def test_renewal_renews_expiring_watches_and_drops_those_of_deleted_subscriptions(svc, tenant):
    sub = await synced(svc)
    first = await svc.watches.of_subscription(sub.org, sub.id)
    svc.clock.advance(hours=svc.settings.watch_lifetime_hours * 0.6)
    summary = await watching.renew_watches(svc)
    assert summary["renewed"] == 2
    assert all(w.expires_at > v.expires_at for w, v in zip(
        sorted(await svc.watches.of_subscription(sub.org, sub.id), key=lambda w: w.id), sorted(first, key=lambda w: w.id)))
    await subscriptions.delete(svc, caller(), sub.id)
    assert await svc.watches.of_subscription(sub.org, sub.id) == [] and svc.changes.subscriptions == {}
    assert await svc.watches.get_delta(sub.org, sub.id) is None


async def test_consent_lost_drops_the_watches(svc, tenant):
    sub = await synced(svc)
    svc.directory.revoked.add(TENANT)
    tenant.block("ann")
    svc.clock.advance(seconds=1)
    await changes.handle_change_job(svc, ChangeJob(sub.org, sub.id, Trigger.CHANGE_NOTIFICATION, svc.clock()))
    assert (await subscriptions.get(svc, caller(), sub.id)).status == "consent_revoked"
    assert await svc.watches.of_subscription(sub.org, sub.id) == []


async def test_a_user_the_sync_cannot_map_is_skipped_and_counted(svc, tenant):
    for n in ("ann", "bob", "cat", "dan"):
        tenant.users[n] = replace(tenant.users[n], employee_id=f"E-{n}")
    sub = await synced(svc, usernameAttribute="employeeId")
    tenant.add_user("eve", groups=[SALES])  # no employeeId
    run = await notified(svc, sub)
    assert run.counts.skipped == 1 and run.counts.skippedReasons == {"missing_username_attribute": 1}
    assert [e.code for e in run.run.errors] == ["missing_username_attribute"]
    assert not any(u.azure_object_id == "eve" for u in users_of(svc).values()) and len(users_of(svc)) == 3


async def test_an_incremental_run_lists_its_changes_and_writes_history(svc, tenant):
    sub = await synced(svc)
    tenant.block("cat")
    tenant.add_user("eve", groups=[ENG])
    tenant.remove(SALES, "ann")
    run = await notified(svc, sub)
    listed, _ = await svc.runs.changes_page(sub.org, sub.id, run.run.id, None, 50, None)
    by_user = {c.username: (c.change, c.reason) for c in listed}
    assert by_user == {"cat@contoso.example": ("deactivated", "blocked_in_directory"),
                       "eve@contoso.example": ("created", "joined_selected_group"),
                       "ann@contoso.example": ("deactivated", "removed_from_directory")}
    cat = users_of(svc)["cat@contoso.example"]
    assert (cat.history[0].run_id, cat.history[0].trigger, cat.history[0].change) == (
        run.run.id, "change_notification", "deactivated")


async def test_an_interrupted_incremental_run_is_taken_over_by_its_redelivery(svc, tenant):
    from sync.errors import Transient

    sub = await synced(svc)
    tenant.block("cat")
    update = svc.users.update

    async def storage_down(changes):
        raise Transient("table storage answered 503")

    svc.users.update = storage_down
    svc.clock.advance(seconds=1)
    job = ChangeJob(sub.org, sub.id, Trigger.CHANGE_NOTIFICATION, svc.clock())
    with pytest.raises(Transient):
        await changes.handle_change_job(svc, job)
    interrupted = (await runs.recent(svc, caller(), sub.id))[0]
    assert interrupted.run.status == "running" and interrupted.run.job_id == job.message_id
    svc.users.update = update
    svc.clock.advance(seconds=1)
    await changes.handle_change_job(svc, job, delivery=2)  # Service Bus delivers it again
    again = (await runs.recent(svc, caller(), sub.id))[0]
    assert again.run.id == interrupted.run.id and again.run.job_delivery == 2
    assert again.run.status == "succeeded" and again.counts.deactivated == 1
    assert users_of(svc)["cat@contoso.example"].status == "Inactive"
    assert (await subscriptions.get(svc, caller(), sub.id)).active_run_id is None


async def test_an_incremental_run_failing_on_its_last_delivery_fails_and_frees_the_subscription(svc, tenant):
    from sync.errors import Transient

    sub = await synced(svc)
    tenant.block("cat")

    async def storage_down(changes):
        raise Transient("table storage answered 503")

    svc.users.update = storage_down
    svc.clock.advance(seconds=1)
    job = ChangeJob(sub.org, sub.id, Trigger.CHANGE_NOTIFICATION, svc.clock())
    with pytest.raises(Transient):
        await changes.handle_change_job(svc, job, delivery=svc.settings.max_delivery_count)
    interrupted = (await runs.recent(svc, caller(), sub.id))[0]
    assert interrupted.run.status == "failed" and [e.code for e in interrupted.run.errors] == ["incremental_interrupted"]
    assert (await subscriptions.get(svc, caller(), sub.id)).active_run_id is None  # not held by the failed run


def statuses(svc):
    return {name.split("@")[0]: u.status for name, u in users_of(svc).items()}


@pytest.mark.parametrize("method", ["read_changes", "get_users", "member_of"])
async def test_a_change_job_meeting_a_propagating_consent_waits_for_it_then_applies_the_changes(svc, tenant, method):
    from sync.errors import AuthorizationLost

    sub = await synced(svc)
    tenant.remove(SALES, "ann")  # her only selected group: the run that applies it deprovisions her
    svc.changes.fail[method] = AuthorizationLost("AADSTS65001", may_be_propagating=True)
    job = ChangeJob(sub.org, sub.id, Trigger.CHANGE_NOTIFICATION, svc.clock())
    await changes.handle_change_job(svc, job)  # not raised: no delivery spent
    [later] = svc.queue.take_change_jobs()
    assert later == replace(job, attempt=1) and later.message_id != job.message_id
    assert svc.queue.change_delays[-1] == 5
    assert (await subscriptions.get(svc, caller(), sub.id)).status == "authorized"
    assert len(await runs.recent(svc, caller(), sub.id)) == 1 and statuses(svc)["ann"] == "Active"
    svc.clock.advance(seconds=5)
    await changes.handle_change_job(svc, later)  # still propagating: a longer wait
    [again] = svc.queue.take_change_jobs()
    assert again.attempt == 2 and svc.queue.change_delays[-1] == 10
    del svc.changes.fail[method]  # the consent has propagated
    svc.clock.advance(seconds=10)
    await changes.handle_change_job(svc, again)
    await deliver(svc)
    run = (await runs.recent(svc, caller(), sub.id))[0]
    assert (run.run.trigger, run.run.status, run.counts.deactivated) == ("change_notification", "succeeded", 1)
    assert statuses(svc)["ann"] == "Inactive"


@pytest.mark.parametrize("trigger", [Trigger.CHANGE_NOTIFICATION, Trigger.NIGHTLY])
async def test_outside_the_window_a_refused_change_job_means_consent_lost_and_deprovisions_nobody(svc, tenant, trigger):
    from sync.errors import AuthorizationLost

    sub = await synced(svc)
    tenant.remove(SALES, "ann")
    svc.clock.advance(seconds=svc.settings.consent_propagation_grace_s)
    svc.changes.fail["get_users"] = AuthorizationLost("403", may_be_propagating=True)
    await changes.handle_change_job(svc, ChangeJob(sub.org, sub.id, trigger, svc.clock()))
    after = await subscriptions.get(svc, caller(), sub.id)
    assert (after.status, after.active_run_id) == ("consent_revoked", None)
    assert svc.queue.change_jobs == [] and len(await runs.recent(svc, caller(), sub.id)) == 1
    assert set(statuses(svc).values()) == {"Active"}
    assert await svc.watches.of_subscription(sub.org, sub.id) == []


@pytest.mark.parametrize(("method", "trigger"), [("read_changes", Trigger.CHANGE_NOTIFICATION),
                                                  ("get_users", Trigger.NIGHTLY)])
async def test_a_refused_app_credential_ends_the_change_job_with_one_error_log(svc, tenant, caplog, method, trigger):
    import logging

    from sync.errors import CredentialInvalid

    sub = await synced(svc)
    tenant.remove(SALES, "ann")
    svc.changes.fail[method] = CredentialInvalid("AADSTS7000222: the secret expired")
    caplog.set_level(logging.INFO)
    await changes.handle_change_job(svc, ChangeJob(sub.org, sub.id, trigger, svc.clock()))  # acknowledged, not raised
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "credential" in errors[0].getMessage()
    after = await subscriptions.get(svc, caller(), sub.id)
    assert (after.status, after.active_run_id) == ("authorized", None)  # not the customer's fault; nothing held
    assert svc.queue.change_jobs == [] and len(await runs.recent(svc, caller(), sub.id)) == 1
    assert statuses(svc)["ann"] == "Active"


async def test_a_long_retry_after_reschedules_the_change_job_and_a_short_one_is_redelivered(svc, tenant):
    from sync.errors import Transient

    sub = await synced(svc)
    tenant.block("cat")
    job = ChangeJob(sub.org, sub.id, Trigger.CHANGE_NOTIFICATION, svc.clock())
    svc.changes.fail["read_changes"] = Transient("429", retry_after=2)  # the adapter waits that out itself...
    with pytest.raises(Transient):  # ...so reaching here it is a failure like any other: redelivery
        await changes.handle_change_job(svc, job)
    assert svc.queue.change_jobs == []
    svc.changes.fail["read_changes"] = Transient("429", retry_after=120)
    await changes.handle_change_job(svc, job)
    [later] = svc.queue.take_change_jobs()
    assert later.attempt == 1 and svc.queue.change_delays[-1] == 120
    svc.changes.fail["read_changes"] = Transient("503", retry_after=7200)
    await changes.handle_change_job(svc, later)
    [capped] = svc.queue.take_change_jobs()
    assert capped.attempt == 2 and svc.queue.change_delays[-1] == 900
    del svc.changes.fail["read_changes"]
    svc.clock.advance(seconds=900)
    await changes.handle_change_job(svc, capped)
    run = (await runs.recent(svc, caller(), sub.id))[0]
    assert run.run.status == "succeeded" and statuses(svc)["cat"] == "Inactive"


async def test_a_rotated_function_key_moves_every_watch_to_the_new_url_at_the_next_renewal(svc, tenant):
    """A redeploy (or a rotated key) changes NOTIFICATION_URL; Graph keeps delivering to the old URL, where the host
    answers 401, until the watch is moved (PATCH notificationUrl; Graph validates the new URL)."""
    sub = await synced(svc)
    before = {w.id: w for w in await svc.watches.of_subscription(sub.org, sub.id)}
    assert all(w.url_hash == watching.url_hash(URL) and "function-key" not in w.url_hash for w in before.values())
    rotated = URL.replace("function-key", "rotated-key")
    svc.settings = replace(svc.settings, notification_url=rotated)

    svc.changes.unreachable.add(rotated)  # the new URL does not answer Graph's validation yet: nothing changes
    summary = await watching.renew_watches(svc)
    assert (summary["moved"], summary["renewed"]) == (0, 0)
    assert all(s["url"] == URL for s in svc.changes.subscriptions.values())

    svc.changes.unreachable.clear()
    summary = await watching.renew_watches(svc)  # not due for renewal: moved all the same
    assert (summary["moved"], summary["renewed"], summary["created"]) == (2, 0, 0)
    assert all(s["url"] == rotated for s in svc.changes.subscriptions.values())
    after = {w.id: w for w in await svc.watches.of_subscription(sub.org, sub.id)}
    assert after.keys() == before.keys() and all(w.url_hash == watching.url_hash(rotated) for w in after.values())
    assert (await watching.renew_watches(svc))["moved"] == 0  # once


async def test_a_watch_recorded_without_its_url_is_moved_to_the_current_one(svc, tenant):
    sub = await synced(svc)
    for w in await svc.watches.of_subscription(sub.org, sub.id):
        await svc.watches.save(replace(w, url_hash=None))  # a row written before watches recorded their URL
    assert (await watching.renew_watches(svc))["moved"] == 2
    assert all(w.url_hash == watching.url_hash(URL) for w in await svc.watches.of_subscription(sub.org, sub.id))


async def test_an_incremental_run_invites_a_corrected_address_once(svc, tenant):
    """Issue 22, 3, on the incremental path: the directory corrects an invited user's address; the change
    notification's run queues one invitation to the new address (its own message id), a redelivered job none more."""
    from notifications.mailer import send_invitation

    sub = await synced(svc, sendEnrollmentEmail=True)
    for job in svc.queue.enrollment_jobs:
        await send_invitation(svc, job)
    svc.queue.enrollment_jobs.clear()
    tenant.users["ann"] = replace(tenant.users["ann"], mail="anne@contoso.example")
    tenant.users["bob"] = replace(tenant.users["bob"], display_name="Robert")  # no new address: no invitation
    await notified(svc, sub)
    [job] = svc.queue.enrollment_jobs
    ann = users_of(svc)["ann@contoso.example"]
    assert job.user_id == ann.id and job.to and ann.email == "anne@contoso.example"
    await send_invitation(svc, job)
    assert await send_invitation(svc, job) == "already_sent"
    assert [e.to_address for e in svc.mail_sender.sent].count("anne@contoso.example") == 1


async def test_a_changed_attribute_mapping_makes_the_next_incremental_run_a_full_sync(svc, tenant):
    sub = await synced(svc)
    tenant.users["ann"] = replace(tenant.users["ann"], properties={"department": "Retail"})
    await subscriptions.update(svc, caller(), sub.id, {"attributeMapping": {"department": "department"}})
    run = await notified(svc, sub)
    assert [e.code for e in run.run.errors] == ["mapping_changed"] and run.run.status == "succeeded"
    assert users_of(svc)["ann@contoso.example"].department == "Retail"
    tenant.users["ann"] = replace(tenant.users["ann"], properties={"department": "Sales"})
    run = await notified(svc, sub)  # the links now track the mapping's properties: an incremental run
    assert run.run.errors == () and users_of(svc)["ann@contoso.example"].department == "Sales"
    assert svc.changes.selects[-1] == ("department", "displayName", "givenName", "mail", "surname")


async def test_a_mapping_changed_while_a_full_sync_ran_still_makes_the_next_incremental_run_a_full_sync(svc, tenant):
    sub = await connect(svc, groups=(SALES, ENG), deactivateBlockedUsers=True)
    run = await runs.start(svc, caller(), sub.id, "manual")  # its delta links select the default mapping's properties
    await subscriptions.update(svc, caller(), sub.id, {"attributeMapping": {"department": "department"}})
    await deliver(svc)
    assert (await runs.get(svc, caller(), sub.id, run.id)).run.status == "succeeded"
    assert (await svc.watches.get_delta(sub.org, sub.id)).mapping_tag == ""  # what the links track, not the option
    svc.clock.advance(seconds=5)
    later = await notified(svc, sub)
    assert [e.code for e in later.run.errors] == ["mapping_changed"]
