"""The Graph adapter (msgraph-sdk) against the fake tenant over real HTTP, with azure-identity's real credential.

Every tenant's token comes from the local identity platform (``fake.authority``, HTTPS with the local CA trusted
in this process), issued only once the tenant has consented; Graph checks each token and its roles.
"""
import asyncio
import time

import httpx
import pytest
from azure.core.credentials import AccessToken
from azure.identity.aio import ClientSecretCredential

from local.fake_graph import FakeGraph
from local.identity import LocalApp, trust_in_this_process
from sync.adapters.graph import GraphDirectory, escape_search, users_only
from sync.errors import AuthorizationLost, CredentialInvalid, InvalidInput, NotFound, Transient
from tests.e2e.tenants import TenantBuilder, big

CLIENT_ID = "00000000-0000-0000-0000-00000000d5c1"
REDIRECT_URI = "http://127.0.0.1:7071/api/directory/consent"
TOKEN_ROUTE = "POST /{tenant}/oauth2/v2.0/token"
APP_ROLES = ("User.Read.All", "GroupMember.Read.All")


def _small() -> TenantBuilder:
    t = TenantBuilder()
    t.user("dee")
    t.group("team", "Team", ["dee"])
    return t


@pytest.fixture(scope="module")
def tenants():
    small = TenantBuilder()
    code = small.extension("costCode")
    small.user("ann", extra={"mobilePhone": "0151 23456789", "usageLocation": "DE", code: "R-17",
                             "employeeOrgData": {"costCenter": "CC-1"}, "businessPhones": ["+1 425 555 0109"],
                             "onPremisesExtensionAttributes": {"extensionAttribute3": "B-7"}})
    for n in ("bob", "cat"):
        small.user(n)
    small.device("printer")
    small.group("inner", "Inner Circle", ["cat", "printer"])
    small.group("sales", "Sales Team", ["ann", "bob", "inner"])
    small.group("quote", 'Quote "q" back\\slash * star', ["ann"])
    small.group("mgr", "Sales Managers", ["bob"])
    return small, big(2500)


@pytest.fixture(scope="module")
def others():
    """Two more consented tenants (for the credential cache) and one that never consented."""
    return {"second": _small(), "third": _small(), "unconsented": _small()}


@pytest.fixture(scope="module")
def app():
    return LocalApp.create(CLIENT_ID, [REDIRECT_URI])


@pytest.fixture(scope="module")
def fake(tenants, others, app):
    server = FakeGraph(tenants=[t.tenant for t in (*tenants, *others.values())], registration=app.registration,
                       managed_identity=app.managed_identity, tls=app.tls).start()
    trust_in_this_process(app.tls.ca_file)  # aiohttp (azure-identity's transport) was imported with the fake
    yield server
    server.stop()


@pytest.fixture
def consented(fake, tenants, others):
    """Every test starts from a clean authority: no faults, no stats, the default lifetime, these tenants consented."""
    httpx.post(f"{fake.origin}/_fake/reset", timeout=10).raise_for_status()
    ids = [t.tenant["tenantId"] for t in (*tenants, others["second"], others["third"])]
    for tid in ids:
        fake.identity.consent(tid)
    return ids


def credential_factory(fake, app, secret=None):
    def for_tenant(tid):
        return ClientSecretCredential(tid, app.registration.client_id, secret or app.client_secret,
                                      authority=fake.authority)
    return for_tenant


@pytest.fixture
async def directory(fake, app, consented):
    d = GraphDirectory(fake.base_url, credential_factory(fake, app), allowed_hosts=["127.0.0.1"])
    yield d
    await d.close()


def graph_requests(fake) -> int:
    """Requests to Graph itself (the authority's token requests are counted by the same server)."""
    return sum(n for route, n in fake.stats()["byRoute"].items() if route.split(" ", 1)[1].startswith("/v1.0"))


def token_requests(fake) -> int:
    return fake.stats()["byRoute"].get(TOKEN_ROUTE, 0)


def test_escape_search():
    assert escape_search('a"b\\c') == 'a\\"b\\\\c'


def test_members_listed_untyped_are_told_apart_by_their_type_never_guessed():
    user, group = {"@odata.type": "#microsoft.graph.user", "id": "u"}, {"@odata.type": "#microsoft.graph.group", "id": "g"}
    assert users_only([user, group, {"@odata.type": "#microsoft.graph.device", "id": "d"}]) == [user]
    with pytest.raises(InvalidInput):
        users_only([user, {"id": "x", "userPrincipalName": "x@contoso.example"}])


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


async def test_look_ups_read_every_page_graph_serves(directory, fake, tenants):
    """Graph may answer a look-up of 15 ids with fewer groups and a nextLink (learn.microsoft.com/graph/paging):
    a group left on the next page would be refused as unknown."""
    small, _ = tenants
    wanted = {small.ids[n] for n in ("inner", "sales", "quote", "mgr")}
    found = await directory.get_groups(small.tenant["tenantId"], sorted(wanted))
    assert set(found) == wanted
    assert graph_requests(fake) == 2  # one `id in (…)` filter, served in two pages


async def test_search_reads_on_while_pages_are_short(directory, fake, others):
    """A short page with a nextLink is not the whole answer: both queries read on until they have what is shown."""
    t = others["second"]
    tid = t.tenant["tenantId"]
    fake.set_search_lag(0)
    created = []
    async with httpx.AsyncClient(timeout=10, headers={"Authorization": f"Bearer {fake.token_for(tid)}"}) as http:
        for name in ("Zeta One", "Zeta Two", "Zeta Three"):
            created.append((await http.post(f"{fake.base_url}/groups", json={"displayName": name})).json()["id"])
        try:
            found = await directory.search_groups(tid, "Zeta", 2)
            assert [g.display_name for g in found] == ["Zeta One", "Zeta Three"]
            assert graph_requests(fake) == 3 + 4  # the three creations, then two pages of each query
        finally:
            for gid in created:
                await http.delete(f"{fake.base_url}/groups/{gid}")


async def test_transitive_users_only(directory, tenants):
    small, _ = tenants
    pages = [p async for p in directory.group_user_pages(small.tenant["tenantId"], small.ids["sales"])]
    assert [sorted(u.id for u in p.users) for p in pages] == [sorted(small.ids[n] for n in ("ann", "bob", "cat"))]
    ann = next(u for u in pages[0].users if u.id == small.ids["ann"])
    assert ann.user_principal_name.startswith("ann@") and ann.account_enabled is True and ann.user_type == "Member"


async def test_members_carry_the_properties_a_mapping_selects_and_only_those(directory, tenants):
    small, _ = tenants
    code = small.tenant["extensionProperties"][0]
    tid, sales = small.tenant["tenantId"], small.ids["sales"]
    plain = [u async for p in directory.group_user_pages(tid, sales) for u in p.users]
    ann = next(u for u in plain if u.id == small.ids["ann"])
    assert not {"mobilePhone", code, "employeeOrgData/costCenter", "businessPhones"} & set(ann.properties)
    wanted = ["mobilePhone", "usageLocation", "employeeOrgData", "onPremisesExtensionAttributes", code]
    mapped = [u async for p in directory.group_user_pages(tid, sales, select=wanted) for u in p.users]
    ann = next(u for u in mapped if u.id == small.ids["ann"])
    assert {k: ann.value(k) for k in ("mobilePhone", "usageLocation", "employeeOrgData/costCenter",
                                       "onPremisesExtensionAttributes/extensionAttribute3", code)} == \
        {"mobilePhone": "0151 23456789", "usageLocation": "DE", "employeeOrgData/costCenter": "CC-1",
         "onPremisesExtensionAttributes/extensionAttribute3": "B-7", code: "R-17"}
    assert "businessPhones" not in ann.properties  # not selected
    bob = next(u for u in mapped if u.id == small.ids["bob"])
    assert bob.value(code) is None and bob.user_principal_name.startswith("bob@")


async def test_a_2500_member_nested_group_takes_three_requests(directory, fake, tenants):
    _, large = tenants
    pages = [p async for p in directory.group_user_pages(large.tenant["tenantId"], large.ids["outer"])]
    sizes = [len(p.users) for p in pages]  # Graph may serve short pages: only the nextLinks tell
    assert len(sizes) == 3 and sum(sizes) == 2500 and sizes[0] < 999
    assert len({u.id for p in pages for u in p.users}) == 2500
    assert graph_requests(fake) == 3
    assert token_requests(fake) == 1  # one token for the tenant, reused by every page
    resumed = [p async for p in directory.group_user_pages(large.tenant["tenantId"], large.ids["outer"], pages[0].next_link)]
    assert [len(p.users) for p in resumed] == sizes[1:]
    assert token_requests(fake) == 1


async def test_a_group_jobs_next_link_is_followed_only_under_that_groups_members_in_graph(directory, fake, tenants):
    """Issue 22 #4: the link comes from a queue message and is sent with the tenant's token."""
    small, large = tenants
    tid, outer = large.tenant["tenantId"], large.ids["outer"]
    first = await directory.group_user_pages(tid, outer).__anext__()
    link = first.next_link
    origin, rest = link.split("/v1.0/", 1)
    query = rest.split("?", 1)[1]
    before = graph_requests(fake)
    hostile = [
        link.replace(origin, origin.rsplit(":", 1)[0] + ":1"),  # another port of Graph's host
        link.replace(origin, "http://evil.example"), link.replace("http://", "https://"),  # another host, scheme
        link.replace(origin, origin.replace("//", "//user@")),
        f"{origin}/v1.0/groups/{small.ids['sales']}/transitiveMembers?{query}",  # another group's members
        f"{origin}/v1.0/users?{query}", f"{origin}/v1.0/groups/{outer}/transitiveMembers/../../../users?{query}",
        f"{origin}/v1.0/groups/{outer}/transitiveMembers/%2e%2e/members?{query}", f"{origin}/beta/groups/{outer}/transitiveMembers?{query}",
        "not a link",
    ]
    for bad in hostile:
        with pytest.raises(InvalidInput) as raised:
            [p async for p in directory.group_user_pages(tid, outer, bad)]
        assert raised.value.code == "invalid_next_link", bad
    assert graph_requests(fake) == before  # none was sent
    assert len([p async for p in directory.group_user_pages(tid, outer, link)]) == 2


async def test_throttling_is_retried_by_the_adapter(directory, fake, tenants):
    small, _ = tenants
    fake.add_fault(path="/transitiveMembers", status=429, retry_after=1, times=1)
    pages = [p async for p in directory.group_user_pages(small.tenant["tenantId"], small.ids["sales"])]
    assert len(pages[0].users) == 3
    assert graph_requests(fake) == 2


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
    directory.forget(tid)  # the token cached before the revocation is still valid at Graph until it expires
    with pytest.raises(AuthorizationLost):
        await directory.search_groups(tid, "sales", 10)


async def test_granted_permissions_are_the_roles_of_the_token_graph_is_sent(directory, fake, others):
    t = others["third"]
    tid = t.tenant["tenantId"]
    fake.identity.consent(tid, (*APP_ROLES, "Member.Read.Hidden"))
    assert await directory.granted_permissions(tid) == {*APP_ROLES, "Member.Read.Hidden"}
    assert len([p async for p in directory.group_user_pages(tid, t.ids["team"])][0].users) == 1
    assert token_requests(fake) == 1  # the SDK sent the very token whose roles were read
    fake.identity.consent(tid, APP_ROLES)  # consented again without it: tokens issued from now on lack it
    assert "Member.Read.Hidden" in await directory.granted_permissions(tid)  # the cached token still holds it
    directory.forget(tid)
    assert await directory.granted_permissions(tid) == set(APP_ROLES)
    assert token_requests(fake) == 2 and graph_requests(fake) == 1  # reading roles asks Graph nothing


async def test_granted_permissions_map_token_errors_like_every_call(directory, fake, others):
    with pytest.raises(AuthorizationLost) as err:
        await directory.granted_permissions(others["unconsented"].tenant["tenantId"])
    assert err.value.may_be_propagating is True and "700016" in err.value.message


def test_token_roles_of_unreadable_tokens_are_none():
    from sync.adapters.graph import token_roles

    assert token_roles("not-a-jwt") == frozenset()
    assert token_roles("a.bm90IGpzb24.c") == frozenset()  # "not json"
    assert token_roles("a.eyJyb2xlcyI6ICJVc2VyLlJlYWQuQWxsIn0.c") == frozenset()  # roles not a list


async def test_a_refused_client_secret_is_credential_invalid(fake, app, consented, tenants):
    small, _ = tenants
    d = GraphDirectory(fake.base_url, credential_factory(fake, app, secret="not-the-secret"), allowed_hosts=["127.0.0.1"])
    try:
        with pytest.raises(CredentialInvalid) as err:
            await d.search_groups(small.tenant["tenantId"], "sales", 10)
        assert "7000215" in err.value.message
        assert graph_requests(fake) == 0
    finally:
        await d.close()


@pytest.mark.parametrize(("code", "message", "raised", "propagating"), [
    # The text names another code than error_codes does: only error_codes may decide.
    (7000222, "AADSTS7000229: The client application is missing service principal in the tenant.",
     CredentialInvalid, None),
    (7000229, "AADSTS7000215: Invalid client secret provided.", AuthorizationLost, False),
    (65001, "The user or administrator has not consented to use the application.", AuthorizationLost, True),
    (700016, "Application was not found in the directory.", AuthorizationLost, True),
], ids=["7000222-credential_invalid", "7000229-consent_lost", "65001-propagating", "700016-propagating"])
async def test_a_token_error_is_mapped_from_its_error_codes_not_its_text(directory, fake, tenants, code, message,
                                                                        raised, propagating):
    small, _ = tenants
    tid = small.tenant["tenantId"]
    fault = {"path": "/oauth2/v2.0/token", "status": 400, "code": code, "message": message}
    httpx.post(f"{fake.origin}/_fake/faults", json=fault, timeout=10).raise_for_status()
    with pytest.raises(raised) as err:
        await directory.search_groups(tid, "sales", 10)
    if propagating is not None:
        assert err.value.may_be_propagating is propagating
    assert f"AADSTS{code}" in err.value.message
    assert (token_requests(fake), graph_requests(fake)) == (1, 0)  # one token request, never retried; no Graph call
    # The fault was one answer: the next call asks for a token again and gets one.
    assert [g.id for g in await directory.search_groups(tid, "Sales Team", 10)] == [small.ids["sales"]]
    assert token_requests(fake) == 2


async def test_a_revoked_tenant_is_authorization_lost_once_its_token_expired(directory, fake, tenants):
    small, _ = tenants
    tid = small.tenant["tenantId"]
    fake.set_authority(tokenLifetimeSeconds=2)
    assert [g.id for g in await directory.search_groups(tid, "Sales Team", 10)] == [small.ids["sales"]]
    fake.set_consent(revoked=True, revokedTenant=tid)
    await asyncio.sleep(2.5)
    with pytest.raises(AuthorizationLost) as err:
        await directory.search_groups(tid, "sales", 10)
    assert err.value.may_be_propagating is False
    assert "7000229" in err.value.message
    assert token_requests(fake) == 2


async def test_a_tenant_that_never_consented_may_still_be_propagating(directory, fake, others):
    tid = others["unconsented"].tenant["tenantId"]
    with pytest.raises(AuthorizationLost) as err:
        await directory.search_groups(tid, "team", 10)
    assert err.value.may_be_propagating is True
    assert "700016" in err.value.message
    assert graph_requests(fake) == 0


async def test_a_token_without_roles_is_refused_and_the_credential_dropped(directory, fake, others):
    t = others["second"]
    tid = t.tenant["tenantId"]
    fake.identity.next_grant = (APP_ROLES, 30.0)  # consented, but the roles are not in tokens for 30 s
    fake.identity.consent(tid, *fake.identity.next_grant)
    with pytest.raises(AuthorizationLost) as err:
        await directory.search_groups(tid, "team", 10)
    assert err.value.may_be_propagating is True and "403" in err.value.message
    assert token_requests(fake) == 1
    with pytest.raises(AuthorizationLost):  # the token without roles was not kept: a new one is asked for
        await directory.search_groups(tid, "team", 10)
    assert token_requests(fake) == 2
    fake.identity.consent(tid, APP_ROLES)  # the roles have propagated
    assert [g.id for g in await directory.search_groups(tid, "team", 10)] == [t.ids["team"]]
    assert token_requests(fake) == 3


async def test_an_expired_cached_token_is_replaced(directory, fake, tenants):
    small, _ = tenants
    tid = small.tenant["tenantId"]
    fake.set_authority(tokenLifetimeSeconds=2)
    assert len([p async for p in directory.group_user_pages(tid, small.ids["sales"])][0].users) == 3
    await asyncio.sleep(2.5)
    assert len([p async for p in directory.group_user_pages(tid, small.ids["sales"])][0].users) == 3
    assert token_requests(fake) == 2


class _StaleFirst:
    """A credential whose cache holds a token Graph has already seen expire (clock skew): it answers that token for
    as long as it is used, as a cache would (the adapter must drop the credential to get another)."""

    def __init__(self, stale: str, real) -> None:
        self._stale, self._real = stale, real

    async def get_token(self, *scopes, **kwargs):
        return AccessToken(self._stale, 4102444800)  # "valid until 2100" as far as the client knows

    async def close(self):
        await self._real.close()


async def test_a_token_graph_refuses_with_401_is_dropped_and_the_call_retried(fake, app, consented, tenants):
    small, _ = tenants
    tid = small.tenant["tenantId"]
    real = credential_factory(fake, app)
    stale = fake.token_for(tid, roles=APP_ROLES, lifetime_s=-60)  # signed by the authority, expired a minute ago
    made = []

    def for_tenant(t):
        made.append(t)
        return _StaleFirst(stale, real(t)) if len(made) == 1 else real(t)

    d = GraphDirectory(fake.base_url, for_tenant, allowed_hosts=["127.0.0.1"])
    try:
        pages = [p async for p in d.group_user_pages(tid, small.ids["sales"])]
        assert len(pages[0].users) == 3
        assert made == [tid, tid]  # the refused token's credential was dropped and a fresh one made
        assert graph_requests(fake) == 2 and token_requests(fake) == 1
    finally:
        await d.close()


async def test_beyond_max_tenants_the_least_recently_used_credential_is_evicted(fake, app, consented, tenants, others):
    small, _ = tenants
    first, second, third = small, others["second"], others["third"]
    d = GraphDirectory(fake.base_url, credential_factory(fake, app), allowed_hosts=["127.0.0.1"], max_tenants=2)
    try:
        for t, name in ((first, "sales"), (second, "team"), (third, "team")):
            assert await d.get_groups(t.tenant["tenantId"], [t.ids[name]])
        assert token_requests(fake) == 3
        await d.get_groups(third.tenant["tenantId"], [third.ids["team"]])  # cached: no new token
        assert token_requests(fake) == 3
        await d.get_groups(first.tenant["tenantId"], [first.ids["sales"]])  # evicted: a new token
        assert token_requests(fake) == 4
    finally:
        await d.close()


async def test_a_long_retry_after_is_answered_at_once_not_slept_in_the_sdk(directory, fake, tenants):
    small, _ = tenants
    tid = small.tenant["tenantId"]
    fake.add_fault(path="/groups", status=503, retry_after=120, times=5)
    started = time.monotonic()
    with pytest.raises(Transient) as err:
        await directory.search_groups(tid, "Sales", 10)  # a person waiting: no 120-second sleep
    # $search and startswith, neither retried (the first 503 cancels the other, which may not have been sent yet)
    assert err.value.retry_after == 120 and graph_requests(fake) in (1, 2) and time.monotonic() - started < 2
    fake.clear_faults()
    fake.add_fault(path="/transitiveMembers", status=429, retry_after=30, times=5)
    with pytest.raises(Transient) as err:  # a worker: raised for its message to be rescheduled
        [p async for p in directory.group_user_pages(tid, small.ids["sales"])]
    assert err.value.retry_after == 30 and graph_requests(fake) == 3


async def test_one_tenants_look_ups_never_queue_another_tenants_search(fake, app, consented, tenants, others):
    """Fair share: tenant A's many interactive look-ups hold at most half the slots; B's search is served meanwhile."""
    small, _ = tenants
    a, b = small.tenant["tenantId"], others["second"].tenant["tenantId"]
    directory = GraphDirectory(fake.base_url, credential_factory(fake, app), allowed_hosts=["127.0.0.1"], concurrency=2)
    try:
        await directory.search_groups(a, "Sales", 5)  # tokens first, so only Graph's latency is in play
        await directory.search_groups(b, "Team", 5)
        fake.set_latency(150)
        done: list[str] = []

        async def lookups():
            # 90 ids: six requests of 15 (Graph's `in` limit), one at a time within A's half of the pool
            await directory.get_groups(a, [f"00000000-0000-0000-0000-{n:012d}" for n in range(90)])
            done.append("A's 90 look-ups")

        async def search():
            await asyncio.sleep(0.05)  # A's look-ups are queued first
            await directory.search_groups(b, "Team", 5)
            done.append("B's search")

        await asyncio.gather(lookups(), search())
        assert done == ["B's search", "A's 90 look-ups"]
    finally:
        fake.set_latency(0)
        await directory.close()


async def test_one_tenants_syncs_hold_at_most_half_the_workers_pool(fake, app, consented, tenants, others):
    """Fair share among workers too: tenant A's many member listings take at most half of the workers' pool (waiting
    for A's own share, not for a pool slot), so tenant B's sync is served beside them, not after them."""
    small, _ = tenants
    a, b = small.tenant["tenantId"], others["second"]
    directory = GraphDirectory(fake.base_url, credential_factory(fake, app), allowed_hosts=["127.0.0.1"], concurrency=2)
    try:
        for tid, gid in ((a, small.ids["sales"]), (b.tenant["tenantId"], b.ids["team"])):  # tokens first
            [p async for p in directory.group_user_pages(tid, gid)]
        fake.set_latency(150)
        done: list[str] = []

        async def a_listing(n: int):
            assert len([p async for p in directory.group_user_pages(a, small.ids["sales"])][0].users) == 3
            done.append(f"A{n}")

        async def b_sync():
            await asyncio.sleep(0.05)  # A's four listings asked first
            assert len([p async for p in directory.group_user_pages(b.tenant["tenantId"], b.ids["team"])][0].users) == 1
            done.append("B")

        await asyncio.gather(*(a_listing(n) for n in range(4)), b_sync())
        # One of A's at a time (150 ms each); B's starts at 50 ms in the other slot. With one pool for everybody, A's
        # first two would hold both slots and B would queue behind all four of A's: done last.
        assert done.index("B") <= 1, done
    finally:
        fake.set_latency(0)
        await directory.close()


async def test_a_slow_token_request_holds_no_graph_slot(fake, app, consented, tenants, others):
    """A tenant whose token request is slow (the authority throttled, azure-identity retrying) waits outside the
    pool: with one worker slot, another tenant's listing is served meanwhile, not after it."""
    small, _ = tenants
    a, b = small.tenant["tenantId"], others["second"]
    directory = GraphDirectory(fake.base_url, credential_factory(fake, app), allowed_hosts=["127.0.0.1"], concurrency=1)
    try:
        [p async for p in directory.group_user_pages(b.tenant["tenantId"], b.ids["team"])]  # B's token is cached
        fake.add_fault(path=f"/{a}/oauth2/v2.0/token", delay_ms=2000, times=1)
        done: list[str] = []

        async def a_listing():
            [p async for p in directory.group_user_pages(a, small.ids["sales"])]
            done.append("A")

        async def b_listing():
            await asyncio.sleep(0.2)  # A has asked for its token by now
            started = time.monotonic()
            [p async for p in directory.group_user_pages(b.tenant["tenantId"], b.ids["team"])]
            done.append(f"B in {time.monotonic() - started:.1f} s")

        await asyncio.gather(a_listing(), b_listing())
        assert done[0].startswith("B") and float(done[0].split()[2]) < 1.0, done
    finally:
        fake.clear_faults()
        await directory.close()


async def test_a_group_created_a_moment_ago_is_found_although_search_lags(directory, fake, others):
    """$search's index is eventually consistent (the fake lags it 5 s); startswith() is not, and is asked too."""
    t = others["third"]
    tid = t.tenant["tenantId"]
    token = fake.token_for(tid)
    async with httpx.AsyncClient(timeout=10, headers={"Authorization": f"Bearer {token}"}) as http:
        created = await http.post(f"{fake.base_url}/groups", json={"displayName": "Fresh O'Brien Team"})
        assert created.status_code == 201
        searched = await http.get(f"{fake.base_url}/groups", headers={"ConsistencyLevel": "eventual"},
                                  params={"$search": '"displayName:Fresh"'})
        assert searched.json()["value"] == []  # not in the search index yet
    found = await directory.search_groups(tid, "Fresh O'Brien", 10)
    assert [g.display_name for g in found] == ["Fresh O'Brien Team"]
    # By an inner word it is found once the index has caught up (startswith only sees the name's beginning).
    assert [g.display_name for g in await directory.search_groups(tid, "Team", 10)] == ["Team"]


async def test_look_ups_never_name_an_id_that_cannot_be_an_object(directory, fake, tenants):
    """Graph answers a filter naming a non-GUID id with 400; such ids are unknown groups, not a refused selection."""
    small, _ = tenants
    fake.add_fault(path="not-a-guid", status=400, times=5, method="GET")  # Graph: "Invalid object identifier"
    found = await directory.get_groups(small.tenant["tenantId"], ["not-a-guid", small.ids["sales"]])
    assert list(found) == [small.ids["sales"]]
