"""The Table Storage adapter against Azurite: keys, transactions, ETags, claims and injection-safe filters."""
import asyncio
from dataclasses import replace
from datetime import datetime, timezone

import pytest

from sync.adapters.tables import group_of_property, key, membership_property
from sync.errors import InvalidInput, PreconditionFailed
from sync.model import GroupProgress, GroupRef, Run, Subscription, SyncedGroup, User
from sync.ports import Created, Exists, Stale, Updated, UserFilter, UsernameTaken

NOW = datetime(2026, 11, 27, 9, 0, tzinfo=timezone.utc)
GROUP = "2b2e3b1c-1111-4a4a-9b9b-000000000001"


def user(i: int, org: str = "org-a", **kw) -> User:
    defaults = dict(org=org, id=f"00000000-0000-0000-0000-{i:012d}", username=f"user{i}@contoso.example",
                    email=f"user{i}@contoso.example", display_name=f"User {i}", source_type="AdSync",
                    subscription_id="sub-1", azure_object_id=f"obj-{i}", group_ids=frozenset({GROUP}),
                    created_at=NOW, updated_at=NOW)
    defaults.update(kw)
    return User(**defaults)


def test_key_parts_are_safe_and_unambiguous():
    assert key("org/1#?\\") == "org%2F1%23%3F%5C"
    assert key("a|b") != key("a") + "|" + key("b")


@pytest.mark.parametrize("gid", [GROUP, "grp-sales", "Ünïcode group/1"])
def test_membership_property_round_trips(gid):
    name = membership_property(gid)
    assert name.isidentifier() and len(name) < 255
    assert group_of_property(name) == gid


async def test_250_entities_land_in_3_transactions(table_store):
    users = [user(i) for i in range(125)]  # each user is two entities: its row and its username claim
    table_store.counters.reset()
    outcomes = await table_store.users.create(users)
    assert all(isinstance(o, Created) for o in outcomes)
    assert table_store.counters.entities == 250
    assert table_store.counters.requests == 3

    table_store.counters.reset()
    written = await table_store.users.set_membership("org-a", [u.id for u in users] + [user(i).id for i in range(125, 250)],
                                                     "3c3c3c3c-2222-4b4b-8c8c-000000000002", True)
    assert written == 125  # rows that do not exist are skipped, not created
    stored = await table_store.users.get("org-a", users[0].id)
    assert stored.group_ids == {GROUP, "3c3c3c3c-2222-4b4b-8c8c-000000000002"}


async def test_create_is_idempotent_and_never_overwrites(table_store):
    [first] = await table_store.users.create([user(1, display_name="Original")])
    assert isinstance(first, Created)
    again = await table_store.users.create([user(1, display_name="Changed"), user(2)])
    assert isinstance(again[0], Exists) and again[0].user.display_name == "Original"
    assert isinstance(again[1], Created)


async def test_username_is_unique_per_org_regardless_of_case(table_store):
    await table_store.users.create([user(1, username="Alice@Contoso.example")])
    outcomes = await table_store.users.create([user(2, username="alice@contoso.EXAMPLE"), user(3, org="org-b", username="alice@contoso.example")])
    assert isinstance(outcomes[0], UsernameTaken)
    assert outcomes[0].owner_id == user(1).id and outcomes[0].owner_username == "Alice@Contoso.example"
    assert isinstance(outcomes[1], Created)  # another org may use the same username
    assert await table_store.users.get("org-a", user(2).id) is None


async def test_two_users_with_one_username_in_one_call(table_store):
    outcomes = await table_store.users.create([user(1, username="same@x.example"), user(2, username="same@x.example")])
    kinds = sorted(type(o).__name__ for o in outcomes)
    assert kinds == ["Created", "UsernameTaken"]


async def test_rename_moves_the_claim_and_respects_others(table_store):
    await table_store.users.create([user(1), user(2)])
    u1 = await table_store.users.get("org-a", user(1).id)
    [ok] = await table_store.users.update([(replace(u1, username="renamed@contoso.example"), u1.username)])
    assert isinstance(ok, Updated)
    assert await table_store.users.username_owner("org-a", "renamed@contoso.example") == u1.id
    assert await table_store.users.username_owner("org-a", u1.username) is None
    u2 = await table_store.users.get("org-a", user(2).id)
    [taken] = await table_store.users.update([(replace(u2, username="RENAMED@contoso.example"), u2.username)])
    assert isinstance(taken, UsernameTaken)
    assert (await table_store.users.get("org-a", u2.id)).username == u2.username


async def test_stale_etag_update_is_reported_not_applied(table_store):
    await table_store.users.create([user(1)])
    a = await table_store.users.get("org-a", user(1).id)
    b = await table_store.users.get("org-a", user(1).id)
    [first] = await table_store.users.update([(replace(a, display_name="A"), a.username)])
    [second] = await table_store.users.update([(replace(b, display_name="B"), b.username)])
    assert isinstance(first, Updated) and isinstance(second, Stale)
    assert (await table_store.users.get("org-a", a.id)).display_name == "A"


async def test_concurrent_run_progress_updates_lose_nothing(table_store):
    """Two writers increment one progress row 25 times each through the ETag retry loop: 50 increments land."""
    from sync.concurrency import optimistic
    from sync.model import Counts

    run = Run(org="org-a", subscription_id="sub-1", id="r1", trigger="manual", status="running",
              group_ids=(GROUP,), started_at=NOW, updated_at=NOW)
    await table_store.runs.add(run, [GroupProgress(group_id=GROUP, updated_at=NOW)])
    conflicts = 0

    async def writer():
        nonlocal conflicts
        for _ in range(25):
            async def bump(p):
                return replace(p, counts=p.counts + Counts(created=1))

            async def save(p):
                nonlocal conflicts
                try:
                    return await table_store.runs.save_group("org-a", "sub-1", "r1", p)
                except PreconditionFailed:
                    conflicts += 1
                    raise
            await optimistic(lambda: table_store.runs.get_group("org-a", "sub-1", "r1", GROUP), bump, save, attempts=100)

    await asyncio.gather(writer(), writer())
    progress = await table_store.runs.get_group("org-a", "sub-1", "r1", GROUP)
    assert progress.counts.created == 50
    assert conflicts > 0  # the writers really raced


async def test_filter_values_never_become_odata(table_store):
    await table_store.users.create([user(1), user(2, org="org-b")])
    evil = "Active' or 1 eq 1 or status eq 'x"
    found, _ = await table_store.users.page("org-a", UserFilter(status=evil), 50, None)
    assert found == []
    found, _ = await table_store.users.page("org-a' or PartitionKey ne '", UserFilter(), 50, None)
    assert found == []
    assert await table_store.subscriptions.list("org-a' or PartitionKey ne '") == []
    found, _ = await table_store.users.page("org-a", UserFilter(search="' or 1 eq 1"), 50, None)
    assert found == []
    found, _ = await table_store.users.page("org-a", UserFilter(), 50, None)
    assert [u.id for u in found] == [user(1).id]


async def test_users_grid_pages_with_filters_and_search(table_store):
    users = [user(i, status="Inactive" if i % 3 == 0 else "Active", display_name=f"Person {i:03d}") for i in range(1, 31)]
    await table_store.users.create(users)
    page1, token = await table_store.users.page("org-a", UserFilter(status="Active"), 8, None)
    page2, token2 = await table_store.users.page("org-a", UserFilter(status="Active"), 8, token)
    rest, end = await table_store.users.page("org-a", UserFilter(status="Active"), 100, token2)
    ids = [u.id for u in page1 + page2 + rest]
    assert len(ids) == len(set(ids)) == 20 and end is None
    hits, _ = await table_store.users.page("org-a", UserFilter(search="PERSON 01"), 50, None)
    assert sorted(u.display_name for u in hits) == [f"Person {i:03d}" for i in range(10, 20)]
    with pytest.raises(InvalidInput):
        await table_store.users.page("org-a", UserFilter(), 10, "not-a-token")


async def test_group_members_and_subscription_users(table_store):
    other = "3c3c3c3c-2222-4b4b-8c8c-000000000002"
    await table_store.users.create([user(1), user(2, group_ids=frozenset({other})), user(3, subscription_id="sub-2")])
    members = [u.id async for u in table_store.users.group_members("org-a", "sub-1", GROUP)]
    assert members == [user(1).id]
    everyone = sorted([u.id async for u in table_store.users.subscription_users("org-a", "sub-1")])
    assert everyone == [user(1).id, user(2).id]


async def test_subscription_etag_and_nightly_candidates(table_store):
    sub = await table_store.subscriptions.add(Subscription(org="org/a", id="s1", name="Dir", created_at=NOW, updated_at=NOW,
                                                           groups=(GroupRef(GROUP, "Sales & Co"),)))
    saved = await table_store.subscriptions.save(replace(sub, status="authorized", azure_tenant_id="t1"))
    with pytest.raises(PreconditionFailed):
        await table_store.subscriptions.save(replace(sub, name="stale"))
    assert (await table_store.subscriptions.get("org/a", "s1")).groups == (GroupRef(GROUP, "Sales & Co"),)
    await table_store.subscriptions.add(Subscription(org="org-b", id="s2", name="Off", nightly_sync=False, status="authorized",
                                                     created_at=NOW, updated_at=NOW))
    assert [s.id for s in await table_store.subscriptions.nightly_candidates()] == [saved.id]


async def test_seen_sets_of_large_segments_round_trip(table_store):
    ids = {f"{i:08d}-0000-0000-0000-000000000000" for i in range(5000)}
    await table_store.runs.save_seen("org-a", "sub-1", "r1", GROUP, 0, ids)
    await table_store.runs.save_seen("org-a", "sub-1", "r1", GROUP, 1, {"x"})
    assert await table_store.runs.load_seen("org-a", "sub-1", "r1", GROUP, 1) == ids
    assert await table_store.runs.load_seen("org-a", "sub-1", "r1", GROUP, 2) == ids | {"x"}


async def test_groups_grid_rows(table_store):
    await table_store.groups.save(SyncedGroup("org-a", "sub-1", GROUP, "Sales", 12, NOW))
    await table_store.groups.save(SyncedGroup("org-a", "sub-1", "g2", "Ops", 3, NOW))
    await table_store.groups.delete("org-a", "sub-1", ["g2"])
    assert [(g.id, g.user_count) for g in await table_store.groups.list("org-a")] == [(GROUP, 12)]


async def test_overlapping_creates_from_another_process_settle_in_one_read(table_store, azurite):
    """Workers in two processes create overlapping users: one failed transaction, one read, then the rest."""
    from sync.adapters.tables import TableStore

    other = TableStore.from_connection_string(azurite.connection_string, table_store._prefix)
    try:
        await table_store.users.create([user(i) for i in range(0, 40)])
        calls = []
        original = other.transaction

        async def counting(table, ops):
            calls.append(len(ops))
            return await original(table, ops)

        other.transaction = counting
        outcomes = await other.users.create([user(i) for i in range(20, 60)])
    finally:
        await other.close()
    assert [type(o).__name__ for o in outcomes] == ["Exists"] * 20 + ["Created"] * 20
    assert len(calls) == 2  # the conflicting transaction, then the 20 new users (40 entities) in one


async def test_subscription_scope_reads_only_the_runs_memberships(table_store):
    other = "3c3c3c3c-2222-4b4b-8c8c-000000000002"
    await table_store.users.create([user(1), user(2, group_ids=frozenset({other})), user(3, status="Inactive",
                                                                                      group_ids=frozenset())])
    scope = {s.id: s async for s in table_store.users.subscription_scope("org-a", "sub-1", [GROUP])}
    assert scope[user(1).id].group_ids == {GROUP}
    assert scope[user(2).id].group_ids == frozenset()  # a group outside the run is not read
    assert (scope[user(3).id].status, scope[user(3).id].source_type) == ("Inactive", "AdSync")
