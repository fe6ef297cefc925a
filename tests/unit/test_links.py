"""Linking existing Manual users in place (linkExistingUsers), on fakes: matching, the link, idempotence."""
import asyncio
from dataclasses import replace

import pytest

from sync import changes, group_sync, runs, subscriptions, users
from sync.decisions import Desired, Skip
from sync.errors import InvalidInput
from sync.linking import Candidate, Match, match_links
from sync.model import ChangeJob, Trigger
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

URL = "https://dirsync.example/api/directory/notifications?code=function-key"


@pytest.fixture
def tenant(svc):
    return four_groups(svc)


def desired(oid: str, username: str, email: str | None) -> Desired:
    return Desired(oid, username, email, oid.title(), None, None, "Active", None)


async def manual(svc, username: str, email: str | None = None, org: str = "org-a"):
    user = await users.create_manual(svc, caller(org), {"username": username, **({"email": email} if email else {})})
    return user


# -- matching (pure) -----------------------------------------------------------------------------------------------

def test_a_username_match_wins_over_an_email_match_and_off_links_nobody():
    wanted = {"o1": desired("o1", "Ann@x", "ann@x")}
    cands = [Candidate("m-mail", "someone", "ANN@x"), Candidate("m-name", "ann@X", None)]
    assert match_links(wanted, cands, "usernameOrEmail") == {"o1": Match("m-name", "matched_username")}
    assert match_links(wanted, [cands[0]], "usernameOrEmail") == {"o1": Match("m-mail", "matched_email")}
    assert match_links(wanted, [cands[0]], "username") == {}
    assert match_links(wanted, cands, "off") == {}


def test_a_match_must_be_unique_both_ways():
    wanted = {"o1": desired("o1", "ann@x", "ann@x")}
    two = [Candidate("m1", "a1", "ann@x"), Candidate("m2", "a2", "Ann@X")]
    [skip] = match_links(wanted, two, "usernameOrEmail").values()
    assert isinstance(skip, Skip) and skip.code == "link_ambiguous" and "m1" in skip.message and "m2" in skip.message
    # one Manual user matched by two directory users (one by username, one by e-mail): neither is linked
    wanted = {"o1": desired("o1", "ann@x", None), "o2": desired("o2", "ann2@x", "mail@x")}
    found = match_links(wanted, [Candidate("m", "ann@x", "mail@x")], "usernameOrEmail")
    assert {k: v.code for k, v in found.items()} == {"o1": "link_ambiguous", "o2": "link_ambiguous"}


# -- the group worker ------------------------------------------------------------------------------------------------

async def test_a_full_sync_links_a_manual_user_in_place_without_an_invitation(svc, tenant):
    ann = await manual(svc, "ann@contoso.example", "old@contoso.example")
    ann = replace(ann, enrolled_at=svc.clock())
    svc.users.rows[("org-a", ann.id)] = ann
    sub = await connect(svc, groups=(SALES, ENG, PLATFORM, OPS), sendEnrollmentEmail=True, linkExistingUsers="username")
    view = await full_sync(svc, sub)
    assert (view.counts.linked, view.counts.created) == (1, 4)
    now = users_of(svc)["ann@contoso.example"]
    assert (now.id, now.created_at, now.enrolled_at) == (ann.id, ann.created_at, ann.enrolled_at)
    assert (now.source_type, now.subscription_id, now.azure_object_id, now.group_ids) == (
        "AdSync", sub.id, "ann", {SALES})
    assert now.email == "ann@contoso.example"  # the directory's from now on
    assert ann.id not in {j.user_id for j in svc.queue.enrollment_jobs}
    [line] = [c for c in await changes_of(svc, sub, view.run.id) if c["change"] == "linked"]
    assert (line["userId"], line["reason"]) == (ann.id, "matched_username")
    assert line["fields"]["email"] == ["old@contoso.example", "ann@contoso.example"]
    assert line["fields"]["sourceType"] == ["Manual", "AdSync"]
    assert [e.change for e in now.history] == ["linked", "created"]
    # every later run finds the same row: nothing written, nothing created
    writes = svc.users.writes
    again = await full_sync(svc, sub)
    assert (again.counts.linked, again.counts.created, again.counts.unchanged) == (0, 0, 5)
    assert svc.users.writes == writes and len(users_of(svc)) == 5


async def test_by_email_the_username_becomes_the_directorys(svc, tenant):
    old = await manual(svc, "ann.smith", "ANN@contoso.example")
    sub = await connect(svc, groups=(SALES,), linkExistingUsers="usernameOrEmail")
    view = await full_sync(svc, sub)
    assert view.counts.linked == 1
    now = users_of(svc)["ann@contoso.example"]
    assert now.id == old.id and "ann.smith" not in users_of(svc)
    assert await svc.users.username_owner("org-a", "ann.smith") is None  # the old claim went with the rename
    assert (await changes_of(svc, sub, view.run.id, change="linked"))[0]["reason"] == "matched_email"


async def test_an_ambiguous_match_links_nobody_and_creates_nobody(svc, tenant):
    one = await manual(svc, "bob1", "bob@contoso.example")
    two = await manual(svc, "bob2", "bob@contoso.example")
    sub = await connect(svc, groups=(SALES,), linkExistingUsers="usernameOrEmail")
    view = await full_sync(svc, sub)
    assert view.counts.skippedReasons == {"link_ambiguous": 1} and view.counts.linked == 0
    assert "bob@contoso.example" not in users_of(svc)
    assert {users_of(svc)["bob1"].source_type, users_of(svc)["bob2"].source_type} == {"Manual"}
    [error] = [e for e in view.run.errors + tuple(e for g in view.groups for e in g.errors) if e.code == "link_ambiguous"]
    assert one.id in error.message and two.id in error.message


async def test_adsync_users_and_other_orgs_users_are_never_taken_over(svc, tenant):
    other_org = await manual(svc, "ann@contoso.example", org="org-b")
    first = await connect(svc, groups=(SALES,))
    await full_sync(svc, first)  # ann and bob are AdSync users of the first subscription
    second = await connect(svc, groups=(SALES,), linkExistingUsers="username")
    view = await full_sync(svc, second)
    assert view.counts.linked == 0 and view.counts.skippedReasons == {"username_conflict": 2}
    assert users_of(svc)["ann@contoso.example"].subscription_id == first.id
    assert svc.users.rows[("org-b", other_org.id)].source_type == "Manual"


async def test_redelivered_messages_and_concurrent_groups_link_once(svc, tenant):
    bob = await manual(svc, "bob@contoso.example")
    sub = await connect(svc, groups=(SALES, ENG), linkExistingUsers="username")
    await runs.start(svc, caller(), sub.id, "manual")
    jobs = svc.queue.take_group_jobs()
    # both groups list bob at once; then every message is delivered again
    await asyncio.gather(*(group_sync.handle_group_job(svc, j) for j in jobs))
    await asyncio.gather(*(group_sync.handle_group_job(svc, j, redelivered=True) for j in jobs))
    await deliver(svc)
    view = (await runs.recent(svc, caller(), sub.id))[0]
    assert view.run.status == "succeeded" and view.counts.linked == 1
    rows = [u for u in users_of(svc).values() if u.azure_object_id == "bob"]
    assert [u.id for u in rows] == [bob.id] and rows[0].group_ids == {SALES, ENG}
    assert await svc.users.links("org-a", sub.id) == {"bob": bob.id}
    assert [c["userId"] for c in await changes_of(svc, sub, view.run.id, change="linked")] == [bob.id]


async def test_a_dry_run_proposes_the_link_and_writes_nothing(svc, tenant):
    ann = await manual(svc, "ann@contoso.example")
    sub = await connect(svc, groups=(SALES,), linkExistingUsers="username")
    view = await dry_run(svc, sub)
    assert view.run.status == "previewed" and (view.counts.linked, view.counts.created) == (1, 1)
    assert svc.users.rows[("org-a", ann.id)] == ann and await svc.users.links("org-a", sub.id) == {}
    [line] = await changes_of(svc, sub, view.run.id, change="linked")
    assert (line["userId"], line["reason"]) == (ann.id, "matched_username")


async def test_deleting_the_subscription_returns_linked_users_to_manual_with_their_id(svc, tenant):
    ann = await manual(svc, "ann@contoso.example")
    sub = await connect(svc, groups=(SALES,), linkExistingUsers="username")
    await full_sync(svc, sub)
    await subscriptions.delete(svc, caller(), sub.id)
    now = svc.users.rows[("org-a", ann.id)]
    assert (now.source_type, now.subscription_id, now.azure_object_id) == ("Manual", None, None)
    assert await svc.users.links("org-a", sub.id) == {}


async def test_the_option_is_checked(svc, tenant):
    sub = await connect(svc)
    with pytest.raises(InvalidInput) as err:
        await subscriptions.update(svc, caller(), sub.id, {"linkExistingUsers": "email"})
    assert err.value.code == "invalid_link_existing_users"
    assert (await subscriptions.get(svc, caller(), sub.id)).link_existing_users == "off"


async def test_an_incremental_run_links_a_user_added_to_a_selected_group(tenant):
    from sync import composition
    from tests.fakes import make_services

    svc = make_services(NOTIFICATION_URL=URL)
    composition.override(svc)
    try:
        t = four_groups(svc)
        sub = await connect(svc, groups=(SALES,), linkExistingUsers="username")
        await full_sync(svc, sub)
        fay = await manual(svc, "fay@contoso.example")
        t.add_user("fay", groups=[SALES])
        svc.clock.advance(seconds=5)
        await changes.handle_change_job(svc, ChangeJob(sub.org, sub.id, Trigger.CHANGE_NOTIFICATION, svc.clock()))
        await deliver(svc)
        latest = (await runs.recent(svc, caller(), sub.id))[0]
        assert latest.run.trigger == "change_notification" and latest.counts.linked == 1
        now = svc.users.rows[("org-a", fay.id)]
        assert (now.source_type, now.azure_object_id, now.group_ids) == ("AdSync", "fay", {SALES})
        assert [c["reason"] for c in await changes_of(svc, sub, latest.run.id, change="linked")] == ["matched_username"]
        # the next change to fay finds the same row
        t.block("fay")
        svc.clock.advance(seconds=5)
        await changes.handle_change_job(svc, ChangeJob(sub.org, sub.id, Trigger.CHANGE_NOTIFICATION, svc.clock()))
        assert [u.id for u in users_of(svc).values() if u.azure_object_id == "fay"] == [fay.id]
    finally:
        composition.override(None)
