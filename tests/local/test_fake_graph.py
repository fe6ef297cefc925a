"""The fake Entra tenant, driven the way the app drives Graph: msgraph-sdk over real HTTP (raw httpx where simpler)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from azure.core.credentials import AccessToken
from kiota_abstractions.base_request_configuration import RequestConfiguration
from kiota_authentication_azure.azure_identity_authentication_provider import AzureIdentityAuthenticationProvider
from msgraph import GraphRequestAdapter, GraphServiceClient
from msgraph.generated.groups.groups_request_builder import GroupsRequestBuilder
from msgraph.generated.groups.item.members.members_request_builder import MembersRequestBuilder
from msgraph.generated.groups.item.transitive_members.graph_user.graph_user_request_builder import (
    GraphUserRequestBuilder,
)
from msgraph.generated.models.o_data_errors.o_data_error import ODataError
from msgraph.generated.models.reference_create import ReferenceCreate
from msgraph.generated.models.user import User
from msgraph.generated.users.item.user_item_request_builder import UserItemRequestBuilder
from msgraph.generated.users.users_request_builder import UsersRequestBuilder

from local.fake_graph import DEMO_TENANT, FakeGraph, generate_tenant, load_tenant, transitive_user_members
from local.identity.platform import CLOUD_APPLICATION_ADMINISTRATOR, AppRegistration, ClientSecret
from local.identity.tls import LocalCA

REPO = Path(__file__).resolve().parents[2]
DEMO = load_tenant(DEMO_TENANT)
DEMO_TID = DEMO["tenantId"]
TRANSITIVE_USERS = "GET /v1.0/groups/{id}/transitiveMembers/microsoft.graph.user"
CLIENT_ID = "11111111-2222-3333-4444-555555555555"
SECRET = "local-test-secret"
CALLBACK = "http://localhost:7071/api/consent/callback?portal=1"
PORTAL_CALLBACK = "https://portal.example/cb"


# --- fixtures and helpers --------------------------------------------------------------------


class FakeTokenCredential:
    """A test double for the app's credential: an async get_token giving a valid Graph token of ``tenant_id``
    (the fake's admin-tool token, read and write all; the real credentials are tested in test_authority.py)."""

    def __init__(self, fake: FakeGraph, tenant_id: str):
        self.fake, self.tenant_id = fake, tenant_id

    async def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        return AccessToken(self.fake.token_for(self.tenant_id), int(time.time()) + 3600)


class Graph:
    """A GraphServiceClient bound to the fake for one of its tenants, plus its adapter (closed by the fixture)."""

    def __init__(self, fake: FakeGraph, tenant_id: str):
        auth = AzureIdentityAuthenticationProvider(
            FakeTokenCredential(fake, tenant_id), scopes=["https://graph.microsoft.com/.default"],
            allowed_hosts=["127.0.0.1"])
        self.adapter = GraphRequestAdapter(auth)
        self.adapter.base_url = fake.base_url
        self.client = GraphServiceClient(request_adapter=self.adapter)

    async def close(self) -> None:
        await self.adapter._http_client.aclose()


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    """One local CA for the module's fakes (making one per test costs two RSA keys)."""
    return LocalCA.create(tmp_path_factory.mktemp("authority-ca"))


def registration() -> AppRegistration:
    return AppRegistration(client_id=CLIENT_ID, home_tenant="0perat0r-0000-0000-0000-000000000000",
                           redirect_uris=[CALLBACK, PORTAL_CALLBACK], secrets=[ClientSecret(SECRET)])


@pytest.fixture
def fake(tls):
    with FakeGraph(tenants=[DEMO_TENANT], registration=registration(), tls=tls) as server:
        yield server


@pytest.fixture
async def graph(fake):
    g = Graph(fake, DEMO_TID)
    yield g.client
    await g.close()


@pytest.fixture
async def http(fake):
    async with httpx.AsyncClient(base_url=fake.origin, headers={"Authorization": f"Bearer {fake.token_for(DEMO_TID)}"},
                                 timeout=10) as client:
        yield client


@pytest.fixture
async def authority(fake):
    """A browser/HTTP client of the local identity platform (HTTPS, trusting the local CA; no redirects followed)."""
    async with httpx.AsyncClient(base_url=fake.authority, verify=str(fake.tls.ca_file), timeout=10) as client:
        yield client


def consent_params(**extra: str) -> dict[str, str]:
    return {"client_id": CLIENT_ID, "redirect_uri": CALLBACK, **extra}


async def app_token(authority: httpx.AsyncClient, tenant: str) -> httpx.Response:
    """The app's client-credentials token request for Graph in ``tenant`` (what ClientSecretCredential sends)."""
    return await authority.post(f"/{tenant}/oauth2/v2.0/token", data={
        "grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": SECRET,
        "scope": "https://graph.microsoft.com/.default"})


def group_id(name: str, tenant: dict = DEMO) -> str:
    return next(g["id"] for g in tenant["groups"] if g["displayName"] == name)


def user_id(name: str, tenant: dict = DEMO) -> str:
    return next(u["id"] for u in tenant["users"] if u["displayName"] == name)


def eventual(query_parameters: object = None) -> RequestConfiguration:
    config = RequestConfiguration(query_parameters=query_parameters)
    config.headers.add("ConsistencyLevel", "eventual")
    return config


ADVANCED = {"$count": "true"}  # with the ConsistencyLevel header: the advanced query parameters
EVENTUAL = {"ConsistencyLevel": "eventual"}


def cast_users(**params: object) -> RequestConfiguration:
    """A cast to users (`/microsoft.graph.user`) on a transitive list, with the advanced query parameters it needs."""
    return eventual(GraphUserRequestBuilder.GraphUserRequestBuilderGetQueryParameters(count=True, **params))


async def user_ids_of(builder) -> list[str]:
    """The users among a member list read untyped (no cast: strongly consistent), by their @odata.type."""
    return [m.id for m in (await builder.get()).value if m.odata_type == "#microsoft.graph.user"]


def nested_tenant() -> dict:
    """2,500 distinct users under "Big": 1,700 direct, 1,000 via "Child" (200 in both), plus a device."""
    users = [{"id": f"u{i:05d}", "displayName": f"User {i:05d}", "userPrincipalName": f"user{i}@big.example",
              "mail": f"user{i}@big.example", "givenName": "User", "surname": f"{i:05d}", "accountEnabled": True,
              "onPremisesSamAccountName": None, "employeeId": None, "userType": "Member"} for i in range(2500)]
    big = [u["id"] for u in users[:1700]]
    big.insert(500, "child")
    big.insert(1200, "printer")
    return {
        "tenantId": "big-tenant", "domain": "big.example", "users": users,
        "groups": [
            {"id": "big", "displayName": "Big", "description": None, "mail": None, "members": big},
            {"id": "child", "displayName": "Child", "description": None, "mail": None,
             "members": [u["id"] for u in users[1500:]]},
        ],
        "devices": [{"id": "printer", "displayName": "PRINTER-01"}],
    }


# --- search, filter, select, top ------------------------------------------------------------


async def test_search_groups_with_consistency_level(graph):
    query = GroupsRequestBuilder.GroupsRequestBuilderGetQueryParameters(
        search='"displayName:sales"', select=["id", "displayName"], count=True)
    result = await graph.groups.get(eventual(query))
    assert sorted(g.display_name for g in result.value) == ["Sales Managers", "Sales Team"]
    assert result.odata_count == 2

    query = GroupsRequestBuilder.GroupsRequestBuilderGetQueryParameters(search='"displayName:team"')
    result = await graph.groups.get(eventual(query))
    assert sorted(g.display_name for g in result.value) == ["Platform Team", "Sales Team"]


async def test_search_without_consistency_level_is_a_400(graph):
    query = GroupsRequestBuilder.GroupsRequestBuilderGetQueryParameters(search='"displayName:sales"')
    with pytest.raises(ODataError) as caught:
        await graph.groups.get(RequestConfiguration(query_parameters=query))
    assert caught.value.response_status_code == 400
    assert caught.value.error.code == "Request_UnsupportedQuery"
    assert "ConsistencyLevel" in caught.value.error.message


@pytest.mark.parametrize("text, expected", [
    ('"displayName:Tom & \\"Jerry\\""', ['Tom & "Jerry"']),
    ('"displayName:\\"jerry\\""', ['Tom & "Jerry"']),
    ('"displayName:zoë ångs"', ["Zoë Ångström"]),
    ('"displayName:فاطمة"', ["فاطمة الزهراء"]),
    ('"displayName:kierkegaardholm"', ["Søren Kierkegaard-Holm"]),
    ('"displayName:holm"', ["Søren Kierkegaard-Holm"]),
    ('"displayName:o\'brien"', ["Renée O'Brien"]),
    ('"mail:patti"', ["Patti Fernandez"]),
    ('"displayName:lee" OR "displayName:grady"', ["Grady Archie", "Lee Gu"]),
    ('"displayName:a\\\\b"', []),
])
async def test_user_search_tokenizes_and_unescapes(graph, text, expected):
    query = UsersRequestBuilder.UsersRequestBuilderGetQueryParameters(search=text, top=999)
    result = await graph.users.get(eventual(query))
    assert sorted(u.display_name for u in result.value) == expected


@pytest.mark.parametrize("value", [
    '"displayName:sales',  # unterminated
    "displayName:sales",  # not quoted
    '"displayName:a\\x"',  # only \" and \\ may be escaped
    '"displayName:a\\"',  # escaped closing quote leaves the clause open
    '"sales"',  # no property
    '"displayName:"',  # no text
    '"displayName:a" "displayName:b"',  # missing operator
    '"displayName:a" and "displayName:b"',  # operators are upper case
    '("displayName:a"',
    '"nosuchproperty:a"',
    "",
])
async def test_malformed_search_is_a_400_never_a_500(http, value):
    response = await http.get("/v1.0/groups", params={"$search": value}, headers={"ConsistencyLevel": "eventual"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "Request_UnsupportedQuery"
    assert set(error["innerError"]) >= {"request-id", "date"}


async def test_startswith_filter_with_escaped_quote(graph):
    query = GroupsRequestBuilder.GroupsRequestBuilderGetQueryParameters(filter="startswith(displayName,'fin')")
    result = await graph.groups.get(RequestConfiguration(query_parameters=query))
    assert sorted(g.display_name for g in result.value) == ["Finance", "Finance Approvers"]

    query = UsersRequestBuilder.UsersRequestBuilderGetQueryParameters(filter="startswith(displayName,'Renée O''B')")
    result = await graph.users.get(RequestConfiguration(query_parameters=query))
    assert [u.display_name for u in result.value] == ["Renée O'Brien"]


async def test_filter_operators_that_need_advanced_query(http):
    response = await http.get("/v1.0/users", params={"$filter": "accountEnabled ne true"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "Request_UnsupportedQuery"
    response = await http.get("/v1.0/users", params={"$filter": "accountEnabled ne true", "$count": "true"},
                              headers={"ConsistencyLevel": "eventual"})
    assert sorted(u["displayName"] for u in response.json()["value"]) == ["Bianca Pagnotta", "Emily Braun"]
    response = await http.get("/v1.0/groups", params={"$filter": "startswith(displayName,'x'"})
    assert response.status_code == 400


async def test_orderby_display_name(http):
    response = await http.get("/v1.0/groups", params={"$orderby": "displayName desc", "$select": "displayName"})
    names = [g["displayName"] for g in response.json()["value"]]
    assert names == sorted(names, key=str.casefold, reverse=True) and len(names) == 8


async def test_select_is_honoured(graph, http):
    response = await http.get(f"/v1.0/groups/{group_id('Finance')}/members/microsoft.graph.user",
                              params={"$select": "id,mail,accountEnabled"})
    body = response.json()
    assert body["@odata.context"].endswith("/v1.0/$metadata#users(id,mail,accountEnabled)")
    assert all(set(item) == {"@odata.type", "id", "mail", "accountEnabled"} for item in body["value"])
    assert {item["accountEnabled"] for item in body["value"]} == {True, False}

    default = (await http.get(f"/v1.0/users/{user_id('Lee Gu')}")).json()
    assert "accountEnabled" not in default and default["userPrincipalName"] == "lee.gu@contoso.example"

    query = UserItemRequestBuilder.UserItemRequestBuilderGetQueryParameters(
        select=["id", "accountEnabled", "onPremisesSamAccountName", "employeeId", "userType"])
    user = await graph.users.by_user_id(user_id("Lee Gu")).get(RequestConfiguration(query_parameters=query))
    assert (user.account_enabled, user.on_premises_sam_account_name, user.employee_id) == (True, "lgu", None)
    assert user.display_name is None

    response = await http.get("/v1.0/users", params={"$select": "id,nosuch"})
    assert response.status_code == 400


EXTENSION = "extension_5bfc8fdacfc943a9a6de214ea9d15fdb_costCode"


async def test_mapping_properties_come_back_only_when_selected(http):
    """employeeOrgData, onPremisesExtensionAttributes and directory extensions: only on $select (README)."""
    adele, lee = user_id("Adele Vance"), user_id("Lee Gu")
    default = (await http.get(f"/v1.0/users/{adele}")).json()
    assert default["businessPhones"] == ["+1 425 555 0109"] and default["mobilePhone"] == "0151 23456789"
    assert not {"employeeOrgData", "onPremisesExtensionAttributes", EXTENSION} & set(default)

    chosen = "id,employeeOrgData,onPremisesExtensionAttributes,usageLocation," + EXTENSION
    members = (await http.get(f"/v1.0/groups/{group_id('Sales Team')}/transitiveMembers",
                              params={"$select": chosen})).json()["value"]
    by_id = {m["id"]: m for m in members}
    assert by_id[adele]["employeeOrgData"] == {"costCenter": "CC-4410", "division": "Sales"}
    attributes = by_id[adele]["onPremisesExtensionAttributes"]
    assert len(attributes) == 15 and attributes["extensionAttribute1"] == "Badge 7731"
    assert attributes["extensionAttribute2"] is None
    assert by_id[adele][EXTENSION] == "R-17" and by_id[adele]["usageLocation"] == "DE"
    others = [m for m in members if m["id"] != adele and m["@odata.type"] == "#microsoft.graph.user"]
    assert others and all(EXTENSION not in m for m in others)  # not set: left out, not null

    for bad in ("onPremisesExtensionAttributes/extensionAttribute1",
                "extension_00000000000000000000000000000000_nosuch"):
        response = await http.get(f"/v1.0/users/{lee}", params={"$select": f"id,{bad}"})
        assert response.status_code == 400, bad
    patched = await http.patch(f"/v1.0/users/{lee}", json={EXTENSION: "L-1", "employeeOrgData": {"division": "IT"}})
    assert patched.status_code == 204
    lee_now = (await http.get(f"/v1.0/users/{lee}", params={"$select": f"id,employeeOrgData,{EXTENSION}"})).json()
    assert lee_now[EXTENSION] == "L-1" and lee_now["employeeOrgData"] == {"division": "IT"}
    assert (await http.patch(f"/v1.0/users/{lee}", json={"employeeOrgData": {"floor": "3"}})).status_code == 400


@pytest.mark.parametrize("top", ["1000", "0", "abc"])
async def test_top_out_of_range_is_a_400(http, top):
    response = await http.get(f"/v1.0/groups/{group_id('Engineering')}/transitiveMembers", params={"$top": top})
    assert response.status_code == 400
    assert "between 1 and 999" in response.json()["error"]["message"]


async def test_top_1000_through_the_sdk(graph):
    query = GraphUserRequestBuilder.GraphUserRequestBuilderGetQueryParameters(top=1000)
    with pytest.raises(ODataError) as caught:
        await graph.groups.by_group_id(group_id("Engineering")).transitive_members.graph_user.get(
            RequestConfiguration(query_parameters=query))
    assert caught.value.response_status_code == 400


async def test_count_segment_and_silently_ignored_count(graph, http):
    builder = graph.groups.by_group_id(group_id("Engineering")).transitive_members.graph_user.count
    assert await builder.get(eventual()) == len(transitive_user_members(DEMO, group_id("Engineering")))
    with pytest.raises(ODataError) as caught:
        await builder.get()
    assert caught.value.response_status_code == 400
    # Like Graph, $count=true without ConsistencyLevel is ignored rather than rejected.
    response = await http.get("/v1.0/groups", params={"$count": "true"})
    assert response.status_code == 200 and "@odata.count" not in response.json()


# --- members, transitive members, paging -----------------------------------------------------


@pytest.mark.slow  # msgraph-sdk's typed parsing costs about 3 ms per user; the fake answers each page in ~25 ms
async def test_nested_group_of_2500_pages_in_exactly_three_requests():
    tenant = nested_tenant()
    with FakeGraph(tenants=[tenant]) as fake:
        graph = Graph(fake, "big-tenant")
        builder = graph.client.groups.by_group_id("big").transitive_members.graph_user
        page = await builder.get(cast_users(top=999, select=["id", "displayName", "mail", "accountEnabled"]))
        ids, sizes = [], []
        while True:
            sizes.append(len(page.value))
            ids.extend(u.id for u in page.value)
            if not page.odata_next_link:
                break
            assert page.odata_next_link.startswith(f"{fake.base_url}/groups/big/transitiveMembers/graph.user?")
            assert "$skiptoken=" in page.odata_next_link and "$top=999" in page.odata_next_link
            page = await builder.with_url(page.odata_next_link).get(eventual())  # the link keeps $count, not the header
        await graph.close()
        # Graph may serve fewer than $top with a nextLink (strict default: a few short pages); nothing is lost.
        assert len(sizes) == 3 and sum(sizes) == 2500 and max(sizes) <= 999 and sizes[0] < 999
        assert ids == transitive_user_members(tenant, "big") and len(set(ids)) == 2500
        assert all(u.mail for u in page.value)
        assert fake.stats() == {"requests": 3, "byRoute": {TRANSITIVE_USERS: 3}}


async def test_members_include_devices_and_groups_unless_cast(graph):
    engineering = graph.groups.by_group_id(group_id("Engineering"))
    direct = (await engineering.members.get()).value
    types = {m.odata_type for m in direct}
    assert types == {"#microsoft.graph.user", "#microsoft.graph.group", "#microsoft.graph.device"}
    assert next(m for m in direct if m.odata_type == "#microsoft.graph.group").display_name == "Platform Team"

    users_only = (await engineering.members.graph_user.get()).value
    assert {type(m).__name__ for m in users_only} == {"User"}
    assert len(users_only) == len(direct) - 2

    transitive = (await engineering.transitive_members.get()).value
    nested_groups = sorted(m.display_name for m in transitive if m.odata_type == "#microsoft.graph.group")
    assert nested_groups == ["Platform On-Call", "Platform Team"]
    transitive_users = [m.id for m in transitive if m.odata_type == "#microsoft.graph.user"]
    assert transitive_users == transitive_user_members(DEMO, group_id("Engineering"))
    assert len(transitive_users) == len(set(transitive_users))

    query = MembersRequestBuilder.MembersRequestBuilderGetQueryParameters(select=["id", "displayName"], top=2)
    first = await engineering.members.get(RequestConfiguration(query_parameters=query))
    assert len(first.value) == 1 and first.odata_next_link  # a short page: Graph may serve fewer than $top


async def test_pages_may_be_short_even_when_everything_would_fit(fake, http):
    """Graph may answer any page with fewer items than asked and a nextLink (learn.microsoft.com/graph/paging): every
    page that is not the last, and a look-up by id even when its 15 ids would fit one page, with $top or without."""
    ids = [u["id"] for u in DEMO["users"][:15]]
    id_filter = f"id in ({','.join(repr(i) for i in ids)})"

    async def pages(params: dict) -> list[list[str]]:
        out, body = [], (await http.get("/v1.0/users", params=params)).json()
        while True:
            out.append([u["id"] for u in body["value"]])
            if "@odata.nextLink" not in body:
                return out
            body = (await http.get(body["@odata.nextLink"])).json()

    for params in ({"$filter": id_filter, "$top": "15"}, {"$filter": id_filter}):
        served = await pages(params)
        assert len(served) == 2 and len(served[0]) < 15, served  # one look-up, two pages
        assert sorted(i for page in served for i in page) == sorted(ids)
    assert [len(p) for p in await pages({"$top": "2", "$select": "id"})][:3] == [1, 1, 1]  # never more than asked
    fake.set_paging(shortPages=False)
    assert [len(p) for p in await pages({"$filter": id_filter, "$top": "15"})] == [15]
    assert [len(p) for p in await pages({"$top": "20"})] == [20, 20]


async def test_a_cast_on_a_transitive_list_needs_the_advanced_query_parameters(http):
    """"To filter the results on the OData type ... you must use the advanced query parameters" (the header and
    $count=true; group-list-transitivemembers, user-list-transitivememberof, user-list-memberof): a plain cast on
    transitiveMembers, memberOf or transitiveMemberOf is a 400; a cast of direct members is not (group-list-members)."""
    eng, lee = group_id("Engineering"), user_id("Lee Gu")
    casts = [f"/v1.0/groups/{eng}/transitiveMembers/microsoft.graph.user", f"/v1.0/groups/{eng}/transitiveMembers/graph.user",
             f"/v1.0/users/{lee}/transitiveMemberOf/microsoft.graph.group", f"/v1.0/users/{lee}/memberOf/microsoft.graph.group",
             f"/v1.0/groups/{group_id('Platform Team')}/transitiveMemberOf/microsoft.graph.group"]
    for path in casts:
        for params, headers in (({}, {}), (ADVANCED, {}), ({}, EVENTUAL)):  # each half alone is not enough
            refused = await http.get(path, params=params, headers=headers)
            assert refused.status_code == 400, (path, params, headers)
            error = refused.json()["error"]
            assert (error["code"], error["message"]) == (
                "Request_UnsupportedQuery", "The specified filter to the reference property query is currently not supported.")
        answered = await http.get(path, params=ADVANCED, headers=EVENTUAL)
        assert answered.status_code == 200 and answered.json()["value"], path
    untyped = (await http.get(f"/v1.0/groups/{eng}/transitiveMembers")).json()["value"]
    assert {m["@odata.type"] for m in untyped} == {"#microsoft.graph.user", "#microsoft.graph.group", "#microsoft.graph.device"}
    cast = (await http.get(casts[0], params=ADVANCED, headers=EVENTUAL)).json()["value"]
    assert [m["id"] for m in cast] == [m["id"] for m in untyped if m["@odata.type"] == "#microsoft.graph.user"]
    groups_of_lee = (await http.get(f"/v1.0/users/{lee}/transitiveMemberOf")).json()["value"]
    assert groups_of_lee and {m["@odata.type"] for m in groups_of_lee} == {"#microsoft.graph.group"}
    assert (await http.get(f"/v1.0/groups/{eng}/members/microsoft.graph.user")).status_code == 200


async def test_transitive_members_survive_a_membership_cycle():
    tenant = {
        "tenantId": "cycle", "domain": "cycle.example",
        "users": [{"id": f"u{i}", "displayName": f"U{i}", "userPrincipalName": f"u{i}@cycle.example", "mail": None,
                   "givenName": None, "surname": None, "accountEnabled": True, "onPremisesSamAccountName": None,
                   "employeeId": None, "userType": "Member"} for i in range(3)],
        "groups": [
            {"id": "a", "displayName": "A", "description": None, "mail": None, "members": ["u0", "b"]},
            {"id": "b", "displayName": "B", "description": None, "mail": None, "members": ["u1", "a", "u0", "c"]},
            {"id": "c", "displayName": "C", "description": None, "mail": None, "members": ["u2", "b"]},
        ],
        "devices": [],
    }
    assert transitive_user_members(tenant, "a") == ["u0", "u1", "u2"]
    with FakeGraph(tenants=[tenant]) as fake:
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {fake.token_for('cycle')}"}) as http:
            body = (await http.get(f"{fake.base_url}/groups/a/transitiveMembers")).json()
    assert [m["id"] for m in body["value"]] == ["u0", "b", "u1", "c", "u2"]


async def test_unknown_group_is_a_404_in_graph_shape(graph):
    with pytest.raises(ODataError) as caught:
        await graph.groups.by_group_id("00000000-0000-0000-0000-000000000000").members.get()
    assert caught.value.response_status_code == 404
    assert caught.value.error.code == "Request_ResourceNotFound"


# --- faults, latency, consent -----------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 503])
async def test_throttling_is_retried_by_the_sdk(fake, graph, status):
    fake.add_fault(path="/transitiveMembers", status=status, retry_after=1, times=1)
    started = time.monotonic()
    result = await graph.groups.by_group_id(group_id("Finance")).transitive_members.graph_user.get(cast_users())
    assert len(result.value) == 6
    assert time.monotonic() - started >= 1.0  # the SDK honoured Retry-After
    assert fake.stats()["byRoute"] == {TRANSITIVE_USERS: 2}


async def test_fault_control_endpoint_counts_down(fake, http):
    response = await http.post("/_fake/faults", json={"path": "/v1.0/groups", "status": 500, "times": 2,
                                                      "method": "GET"})
    assert response.status_code == 200
    codes = [(await http.get("/v1.0/groups")).status_code for _ in range(3)]
    assert codes == [500, 500, 200]
    await http.post("/_fake/faults", json={"path": "/users", "status": 504})
    assert (await http.delete("/_fake/faults")).json() == {"faults": []}
    assert (await http.get("/v1.0/users")).status_code == 200
    stats = (await http.get("/_fake/stats")).json()
    assert stats == {"requests": 4, "byRoute": {"GET /v1.0/groups": 3, "GET /v1.0/users": 1}}
    assert (await http.post("/_fake/stats/reset")).json()["requests"] == 0


async def test_latency_is_non_blocking(fake, http):
    fake.set_latency(400)
    started = time.monotonic()
    responses = await asyncio.gather(*[http.get(f"/v1.0/groups/{g['id']}/members") for g in DEMO["groups"][:5]])
    elapsed = time.monotonic() - started
    assert all(r.status_code == 200 for r in responses)
    assert 0.4 <= elapsed < 1.6  # five sequential requests would take at least 2 s


async def test_delay_only_fault_slows_without_failing(fake, http):
    fake.add_fault(path="/members", delay_ms=300, times=1)
    started = time.monotonic()
    assert (await http.get(f"/v1.0/groups/{group_id('Finance')}/members")).status_code == 200
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    assert (await http.get(f"/v1.0/groups/{group_id('Finance')}/members")).status_code == 200
    assert time.monotonic() - started < 0.3


async def test_revoked_consent_refuses_new_tokens_until_consent_is_granted_again(fake, authority):
    fake.identity.consent(DEMO_TID)
    before = (await app_token(authority, DEMO_TID)).json()["access_token"]
    fake.set_consent(revoked=True, revokedTenant=DEMO_TID)
    refused = await app_token(authority, DEMO_TID)
    assert refused.status_code == 401 and refused.json()["error_codes"] == [7000229]
    # No CAE for app-only tokens of a multi-tenant app: a token issued before the revocation works until it expires.
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {before}"}) as http:
        assert (await http.get(f"{fake.base_url}/groups")).status_code == 200

    response = await authority.get(f"/{DEMO_TID}/v2.0/adminconsent", params=consent_params())
    assert response.status_code == 302
    assert fake.set_consent()["revoked"] == []
    after = await app_token(authority, DEMO_TID)
    assert after.status_code == 200
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {after.json()['access_token']}"}) as http:
        assert len((await http.get(f"{fake.base_url}/groups")).json()["value"]) == 8


async def test_admin_consent_redirects_back_with_the_tenant(fake, authority):
    other = fake.add_tenant(generate_tenant(users=5, groups=1, seed=11, domain="fabrikam.example"))
    params = consent_params(state="s t&ate=1", scope="https://graph.microsoft.com/.default")
    response = await authority.get("/organizations/v2.0/adminconsent", params=params)
    assert response.status_code == 302
    location = urlsplit(response.headers["Location"])
    assert (location.netloc, location.path) == ("localhost:7071", "/api/consent/callback")
    answer = parse_qs(location.query)
    assert answer == {"portal": ["1"], "admin_consent": ["True"], "tenant": [DEMO_TID], "state": ["s t&ate=1"],
                      "scope": ["https://graph.microsoft.com/.default"]}

    fake.set_consent(tenant=other)  # the browser is now signed in as the other tenant's Global Administrator
    response = await authority.get("/common/v2.0/adminconsent", params=params)
    assert parse_qs(urlsplit(response.headers["Location"]).query)["tenant"] == [other]
    response = await authority.get("/fabrikam.example/v2.0/adminconsent", params=params)  # a verified domain
    assert parse_qs(urlsplit(response.headers["Location"]).query)["tenant"] == [other]
    response = await authority.get(f"/{DEMO_TID}/v2.0/adminconsent", params=params)  # not that account's tenant
    assert response.status_code == 400 and "AADSTS50020" in response.text
    grants = (await authority.get("/_fake/consent")).json()["grants"]
    assert [g["tenant"] for g in grants] == [DEMO_TID, other]
    assert all(g["roles"] == ["User.Read.All", "GroupMember.Read.All", "Group.Read.All"] for g in grants)


async def test_admin_consent_denied(fake, authority):
    assert (await authority.post("/_fake/consent", json={"deny": True})).json()["deny"] is True
    response = await authority.get("/organizations/v2.0/adminconsent",
                                   params=consent_params(redirect_uri=PORTAL_CALLBACK, state="42"))
    assert response.status_code == 302
    assert response.headers["Location"].startswith(PORTAL_CALLBACK + "?")
    answer = parse_qs(urlsplit(response.headers["Location"]).query)
    assert answer["error"] == ["access_denied"] and answer["state"] == ["42"]
    assert "admin_consent" not in answer and "tenant" not in answer and answer["error_description"]
    assert fake.set_consent()["grants"] == []


async def test_admin_consent_needs_a_role_that_may_grant_application_permissions(fake, authority):
    fake.set_consent(tenant=DEMO_TID, wids=[CLOUD_APPLICATION_ADMINISTRATOR])
    response = await authority.get("/organizations/v2.0/adminconsent", params=consent_params())
    assert response.status_code == 400 and "AADSTS90094" in response.text
    assert fake.set_consent()["grants"] == []


@pytest.mark.parametrize("params, code", [
    ({"redirect_uri": CALLBACK}, "AADSTS900144"),
    ({"client_id": CLIENT_ID}, "AADSTS900144"),
    ({"client_id": CLIENT_ID, "redirect_uri": "not a url"}, "AADSTS50011"),
    ({"client_id": CLIENT_ID, "redirect_uri": "https://attacker.example/cb"}, "AADSTS50011"),
    ({"client_id": "app", "redirect_uri": CALLBACK}, "AADSTS700016"),
])
async def test_admin_consent_without_a_registered_app_and_redirect_is_a_400_page(authority, params, code):
    response = await authority.get("/organizations/v2.0/adminconsent", params=params)
    assert response.status_code == 400 and code in response.text
    assert "Location" not in response.headers


async def test_admin_consent_page_is_not_served_by_graph(http):
    response = await http.get("/organizations/v2.0/adminconsent", params=consent_params())
    assert response.status_code == 404


# --- writes -----------------------------------------------------------------------------------


async def test_admin_writes_are_visible_to_later_reads(fake, graph):
    finance = graph.groups.by_group_id(group_id("Finance"))
    patti, lee = user_id("Patti Fernandez"), user_id("Lee Gu")
    select = UserItemRequestBuilder.UserItemRequestBuilderGetQueryParameters(select=["id", "accountEnabled", "mail"])

    await graph.users.by_user_id(patti).patch(User(account_enabled=False, mail="patti.f@contoso.example"))
    user = await graph.users.by_user_id(patti).get(RequestConfiguration(query_parameters=select))
    assert (user.account_enabled, user.mail) == (False, "patti.f@contoso.example")

    await finance.members.by_directory_object_id(patti).ref.delete()
    assert patti not in await user_ids_of(finance.transitive_members)

    ref = ReferenceCreate(odata_id=f"https://graph.microsoft.com/v1.0/directoryObjects/{lee}")
    await finance.members.ref.post(ref)
    assert lee in [m.id for m in (await finance.members.graph_user.get()).value]
    with pytest.raises(ODataError) as caught:
        await finance.members.ref.post(ref)
    assert caught.value.response_status_code == 400

    await graph.users.by_user_id(lee).delete()
    with pytest.raises(ODataError) as caught:
        await graph.users.by_user_id(lee).get()
    assert caught.value.response_status_code == 404
    engineering = graph.groups.by_group_id(group_id("Engineering"))
    assert lee not in await user_ids_of(engineering.transitive_members)
    assert lee not in [m.id for m in (await finance.members.get()).value]

    created = await graph.users.post(User(display_name="New Hire", user_principal_name="new.hire@contoso.example",
                                          account_enabled=True, mail="new.hire@contoso.example"))
    await finance.members.ref.post(ReferenceCreate(odata_id=f"https://graph.microsoft.com/v1.0/users/{created.id}"))
    members = (await finance.members.graph_user.get()).value
    assert "New Hire" in [m.display_name for m in members]

    state = fake.dump_tenant(DEMO_TID)
    finance_state = next(g for g in state["groups"] if g["displayName"] == "Finance")
    assert patti not in finance_state["members"] and created.id in finance_state["members"]
    assert load_tenant(state)  # still a valid tenant document


async def test_write_errors(http):
    response = await http.patch(f"/v1.0/users/{user_id('Lee Gu')}", json={"nosuch": 1})
    assert response.status_code == 400
    response = await http.patch(f"/v1.0/users/{user_id('Lee Gu')}", json={"accountEnabled": "no"})
    assert response.status_code == 400
    response = await http.post("/v1.0/users", json={"displayName": "Dup", "userPrincipalName": "lee.gu@contoso.example"})
    assert response.status_code == 400
    response = await http.delete(f"/v1.0/groups/{group_id('Finance')}/members/{user_id('Lee Gu')}/$ref")
    assert response.status_code == 404
    response = await http.post(f"/v1.0/groups/{group_id('Finance')}/members/$ref", content=b"{not json")
    assert response.status_code == 400
    response = await http.post("/v1.0/groups", json={"displayName": "Contractors", "description": "Temps",
                                                     "members@odata.bind": [
                                                         f"https://graph.microsoft.com/v1.0/users/{user_id('Lee Gu')}"]})
    assert response.status_code == 201
    members = (await http.get(f"/v1.0/groups/{response.json()['id']}/members")).json()["value"]
    assert [m["displayName"] for m in members] == ["Lee Gu"]


# --- tenants and authentication --------------------------------------------------------------


async def test_two_tenants_are_selected_by_token(tls):
    other = generate_tenant(users=30, groups=3, seed=7, domain="fabrikam.example")
    with FakeGraph(tenants=[DEMO_TENANT, other], tls=tls) as fake:
        async def names(token: str | None) -> tuple[int, list[str]]:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            async with httpx.AsyncClient(headers=headers) as http:
                response = await http.get(f"{fake.base_url}/groups", params={"$select": "displayName"})
            if response.status_code != 200:
                return response.status_code, [response.json()["error"]["code"]]
            return 200, sorted(g["displayName"] for g in response.json()["value"])

        assert await names(fake.token_for(other["tenantId"])) == (200, sorted(g["displayName"] for g in other["groups"]))
        assert (await names(fake.token_for(DEMO_TID)))[1] == sorted(g["displayName"] for g in DEMO["groups"])
        # Every token is verified: no static tokens, no "any JWT means the first tenant", no unknown tenants.
        assert await names("eyJ0eXAiOiJKV1Qi.some.jwt") == (401, ["InvalidAuthenticationToken"])
        assert await names(f"local:{DEMO_TID}") == (401, ["InvalidAuthenticationToken"])
        unloaded = fake.identity.app_token("00000000-0000-0000-0000-0000000000aa", ("Group.Read.All",))
        assert await names(unloaded) == (401, ["InvalidAuthenticationToken"])
        assert await names(None) == (401, ["InvalidAuthenticationToken"])

        graph = Graph(fake, other["tenantId"])
        org = await graph.client.organization.get()
        await graph.close()
        assert org.value[0].id == other["tenantId"]
        assert org.value[0].verified_domains[0].name == "fabrikam.example"


async def test_each_route_needs_its_application_permissions(fake):
    read_only = fake.token_for(DEMO_TID, roles=["User.Read.All", "GroupMember.Read.All"])
    async with httpx.AsyncClient(base_url=fake.base_url, headers={"Authorization": f"Bearer {read_only}"}) as http:
        finance = group_id("Finance")
        assert (await http.get(f"/groups/{finance}/transitiveMembers")).status_code == 200
        assert (await http.get("/users")).status_code == 200
        for response in [await http.get("/devices"), await http.get("/organization"),
                         await http.patch(f"/users/{user_id('Lee Gu')}", json={"accountEnabled": False}),
                         await http.delete(f"/groups/{finance}/members/{user_id('Patti Fernandez')}/$ref")]:
            assert response.status_code == 403, response.request.url
            assert response.json()["error"]["code"] == "Authorization_RequestDenied"
    members_only = fake.token_for(DEMO_TID, roles=["GroupMember.Read.All"])
    async with httpx.AsyncClient(base_url=fake.base_url, headers={"Authorization": f"Bearer {members_only}"}) as http:
        assert (await http.get("/groups")).status_code == 200
        members = await http.get(f"/groups/{group_id('Finance')}/members")  # users come back with id and type only
        assert members.status_code == 200
        assert all(m.get("displayName") is None for m in members.json()["value"] if m["@odata.type"].endswith("user"))
        assert (await http.get("/users")).status_code == 403
    assert fake.dump_tenant(DEMO_TID) == DEMO  # nothing was written


async def test_tenants_can_be_loaded_replaced_and_dumped(fake, http):
    tenant = generate_tenant(users=10, groups=2, seed=3, domain="tailspin.example")
    response = await http.post("/_fake/tenants", json=tenant)
    assert response.status_code == 201 and response.json()["users"] == 10
    assert (await http.get(f"/_fake/tenants/{tenant['tenantId']}")).json() == tenant
    tenant["users"] = tenant["users"][:4]
    for group in tenant["groups"]:
        group["members"] = [m for m in group["members"] if m in {u["id"] for u in tenant["users"]}]
    assert (await http.post("/_fake/tenants", json=tenant)).json()["users"] == 4
    listing = (await http.get("/_fake/tenants")).json()["tenants"]
    assert [t["tenantId"] for t in listing] == [DEMO_TID, tenant["tenantId"]]
    broken = {**tenant, "groups": [{**tenant["groups"][0], "members": ["missing"]}]}
    assert (await http.post("/_fake/tenants", json=broken)).status_code == 400


# --- generator --------------------------------------------------------------------------------


def test_generator_is_deterministic_and_realistic():
    tenant = generate_tenant(users=4000, groups=12, seed=5, nesting_depth=2, overlap=0.5, blocked_share=0.05,
                             guest_share=0.02, devices=6)
    assert tenant == generate_tenant(users=4000, groups=12, seed=5, nesting_depth=2, overlap=0.5,
                                     blocked_share=0.05, guest_share=0.02, devices=6)
    assert tenant != generate_tenant(users=4000, groups=12, seed=6, nesting_depth=2)
    assert load_tenant(json.loads(json.dumps(tenant))) == tenant

    users = tenant["users"]
    assert sum(not u["accountEnabled"] for u in users) == 200
    assert sum(u["userType"] == "Guest" for u in users) == 80
    assert len({u["userPrincipalName"].lower() for u in users}) == 4000
    mails = [u["mail"] for u in users if u["mail"]]
    assert len(mails) == len(set(mails)) and 0 < 4000 - len(mails) <= 60
    assert 0.5 < sum(bool(u["onPremisesSamAccountName"]) for u in users) / 4000 < 0.9
    assert 0.4 < sum(bool(u["employeeId"]) for u in users) / 4000 < 0.8
    assert all(u["onPremisesSamAccountName"] is None for u in users if u["userType"] == "Guest")
    assert len({u["displayName"] for u in users}) > 1000

    groups = {g["id"]: g for g in tenant["groups"]}
    devices = {d["id"] for d in tenant["devices"]}
    user_ids = {u["id"] for u in users}
    memberships = [m for g in groups.values() for m in g["members"] if m in user_ids]
    per_user = {uid: memberships.count(uid) for uid in list(user_ids)[:500]}
    assert 0.3 < sum(n >= 2 for n in per_user.values()) / 500 < 0.7  # overlap
    assert {m for g in groups.values() for m in g["members"] if m in devices} == devices

    def depth(gid: str) -> int:
        children = [m for m in groups[gid]["members"] if m in groups]
        return 1 + max((depth(c) for c in children), default=0)

    assert max(depth(g) for g in groups) == 3  # nesting_depth 2: parent > child > grandchild
    parent = next(g for g in groups if depth(g) == 3)
    direct = {m for m in groups[parent]["members"] if m in user_ids}
    assert set(transitive_user_members(tenant, parent)) > direct

    flat = generate_tenant(users=100, groups=4, seed=5, nesting_depth=0)
    assert not any(m in {g["id"] for g in flat["groups"]} for g in flat["groups"] for m in g["members"])


def test_generator_cli_writes_a_loadable_tenant(tmp_path):
    out = tmp_path / "tenant.json"
    subprocess.run([sys.executable, "-m", "local.fake_graph.generator", "--users", "300", "--groups", "5",
                    "--seed", "9", "--out", str(out)], cwd=REPO, check=True, capture_output=True)
    assert load_tenant(out) == generate_tenant(users=300, groups=5, seed=9)


def test_demo_tenant_has_what_the_demos_need():
    users = {u["displayName"]: u for u in DEMO["users"]}
    assert 35 <= len(users) <= 45 and 6 <= len(DEMO["groups"]) <= 8
    assert {"Zoë Ångström", "فاطمة الزهراء", 'Tom & "Jerry"'} <= set(users)
    assert sum(not u["accountEnabled"] for u in users.values()) == 2
    assert [u["userType"] for u in users.values()].count("Guest") == 1
    assert any(u["mail"] is None for u in users.values())
    assert any(u["onPremisesSamAccountName"] is None for u in users.values())
    devices = {d["id"] for d in DEMO["devices"]}
    assert any(m in devices for g in DEMO["groups"] for m in g["members"])
    assert group_id("Platform Team") in next(g for g in DEMO["groups"] if g["displayName"] == "Engineering")["members"]


# --- process and lifecycle --------------------------------------------------------------------


def test_stop_releases_the_port_and_thread():
    threads = threading.active_count()
    fake = FakeGraph(tenants=[DEMO_TENANT]).start()
    ports = fake.port, fake.authority_port
    assert httpx.get(f"{fake.base_url}/groups",
                     headers={"Authorization": f"Bearer {fake.token_for(DEMO_TID)}"}).status_code == 200
    fake.stop()
    assert threading.active_count() == threads
    for port in ports:
        with socket.socket() as sock:
            # SO_REUSEADDR tolerates TIME_WAIT leftovers but still fails if anything is listening.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen()


def test_cli_prints_ready_and_stops_on_sigterm():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "local.fake_graph", "--tenant", str(DEMO_TENANT), "--port", "0"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("READY ")
        ready = json.loads(line[len("READY "):])
        assert set(ready) == {"graph", "authority", "authorityCa", "clientSecret", "clientCertificate"}
        base_url = ready["graph"]
        token = httpx.post(f"{ready['authority']}/_fake/token", json={"tenant": DEMO_TID},
                           verify=ready["authorityCa"]).json()["access_token"]
        response = httpx.get(f"{base_url}/groups", headers={"Authorization": f"Bearer {token}"})
        assert len(response.json()["value"]) == 8
        refused = httpx.post(f"{ready['authority']}/{DEMO_TID}/oauth2/v2.0/token", verify=ready["authorityCa"], data={
            "grant_type": "client_credentials", "client_id": "00000000-0000-0000-0000-00000000d5c1",
            "client_secret": ready["clientSecret"], "scope": "https://graph.microsoft.com/.default"})
        assert refused.json()["error_codes"] == [700016]  # the demo tenant has not consented yet
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()


# --- strict Graph: limited member objects, hidden membership, page tokens -----------------------


async def test_members_without_a_user_permission_come_back_with_id_and_type_only(fake):
    sales = next(g for g in DEMO["groups"] if g["displayName"] == "Sales Team")
    url = f"{fake.base_url}/groups/{sales['id']}/transitiveMembers/microsoft.graph.user"
    params = {"$select": "id,displayName,userPrincipalName,mail,accountEnabled", **ADVANCED}
    async with httpx.AsyncClient(timeout=10, headers=EVENTUAL) as client:
        limited = await client.get(url, params=params,
                                   headers={"Authorization": f"Bearer {fake.token_for(DEMO_TID, ['GroupMember.Read.All'])}"})
        full = await client.get(url, params=params,
                                headers={"Authorization": f"Bearer {fake.token_for(DEMO_TID, ['GroupMember.Read.All', 'User.Read.All'])}"})
    assert limited.status_code == full.status_code == 200
    items, complete = limited.json()["value"], full.json()["value"]
    assert [i["id"] for i in items] == [i["id"] for i in complete] and items
    assert all(i["@odata.type"] == "#microsoft.graph.user" and i["displayName"] is None and i["mail"] is None
               and i["userPrincipalName"] is None and i["accountEnabled"] is None for i in items)
    assert all(i["userPrincipalName"] for i in complete)


async def test_a_hidden_membership_group_lists_nobody_without_member_read_hidden(tls):
    tenant = json.loads(json.dumps(DEMO))
    group = next(g for g in tenant["groups"] if g["displayName"] == "Sales Team")
    group["visibility"] = "HiddenMembership"
    with FakeGraph(tenants=[tenant], registration=registration(), tls=tls) as fake:
        url = f"{fake.base_url}/groups/{group['id']}/transitiveMembers/microsoft.graph.user"
        async with httpx.AsyncClient(timeout=10, headers=EVENTUAL, params=ADVANCED) as client:
            async def members(roles):
                response = await client.get(url, headers={"Authorization": f"Bearer {fake.token_for(DEMO_TID, roles)}"})
                assert response.status_code == 200
                return response.json()["value"]
            assert await members(["User.Read.All", "GroupMember.Read.All"]) == []
            assert len(await members(["User.Read.All", "GroupMember.Read.All", "Member.Read.Hidden"])) > 0
            info = await client.get(f"{fake.base_url}/groups/{group['id']}", params={"$select": "id,visibility"},
                                    headers={"Authorization": f"Bearer {fake.token_for(DEMO_TID)}"})
            assert info.json()["visibility"] == "HiddenMembership"


async def test_a_hidden_membership_group_can_refuse_instead_with_403(tls):
    tenant = json.loads(json.dumps(DEMO))
    group = next(g for g in tenant["groups"] if g["displayName"] == "Sales Team")
    group["visibility"] = "HiddenMembership"
    with FakeGraph(tenants=[tenant], registration=registration(), tls=tls) as fake:
        url = f"{fake.base_url}/groups/{group['id']}/transitiveMembers"  # untyped, as the app lists them
        without = {"Authorization": f"Bearer {fake.token_for(DEMO_TID, ['User.Read.All', 'GroupMember.Read.All'])}"}
        with_hidden = {"Authorization": f"Bearer {fake.token_for(DEMO_TID, ['User.Read.All', 'GroupMember.Read.All', 'Member.Read.Hidden'])}"}
        async with httpx.AsyncClient(timeout=10) as client:
            assert (await client.post(f"{fake.origin}/_fake/hidden", json={"answer": "forbidden"})).json() == {
                "answer": "forbidden"}
            refused = await client.get(url, headers=without)
            assert refused.status_code == 403
            assert refused.json()["error"]["code"] == "Authorization_RequestDenied"
            assert (await client.get(f"{url}/$count", headers={**without, "ConsistencyLevel": "eventual"})).status_code == 403
            assert len((await client.get(url, headers=with_hidden)).json()["value"]) > 0  # the permission still reads them
            group_read = await client.get(f"{fake.base_url}/groups/{group['id']}", headers=without)
            assert group_read.status_code == 200 and group_read.json()["visibility"] == "HiddenMembership"
            assert (await client.post(f"{fake.origin}/_fake/hidden", json={"answer": "maybe"})).status_code == 400
            await client.post(f"{fake.origin}/_fake/reset")
            assert (await client.get(f"{fake.origin}/_fake/hidden")).json() == {"answer": "empty"}
            assert (await client.get(url, headers=without)).json()["value"] == []


async def test_a_page_token_used_after_its_lifetime_is_directory_expired_page_token(fake):
    fake.set_paging(skiptokenLifetimeSeconds=0.5)
    async with httpx.AsyncClient(timeout=10, headers={"Authorization": f"Bearer {fake.token_for(DEMO_TID)}"}) as client:
        first = (await client.get(f"{fake.base_url}/users", params={"$top": "2"})).json()
        await asyncio.sleep(1.1)
        late = await client.get(first["@odata.nextLink"])
    assert late.status_code == 400 and late.json()["error"]["code"] == "Directory_ExpiredPageToken"
    assert fake.set_paging(skiptokenLifetimeSeconds=120)["skiptokenLifetimeSeconds"] == 120
