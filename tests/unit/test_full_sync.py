"""The sync engine on fakes: what a Full Sync writes, counts, deprovisions and refuses."""
import asyncio
from dataclasses import replace

import pytest

from sync import runs, subscriptions
from sync.errors import Conflict, Transient
from sync.group_sync import handle_dead_lettered_group_job
from sync.model import EmailState
from tests.unit.syncdsl import (
    ENG,
    OPS,
    PLATFORM,
    SALES,
    TENANT,
    caller,
    connect,
    deliver,
    four_groups,
    full_sync,
    users_of,
)


@pytest.fixture
def tenant(svc):
    return four_groups(svc)


async def test_first_sync_creates_active_adsync_users_with_their_groups(svc, tenant):
    sub = await connect(svc, groups=(SALES, ENG, PLATFORM, OPS))
    view = await full_sync(svc, sub)
    assert view.run.status == "succeeded" and view.groups_done == 4
    users = users_of(svc)
    assert set(users) == {"ann@contoso.example", "bob@contoso.example", "cat@contoso.example", "dan@contoso.example",
                          "eve_gmail.com#EXT#@contoso.onmicrosoft.com"}
    bob = users["bob@contoso.example"]
    assert (bob.status, bob.source_type, bob.subscription_id) == ("Active", "AdSync", sub.id)
    assert bob.group_ids == {SALES, ENG}
    assert users["cat@contoso.example"].group_ids == {ENG, PLATFORM, OPS}
    assert users["dan@contoso.example"].status == "Active"  # deactivateBlockedUsers is off
    assert users["eve_gmail.com#EXT#@contoso.onmicrosoft.com"].email is None
    counts = view.counts
    assert (counts.created, counts.updated, counts.unchanged, counts.deactivated) == (5, 0, 0, 0)
    grid = {g.display_name: g.user_count for g in svc.groups.rows.values()}
    assert grid == {"Sales Team": 2, "Engineering": 2, "Platform Team": 2, "Operations": 2}


async def test_blocked_users_follow_azure_when_the_option_is_on(svc, tenant):
    sub = await connect(svc, groups=(PLATFORM,), deactivateBlockedUsers=True)
    await full_sync(svc, sub)
    dan = users_of(svc)["dan@contoso.example"]
    assert (dan.status, dan.status_reason) == ("Inactive", "blocked_in_directory")
    tenant.block("dan", False)
    tenant.block("cat", True)
    view = await full_sync(svc, sub)
    users = users_of(svc)
    assert (users["dan@contoso.example"].status, users["dan@contoso.example"].status_reason) == ("Active", None)
    assert users["cat@contoso.example"].status_reason == "blocked_in_directory"
    assert (view.counts.reactivated, view.counts.deactivated) == (1, 1)


async def test_resync_of_an_unchanged_directory_writes_nothing(svc, tenant):
    sub = await connect(svc, groups=(SALES, ENG, PLATFORM, OPS))
    await full_sync(svc, sub)
    writes, memberships = svc.users.writes, svc.users.membership_writes
    view = await full_sync(svc, sub)
    assert (svc.users.writes, svc.users.membership_writes) == (writes, memberships)
    assert view.counts.unchanged == 5 and view.counts.created == 0


async def test_every_message_delivered_twice_changes_nothing(svc, tenant):
    sub = await connect(svc, groups=(SALES, ENG, PLATFORM, OPS), sendEnrollmentEmail=True)
    view = await full_sync(svc, sub, times=2)
    assert view.run.status == "succeeded" and view.counts.created == 5
    assert len(users_of(svc)) == 5
    invited = sorted(j.user_id for j in svc.queue.enrollment_jobs)
    assert len(set(invited)) == 4  # eve has no address
    assert view.counts.emailsQueued == 4
    assert view.counts.skippedReasons == {"no_email_address": 1}


async def test_user_in_three_groups_is_invited_once(svc, tenant):
    sub = await connect(svc, groups=(ENG, PLATFORM, OPS), sendEnrollmentEmail=True)
    await full_sync(svc, sub)
    cat = users_of(svc)["cat@contoso.example"]
    assert [j.user_id for j in svc.queue.enrollment_jobs].count(cat.id) == 1
    assert cat.enrollment_email == EmailState.QUEUED


async def test_inactive_new_users_get_no_invitation(svc, tenant):
    sub = await connect(svc, groups=(PLATFORM,), sendEnrollmentEmail=True, deactivateBlockedUsers=True)
    await full_sync(svc, sub)
    dan = users_of(svc)["dan@contoso.example"]
    assert dan.enrollment_email is None
    assert dan.id not in {j.user_id for j in svc.queue.enrollment_jobs}


async def test_removed_users_are_deactivated_never_deleted_and_come_back(svc, tenant):
    sub = await connect(svc, groups=(SALES, ENG))
    await full_sync(svc, sub)
    tenant.remove(SALES, "ann")
    tenant.remove(SALES, "bob")
    view = await full_sync(svc, sub)
    users = users_of(svc)
    ann, bob = users["ann@contoso.example"], users["bob@contoso.example"]
    assert (ann.status, ann.status_reason) == ("Inactive", "removed_from_directory")
    assert (bob.status, bob.group_ids) == ("Active", frozenset({ENG}))
    assert view.counts.deactivated == 1
    tenant.members[SALES].append("ann")
    view = await full_sync(svc, sub)
    assert users_of(svc)["ann@contoso.example"].status == "Active"
    assert view.counts.reactivated == 1


async def test_deleted_and_deselected_users_are_deprovisioned(svc, tenant):
    sub = await connect(svc, groups=(SALES, OPS))
    await full_sync(svc, sub)
    tenant.delete_user("ann")
    await subscriptions.select_groups(svc, caller(), sub.id, {"groupIds": [SALES]})
    view = await full_sync(svc, sub)
    users = users_of(svc)
    assert users["ann@contoso.example"].status_reason == "removed_from_directory"
    assert users["cat@contoso.example"].status_reason == "removed_from_directory"  # only in Operations
    assert users["bob@contoso.example"].status == "Active"
    assert view.counts.deactivated == 3  # ann, cat, eve
    assert {g.display_name for g in svc.groups.rows.values()} == {"Sales Team"}


async def test_rows_keep_memberships_of_selected_groups_only(svc, tenant):
    """Leaving a group, a deselection, an update and a deprovisioning each drop what is no longer selected."""
    sub = await connect(svc, groups=(SALES, ENG, PLATFORM, OPS))
    await full_sync(svc, sub)
    tenant.remove(ENG, "bob")  # bob leaves Engineering: only Sales
    tenant.users["cat"] = replace(tenant.users["cat"], display_name="Catherine")  # cat is updated while Operations and Platform are being deselected
    await subscriptions.select_groups(svc, caller(), sub.id, {"groupIds": [SALES, ENG]})
    view = await full_sync(svc, sub)
    users = users_of(svc)
    assert users["bob@contoso.example"].group_ids == {SALES}
    assert users["cat@contoso.example"].group_ids == {ENG} and users["cat@contoso.example"].display_name == "Catherine"
    dan = users["dan@contoso.example"]  # only in Platform: deprovisioned, and holds no membership any more
    assert (dan.status, dan.group_ids) == ("Inactive", frozenset())
    assert view.counts.deactivated == 2  # dan, eve


async def test_a_failed_group_deprovisions_nobody(svc, tenant):
    sub = await connect(svc, groups=(SALES, ENG))
    await full_sync(svc, sub)
    tenant.remove(SALES, "ann")
    svc.directory.fail[ENG] = Transient("graph down")
    run = await runs.start(svc, caller(), sub.id)
    jobs = svc.queue.take_group_jobs()
    from sync.group_sync import handle_group_job
    for job in jobs:
        if job.group_id == ENG:
            with pytest.raises(Transient):
                await handle_group_job(svc, job)
            await handle_dead_lettered_group_job(svc, job, "MaxDeliveryCountExceeded")
        else:
            await handle_group_job(svc, job)
    view = await runs.get(svc, caller(), sub.id, run.id)
    assert view.run.status == "failed"
    codes = {e.code for e in view.errors}
    assert "group_sync_failed" in codes and "deprovisioning_skipped" in codes
    assert "graph down" in next(e.message for e in view.errors if e.code == "group_sync_failed")
    assert users_of(svc)["ann@contoso.example"].status == "Active"
    assert (await subscriptions.get(svc, caller(), sub.id)).active_run_id is None


async def test_guard_holds_back_a_mass_removal_until_approved(svc, tenant):
    for i in range(30):
        tenant.add_user(f"u{i:02d}", groups=[OPS])
    sub = await connect(svc, groups=(OPS, SALES))
    await full_sync(svc, sub)
    tenant.members[OPS] = tenant.members[OPS][:5]
    view = await full_sync(svc, sub)
    assert view.run.status == "needs_review" and view.run.pending_deactivations == 27
    assert all(u.status == "Active" for u in users_of(svc).values())
    approved = await runs.approve(svc, caller(), sub.id, view.run.id)
    assert approved.run.status == "succeeded" and approved.counts.deactivated == 27
    assert sum(u.status == "Inactive" for u in users_of(svc).values()) == 27
    with pytest.raises(Conflict):
        await runs.approve(svc, caller(), sub.id, view.run.id)


async def test_small_removals_pass_the_guard(svc, tenant):
    for i in range(30):
        tenant.add_user(f"u{i:02d}", groups=[OPS])
    sub = await connect(svc, groups=(OPS,))
    await full_sync(svc, sub)
    for uid in ("u00", "u01", "u02"):
        tenant.remove(OPS, uid)
    view = await full_sync(svc, sub)
    assert view.run.status == "succeeded" and view.counts.deactivated == 3


async def test_username_conflicts_are_reported_and_nothing_is_overwritten(svc, tenant):
    from sync import users as users_uc
    manual = await users_uc.create_manual(svc, caller(), {"username": "ann@contoso.example", "displayName": "Manual Ann"})
    tenant.add_user("ann2", groups=[SALES], mail="bob@contoso.example", user_principal_name="ann2@contoso.example")
    sub = await connect(svc, groups=(SALES,), usernameAttribute="mail")
    view = await full_sync(svc, sub)
    users = users_of(svc)
    assert users["ann@contoso.example"].id == manual.id and users["ann@contoso.example"].source_type == "Manual"
    conflicts = [e for e in view.errors if e.code == "username_conflict"]
    assert len(conflicts) == 2
    assert any("Manual Ann" in e.message or manual.id in e.message for e in conflicts)
    assert view.run.status == "succeeded"
    assert view.counts.skippedReasons.get("username_conflict") == 2


async def test_missing_username_attribute_is_skipped(svc, tenant):
    tenant.add_user("fay", groups=[SALES], employee_id="E-1")
    sub = await connect(svc, groups=(SALES,), usernameAttribute="employeeId")
    view = await full_sync(svc, sub)
    assert set(users_of(svc)) == {"E-1"}
    assert view.counts.skippedReasons == {"missing_username_attribute": 2}


def large_ops_group(svc, tenant) -> None:
    """OPS gets 40 more members (42 in all), read 7 a page and 2 pages a message: 6 pages in 3 messages."""
    svc.directory.page_size = 7
    svc.settings = svc.settings.__class__(**{**svc.settings.__dict__, "max_pages_per_message": 2})
    for i in range(40):
        tenant.add_user(f"m{i:02d}", groups=[OPS])


async def test_large_group_continues_in_follow_up_messages(svc, tenant):
    large_ops_group(svc, tenant)
    sub = await connect(svc, groups=(OPS,))
    before = svc.directory.requests
    view = await full_sync(svc, sub)
    assert view.run.status == "succeeded" and view.counts.created == 42
    # 6 pages in 3 messages of 2: each read once, although a worker reads a page ahead while it writes one; and,
    # the group was not hidden when selected, so no visibility is read before its listing.
    assert svc.directory.requests - before == 6
    tenant.members[OPS] = [u for u in tenant.members[OPS] if u not in ("m00", "m39")]
    view = await full_sync(svc, sub, times=2)
    assert view.run.status == "succeeded" and view.counts.deactivated == 2
    users = users_of(svc)
    assert users["m00@contoso.example"].status == "Inactive" and users["m20@contoso.example"].status == "Active"


async def test_an_expired_page_token_restarts_the_group_instead_of_failing_it(svc, tenant):
    large_ops_group(svc, tenant)
    sub = await connect(svc, groups=(OPS,))
    await full_sync(svc, sub)
    tenant.members[OPS] = [u for u in tenant.members[OPS] if u != "m00"]  # one member leaves
    svc.directory.expire_links[OPS] = 2  # the link inside a segment, then the one a follow-up carries
    view = await full_sync(svc, sub, times=2)
    assert view.run.status == "succeeded", view.errors
    assert view.counts.deactivated == 1 and view.counts.created == 0
    users = users_of(svc)
    assert len(users) == 42 and users["m00@contoso.example"].status == "Inactive"
    assert sum(u.status == "Active" for u in users.values()) == 41
    assert {g.user_count for g in view.groups} == {41}


async def test_a_group_whose_page_tokens_keep_expiring_fails_and_deprovisions_nobody(svc, tenant):
    svc.directory.page_size = 7
    for i in range(40):
        tenant.add_user(f"m{i:02d}", groups=[OPS])
    sub = await connect(svc, groups=(OPS, SALES))
    await full_sync(svc, sub)
    tenant.remove(SALES, "ann")
    svc.directory.expire_links[OPS] = 100
    view = await full_sync(svc, sub)
    assert view.run.status == "failed"
    assert [e.code for e in view.errors if e.group_id == OPS] == ["page_token_expired"]
    assert users_of(svc)["ann@contoso.example"].status == "Active"  # the failed group stops all deprovisioning
    assert svc.directory.expire_links[OPS] == 100 - 4  # the first listing and three restarts


async def test_a_hidden_group_without_member_read_hidden_fails_before_its_members_are_read(svc, tenant):
    tenant.hide(SALES)  # hidden when selected: its visibility is kept with the selection, and read again at each run
    sub = await connect(svc, groups=(SALES, ENG))
    svc.directory.fail[SALES] = AssertionError("a hidden group's member list was read without the permission")
    view = await full_sync(svc, sub)
    assert view.run.status == "failed" and [e.code for e in view.errors] == ["hidden_membership"]
    message = view.errors[0].message
    assert "Member.Read.Hidden" in message and "Sales Team" in message and view.errors[0].group_id == SALES
    tenant.hide(SALES, False)  # made visible again: the run reads the visibility anew and syncs the group
    del svc.directory.fail[SALES]
    assert (await full_sync(svc, sub)).run.status == "succeeded"
    assert SALES in users_of(svc)["ann@contoso.example"].group_ids


async def test_a_group_hidden_since_it_was_selected_lists_nobody_and_fails_deprovisioning_nobody(svc, tenant):
    sub = await connect(svc, groups=(SALES, ENG))
    await full_sync(svc, sub)
    active = {u.username for u in users_of(svc).values() if u.status == "Active"}
    before = svc.directory.requests
    assert (await full_sync(svc, sub)).run.status == "succeeded"
    assert svc.directory.requests - before == 2  # one member page a group: no visibility read for visible groups
    tenant.hide(SALES)  # Graph now lists the group as empty (the tenant lacks Member.Read.Hidden)
    view = await full_sync(svc, sub)
    assert view.run.status == "failed" and [e.code for e in view.errors] == ["hidden_membership"]
    message = view.errors[0].message
    assert "Member.Read.Hidden" in message and "Sales Team" in message and view.errors[0].group_id == SALES
    assert {u.username for u in users_of(svc).values() if u.status == "Active"} == active  # nobody deprovisioned
    assert SALES in users_of(svc)["ann@contoso.example"].group_ids  # nor any membership of the group ended
    assert (await subscriptions.get(svc, caller(), sub.id)).status == "authorized"


async def test_a_hidden_group_lists_its_members_with_member_read_hidden_and_may_be_really_empty(svc, tenant):
    tenant.permissions.add("Member.Read.Hidden")
    tenant.hide(SALES)
    sub = await connect(svc, groups=(SALES, ENG))
    view = await full_sync(svc, sub)
    assert view.run.status == "succeeded" and SALES in users_of(svc)["ann@contoso.example"].group_ids
    tenant.remove(SALES, "ann")
    tenant.remove(SALES, "bob")  # the hidden group is now really empty
    view = await full_sync(svc, sub)
    assert view.run.status == "succeeded" and not view.errors
    assert next(g for g in view.groups if g.group_id == SALES).user_count == 0
    users = users_of(svc)
    assert users["ann@contoso.example"].status == "Inactive"  # in no selected group any more
    assert users["bob@contoso.example"].group_ids == {ENG} and users["bob@contoso.example"].status == "Active"


async def test_a_hidden_group_that_lists_nobody_after_the_permission_went_fails_instead_of_emptying(svc, tenant):
    """The permission checked when the listing starts may be gone by its end (a new token): an empty hidden group is
    only trusted while the permission is still held."""
    tenant.permissions.add("Member.Read.Hidden")
    tenant.hide(SALES)
    sub = await connect(svc, groups=(SALES,))
    await full_sync(svc, sub)
    pages = svc.directory.group_user_pages

    async def permission_gone_meanwhile(tid, gid, link=None, **options):
        tenant.permissions.discard("Member.Read.Hidden")
        async for page in pages(tid, gid, link):
            yield page

    svc.directory.group_user_pages = permission_gone_meanwhile
    view = await full_sync(svc, sub)
    assert view.run.status == "failed" and [e.code for e in view.errors] == ["hidden_membership"]
    assert {u.status for u in users_of(svc).values()} == {"Active"}


async def test_graph_refusing_a_hidden_groups_members_is_hidden_membership_not_a_lost_consent(svc, tenant):
    from sync.errors import AuthorizationLost

    tenant.permissions.add("Member.Read.Hidden")  # the token says so, and still Graph refuses the member list
    tenant.hide(SALES)
    sub = await connect(svc, groups=(SALES, ENG))
    await full_sync(svc, sub)
    svc.directory.fail[SALES] = AuthorizationLost("Microsoft Graph refused access (403 Authorization_RequestDenied)",
                                                  may_be_propagating=True)
    view = await full_sync(svc, sub)
    assert view.run.status == "failed" and [e.code for e in view.errors] == ["hidden_membership"]
    assert (await subscriptions.get(svc, caller(), sub.id)).status == "authorized"
    assert {u.status for u in users_of(svc).values()} == {"Active"}
    tenant.hide(SALES, False)  # the same refusal of a group whose membership is not hidden: consent lost, as before
    svc.clock.advance(seconds=svc.settings.consent_propagation_grace_s + 1)  # (once the consent cannot be propagating)
    view = await full_sync(svc, sub)
    assert "consent_revoked" in {e.code for e in view.errors}
    assert (await subscriptions.get(svc, caller(), sub.id)).status == "consent_revoked"


async def test_the_fakes_403_answer_without_the_permission_is_hidden_membership_too(svc, tenant):
    tenant.hide(SALES)
    tenant.hidden_answer = "forbidden"
    sub = await connect(svc, groups=(SALES, ENG))
    view = await full_sync(svc, sub)
    assert view.run.status == "failed" and [e.code for e in view.errors] == ["hidden_membership"]
    assert (await subscriptions.get(svc, caller(), sub.id)).status == "authorized"


async def test_members_without_their_properties_fail_the_run_and_blank_nobody(svc, tenant):
    from sync.errors import PermissionMissing

    sub = await connect(svc, groups=(SALES, ENG))
    await full_sync(svc, sub)
    before = dict(svc.users.rows)
    tenant.remove(SALES, "ann")
    svc.directory.fail[SALES] = PermissionMissing("lacks User.Read.All")
    view = await full_sync(svc, sub)
    assert view.run.status == "failed" and "permission_missing" in {e.code for e in view.errors}
    assert {k: (u.status, u.display_name) for k, u in svc.users.rows.items()} == \
        {k: (u.status, u.display_name) for k, u in before.items()}


async def test_consent_revoked_mid_run_fails_the_run_and_marks_the_subscription(svc, tenant):
    sub = await connect(svc, groups=(SALES, ENG))
    await full_sync(svc, sub)
    tenant.remove(SALES, "ann")
    svc.directory.revoked.add(TENANT)
    view = await full_sync(svc, sub)
    assert view.run.status == "failed"
    assert {e.code for e in view.errors} >= {"consent_revoked"}
    assert (await subscriptions.get(svc, caller(), sub.id)).status == "consent_revoked"
    assert users_of(svc)["ann@contoso.example"].status == "Active"
    with pytest.raises(Conflict) as err:
        await runs.start(svc, caller(), sub.id)
    assert err.value.code == "not_authorized"


async def test_two_full_syncs_at_the_same_moment_one_wins(svc, tenant):
    sub = await connect(svc, groups=(SALES,))
    results = await asyncio.gather(runs.start(svc, caller(), sub.id), runs.start(svc, caller(), sub.id),
                                   return_exceptions=True)
    assert sum(not isinstance(r, Exception) for r in results) == 1
    [err] = [r for r in results if isinstance(r, Exception)]
    assert isinstance(err, Conflict) and err.code == "sync_in_progress"


async def test_sync_preconditions(svc, tenant):
    who = caller()
    sub = await subscriptions.create(svc, who, {})
    with pytest.raises(Conflict) as err:
        await runs.start(svc, who, sub.id)
    assert err.value.code == "not_authorized"
    connected = await connect(svc)
    with pytest.raises(Conflict) as err:
        await runs.start(svc, who, connected.id)
    assert err.value.code == "no_groups_selected"


async def test_a_stalled_run_is_abandoned_after_the_threshold(svc, tenant):
    sub = await connect(svc, groups=(SALES,))
    first = await runs.start(svc, caller(), sub.id)
    svc.queue.take_group_jobs()  # lost: never delivered
    with pytest.raises(Conflict):
        await runs.start(svc, caller(), sub.id)
    svc.clock.advance(minutes=svc.settings.run_stale_after_minutes + 1)
    second = await runs.start(svc, caller(), sub.id)
    old = await runs.get(svc, caller(), sub.id, first.id)
    assert old.run.status == "failed" and old.errors[0].code == "run_timed_out"
    await deliver(svc)
    assert (await runs.get(svc, caller(), sub.id, second.id)).run.status == "succeeded"


async def test_deleting_a_subscription_hands_users_back_as_manual(svc, tenant):
    sub = await connect(svc, groups=(SALES,), deactivateBlockedUsers=True)
    await full_sync(svc, sub)
    await subscriptions.delete(svc, caller(), sub.id)
    users = users_of(svc)
    assert {u.source_type for u in users.values()} == {"Manual"}
    assert all(u.subscription_id is None and u.azure_object_id is None for u in users.values())
    assert users["ann@contoso.example"].status == "Active"
    assert svc.groups.rows == {}


async def test_delete_is_refused_while_a_run_is_queued(svc, tenant):
    sub = await connect(svc, groups=(SALES,))
    await runs.start(svc, caller(), sub.id)
    with pytest.raises(Conflict) as err:
        await subscriptions.delete(svc, caller(), sub.id)
    assert err.value.code == "sync_in_progress"


async def test_workers_of_overlapping_groups_do_not_race_to_create(svc, tenant):
    for i in range(40):
        tenant.add_user(f"x{i:02d}", groups=[SALES, ENG, OPS])
    sub = await connect(svc, groups=(SALES, ENG, OPS))
    run = await runs.start(svc, caller(), sub.id)
    from sync.group_sync import handle_group_job
    await asyncio.gather(*(handle_group_job(svc, job) for job in svc.queue.take_group_jobs()))
    view = await runs.get(svc, caller(), sub.id, run.id)
    assert view.run.status == "succeeded" and view.counts.created == 44  # 40 + ann, bob, cat, eve
    assert svc.users.existing_on_create == 0  # each shared user was inserted once; the others joined it
    assert all(len(u.group_ids) >= 1 for u in users_of(svc).values())
    assert users_of(svc)["x07@contoso.example"].group_ids == {SALES, ENG, OPS}


async def test_a_fingerprint_from_an_earlier_run_is_not_trusted(svc, tenant):
    sub = await connect(svc, groups=(SALES,))
    await full_sync(svc, sub)
    tenant.remove(SALES, "ann")
    await full_sync(svc, sub)  # ann deprovisioned by the finalizer, which the workers' memory never saw
    tenant.members[SALES].append("ann")
    await full_sync(svc, sub)
    assert users_of(svc)["ann@contoso.example"].status == "Active"


async def test_groups_finishing_together_read_the_subscription_once(svc, tenant, monkeypatch):
    """Two workers of one process reach the fan-in together: the second finds the run ended, not a second scan."""
    from sync import group_sync

    sub = await connect(svc, groups=(SALES, ENG))
    run = await runs.start(svc, caller(), sub.id)
    finalize = group_sync.finalize

    async def not_yet(*args, **kwargs):
        return None

    monkeypatch.setattr(group_sync, "finalize", not_yet)  # both groups finish; nobody has fanned in yet
    await deliver(svc)
    monkeypatch.setattr(group_sync, "finalize", finalize)
    reads = []
    scope = svc.users.subscription_scope

    async def slow_scope(*args):
        reads.append(args)
        async for user in scope(*args):
            await asyncio.sleep(0)  # a real store answers page by page: the other worker runs meanwhile
            yield user

    svc.users.subscription_scope = slow_scope
    await asyncio.gather(finalize(svc, sub.org, sub.id, run.id), finalize(svc, sub.org, sub.id, run.id))
    view = await runs.get(svc, caller(), sub.id, run.id)
    assert view.run.status == "succeeded" and view.counts.created == len(users_of(svc))
    assert len(reads) == 1 and len(svc.finalizing) == 0


async def test_a_long_retry_after_reschedules_the_segment_instead_of_sleeping(svc, tenant):
    from sync import group_sync

    sub = await connect(svc, groups=(SALES,))
    run = await runs.start(svc, caller(), sub.id)
    svc.directory.fail[SALES] = Transient("429", retry_after=120)
    [job] = svc.queue.take_group_jobs()
    await group_sync.handle_group_job(svc, job)  # returns: the message completes, a copy waits 120 s
    [later] = svc.queue.take_group_jobs()
    assert later.attempt == 1 and later.message_id != job.message_id and svc.queue.group_delays[-1] == 120
    svc.directory.fail[SALES] = Transient("503", retry_after=2)  # short: the adapter's own wait; here, redelivery
    with pytest.raises(Transient):
        await group_sync.handle_group_job(svc, later)
    del svc.directory.fail[SALES]
    await group_sync.handle_group_job(svc, later)
    view = await runs.get(svc, caller(), sub.id, run.id)
    assert view.run.status == "succeeded"


async def test_a_running_run_shows_true_progress_and_marks_its_counts_partial(svc, tenant):
    from sync import group_sync

    large_ops_group(svc, tenant)
    sub = await connect(svc, groups=(OPS, SALES))
    run = await runs.start(svc, caller(), sub.id)
    jobs = svc.queue.take_group_jobs()
    first = next(j for j in jobs if j.group_id == OPS)
    others = [j for j in jobs if j.group_id != OPS]
    await group_sync.handle_group_job(svc, first)  # two pages of the 42-member group, then a follow-up
    mid = (await runs.get(svc, caller(), sub.id, run.id)).to_api()
    assert mid["status"] == "running" and mid["countsFinal"] is False
    assert mid["progress"] == {"groupsDone": 0, "groupsTotal": 2, "pagesRead": 2, "membershipsProcessed": 14}
    svc.queue.group_jobs.extend(others)
    await deliver(svc)
    done = (await runs.get(svc, caller(), sub.id, run.id)).to_api()
    assert done["status"] == "succeeded" and done["countsFinal"] is True
    assert done["progress"]["groupsDone"] == 2 and done["progress"]["pagesRead"] == 6 + 1
