"""The change feed adapter (delta, look-ups, subscriptions) against the fake Graph over real HTTP."""
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from aiohttp import web

from local.client import FakeTenantAdmin
from sync.adapters.graph import GraphDirectory
from sync.adapters.graph_changes import GraphChangeFeed
from sync.errors import DeltaExpired, InvalidInput, NotFound
from tests.adapters.test_graph import app, consented, credential_factory, fake, others, tenants  # noqa: F401
from tests.e2e.tenants import TenantBuilder


@pytest.fixture(scope="module")
def tenants():  # noqa: F811
    t = TenantBuilder()
    for n in ("ann", "bob", "cat", "dan"):
        t.user(n)
    t.user("eve", extra={"department": "Retail", "employeeOrgData": {"costCenter": "CC-1"}})
    t.group("inner", "Inner Circle", ["cat"])
    t.group("sales", "Sales Team", ["ann", "bob", "inner"])
    t.group("other", "Other", ["dan"])
    return t, TenantBuilder()


@pytest.fixture
async def feed(fake, app, consented):  # noqa: F811
    directory = GraphDirectory(fake.base_url, credential_factory(fake, app), allowed_hosts=["127.0.0.1"])
    yield GraphChangeFeed(directory, fake.base_url)
    await directory.close()


@pytest.fixture
def admin(fake, tenants):  # noqa: F811
    return FakeTenantAdmin(fake.base_url, tenants[0].tenant["tenantId"])


async def test_latest_links_then_only_what_changed(feed, admin, tenants):
    t, _ = tenants
    tid, ids = t.tenant["tenantId"], t.ids
    links = await feed.delta_links(tid)
    nothing = await feed.read_changes(tid, links, 100)
    assert nothing.users_changed == nothing.users_removed == frozenset() and nothing.groups == {}
    admin.block(ids["bob"])
    admin.remove_member(ids["sales"], ids["ann"])
    admin.add_member(ids["inner"], ids["dan"])
    changes = await feed.read_changes(tid, nothing.links, 100)
    assert ids["bob"] in changes.users_changed
    assert changes.groups[ids["sales"]].users_removed == {ids["ann"]}
    assert changes.groups[ids["inner"]].users_added == {ids["dan"]}
    again = await feed.read_changes(tid, changes.links, 100)
    assert again.users_changed == frozenset() and again.groups == {}
    admin.delete_user(ids["dan"])
    gone = await feed.read_changes(tid, again.links, 100)
    assert gone.users_removed == {ids["dan"]} and ids["dan"] not in gone.users_changed


async def test_too_many_changes_answer_none_and_expired_links_raise(feed, admin, tenants):
    t, _ = tenants
    tid, ids = t.tenant["tenantId"], t.ids
    links = await feed.delta_links(tid)
    for n in ("ann", "bob", "cat"):
        admin.update_user(ids[n], displayName=f"{n} renamed")
    assert await feed.read_changes(tid, links, 2) is None
    admin.expire_delta_tokens()
    with pytest.raises(DeltaExpired):
        await feed.read_changes(tid, links, 100)


async def test_users_by_id_and_their_groups_through_nesting(feed, tenants):
    t, _ = tenants
    tid, ids = t.tenant["tenantId"], t.ids
    found = await feed.get_users(tid, [ids["ann"], ids["cat"], "not-a-guid", "00000000-0000-0000-0000-000000000000"])
    assert set(found) == {ids["ann"], ids["cat"]} and found[ids["cat"]].display_name
    assert await feed.member_of(tid, ids["cat"]) == {ids["inner"], ids["sales"]}
    assert await feed.member_of(tid, ids["inner"], kind="groups") == {ids["sales"]}
    with pytest.raises(NotFound):
        await feed.member_of(tid, "00000000-0000-0000-0000-000000000001")


async def test_delta_links_track_and_look_ups_read_what_the_mapping_selects(feed, admin, tenants):
    t, _ = tenants
    tid, eve = t.tenant["tenantId"], t.ids["eve"]
    plain = await feed.delta_links(tid)
    mapped = await feed.delta_links(tid, select=["department", "employeeOrgData"])
    admin.update_user(eve, department="Sales")
    # Graph reports a change only of a selected property: a link without the mapping's misses it
    assert eve not in (await feed.read_changes(tid, plain, 100)).users_changed
    assert eve in (await feed.read_changes(tid, mapped, 100)).users_changed
    found = await feed.get_users(tid, [eve], select=["department", "employeeOrgData"])
    assert (found[eve].value("department"), found[eve].value("employeeOrgData/costCenter")) == ("Sales", "CC-1")
    assert "department" not in (await feed.get_users(tid, [eve]))[eve].properties


async def test_a_look_up_graph_serves_in_short_pages_finds_every_user(feed, fake, tenants):  # noqa: F811
    """Graph may answer `id in (…)` with fewer users and a nextLink (learn.microsoft.com/graph/paging); a user left
    on the next page would be taken for deleted and deprovisioned by the incremental run."""
    t, _ = tenants
    ids = [t.ids[n] for n in ("ann", "bob", "cat")]  # dan is deleted by an earlier test
    fake.reset_stats()
    found = await feed.get_users(t.tenant["tenantId"], ids)
    assert set(found) == set(ids) and all(u.user_principal_name for u in found.values())
    assert fake.stats()["byRoute"]["GET /v1.0/users"] == 2  # one look-up, two pages


async def test_a_subscription_is_validated_renewed_and_deleted(feed, admin, tenants, unused_tcp_port):
    t, _ = tenants
    tid = t.tenant["tenantId"]
    echoed: list[str] = []

    async def webhook(request: web.Request) -> web.Response:
        token = request.query.get("validationToken")
        if token is not None:
            echoed.append(token)
            return web.Response(text=token, content_type="text/plain")
        return web.Response(status=202)

    server = web.Application()
    server.router.add_post("/hook", webhook)
    runner = web.AppRunner(server)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    try:
        url = f"http://127.0.0.1:{unused_tcp_port}/hook"
        expires = datetime.now(timezone.utc) + timedelta(hours=2)
        for resource in ("users", "groups"):
            watch_id, until = await feed.subscribe(tid, resource, url, "s3cret", expires)
            assert abs((until - expires).total_seconds()) < 1
        assert len(echoed) >= 2  # Graph validated the URL before answering
        listed = admin.notifications()["subscriptions"]
        assert {s["resource"] for s in listed if s["notificationUrl"] == url} == {"users", "groups"}
        later = await feed.renew(tid, watch_id, expires + timedelta(hours=5))
        assert later > expires
        # Moving it (a rotated function key): Graph validates the new URL first; a failed handshake changes nothing.
        with pytest.raises(InvalidInput):
            await feed.renew(tid, watch_id, expires, notification_url="http://127.0.0.1:9/hook?code=new")
        assert {s["notificationUrl"] for s in admin.notifications()["subscriptions"] if s["id"] == watch_id} == {url}
        validated = len(echoed)
        await feed.renew(tid, watch_id, expires, notification_url=url + "?code=new")
        assert len(echoed) == validated + 1
        assert {s["notificationUrl"] for s in admin.notifications()["subscriptions"] if s["id"] == watch_id} == {
            url + "?code=new"}
        await feed.unsubscribe(tid, watch_id)
        await feed.unsubscribe(tid, watch_id)  # gone already is fine
        with pytest.raises(NotFound):
            await feed.renew(tid, watch_id, expires)
    finally:
        await runner.cleanup()
        httpx.post(f"{admin.origin}/_fake/reset", timeout=10)
