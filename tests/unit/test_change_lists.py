"""Issue 18 on fakes: dry runs that write nothing, per-run change lists, per-user histories and their retention."""
import copy
from dataclasses import replace
from datetime import timedelta

import pytest

from sync import group_sync, retention, runs, subscriptions
from sync import users as users_uc
from sync.decisions import HISTORY_MAX_ENTRIES
from sync.errors import Conflict, Gone, InvalidInput, NotFound, Transient
from sync.preview import PreviewLedgers
from tests.helpers import call, token
from tests.unit.syncdsl import (
    ENG,
    OPS,
    PLATFORM,
    SALES,
    caller,
    changes_of,
    connect,
    deliver,
    dry_run,
    four_groups,
    full_sync,
    users_of,
)


@pytest.fixture
def tenant(svc):
    return four_groups(svc)


def store_state(svc):
    """Every row a run could write, except the Runs table (a dry run writes its own run there)."""
    subs = {k: replace(s, etag=None, updated_at=None, active_run_id=None) for k, s in svc.subscriptions.rows.items()}
    return copy.deepcopy((dict(svc.users.rows), dict(svc.users.claims), dict(svc.groups.rows), subs,
                          list(svc.queue.enrollment_jobs), svc.users.writes, svc.users.membership_writes))


def by_user(changes):
    return {c["username"].split("@")[0]: (c["change"], c["reason"], c["fields"]) for c in changes}


def admin_changes_tenant(t):
    t.block("bob")  # deactivateBlockedUsers on: deactivated
    t.users["cat"] = replace(t.users["cat"], display_name="Catherine")  # attributes
    t.remove(SALES, "ann")  # in no selected group: deprovisioned at the run's end
    t.block("dan", False)  # reactivated
    t.add_user("fay", groups=[SALES, ENG])  # created once, though in two groups


async def test_a_real_run_lists_each_change_once_with_its_reason_and_fields(svc, tenant):
    sub = await connect(svc, groups=(SALES, ENG, PLATFORM, OPS), deactivateBlockedUsers=True)
    first = await full_sync(svc, sub)
    created = await changes_of(svc, sub, first.run.id)
    assert sorted(c["username"].split("@")[0] for c in created) == ["ann", "bob", "cat", "dan", "eve_gmail.com#EXT#"]
    cat = next(c for c in created if c["username"].startswith("cat"))
    assert cat["change"] == "created" and cat["reason"] == "joined_selected_group" and cat["groupId"] in {ENG, PLATFORM, OPS}
    assert cat["fields"]["displayName"] == [None, "Cat"] and cat["fields"]["status"] == [None, "Active"]
    assert "statusReason" not in cat["fields"]  # only the fields that have a value
    assert by_user(created)["dan"][:2] == ("created", "blocked_in_directory")
    assert await changes_of(svc, sub, (await full_sync(svc, sub)).run.id) == []  # nothing changed, nothing listed

    admin_changes_tenant(tenant)
    view = await full_sync(svc, sub)
    listed = by_user(await changes_of(svc, sub, view.run.id))
    assert listed == {
        "bob": ("deactivated", "blocked_in_directory",
                {"status": ["Active", "Inactive"], "statusReason": [None, "blocked_in_directory"]}),
        "cat": ("updated", "attributes_changed", {"displayName": ["Cat", "Catherine"]}),
        "dan": ("reactivated", "unblocked_in_directory",
                {"status": ["Inactive", "Active"], "statusReason": ["blocked_in_directory", None]}),
        "fay": ("created", "joined_selected_group", by_user(await changes_of(svc, sub, view.run.id))["fay"][2]),
        "ann": ("deactivated", "removed_from_directory",
                {"status": ["Active", "Inactive"], "statusReason": [None, "removed_from_directory"]}),
    }
    c = view.counts
    assert (c.created, c.updated, c.reactivated, c.deactivated) == (1, 1, 1, 2)
    only = await changes_of(svc, sub, view.run.id, change="deactivated")
    assert sorted(x["username"].split("@")[0] for x in only) == ["ann", "bob"]
    assert next(x for x in only if x["username"].startswith("ann"))["groupId"] is None  # the run's end removed ann


async def test_the_changes_endpoint_pages_validates_and_is_org_scoped(svc, tenant):
    sub = await connect(svc, groups=(SALES, ENG, PLATFORM, OPS))
    view = await full_sync(svc, sub)
    route = {"subscriptionId": sub.id, "runId": view.run.id}
    seen, next_token = [], None
    for _ in range(10):
        status, body, _ = await call("list_run_changes", route=route,
                                     params={"pageSize": "2", **({"continuationToken": next_token} if next_token else {})})
        assert status == 200 and body["dryRun"] is False and body["runId"] == view.run.id
        seen += [c["userId"] for c in body["changes"]]
        next_token = body["continuationToken"]
        if not next_token:
            break
    assert len(seen) == len(set(seen)) == 5
    for params, code in (({"pageSize": "0"}, "invalid_page_size"), ({"pageSize": "501"}, "invalid_page_size"),
                         ({"pageSize": "x"}, "invalid_page_size"), ({"change": "unchanged"}, "invalid_change"),
                         ({"continuationToken": "bm9wZQ"}, "invalid_continuation_token"),
                         ({"sort": "name"}, "unknown_parameter")):
        status, body, _ = await call("list_run_changes", route=route, params=params)
        assert (status, body["code"]) == (400, code), params
    status, body, _ = await call("list_run_changes", route=route, auth=f"Bearer {token(org='org-b')}")
    assert (status, body["code"]) == (404, "subscription_not_found")
    status, body, _ = await call("list_run_changes", route={**route, "runId": "9" * 13 + "-00000000"})
    assert (status, body["code"]) == (404, "run_not_found")
    status, body, _ = await call("list_run_changes", route=route, auth=f"Bearer {token(role='Help Desk')}")
    assert status == 403
    svc.clock.advance(days=svc.settings.history_retention_days + 1)
    with pytest.raises(Gone) as err:
        await changes_of(svc, sub, view.run.id)
    assert err.value.code == "changes_expired"


async def test_a_dry_run_writes_nothing_and_previews_what_the_real_run_then_does(svc, tenant):
    sub = await connect(svc, groups=(SALES, ENG, PLATFORM, OPS), deactivateBlockedUsers=True, sendEnrollmentEmail=True)
    first = await full_sync(svc, sub)
    admin_changes_tenant(tenant)
    before = store_state(svc)
    preview = await dry_run(svc, sub)
    assert store_state(svc) == before  # no user, claim, membership, invitation or grid row; the last sync stays
    assert preview.run.status == "previewed" and preview.run.dry_run and preview.to_api()["dryRun"] is True
    proposed = await changes_of(svc, sub, preview.run.id)
    stored = await subscriptions.get(svc, caller(), sub.id)
    assert stored.last_run_id == first.run.id and stored.active_run_id is None
    from sync.functions.directory_api import present
    assert (await present(svc, stored))["lastRun"]["runId"] == first.run.id  # the portal's last sync: the real one

    real = await full_sync(svc, sub)
    assert real.run.status == "succeeded"
    assert real.counts == preview.counts
    assert preview.counts.emailsQueued == 1  # fay would be invited
    applied = await changes_of(svc, sub, real.run.id)

    def lines(changes):
        return sorted((c["userId"], c["change"], c["reason"], str(c["fields"])) for c in changes)
    assert lines(proposed) == lines(applied) and len(applied) == 5


async def test_a_first_dry_run_on_an_empty_portal_counts_everyone_and_creates_nobody(svc, tenant):
    sub = await connect(svc, groups=(SALES, ENG, PLATFORM, OPS), sendEnrollmentEmail=True)
    preview = await dry_run(svc, sub, times=2)  # every message delivered twice
    assert svc.users.rows == {} and svc.groups.rows == {} and svc.queue.enrollment_jobs == []
    c = preview.counts
    assert (c.created, c.unchanged, c.deactivated, c.emailsQueued) == (5, 0, 0, 4)
    assert c.skippedReasons == {"no_email_address": 1}
    assert len(await changes_of(svc, sub, preview.run.id)) == 5
    real = await full_sync(svc, sub)
    assert real.counts == preview.counts


async def test_a_dry_run_only_reports_that_the_guard_would_hold_the_run(svc, tenant):
    for i in range(30):
        tenant.add_user(f"u{i:02d}", groups=[OPS])
    sub = await connect(svc, groups=(OPS, SALES))
    await full_sync(svc, sub)
    tenant.members[OPS] = tenant.members[OPS][:5]
    preview = await dry_run(svc, sub)
    assert preview.run.status == "previewed" and preview.counts.deactivated == 27
    [notice] = [e for e in preview.errors if e.code == "would_need_review"]
    assert "27 of 34 active users" in notice.message
    assert not any(e.code == "deprovisioning_held" for e in preview.errors)
    assert all(u.status == "Active" for u in users_of(svc).values())
    assert len(await changes_of(svc, sub, preview.run.id, change="deactivated")) == 27
    with pytest.raises(Conflict):  # a preview is never approved: it applies nothing
        await runs.approve(svc, caller(), sub.id, preview.run.id)
    real = await full_sync(svc, sub)
    # The preview counts the deactivations the guard would hold back; the real run holds them as pending.
    assert real.run.status == "needs_review" and real.run.pending_deactivations == preview.counts.deactivated
    assert replace(real.counts, deactivated=27) == preview.counts
    assert "27 of 34 active users" in next(e.message for e in real.errors if e.code == "deprovisioning_held")


async def test_a_dry_run_meets_username_conflicts_as_the_real_run_does(svc, tenant):
    await users_uc.create_manual(svc, caller(), {"username": "ann@contoso.example"})
    tenant.add_user("ann2", groups=[SALES], mail="bob@contoso.example", user_principal_name="ann2@contoso.example")
    sub = await connect(svc, groups=(SALES, ENG), usernameAttribute="mail")
    preview = await dry_run(svc, sub)
    real = await full_sync(svc, sub)
    assert preview.counts == real.counts and real.counts.skippedReasons == {"username_conflict": 2}
    assert sorted(e.code for e in preview.errors) == sorted(e.code for e in real.errors)


async def test_a_dry_run_holds_the_subscription_like_a_run(svc, tenant):
    sub = await connect(svc, groups=(SALES,))
    preview = await runs.start(svc, caller(), sub.id, dry_run=True)
    with pytest.raises(Conflict) as err:
        await runs.start(svc, caller(), sub.id)
    assert err.value.code == "sync_in_progress"
    with pytest.raises(Conflict):
        await subscriptions.delete(svc, caller(), sub.id)
    await deliver(svc)
    assert (await runs.get(svc, caller(), sub.id, preview.id)).run.status == "previewed"
    assert (await full_sync(svc, sub)).run.status == "succeeded"


async def test_dry_runs_of_large_groups_across_segments_and_redeliveries_match_the_real_run(svc, tenant):
    svc.directory.page_size = 7
    svc.settings = svc.settings.__class__(**{**svc.settings.__dict__, "max_pages_per_message": 2})
    for i in range(40):
        tenant.add_user(f"m{i:02d}", groups=[OPS] if i % 2 else [OPS, SALES])
    sub = await connect(svc, groups=(OPS, SALES))
    assert (await dry_run(svc, sub, times=2)).counts == (await full_sync(svc, sub)).counts
    tenant.members[OPS] = [u for u in tenant.members[OPS] if u not in ("m01", "m03", "m04")]  # m04 stays in Sales
    tenant.users["m10"] = replace(tenant.users["m10"], surname="Renamed")
    preview = await dry_run(svc, sub, times=2)
    real = await full_sync(svc, sub, times=2)
    assert preview.counts == real.counts and (real.counts.deactivated, real.counts.updated) == (2, 1)
    assert {c["userId"] for c in await changes_of(svc, sub, preview.run.id)} == \
        {c["userId"] for c in await changes_of(svc, sub, real.run.id)}


async def test_dry_run_workers_in_other_processes_leave_no_duplicate_in_the_list(svc, tenant):
    sub = await connect(svc, groups=(SALES, ENG, PLATFORM, OPS))
    run = await runs.start(svc, caller(), sub.id, dry_run=True)
    for job in svc.queue.take_group_jobs():
        svc.previews = PreviewLedgers()  # each group in a process of its own: no shared ledger
        await group_sync.handle_group_job(svc, job)
    view = await runs.get(svc, caller(), sub.id, run.id)
    listed = await changes_of(svc, sub, run.id)
    assert len(listed) == len({c["userId"] for c in listed}) == 5  # bob and cat were listed by several groups
    assert view.counts.created == 5 and view.counts.unchanged == 0


async def test_redelivered_and_lost_segments_record_each_change_once(svc, tenant, monkeypatch):
    sub = await connect(svc, groups=(SALES, ENG, PLATFORM, OPS), deactivateBlockedUsers=True)
    first = await full_sync(svc, sub, times=2)
    assert len(await changes_of(svc, sub, first.run.id)) == 5
    admin_changes_tenant(tenant)
    # The first delivery of every segment writes its users, then dies before recording its progress and changes.
    save = svc.runs.save_group
    died: set[str] = set()

    async def crash_once(org, sub_id, run_id, progress, changes=None):
        if changes and progress.group_id not in died:
            died.add(progress.group_id)
            raise Transient("host killed")
        return await save(org, sub_id, run_id, progress, changes)

    monkeypatch.setattr(svc.runs, "save_group", crash_once)
    run = await runs.start(svc, caller(), sub.id)
    for job in svc.queue.take_group_jobs():
        try:
            await group_sync.handle_group_job(svc, job)
        except Transient:
            await group_sync.handle_group_job(svc, job, redelivered=True)
    view = await runs.get(svc, caller(), sub.id, run.id)
    assert view.run.status == "succeeded" and died
    listed = by_user(await changes_of(svc, sub, run.id))
    assert set(listed) == {"ann", "bob", "cat", "dan", "fay"}
    assert listed["cat"][:2] == ("updated", "attributes_changed") and listed["fay"][0] == "created"
    cat = users_of(svc)["cat@contoso.example"]
    assert [e.change for e in cat.history] == ["updated", "created"]  # one entry per (run, change)


async def test_a_users_history_answers_why_they_are_inactive(svc, tenant):
    sub = await connect(svc, groups=(SALES, ENG), deactivateBlockedUsers=True)
    first = await full_sync(svc, sub)
    tenant.block("bob")
    blocked = await full_sync(svc, sub, trigger="nightly")
    svc.clock.advance(hours=1)
    tenant.block("bob", False)
    back = await full_sync(svc, sub)
    tenant.remove(SALES, "bob")
    tenant.remove(ENG, "bob")
    removed = await full_sync(svc, sub, times=2)
    bob = users_of(svc)["bob@contoso.example"]
    status, body, _ = await call("get_user_history", route={"userId": bob.id})
    assert status == 200
    history = body["history"]
    assert [(h["change"], h["reason"], h["runId"], h["trigger"]) for h in history] == [
        ("deactivated", "removed_from_directory", removed.run.id, "manual"),
        ("reactivated", "unblocked_in_directory", back.run.id, "manual"),
        ("deactivated", "blocked_in_directory", blocked.run.id, "nightly"),
        ("created", "joined_selected_group", first.run.id, "manual"),
    ]
    assert history[0]["fields"] == {"status": ["Active", "Inactive"], "statusReason": [None, "removed_from_directory"]}
    assert history[0]["groupId"] is None and history[2]["groupId"] in {SALES, ENG}
    assert history[2]["fields"]["status"] == ["Active", "Inactive"] and history[1]["at"] > history[2]["at"]
    assert history[3]["fields"] == {}  # a creation's values are the user's first ones
    status, body, _ = await call("get_user_history", route={"userId": bob.id}, auth=f"Bearer {token(org='org-b')}")
    assert (status, body["code"]) == (404, "user_not_found")
    status, body, _ = await call("get_user_history", route={"userId": bob.id}, params={"limit": "5"})
    assert (status, body["code"]) == (400, "unknown_parameter")


def test_an_inactive_user_inactive_for_another_reason_now_is_updated_with_that_reason():
    from sync.decisions import reason_of
    from sync.model import User
    before = User(org="o", id="u", username="u", email=None, display_name="U", status="Inactive",
                  status_reason="removed_from_directory")
    after = replace(before, status_reason="blocked_in_directory")
    assert reason_of("updated", before, after) == "blocked_in_directory"
    assert reason_of("updated", before, replace(before, display_name="V")) == "attributes_changed"


async def test_manual_users_history_records_the_administrators_changes(svc):
    user = await users_uc.create_manual(svc, caller(), {"username": "kim@portal.example"})
    await users_uc.set_active(svc, caller(), user.id, active=False)
    await users_uc.set_active(svc, caller(), user.id, active=False)  # no change, no entry
    await users_uc.set_active(svc, caller(), user.id, active=True)
    history = (await users_uc.history(svc, caller(), user.id))["history"]
    assert [(h["change"], h["reason"], h["trigger"], h["runId"]) for h in history] == [
        ("reactivated", "activated_by_admin", "manual", None),
        ("deactivated", "deactivated_by_admin", "manual", None),
        ("created", "created_by_admin", "manual", None),
    ]
    assert history[1]["fields"] == {"status": ["Active", "Inactive"], "statusReason": [None, "deactivated_by_admin"]}
    with pytest.raises(NotFound):
        await users_uc.history(svc, caller("org-b"), user.id)


async def test_history_is_capped_and_the_nightly_drops_only_expired_entries(svc, tenant):
    sub = await connect(svc, groups=(SALES,), deactivateBlockedUsers=True)
    await full_sync(svc, sub)
    for n in range(HISTORY_MAX_ENTRIES + 5):
        tenant.block("ann", n % 2 == 0)
        await full_sync(svc, sub)
        svc.clock.advance(days=1)
    ann = users_of(svc)["ann@contoso.example"]
    assert len(ann.history) == HISTORY_MAX_ENTRIES and ann.history[0].at > ann.history[-1].at
    bob_before = users_of(svc)["bob@contoso.example"]
    svc.clock.advance(days=svc.settings.history_retention_days - 10)  # bob's one entry expired; ann's last 10 not
    writes = svc.users.writes
    summary = await retention.apply(svc)
    assert summary["historyPruned"] == 2 and svc.users.writes == writes + 2
    ann, bob = users_of(svc)["ann@contoso.example"], users_of(svc)["bob@contoso.example"]
    assert len(ann.history) == 10 and bob.history == () and bob.updated_at == bob_before.updated_at
    assert (await retention.apply(svc))["historyPruned"] == 0  # nothing left to drop: nothing rewritten
    assert (await users_uc.history(svc, caller(), ann.id))["history"][0]["change"] in ("reactivated", "deactivated")


async def test_the_nightly_drops_change_lists_of_expired_runs(svc, tenant):
    sub = await connect(svc, groups=(SALES,))
    old = await full_sync(svc, sub)
    svc.clock.advance(days=svc.settings.history_retention_days + 1)
    tenant.add_user("new", groups=[SALES])
    recent = await full_sync(svc, sub)
    summary = await runs.nightly(svc)
    assert summary["changeRowsExpired"] >= 1
    assert (old.run.org, sub.id, old.run.id) not in svc.runs.changes
    assert len(await changes_of(svc, sub, recent.run.id)) == 1


async def test_bad_dry_run_fields_start_nothing(svc, tenant):
    sub = await connect(svc, groups=(SALES,))
    for body in ({"dryRun": "yes"}, {"dryRun": True, "extra": 1}):
        with pytest.raises(InvalidInput):
            await runs.start_requested(svc, caller(), sub.id, body)
    assert svc.queue.group_jobs == []
    run = await runs.start_requested(svc, caller(), sub.id, {"dryRun": True})
    assert run.dry_run and len(svc.queue.group_jobs) == 1
    svc.clock.advance(minutes=1)
    assert timedelta(0) <= svc.clock() - run.started_at
