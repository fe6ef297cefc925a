"""Org ids an attacker may choose, on the real table adapter (Azurite, key rules enforced): issue 22 #6 and #7.

An org whose id is ``watch`` shared the Watches table's partition with the watches (its runs failed at the end, its
subscription could not be deleted, the hourly renewal failed for every org); one of 256 non-ASCII characters made
keys of 2,304 characters (Table Storage refuses keys over 1 KiB). The use cases run on the Table adapters, with the
directory, queue and change feed as fakes.
"""
from dataclasses import replace

import pytest

from sync import subscriptions, watching
from sync.adapters.alert_table import TableAlerts
from sync.adapters.table_text import KEY_MAX_UNITS, key
from sync.adapters.table_watches import TableWatches
from tests.fakes import make_services
from tests.unit.syncdsl import SALES, caller, connect, four_groups, full_sync

URL = "https://dirsync.example/api/directory/notifications?code=function-key"
HOSTILE = ["watch", "|", "%", "é" * 128 + "名" * 128]


@pytest.fixture
async def svc(table_store):
    # Every hostile org connects the same fake tenant: allowed only with ALLOW_SHARED_TENANTS (issue 22 #1).
    services = make_services(NOTIFICATION_URL=URL, ALLOW_SHARED_TENANTS="true")
    for name in ("subscriptions", "runs", "users", "groups"):
        setattr(services, name, getattr(table_store, name))
    services.watches, services.alerts = TableWatches(table_store), TableAlerts(table_store)
    four_groups(services)
    return services


def test_every_key_part_fits_table_storage():
    for org in HOSTILE + ["x" * 5000, "\U0001F642" * 256]:
        part = key(org)
        assert len(part) <= 240 and not set(part) & set("/\\#?") and all(32 <= ord(c) < 127 for c in part)
        assert len(f"{part}|s|{part}|00000|0000") <= KEY_MAX_UNITS  # the longest key: two parts and a tail
    assert key("a" * 300) != key("a" * 301) and key("é" * 256) != key("é" * 255 + "e")


async def test_hostile_org_ids_sync_renew_and_delete(svc):
    subs = []
    for org in HOSTILE:
        sub = await connect(svc, org=org, groups=(SALES,))
        view = await full_sync(svc, sub)
        assert view.run.status == "succeeded", (org, view.run.errors)
        assert {w.resource for w in await svc.watches.of_subscription(org, sub.id)} == {"users", "groups"}
        assert (await svc.watches.get_delta(org, sub.id)).group_ids == (SALES,)
        subs.append(sub)
    svc.clock.advance(hours=svc.settings.watch_lifetime_hours - svc.settings.watch_renew_before_hours + 1)
    summary = await watching.renew_watches(svc)
    assert summary == {"renewed": 2 * len(HOSTILE), "moved": 0, "created": 0, "dropped": 0}
    for sub in subs:
        await subscriptions.delete(svc, caller(sub.org), sub.id)
        assert await svc.subscriptions.get(sub.org, sub.id) is None
        assert await svc.watches.get_delta(sub.org, sub.id) is None
        assert await svc.watches.of_subscription(sub.org, sub.id) == []
    assert await svc.watches.with_delta() == []


async def test_a_delta_row_of_the_old_layout_is_moved_when_read(svc, table_store):
    """Before issue 22 a delta row sat at PartitionKey <org>: still read, moved on the first read, deleted with it."""
    from sync.adapters.table_repository import call

    table = await svc.watches._table()
    now = svc.clock()
    for org in ("org-old", "watch"):
        await call(table.create_entity({"PartitionKey": key(org), "RowKey": "sub-1", "kind": "delta", "org": org,
                                        "subscriptionId": "sub-1", "usersLink": "u", "groupsLink": "g",
                                        "groupIds": '["g1"]', "takenAt": now}))
    assert {(s.org, s.users_link) for s in await svc.watches.with_delta()} == {("org-old", "u"), ("watch", "u")}
    assert await svc.watches.get("sub-1") is None  # org "watch"'s old row is not a watch
    state = await svc.watches.get_delta("org-old", "sub-1")
    assert (state.users_link, state.group_ids) == ("u", ("g1",))
    saved = await svc.watches.save_delta(replace(state, users_link="u2"))
    assert (await svc.watches.get_delta("org-old", "sub-1")).users_link == "u2" and saved.etag
    rows = {(e["PartitionKey"], e["RowKey"]) async for e in table.list_entities()}
    assert ("org-old", "sub-1") not in rows and ("delta|org-old", "sub-1") in rows
    await svc.watches.delete_delta("watch", "sub-1")
    assert [s.org for s in await svc.watches.with_delta()] == ["org-old"]
