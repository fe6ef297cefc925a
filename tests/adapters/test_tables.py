"""The Table Storage adapter against Azurite: keys, transactions, ETags, claims and injection-safe filters."""
import asyncio
from dataclasses import replace
from datetime import datetime, timezone

import pytest

from sync.adapters.table_text import key
from sync.adapters.table_users import group_of_property, membership_property
from sync.errors import InvalidInput, PreconditionFailed
from sync.model import GroupProgress, GroupRef, PendingConsent, Run, Subscription, SyncedGroup, User
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
    written = await table_store.users.add_membership("org-a", [u.id for u in users] + [user(i).id for i in range(125, 250)],
                                                     "3c3c3c3c-2222-4b4b-8c8c-000000000002", [GROUP])
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


async def test_users_grid_is_in_username_order_across_pages_and_filters(table_store):
    """The documented order: username, case-insensitive, by code point; stable across pages, filters and renames."""
    import random

    names = ["zoë@x.example", "Adam@x.example", "b%2F@x.example", "b/c@x.example", "Émile@x.example", "ann#1@x.example",
             "アキラ@x.example", "\U0001f600@x.example", "carl@x.example", "Bea@x.example", "a" * 600 + "@x.example"]
    names += [f"user{n:02d}@x.example" for n in range(25)]
    shuffled = random.Random(7).sample(range(len(names)), len(names))
    await table_store.users.create([user(i, username=names[i], status="Inactive" if i % 4 == 0 else "Active")
                                    for i in shuffled])
    expected = sorted(names, key=str.casefold)

    async def walk(filters: UserFilter, size: int) -> list[str]:
        seen, token = [], None
        while True:
            page, token = await table_store.users.page("org-a", filters, size, token)
            assert len(page) <= size
            seen += [u.username for u in page]
            if token is None:
                return seen

    assert await walk(UserFilter(), 7) == expected
    assert await walk(UserFilter(), 100) == expected
    inactive = [n for n in expected if names.index(n) % 4 == 0]
    assert await walk(UserFilter(status="Inactive"), 3) == inactive
    renamed = replace(await table_store.users.get("org-a", user(names.index("carl@x.example")).id),
                      username="aaron@x.example")
    [outcome] = await table_store.users.update([(renamed, "carl@x.example")])
    assert isinstance(outcome, Updated)
    assert (await walk(UserFilter(), 5))[:2] == ["a" * 600 + "@x.example", "aaron@x.example"]


async def test_group_members_and_subscription_users(table_store):
    other = "3c3c3c3c-2222-4b4b-8c8c-000000000002"
    await table_store.users.create([user(1), user(2, group_ids=frozenset({other})), user(3, subscription_id="sub-2")])
    members = [u.id async for u in table_store.users.group_members("org-a", "sub-1", GROUP)]
    assert members == [user(1).id]
    everyone = sorted([u.id async for u in table_store.users.subscription_users("org-a", "sub-1")])
    assert everyone == [user(1).id, user(2).id]


async def test_mapped_fields_custom_attributes_and_the_mapping_round_trip(table_store):
    from sync.adapters.table_watches import TableWatches
    from sync.attribute_mapping import parse_mapping
    from sync.model import DeltaState

    mapped = user(1, phone="+4915123456789", department="Retail", job_title="Manager", employee_id="E-1",
                  office_location="18/2111", custom_attributes={"costCenter": "CC-1", "badge": "B-7"})
    await table_store.users.create([mapped, user(2)])
    stored = await table_store.users.get("org-a", mapped.id)
    assert replace(stored, etag=None) == replace(mapped, etag=None)
    assert (await table_store.users.get("org-a", user(2).id)).custom_attributes == {}
    members = {m.id: m async for m in table_store.users.group_members("org-a", "sub-1", GROUP)}
    assert (members[mapped.id].phone, members[mapped.id].custom_attributes) == ("+4915123456789", mapped.custom_attributes)
    assert (members[user(2).id].phone, members[user(2).id].custom_attributes) == (None, {})
    mapping = parse_mapping({"phone": "mobilePhone", "custom": {"costCenter": "employeeOrgData/costCenter"}})
    sub = await table_store.subscriptions.add(Subscription(org="org-a", id="s1", name="Dir", created_at=NOW,
                                                           updated_at=NOW, attribute_mapping=mapping))
    assert (await table_store.subscriptions.get("org-a", "s1")).attribute_mapping == mapping
    await table_store.subscriptions.save(replace(sub, attribute_mapping=parse_mapping({})))
    assert (await table_store.subscriptions.get("org-a", "s1")).attribute_mapping.is_default
    watches = TableWatches(table_store)
    await watches.save_delta(DeltaState("org-a", "s1", "u", "g", (GROUP,), NOW, mapping_tag=mapping.tag()))
    assert (await watches.get_delta("org-a", "s1")).mapping_tag == mapping.tag()


async def test_subscription_etag_and_nightly_candidates(table_store):
    sub = await table_store.subscriptions.add(Subscription(org="org/a", id="s1", name="Dir", created_at=NOW, updated_at=NOW,
                                                           groups=(GroupRef(GROUP, "Sales & Co"),)))
    saved = await table_store.subscriptions.save(replace(sub, status="authorized", azure_tenant_id="t1"))
    with pytest.raises(PreconditionFailed):
        await table_store.subscriptions.save(replace(sub, name="stale"))
    assert (await table_store.subscriptions.get("org/a", "s1")).groups == (GroupRef(GROUP, "Sales & Co"),)
    # The visibility kept with a selection: hidden, visible, or (selected before it was kept) not known.
    kept = (GroupRef(GROUP, "Sales & Co", True), GroupRef("g2", "Open", False), GroupRef("g3", "Older"))
    saved = await table_store.subscriptions.save(replace(saved, groups=kept))
    assert (await table_store.subscriptions.get("org/a", "s1")).groups == kept
    admins = ("ops@contoso.example", "zoë@bücher.example", "x" * 64 + "@" + "d" * 60 + ".example")
    saved = await table_store.subscriptions.save(replace(saved, notify_emails=admins))
    assert (await table_store.subscriptions.get("org/a", "s1")).notify_emails == admins
    # Their confirmation (issue 22): kept with the row, removed addresses too.
    from sync.model import NotifyAddress
    kept_addresses = (NotifyAddress(admins[0], "confirmed", "n1", NOW), NotifyAddress(admins[1], "pending", "n2", NOW),
                      NotifyAddress("gone@contoso.example", "confirmed", "n3", NOW, listed=False))
    saved = await table_store.subscriptions.save(replace(saved, notify_addresses=kept_addresses))
    assert (await table_store.subscriptions.get("org/a", "s1")).notify_addresses == kept_addresses
    await table_store.subscriptions.add(Subscription(org="org-b", id="s2", name="Off", nightly_sync=False, status="authorized",
                                                     created_at=NOW, updated_at=NOW))
    assert [s.id for s in await table_store.subscriptions.nightly_candidates()] == [saved.id]


async def test_a_held_consent_and_who_asked_round_trip_and_subscriptions_are_found_by_tenant(table_store):
    held = PendingConsent(tenant_id="t-held", admin_object_id="oid-1", requested_by="admin@portal", code_nonce="c1",
                          expires_at=NOW, signed_in_at=NOW, admin_name="Zoë Admin", admin_username="zoe@bücher.example")
    sub = await table_store.subscriptions.add(Subscription(org="org-held", id="s1", name="Dir", created_at=NOW,
                                                           updated_at=NOW, consent_requested_by="admin@portal"))
    await table_store.subscriptions.save(replace(sub, status="authorization_pending", pending_consent=held))
    back = await table_store.subscriptions.get("org-held", "s1")
    assert (back.status, back.pending_consent, back.consent_requested_by) == ("authorization_pending", held, "admin@portal")
    assert back.pending_consent.tenant_domain == "bücher.example"
    for org, tid in (("org-x", "t-shared"), ("org-y", "t-shared"), ("org-z", "t-other")):
        await table_store.subscriptions.add(Subscription(org=org, id="s", name="D", status="authorized",
                                                         azure_tenant_id=tid, created_at=NOW, updated_at=NOW))
    assert sorted(s.org for s in await table_store.subscriptions.connected_to("t-shared")) == ["org-x", "org-y"]
    assert await table_store.subscriptions.connected_to("t-held") == []  # held, not connected


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
    assert scope[user(1).id].group_ids == {GROUP} and not scope[user(1).id].other_groups
    assert scope[user(2).id].group_ids == frozenset()  # a group outside the run is not counted as a membership...
    assert scope[user(2).id].other_groups  # ...but the row is known to hold one (the finalizer removes it)
    assert (scope[user(3).id].status, scope[user(3).id].source_type) == ("Inactive", "AdSync")


def gids(n: int, start: int = 0) -> list[str]:
    return [f"7a7a7a7a-0000-4000-8000-{i:012d}" for i in range(start, start + n)]


async def raw_row(table_store, uid: str) -> dict:
    table = await table_store.users._table()
    return dict(await table.get_entity(key("org-a"), key(uid)))


async def test_a_membership_that_ends_leaves_the_row(table_store):
    """Removed, not left `false`: a row that kept every group it was ever in would outgrow Table Storage's 252."""
    await table_store.users.create([user(1, group_ids=frozenset({GROUP, *gids(2)}))])
    assert await table_store.users.remove_memberships("org-a", [user(1).id, user(9).id], [GROUP, gids(1)[0]]) == 1
    row = await raw_row(table_store, user(1).id)
    assert membership_property(gids(2)[1]) not in row and row[membership_property(GROUP)] is True
    assert (await table_store.users.get("org-a", user(1).id)).group_ids == {GROUP, gids(1)[0]}


async def test_remove_memberships_rereads_a_row_changed_under_it(table_store, monkeypatch):
    """A worker of another group merges its membership between our read and our replace: it survives."""
    await table_store.users.create([user(1, group_ids=frozenset({GROUP, *gids(1)}))])
    users, joined = table_store.users, []
    get_many = users.get_many

    async def racing_get_many(org, ids):
        found = await get_many(org, ids)
        if not joined:
            joined.append(await users.add_membership(org, ids, gids(1, 5)[0], [GROUP]))
        return found

    monkeypatch.setattr(users, "get_many", racing_get_many)
    await users.remove_memberships("org-a", [user(1).id], [GROUP, gids(1, 5)[0]])
    assert (await get_many("org-a", [user(1).id]))[user(1).id].group_ids == {GROUP, gids(1, 5)[0]}


async def test_a_row_at_the_property_limit_drops_deselected_groups_to_join_another(table_store):
    """The issue's user in 400 groups: synced with 200 selected, then 200 others. Azure refuses a 253rd property
    (TooManyProperties, enforced by the local Azurite); the row keeps the new selection and only it."""
    old, new = gids(200), gids(200, 200)
    await table_store.users.create([user(1, group_ids=frozenset(old))])
    for gid in new:
        assert await table_store.users.add_membership("org-a", [user(1).id], gid, new) == 1
    row = await raw_row(table_store, user(1).id)
    assert len(row) <= 252
    assert (await table_store.users.get("org-a", user(1).id)).group_ids == set(new)


async def test_a_row_at_the_selection_cap_with_the_longest_values_fits_an_azure_entity(table_store):
    """200 groups (subscriptions.MAX_GROUPS) and every text field at its longest still make a valid Azure entity."""
    from sync.subscriptions import MAX_GROUPS
    longest = "𝒳" * 256  # astral: two UTF-16 units each, as Azure counts
    u = user(1, group_ids=frozenset(gids(MAX_GROUPS)), display_name=longest, given_name=longest[:64],
             surname=longest[:64], username="u" * 100 + "@" + "d" * 150, email="e" * 64 + "@" + "d" * 180,
             status_reason="BlockedInDirectory", enrollment_email="failed", enrollment_email_error=longest * 2,
             enrollment_email_sent_at=NOW, enrollment_email_lease_until=NOW, enrolled_at=NOW,
             last_run_id="r" * 40, last_change="updated")
    [outcome] = await table_store.users.create([u])
    assert isinstance(outcome, Created)
    assert len(await raw_row(table_store, u.id)) <= 252


async def test_200_groups_with_the_longest_names_fit_a_subscription_row(table_store):
    """Graph allows 256-character group names: 200 of them are ~60K UTF-16 units of JSON, more than one String
    property holds (64 KiB); the adapter spreads the text over several properties and reads it back whole."""
    names = [("\U0001d4b3" if n % 2 else "é") * 256 for n in range(200)]
    sub = Subscription(org="org-a", id="sub-long", name="Long", status="authorized", azure_tenant_id=None,
                       groups=tuple(GroupRef(g, name) for g, name in zip(gids(200), names)), created_at=NOW,
                       updated_at=NOW)
    await table_store.subscriptions.add(sub)
    stored = await table_store.subscriptions.get("org-a", "sub-long")
    assert [g.display_name for g in stored.groups] == names
    saved = await table_store.subscriptions.save(replace(stored, groups=stored.groups[:1]))
    row = dict(await (await table_store.subscriptions._table()).get_entity(key("org-a"), key("sub-long")))
    assert "groups_2" not in row  # a replace leaves no part of the longer text behind
    assert (await table_store.subscriptions.get("org-a", "sub-long")).groups == saved.groups


async def test_a_groups_50_longest_errors_fit_its_progress_row(table_store):
    """A username conflict names two display names, two usernames and two ids: 50 such reports (the most a group
    keeps) exceed one String property; they are stored whole and read back whole."""
    from sync.group_sync import MAX_ERRORS_PER_GROUP
    from sync.model import RunError

    errors = tuple(RunError("username_conflict", f"{n} " + "\U0001d4b3" * 700, group_id=GROUP, user_id=user(n).id)
                   for n in range(MAX_ERRORS_PER_GROUP))
    run = Run(org="org-a", subscription_id="sub-1", id="r-long", trigger="manual", status="running",
              group_ids=(GROUP,), started_at=NOW, updated_at=NOW, errors=errors[:20])
    await table_store.runs.add(run, [GroupProgress(group_id=GROUP, updated_at=NOW)])
    progress = await table_store.runs.get_group("org-a", "sub-1", "r-long", GROUP)
    await table_store.runs.save_group("org-a", "sub-1", "r-long", replace(progress, errors=errors))
    assert (await table_store.runs.get_group("org-a", "sub-1", "r-long", GROUP)).errors == errors
    assert (await table_store.runs.get("org-a", "sub-1", "r-long")).errors == errors[:20]
