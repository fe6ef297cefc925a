"""Azure's scalability targets in the stand-ins (off by default): Table Storage's entities per partition and account
per second (local/table_limits.py, metered by the table proxy) and Graph's resource units per application and tenant
(local/fake_graph/throttling.py). Pure metering with a hand-driven clock, and the fake Graph's 429 over HTTP."""
from __future__ import annotations

import httpx
import pytest

from local.fake_graph import DEMO_TENANT, FakeGraph, load_tenant
from local.fake_graph.throttling import GraphLimits, request_cost, tenant_budget
from local.identity.tls import LocalCA
from local.table_limits import ACCOUNT_BUSY, PARTITION_BUSY, LimitError, TableLimits, describe

DEMO_TID = load_tenant(DEMO_TENANT)["tenantId"]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def batch(pk: str, n: int) -> bytes:
    ops = "".join(f"--c\r\nContent-Type: application/http\r\n\r\nPOST http://h:1/acct/users HTTP/1.1\r\n"
                  f"Content-Type: application/json\r\n\r\n{{\"PartitionKey\":\"{pk}\",\"RowKey\":\"{i}\"}}\r\n"
                  for i in range(n))
    return f"--b\r\nContent-Type: multipart/mixed; boundary=c\r\n\r\n{ops}--c--\r\n--b--".encode()


def test_a_request_is_described_by_its_table_partition_and_the_entities_it_writes():
    assert describe("POST", "/acct/$batch", batch("org-1", 3)) == ("users", "org-1", 3)
    assert describe("PATCH", "/acct/users(PartitionKey='it''s%2Fx',RowKey='r')", b"{}") == ("users", "it's/x", 1)
    assert describe("POST", "/acct/users", b'{"PartitionKey": "a\\"b", "RowKey": "r"}') == ("users", 'a"b', 1)
    assert describe("GET", "/acct/users(PartitionKey='p',RowKey='r')", b"") == ("users", "p", 0)
    assert describe("GET", "/acct/users()?$filter=PartitionKey%20eq%20'o''k'%20and%20x%20eq%201", b"") == (
        "users", "o'k", 0)
    assert describe("GET", "/acct/users()?$filter=x%20eq%201", b"") == ("users", None, 0)
    assert describe("POST", "/acct/Tables", b'{"TableName": "t"}') == ("Tables", None, 1)


def test_a_partition_serves_a_second_of_entities_then_answers_server_busy_until_it_has_refilled():
    clock = Clock()
    limits = TableLimits(enabled=True, partition_per_s=200, account_per_s=10_000, clock=clock)
    body = batch("org-1", 100)
    assert limits.admit("POST", "/acct/$batch", body) is None
    assert limits.admit("POST", "/acct/$batch", body) is None  # 200 spent: the bucket is empty
    assert limits.admit("POST", "/acct/$batch", body) == ("partition", PARTITION_BUSY)
    assert limits.admit("POST", "/acct/$batch", batch("org-2", 100)) is None  # another partition has its own
    clock.now = 0.1  # 20 entities of credit: admitted, and may overdraw
    assert limits.admit("POST", "/acct/$batch", body) is None
    assert limits.admit("POST", "/acct/$batch", body) == ("partition", PARTITION_BUSY)
    clock.now = 0.5  # still 0 (20 - 100 + 80)
    assert limits.admit("POST", "/acct/$batch", body) == ("partition", PARTITION_BUSY)
    clock.now = 0.51
    assert limits.admit("POST", "/acct/$batch", body) is None
    assert limits.state()["throttled"] == {"partition": 3, "account": 0}


def test_the_account_limit_spans_partitions_and_a_query_spends_the_entities_it_returned():
    clock = Clock()
    limits = TableLimits(enabled=True, partition_per_s=1000, account_per_s=250, clock=clock)
    for pk in ("a", "b", "c"):
        assert limits.admit("POST", "/acct/$batch", batch(pk, 100)) is None
    assert limits.admit("POST", "/acct/$batch", batch("d", 1)) == ("account", ACCOUNT_BUSY)
    clock.now = 1.0  # refilled to 250 (capped at one second's worth)
    query = "/acct/users()?$filter=PartitionKey%20eq%20'a'"
    assert limits.admit("GET", query, b"") is None
    rows = b'{"value": [' + b",".join(b'{"PartitionKey": "a", "RowKey": "%d"}' % i for i in range(300)) + b"]}"
    limits.charge_answer("GET", query, b"", 200, rows)
    assert limits.admit("GET", query, b"") == ("account", ACCOUNT_BUSY)
    assert limits.state()["entities"] == 300 + 300  # the writes admitted, then the rows returned
    clock.now = 3.0
    selected = b'{"value": [' + b",".join(b'{"RowKey": "%d"}' % i for i in range(50)) + b"]}"
    limits.charge_answer("GET", query, b"", 200, selected)  # $select left PartitionKey out: the filter's partition
    assert limits.state()["partitions"][0] == {"table": "users", "partitionKey": "a", "written": 100, "read": 350}


def test_limits_are_off_by_default_and_their_settings_are_checked():
    limits = TableLimits()
    assert all(limits.admit("POST", "/acct/$batch", batch("a", 100)) is None for _ in range(1000))
    with pytest.raises(LimitError):
        limits.configure({"partitionEntitiesPerSecond": 0})
    with pytest.raises(LimitError):
        limits.configure({"enabled": "yes"})
    with pytest.raises(LimitError):
        limits.configure({"rate": 1})
    assert limits.configure({"enabled": True})["partitionEntitiesPerSecond"] == 2000


def test_graph_request_costs_follow_the_documented_table_and_modifiers():
    assert request_cost("GET", "/v1.0/users", {}) == 2
    assert request_cost("GET", "/v1.0/users", {"$select": "id"}) == 1
    assert request_cost("GET", "/v1.0/groups/{id}/members", {}) == 3
    assert request_cost("GET", "/v1.0/groups/{id}/transitiveMembers/microsoft.graph.user", {"$select": "id"}) == 4
    assert request_cost("GET", "/v1.0/groups/{id}/transitiveMembers", {"$top": "10", "$select": "id"}) == 3
    assert request_cost("GET", "/v1.0/users/{id}/memberOf", {}) == 2
    assert request_cost("GET", "/v1.0/groups/{id}", {"$select": "id", "$top": "5"}) == 1  # never below 1
    assert request_cost("POST", "/v1.0/subscriptions", {}) == 0  # not an identity and access resource
    assert [tenant_budget(n) for n in (49, 50, 500, 501)] == [("S", 3500), ("M", 5000), ("M", 5000), ("L", 8000)]


def test_graph_throttles_an_app_and_tenant_past_its_resource_units_with_retry_after():
    clock = Clock()
    limits = GraphLimits(enabled=True, clock=clock)
    limits.configure({"resourceUnitsPer10s": 10})  # 1 unit a second
    members = ("GET", "/v1.0/groups/{id}/transitiveMembers", {"$select": "id"})
    assert limits.check(*members, "app", "t1", 10)[1] is None
    assert limits.check(*members, "app", "t1", 10)[1] is None  # 8 of 10 spent
    cost, headers = limits.check(*members, "app", "t1", 10)
    assert cost == 4 and headers["Retry-After"] == "2"  # 2 units left: 2 s until 4
    assert headers["x-ms-throttle-scope"] == "Tenant_Application/ReadWrite/app/t1"
    assert limits.check(*members, "app", "t2", 10)[1] is None  # another tenant's bucket
    assert limits.check(*members, "other-app", "t1", 10)[1] is None  # another app's
    clock.now = 2.0
    assert limits.check(*members, "app", "t1", 10)[1] is None
    assert limits.state()["throttled"] == 1
    limits.reset()
    assert limits.state() == {"enabled": True, "resourceUnitsPer10s": None, "writesPer150s": 3000, "throttled": 0,
                              "resourceUnits": 0}


def test_graph_meters_writes_against_the_write_quota():
    limits = GraphLimits(enabled=True, clock=Clock())
    limits.configure({"writesPer150s": 2})
    write = ("PATCH", "/v1.0/users/{id}", {})
    assert limits.check(*write, "app", "t", 10)[1] is None
    assert limits.check(*write, "app", "t", 10)[1] is None
    headers = limits.check(*write, "app", "t", 10)[1]
    assert headers["x-ms-throttle-information"] == "WriteLimitExceeded" and headers["Retry-After"] == "75"


def test_the_fake_answers_429_in_graphs_error_shape_once_the_limits_are_switched_on(tmp_path):
    with FakeGraph(tenants=[DEMO_TENANT], tls=LocalCA.create(tmp_path)) as fake:
        headers = {"Authorization": f"Bearer {fake.token_for(DEMO_TID)}"}
        with httpx.Client(base_url=fake.origin, headers=headers, timeout=10) as http:
            assert http.get("/_fake/limits").json()["enabled"] is False
            assert all(http.get("/v1.0/users").status_code == 200 for _ in range(5))
            assert http.post("/_fake/limits", json={"enabled": True, "resourceUnitsPer10s": 4}).status_code == 200
            first = http.get("/v1.0/users")
            assert first.status_code == 200 and first.headers["x-ms-resource-unit"] == "2"
            assert http.get("/v1.0/users", params={"$select": "id"}).status_code == 200
            throttled = http.get("/v1.0/users")
            assert throttled.status_code == 429 and int(throttled.headers["Retry-After"]) >= 1
            assert throttled.json()["error"]["code"] == "TooManyRequests"
            assert http.get("/_fake/limits").json()["throttled"] == 1
            assert http.post("/_fake/limits", json={"resourceUnitsPer10s": 0}).status_code == 400
            http.post("/_fake/reset")
            assert http.get("/_fake/limits").json()["enabled"] is False
            assert http.get("/v1.0/users").status_code == 200
