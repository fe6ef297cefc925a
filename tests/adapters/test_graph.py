"""The Graph adapter (msgraph-sdk) against the fake tenant over real HTTP."""
import pytest

from local.fake_graph import FakeGraph
from sync.adapters.graph import GraphDirectory, StaticTokenCredential, escape_search
from sync.errors import AuthorizationLost, NotFound, Transient
from tests.e2e.tenants import TenantBuilder, big


@pytest.fixture(scope="module")
def tenants():
    small = TenantBuilder()
    for n in ("ann", "bob", "cat"):
        small.user(n)
    small.device("printer")
    small.group("inner", "Inner Circle", ["cat", "printer"])
    small.group("sales", "Sales Team", ["ann", "bob", "inner"])
    small.group("quote", 'Quote "q" back\\slash * star', ["ann"])
    small.group("mgr", "Sales Managers", ["bob"])
    return small, big(2500)


@pytest.fixture(scope="module")
def fake(tenants):
    server = FakeGraph(tenants=[t.tenant for t in tenants]).start()
    yield server
    server.stop()


@pytest.fixture
async def directory(fake):
    d = GraphDirectory(fake.base_url, lambda tid: StaticTokenCredential(f"local:{tid}"), allowed_hosts=["127.0.0.1"])
    fake.clear_faults()
    fake.reset_stats()
    yield d
    await d.close()


def test_escape_search():
    assert escape_search('a"b\\c') == 'a\\"b\\\\c'


async def test_search_and_get_groups(directory, tenants):
    small, _ = tenants
    tid = small.tenant["tenantId"]
    found = await directory.search_groups(tid, "sales", 50)
    assert [g.display_name for g in found] == ["Sales Managers", "Sales Team"]
    quoted = await directory.search_groups(tid, 'Quote "q" back\\slash', 50)
    assert [g.id for g in quoted] == [small.ids["quote"]]
    assert await directory.search_groups(tid, '" OR displayName:"', 50) == []
    groups = await directory.get_groups(tid, [small.ids["sales"], "00000000-0000-0000-0000-000000000000"])
    assert list(groups) == [small.ids["sales"]] and groups[small.ids["sales"]].display_name == "Sales Team"


async def test_transitive_users_only(directory, tenants):
    small, _ = tenants
    pages = [p async for p in directory.group_user_pages(small.tenant["tenantId"], small.ids["sales"])]
    assert [sorted(u.id for u in p.users) for p in pages] == [sorted(small.ids[n] for n in ("ann", "bob", "cat"))]
    ann = next(u for u in pages[0].users if u.id == small.ids["ann"])
    assert ann.user_principal_name.startswith("ann@") and ann.account_enabled is True and ann.user_type == "Member"


async def test_a_2500_member_nested_group_takes_three_requests(directory, fake, tenants):
    _, large = tenants
    pages = [p async for p in directory.group_user_pages(large.tenant["tenantId"], large.ids["outer"])]
    assert [len(p.users) for p in pages] == [999, 999, 502]
    assert len({u.id for p in pages for u in p.users}) == 2500
    assert fake.stats()["requests"] == 3
    resumed = [p async for p in directory.group_user_pages(large.tenant["tenantId"], large.ids["outer"], pages[0].next_link)]
    assert [len(p.users) for p in resumed] == [999, 502]


async def test_throttling_is_retried_by_the_sdk(directory, fake, tenants):
    small, _ = tenants
    fake.add_fault(path="/transitiveMembers", status=429, retry_after=1, times=1)
    pages = [p async for p in directory.group_user_pages(small.tenant["tenantId"], small.ids["sales"])]
    assert len(pages[0].users) == 3
    assert fake.stats()["requests"] == 2


async def test_errors_are_mapped(directory, fake, tenants):
    small, _ = tenants
    tid = small.tenant["tenantId"]
    with pytest.raises(NotFound):
        [p async for p in directory.group_user_pages(tid, "00000000-0000-0000-0000-000000000000")]
    fake.add_fault(path="/transitiveMembers", status=503, retry_after=1, times=10)
    with pytest.raises(Transient) as err:
        [p async for p in directory.group_user_pages(tid, small.ids["sales"])]
    assert "503" in err.value.message
    fake.clear_faults()
    fake.set_consent(revoked=True, revokedTenant=tid)
    try:
        with pytest.raises(AuthorizationLost):
            await directory.search_groups(tid, "sales", 10)
    finally:
        fake.set_consent(revoked=False, revokedTenant=tid)
