"""Change lists and user histories in Table Storage, against Azurite (which refuses what Azure refuses)."""
from dataclasses import replace
from datetime import timedelta

import pytest

from sync.adapters import table_changes
from sync.adapters.table_text import key
from sync.decisions import HISTORY_MAX_ENTRIES
from sync.errors import InvalidInput, PreconditionFailed
from sync.model import GroupProgress, HistoryEntry, Run, SegmentChanges, UserChange
from sync.subscriptions import MAX_GROUPS
from tests.adapters.test_tables import NOW, gids, raw_row, user

RUN = "8204230000000-0a0b0c0d"
G1, G2 = "2b2e3b1c-1111-4a4a-9b9b-000000000001", "2b2e3b1c-1111-4a4a-9b9b-000000000002"


def change(i: int, kind: str = "created", group: str | None = G1, name: str | None = None) -> UserChange:
    fields = {"username": [None, f"user{i}@contoso.example"], "displayName": [None, name or f"User {i}"]}
    return UserChange(user_id=f"00000000-0000-0000-0000-{i:012d}", username=f"user{i}@contoso.example",
                      display_name=name or f"User {i}", change=kind, reason="joined_selected_group", fields=fields,
                      group_id=group, email_queued=i % 2 == 0)


async def new_run(table_store, groups=(G1, G2), run_id=RUN, started=NOW) -> Run:
    run = Run(org="org-a", subscription_id="sub-1", id=run_id, trigger="manual", status="running", group_ids=groups,
              started_at=started, dry_run=True)
    return await table_store.runs.add(run, [GroupProgress(group_id=g) for g in groups])


async def all_changes(table_store, run_id=RUN, change_kind=None, size=500) -> list[UserChange]:
    out, token = [], None
    while True:
        page, token = await table_store.runs.changes_page("org-a", "sub-1", run_id, change_kind, size, token)
        out += page
        if token is None:
            return out


async def test_a_segments_changes_land_with_its_progress_in_one_request(table_store):
    run = await new_run(table_store)
    assert (await table_store.runs.get("org-a", "sub-1", RUN)).dry_run is True
    progress = await table_store.runs.get_group("org-a", "sub-1", RUN, G1)
    pages = {0: tuple(change(i) for i in range(999)), 1: tuple(change(i) for i in range(999, 1500))}
    table_store.counters.reset()
    saved = await table_store.runs.save_group("org-a", "sub-1", RUN, replace(progress, state="done"),
                                              SegmentChanges(G1, 0, pages))
    assert table_store.counters.requests == 1 and table_store.counters.entities == 3  # progress + a row a page
    assert [c.user_id for c in await all_changes(table_store)] == [change(i).user_id for i in range(1500)]
    # The progress row is still ETag-guarded: a stale writer changes nothing, its changes included.
    with pytest.raises(PreconditionFailed):
        await table_store.runs.save_group("org-a", "sub-1", RUN, replace(progress, state="failed"),
                                          SegmentChanges(G1, 0, {0: (change(1, "updated"),)}))
    assert (await all_changes(table_store))[1].change == "created"
    assert (await table_store.runs.view("org-a", "sub-1", RUN)).groups[0].etag == saved.etag
    assert (await table_store.runs.view("org-a", "sub-1", run.id)).run.id == RUN  # the list is not read with it


async def test_the_change_list_pages_filters_and_refuses_foreign_tokens(table_store):
    await new_run(table_store)
    for g, start in ((G1, 0), (G2, 100)):
        progress = await table_store.runs.get_group("org-a", "sub-1", RUN, g)
        listed = tuple(change(i, "updated" if i % 3 == 0 else "created", g) for i in range(start, start + 100))
        await table_store.runs.save_group("org-a", "sub-1", RUN, progress, SegmentChanges(g, 0, {0: listed}))
    await table_store.runs.save_final_changes("org-a", "sub-1", RUN, [change(i, "deactivated", None) for i in range(500, 510)])
    everything = await all_changes(table_store, size=7)
    assert len(everything) == 210 and len({c.user_id for c in everything}) == 210
    assert everything[-1].change == "deactivated" and everything[-1].group_id is None
    page, token = await table_store.runs.changes_page("org-a", "sub-1", RUN, None, 100, None)  # a row exactly
    page2, _ = await table_store.runs.changes_page("org-a", "sub-1", RUN, None, 100, token)
    assert page == everything[:100] and page2 == everything[100:200]
    updated = await all_changes(table_store, change_kind="updated", size=5)
    assert len(updated) == 67 and {c.change for c in updated} == {"updated"}
    assert everything[0] == change(0, "updated", G1)  # fields and the invitation flag round-trip
    for bad in ("garbage", "eyJyb3ciOiAieCIsICJhdCI6IDB9", table_changes.encode_cursor(f"{RUN}|g|x", 0),
                table_changes.encode_cursor(f"{RUN}|x|", -1)):
        with pytest.raises(InvalidInput) as err:
            await table_store.runs.changes_page("org-a", "sub-1", RUN, None, 5, bad)
        assert err.value.code == "invalid_continuation_token"
    other = "8204230000001-0a0b0c0d"  # a token of another run of the same subscription is refused too
    _, token = await table_store.runs.changes_page("org-a", "sub-1", RUN, None, 5, None)
    with pytest.raises(InvalidInput):
        await table_store.runs.changes_page("org-a", "sub-1", other, None, 5, token)
    assert await table_store.runs.changes_page("org-b", "sub-1", RUN, None, 5, None) == ([], None)


async def test_a_page_of_the_longest_names_is_split_to_fit_azures_limits(table_store):
    await new_run(table_store)
    longest = "\U0001d4b3" * 256
    listed = tuple(change(i, name=longest) for i in range(999))
    progress = await table_store.runs.get_group("org-a", "sub-1", RUN, G1)
    await table_store.runs.save_group("org-a", "sub-1", RUN, progress, SegmentChanges(G1, 0, {0: listed}))
    rows = [row async for row in table_store.runs.change_rows("org-a", "sub-1", RUN)]
    assert len(rows) >= 2 and sum(len(r) for _, r in rows) == 999
    assert [c.display_name for c in await all_changes(table_store)] == [longest] * 999
    row_id, first = rows[0]
    await table_store.runs.replace_change_row("org-a", "sub-1", RUN, row_id, first[1:])
    await table_store.runs.replace_change_row("org-a", "sub-1", RUN, rows[1][0], [])
    assert len(await all_changes(table_store)) == 999 - 1 - len(rows[1][1])


async def test_expired_runs_lose_their_change_lists_and_seen_rows_only(table_store):
    from sync.runs import new_run_id
    old_id, new_id = new_run_id(NOW - timedelta(days=100)), new_run_id(NOW)
    for run_id, started in ((old_id, NOW - timedelta(days=100)), (new_id, NOW)):
        await new_run(table_store, (G1,), run_id, started)
        progress = await table_store.runs.get_group("org-a", "sub-1", run_id, G1)
        await table_store.runs.save_group("org-a", "sub-1", run_id, progress, SegmentChanges(G1, 0, {0: (change(1),)}))
        await table_store.runs.save_seen("org-a", "sub-1", run_id, G1, 0, ["a", "b"])
    assert await table_store.runs.expire_changes("org-a", "sub-1", NOW - timedelta(days=90)) == 2
    assert await all_changes(table_store, old_id) == [] and len(await all_changes(table_store, new_id)) == 1
    assert await table_store.runs.load_seen("org-a", "sub-1", old_id, G1, 1) == set()
    assert (await table_store.runs.view("org-a", "sub-1", old_id)).groups  # the run and its progress stay
    assert await table_store.runs.expire_changes("org-a", "sub-1", NOW - timedelta(days=90)) == 0


def entry(n: int, *, days_ago: float = 0, long: str | None = None) -> HistoryEntry:
    fields = {"displayName": [long or "Old", long or "New"]} if long else {"displayName": ["Old", "New"]}
    return HistoryEntry(at=NOW - timedelta(days=days_ago), run_id=f"run-{n}", trigger="nightly", change="updated",
                        reason="attributes_changed", fields=fields, group_id=G1)


async def test_a_users_history_round_trips_and_only_expired_rows_come_back(table_store):
    old = user(1, history=(entry(2, days_ago=1), entry(1, days_ago=100)))
    fresh = user(2, history=(entry(3, days_ago=2),))
    none = user(3)
    await table_store.users.create([old, fresh, none, user(4, org="org-b", history=(entry(4, days_ago=95),))])
    stored = await table_store.users.get("org-a", old.id)
    assert stored.history == old.history
    assert (await raw_row(table_store, old.id))["historyOldest"] == NOW - timedelta(days=100)
    assert "history" not in await raw_row(table_store, none.id)
    expired = [u async for u in table_store.users.expired_history(NOW - timedelta(days=90))]
    assert sorted((u.org, u.id) for u in expired) == [("org-a", old.id), ("org-b", user(4).id)]
    assert all(u.etag for u in expired)  # rewritten conditionally
    scope = [s async for s in table_store.users.subscription_scope("org-a", "sub-1", [G1])]
    assert {s.username for s in scope} >= {old.username} and all(s.display_name for s in scope)
    claims = dict([c async for c in table_store.users.username_claims("org-a")])
    assert claims == {u.username: u.id for u in (old, fresh, none)}


async def test_the_fullest_history_on_a_row_at_the_selection_cap_fits_an_azure_entity(table_store):
    """50 entries whose every field changed between two of the longest values, on a user in 200 groups: the row
    keeps the newest entries that fit HISTORY_BYTES (Azurite, like a request body limit, counts the escaped JSON)."""
    longest = "\U0001d4b3" * 256
    fields = {name: [longest, longest[::-1]] for name in ("username", "email", "displayName", "givenName", "surname",
                                                           "status", "statusReason")}
    history = tuple(replace(entry(n), fields=fields) for n in range(HISTORY_MAX_ENTRIES))
    u = user(1, group_ids=frozenset(gids(MAX_GROUPS)), display_name=longest, history=history)
    await table_store.users.create([u])
    row = await raw_row(table_store, u.id)
    assert len(row) <= 252 and "history_2" in row
    kept = (await table_store.users.get("org-a", u.id)).history
    assert 1 < len(kept) < len(history) and kept == history[: len(kept)]
    assert row["historyOldest"] == kept[-1].at
    typical = user(2, history=tuple(entry(n) for n in range(HISTORY_MAX_ENTRIES)))
    await table_store.users.create([typical])
    assert (await table_store.users.get("org-a", typical.id)).history == typical.history
    shorter = replace(await table_store.users.get("org-a", u.id), history=history[:1])
    await table_store.users.update([(shorter, shorter.username)])
    assert "history_2" not in await raw_row(table_store, u.id)  # a replace leaves no part of the longer text


async def test_raw_rows_keep_keys_safe(table_store):
    await new_run(table_store, ("grp/with#odd?chars",))
    progress = await table_store.runs.get_group("org-a", "sub-1", RUN, "grp/with#odd?chars")
    await table_store.runs.save_group("org-a", "sub-1", RUN, progress,
                                      SegmentChanges("grp/with#odd?chars", 3, {2: (change(1),)}))
    [(row_id, listed)] = [r async for r in table_store.runs.change_rows("org-a", "sub-1", RUN)]
    assert row_id == f"{RUN}|x|{key('grp/with#odd?chars')}|00003|0002|00" and len(listed) == 1


async def test_a_watch_keeps_the_hash_of_its_notification_url_and_rows_without_one_are_elsewhere(table_store):
    from azure.data.tables import UpdateMode

    from sync.adapters.table_watches import TableWatches
    from sync.model import Watch

    watches = TableWatches(table_store)
    moved = Watch("w-1", "org-a", "sub-1", "tid", "users", "state-hash", NOW + timedelta(hours=72), url_hash="new")
    old = replace(moved, id="w-2", resource="groups", url_hash="old")
    await watches.save(moved)
    await watches.save(old)
    table = await watches._table()  # a row written before watches recorded their URL has no urlHash at all
    row = {k: v for k, v in (await table.get_entity("watch", "w-2")).items() if k != "urlHash"}
    await table.upsert_entity(row, mode=UpdateMode.REPLACE)
    assert (await watches.get("w-1")).url_hash == "new" and (await watches.get("w-2")).url_hash is None
    assert [w.id for w in await watches.elsewhere("new")] == ["w-2"]
    assert sorted(w.id for w in await watches.elsewhere("other")) == ["w-1", "w-2"]
