"""The fake Graph's change notifications (subscriptions, the webhook handshake, delivery, lifecycle events) and its
delta queries for users and groups, driven over real HTTP like the app will drive them (and through msgraph-sdk).

Receivers are tiny aiohttp servers on this test's event loop; the fake calls them from its own thread.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from aiohttp import web
from kiota_abstractions.base_request_configuration import RequestConfiguration
from msgraph.generated.users.delta.delta_request_builder import DeltaRequestBuilder

from local.client import FakeTenantAdmin
from local.fake_graph import DEMO_TENANT, FakeGraph, load_tenant
from local.identity.tls import LocalCA
from tests.local.test_fake_graph import Graph, group_id, registration, user_id

DEMO = load_tenant(DEMO_TENANT)
DEMO_TID = DEMO["tenantId"]
# The app's read permissions for subscribing plus the admin's write permissions for changing the tenant.
ROLES = ["User.Read.All", "Group.Read.All", "User.ReadWrite.All", "Group.ReadWrite.All", "GroupMember.ReadWrite.All"]
MAX_MINUTES = 41760


def iso(seconds_from_now: float) -> str:
    moment = datetime.now(timezone.utc) + timedelta(seconds=seconds_from_now)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"


class Receiver:
    """A webhook endpoint: answers Graph's validation requests (per `handshake`) and records notifications."""

    def __init__(self) -> None:
        self.handshake = "echo"  # echo | silent | json | slow | status
        self.validations: list[dict] = []
        self.received: dict[str, list[tuple[float, dict]]] = {}
        self.statuses: list[int] = []  # answers to the next notification POSTs (default 202)
        self.delays: list[float] = []  # seconds to wait before answering the next notification POSTs
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> "Receiver":
        app = web.Application()
        app.router.add_post("/{path:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.port = self.runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def url(self, path: str = "hook") -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    async def _handle(self, request: web.Request) -> web.Response:
        token = request.query.get("validationToken")
        if token is not None:
            self.validations.append({"token": token, "contentType": request.headers.get("Content-Type"),
                                     "path": request.path, "body": await request.read()})
            if self.handshake == "silent":
                return web.Response(status=200, text="", content_type="text/plain")
            if self.handshake == "json":
                return web.json_response(token)
            if self.handshake == "status":
                return web.Response(status=202, text=token, content_type="text/plain")
            if self.handshake == "slow":
                await asyncio.sleep(1.0)
            return web.Response(text=token, content_type="text/plain")
        self.received.setdefault(request.path.strip("/"), []).append((time.monotonic(), await request.json()))
        if self.delays:
            await asyncio.sleep(self.delays.pop(0))
        return web.Response(status=self.statuses.pop(0) if self.statuses else 202)

    def notifications(self, path: str = "hook") -> list[dict]:
        return [item for _, body in self.received.get(path, []) for item in body["value"]]

    def posts(self, path: str = "hook") -> list[dict]:
        return [body for _, body in self.received.get(path, [])]

    async def wait(self, count: int, path: str = "hook", timeout: float = 5.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.notifications(path)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.notifications(path))} of {count} notifications at /{path}")
            await asyncio.sleep(0.02)
        return self.notifications(path)


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return LocalCA.create(tmp_path_factory.mktemp("changes-ca"))


@pytest.fixture
def fake(tls):
    with FakeGraph(tenants=[DEMO_TENANT], registration=registration(), tls=tls) as server:
        yield server


@pytest.fixture
async def receiver():
    r = await Receiver().start()
    yield r
    await r.stop()


@pytest.fixture
async def http(fake):
    async with httpx.AsyncClient(base_url=fake.base_url, timeout=20,
                                 headers={"Authorization": f"Bearer {fake.token_for(DEMO_TID, ROLES)}"}) as client:
        yield client


async def subscribe(http: httpx.AsyncClient, receiver: Receiver, resource: str = "users", **extra) -> httpx.Response:
    body = {"changeType": "updated,deleted", "notificationUrl": receiver.url(), "resource": resource,
            "expirationDateTime": iso(3600), "clientState": "s3cret-state", **extra}
    return await http.post("/subscriptions", json=body)


async def quiet(receiver: Receiver, path: str = "hook", seconds: float = 0.4) -> None:
    """Nothing more arrives for a while (deliveries are batched for 50 ms)."""
    before = len(receiver.notifications(path))
    await asyncio.sleep(seconds)
    assert len(receiver.notifications(path)) == before


# --- subscriptions: the handshake ------------------------------------------------------------------------


async def test_a_subscription_is_created_after_the_validation_handshake(fake, http, receiver):
    response = await subscribe(http, receiver)
    assert response.status_code == 201, response.text
    sub = response.json()
    assert sub["resource"] == "users" and sub["changeType"] == "updated,deleted" and sub["clientState"] == "s3cret-state"
    assert sub["notificationUrl"] == receiver.url() and sub["applicationId"] == "fake-admin-tool" and sub["creatorId"]
    assert sub["latestSupportedTlsVersion"] == "v1_2" and sub["expirationDateTime"].endswith("Z")
    [validation] = receiver.validations
    assert validation["contentType"].startswith("text/plain") and validation["body"] == b""
    assert validation["token"].startswith("Validation: ") and " " in validation["token"]  # URL-decoded by the receiver

    listing = (await http.get("/subscriptions")).json()["value"]
    assert [s["id"] for s in listing] == [sub["id"]] and listing[0]["clientState"] is None  # not returned again
    one = await http.get(f"/subscriptions/{sub['id']}")
    assert one.status_code == 200 and one.json()["expirationDateTime"] == sub["expirationDateTime"]
    assert [s["id"] for s in fake.notifications_state()["subscriptions"]] == [sub["id"]]


@pytest.mark.parametrize("handshake, message", [
    ("silent", "Response must exactly match validationToken"),
    ("json", "content type"),
    ("status", "must respond with 200 OK"),
    ("slow", "timed out"),
])
async def test_a_failed_handshake_refuses_the_subscription_and_stores_nothing(fake, http, receiver, handshake, message):
    fake.set_notifications(validationTimeoutSeconds=0.4)
    receiver.handshake = handshake
    response = await subscribe(http, receiver)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "ValidationError" and message in error["message"]
    assert error["message"].startswith("Subscription validation request")
    assert (await http.get("/subscriptions")).json()["value"] == []
    assert fake.notifications_state()["subscriptions"] == []


async def test_the_lifecycle_url_is_validated_too(fake, http, receiver):
    # Nothing listens on port 9 of the loopback: the lifecycle URL fails its validation, so the creation fails.
    response = await subscribe(http, receiver, lifecycleNotificationUrl="http://127.0.0.1:9/lifecycle")
    assert response.status_code == 400 and response.json()["error"]["code"] == "ValidationError"
    assert fake.notifications_state()["subscriptions"] == []
    response = await subscribe(http, receiver, lifecycleNotificationUrl=receiver.url("lifecycle"))
    assert response.status_code == 201
    assert sorted(v["path"] for v in receiver.validations) == ["/hook", "/hook", "/lifecycle"]


async def test_notification_urls_must_be_https_except_on_loopback(fake, http, receiver):
    for url in ("http://webhook.example/api", "ftp://127.0.0.1/x", "not a url"):
        response = await http.post("/subscriptions", json={
            "changeType": "updated", "notificationUrl": url, "resource": "users", "expirationDateTime": iso(600)})
        assert response.status_code == 400 and "HTTPS" in response.json()["error"]["message"], url
    assert fake.set_notifications(allowHttpLoopback=False)["allowHttpLoopback"] is False
    assert (await subscribe(http, receiver)).status_code == 400
    fake.set_notifications(allowHttpLoopback=True)
    assert (await subscribe(http, receiver)).status_code == 201
    assert receiver.validations  # only the accepted one was called


async def test_the_request_is_checked_before_any_handshake(fake, http, receiver):
    cases = [
        ({"resource": "devices"}, 400), ({"resource": "me/messages"}, 400), ({"changeType": "created"}, 400),
        ({"changeType": "updated,nonsense"}, 400), ({"clientState": "x" * 129}, 400),
        ({"latestSupportedTlsVersion": "v9"}, 400), ({"includeResourceData": True}, 400), ({"color": "red"}, 400),
        ({"expirationDateTime": "tomorrow"}, 400),
    ]
    for extra, status in cases:
        response = await subscribe(http, receiver, **extra)
        assert response.status_code == status, (extra, response.text)
    assert receiver.validations == []
    assert (await subscribe(http, receiver, clientState="x" * 128)).status_code == 201
    duplicate = await subscribe(http, receiver, changeType="deleted,updated")
    assert duplicate.status_code == 409 and "already exists for the requested combination" in duplicate.text
    assert (await subscribe(http, receiver, resource="/groups")).status_code == 201


async def test_expiration_is_limited_to_41760_minutes_and_renewed_with_patch(fake, http, receiver):
    past = await subscribe(http, receiver, expirationDateTime=iso(-60))
    too_far = await subscribe(http, receiver, expirationDateTime=iso(MAX_MINUTES * 60 + 120))
    assert past.status_code == too_far.status_code == 400
    assert f"{MAX_MINUTES} minutes" in too_far.json()["error"]["message"]
    created = await subscribe(http, receiver, expirationDateTime=iso(MAX_MINUTES * 60 - 120))
    assert created.status_code == 201
    sub_id = created.json()["id"]

    assert (await http.patch(f"/subscriptions/{sub_id}", json={"expirationDateTime": iso(MAX_MINUTES * 60 + 120)}
                             )).status_code == 400
    assert (await http.patch(f"/subscriptions/{sub_id}", json={"resource": "groups"})).status_code == 400
    renewed = await http.patch(f"/subscriptions/{sub_id}", json={"expirationDateTime": iso(7200)})
    assert renewed.status_code == 200
    expires = datetime.fromisoformat(renewed.json()["expirationDateTime"][:26] + "+00:00")
    assert abs(expires.timestamp() - (time.time() + 7200)) < 5
    assert (await http.patch("/subscriptions/0c6a2f4e-0000-0000-0000-000000000000",
                             json={"expirationDateTime": iso(600)})).status_code == 404

    other = fake.add_tenant({"tenantId": "other-tenant", "domain": "other.example", "users": [], "groups": []})
    async with httpx.AsyncClient(base_url=fake.base_url,
                                 headers={"Authorization": f"Bearer {fake.token_for(other, ROLES)}"}) as stranger:
        assert (await stranger.get(f"/subscriptions/{sub_id}")).status_code == 404
        assert (await stranger.delete(f"/subscriptions/{sub_id}")).status_code == 404
        assert (await stranger.get("/subscriptions")).json()["value"] == []
    assert (await http.delete(f"/subscriptions/{sub_id}")).status_code == 204
    assert (await http.get(f"/subscriptions/{sub_id}")).status_code == 404


async def test_an_expired_subscription_is_deleted_and_delivers_nothing(fake, http, receiver):
    response = await subscribe(http, receiver, expirationDateTime=iso(1.0))
    assert response.status_code == 201
    await asyncio.sleep(1.5)
    assert (await http.get(f"/subscriptions/{response.json()['id']}")).status_code == 404
    assert fake.notifications_state()["subscriptions"] == []
    await http.patch(f"/users/{user_id('Lee Gu')}", json={"displayName": "Lee G."})
    await quiet(receiver)


async def test_subscribing_needs_the_read_permission_of_the_resource(fake, receiver):
    async def attempt(roles, resource):
        headers = {"Authorization": f"Bearer {fake.token_for(DEMO_TID, roles)}"}
        async with httpx.AsyncClient(base_url=fake.base_url, headers=headers) as client:
            return await subscribe(client, receiver, resource=resource)

    for roles, resource in [(["GroupMember.Read.All"], "groups"), (["User.ReadWrite.All", "Directory.ReadWrite.All"],
                            "users"), (["Group.ReadWrite.All", "GroupMember.ReadWrite.All"], "groups"),
                            (["User.Read.All"], "groups"), (["Group.Read.All"], "users")]:
        response = await attempt(roles, resource)
        assert response.status_code == 403, (roles, resource)
        assert response.json()["error"]["code"] == "ExtensionError"
    assert receiver.validations == []
    assert (await attempt(["User.Read.All"], "users")).status_code == 201
    assert (await attempt(["Group.Read.All"], "groups")).status_code == 201
    async with httpx.AsyncClient(base_url=fake.base_url) as anonymous:
        assert (await anonymous.get("/subscriptions")).status_code == 401


# --- delivery ---------------------------------------------------------------------------------------


async def test_a_change_delivers_one_notification_outside_the_write_request(fake, http, receiver):
    sub = (await subscribe(http, receiver)).json()
    receiver.delays = [1.5]  # a slow receiver must not slow the admin's write
    lee = user_id("Lee Gu")
    started = time.monotonic()
    assert (await http.patch(f"/users/{lee}", json={"accountEnabled": False})).status_code == 204
    assert time.monotonic() - started < 1.0
    [note] = await receiver.wait(1)
    assert note["subscriptionId"] == sub["id"] and note["clientState"] == "s3cret-state"
    assert note["changeType"] == "updated" and note["tenantId"] == DEMO_TID
    assert note["resource"] == f"Users/{lee}"
    assert note["resourceData"] == {"@odata.type": "#Microsoft.Graph.User", "@odata.id": f"Users/{lee}", "id": lee}
    assert note["subscriptionExpirationDateTime"] == sub["expirationDateTime"]
    assert "lifecycleEvent" not in note
    await asyncio.sleep(1.7)
    assert fake.notifications_state() | {"subscriptions": None} == {
        "subscriptions": None, "delivered": 1, "failed": 0, "pending": 0}
    await quiet(receiver)


async def test_membership_changes_notify_the_group_and_close_changes_share_one_post(fake, http, receiver):
    sub = (await subscribe(http, receiver, resource="groups")).json()
    finance, lee, patti = group_id("Finance"), user_id("Lee Gu"), user_id("Patti Fernandez")
    ref = {"@odata.id": f"https://graph.microsoft.com/v1.0/directoryObjects/{lee}"}
    assert (await http.post(f"/groups/{finance}/members/$ref", json=ref)).status_code == 204
    assert (await http.delete(f"/groups/{finance}/members/{patti}/$ref")).status_code == 204
    notes = await receiver.wait(2)
    assert len(receiver.posts()) == 1  # batched
    assert {(n["changeType"], n["resource"]) for n in notes} == {("updated", f"Groups/{finance}")}
    assert all(n["resourceData"]["@odata.type"] == "#Microsoft.Graph.Group" and n["subscriptionId"] == sub["id"]
               for n in notes)
    await http.patch(f"/users/{lee}", json={"displayName": "Lee G."})  # a user change: not a group notification
    await quiet(receiver)


async def test_deletions_are_updated_when_restorable_and_deleted_when_permanent(fake, http, receiver):
    deleted_only = Receiver()
    await deleted_only.start()
    try:
        await subscribe(http, receiver, changeType="updated")
        await subscribe(http, deleted_only, changeType="deleted", resource="groups")
        await subscribe(http, receiver, changeType="updated", resource="groups")
        lee, finance = user_id("Lee Gu"), group_id("Finance Approvers")
        assert (await http.delete(f"/users/{lee}")).status_code == 204  # soft delete: "updated"
        [note] = await receiver.wait(1)
        assert (note["changeType"], note["resource"]) == ("updated", f"Users/{lee}")
        assert (await http.delete(f"/groups/{finance}")).status_code == 204  # a security group: permanently
        [gone] = await deleted_only.wait(1)
        assert (gone["changeType"], gone["resource"]) == ("deleted", f"Groups/{finance}")
        await quiet(receiver)  # the updated-only group subscription hears nothing of it
    finally:
        await deleted_only.stop()


async def test_a_failed_delivery_is_retried_with_backoff(fake, http, receiver):
    await subscribe(http, receiver)
    receiver.statuses = [500, 503]
    await http.patch(f"/users/{user_id('Lee Gu')}", json={"displayName": "Lee G."})
    notes = await receiver.wait(3)
    assert len({n["id"] for n in notes}) == 1  # the same notification, three times
    times = [t for t, _ in receiver.received["hook"]]
    assert times[2] - times[1] > times[1] - times[0] > 0.2  # backing off
    await asyncio.sleep(0.1)
    state = fake.notifications_state()
    assert (state["delivered"], state["failed"], state["pending"]) == (1, 2, 0)


async def test_retries_stop_after_the_retry_window_and_slow_answers_count_as_failures(fake, http, receiver):
    fake.set_notifications(retrySeconds=1.0, timeoutSeconds=0.3)
    await subscribe(http, receiver)
    receiver.statuses = [500] * 100
    receiver.delays = [0.6]  # the first answer comes after the timeout
    await http.patch(f"/users/{user_id('Lee Gu')}", json={"displayName": "Lee G."})
    await asyncio.sleep(0.3)
    assert fake.notifications_state()["pending"] == 1
    await asyncio.sleep(2.0)
    state, log = fake.notifications_state(), fake.notifications_log()
    assert state["delivered"] == 0 and state["pending"] == 0 and state["failed"] >= 3
    assert log["dropped"] == 1 and log["deliveries"][0]["status"] == "timeout"
    count = len(receiver.notifications())
    await asyncio.sleep(0.5)
    assert len(receiver.notifications()) == count  # given up


async def test_duplicate_and_delayed_deliveries(fake, http, receiver):
    fake.set_notifications(duplicate=True, delayMs=300)
    await subscribe(http, receiver)
    started = time.monotonic()
    await http.patch(f"/users/{user_id('Lee Gu')}", json={"displayName": "Lee G."})
    first, second = await receiver.wait(2)
    arrivals = [t for t, _ in receiver.received["hook"]]
    assert first == second and arrivals[0] - started >= 0.3 and arrivals[1] - arrivals[0] >= 0.25
    # Counted once acknowledged: the receiver's answer to the second may still be on its way back.
    for _ in range(50):
        if fake.notifications_state()["delivered"] == 2:
            break
        await asyncio.sleep(0.1)
    assert fake.notifications_state()["delivered"] == 2


async def test_paused_deliveries_wait_and_can_arrive_reordered(fake, http, receiver):
    fake.set_notifications(paused=True, reorder=True)
    await subscribe(http, receiver)
    lee, patti = user_id("Lee Gu"), user_id("Patti Fernandez")
    await http.patch(f"/users/{lee}", json={"displayName": "Lee G."})
    await http.patch(f"/users/{patti}", json={"displayName": "Patti F."})
    await asyncio.sleep(0.3)
    assert receiver.notifications() == [] and fake.notifications_state()["pending"] == 2
    fake.set_notifications(paused=False)
    notes = await receiver.wait(2)
    assert [n["resource"] for n in notes] == [f"Users/{patti}", f"Users/{lee}"]  # the later change first
    assert len(receiver.posts()) == 1


# --- lifecycle notifications ------------------------------------------------------------------------------


async def test_lifecycle_events_go_to_the_lifecycle_url(fake, http, receiver):
    sub = (await subscribe(http, receiver, lifecycleNotificationUrl=receiver.url("lifecycle"))).json()
    plain = (await subscribe(http, receiver, resource="groups")).json()
    async with httpx.AsyncClient(base_url=fake.origin) as control:
        refused = await control.post("/_fake/notifications/lifecycle",
                                     json={"subscriptionId": plain["id"], "event": "missed"})
        assert refused.status_code == 400  # no lifecycleNotificationUrl: Graph sends no lifecycle notifications
        assert (await control.post("/_fake/notifications/lifecycle",
                                   json={"subscriptionId": sub["id"], "event": "nap"})).status_code == 400
        sent = await control.post("/_fake/notifications/lifecycle",
                                  json={"subscriptionId": sub["id"], "event": "reauthorizationRequired"})
        assert sent.status_code == 200
    [event] = await receiver.wait(1, "lifecycle")
    assert event == {"subscriptionId": sub["id"], "subscriptionExpirationDateTime": sub["expirationDateTime"],
                     "tenantId": DEMO_TID, "clientState": "s3cret-state", "lifecycleEvent": "reauthorizationRequired"}

    # Until the app reauthorizes, its changes are lost, not queued.
    await http.patch(f"/users/{user_id('Lee Gu')}", json={"displayName": "Lee G."})
    await quiet(receiver)
    assert fake.notifications_log()["lost"] == 1
    assert (await http.post(f"/subscriptions/{sub['id']}/reauthorize")).status_code == 204
    await http.patch(f"/users/{user_id('Lee Gu')}", json={"displayName": "Lee Gu"})
    await receiver.wait(1)

    fake.send_lifecycle(sub["id"], "missed")
    fake.send_lifecycle(sub["id"], "subscriptionRemoved")
    events = await receiver.wait(3, "lifecycle")
    assert [e["lifecycleEvent"] for e in events[1:]] == ["missed", "subscriptionRemoved"]
    assert (await http.get(f"/subscriptions/{sub['id']}")).status_code == 404  # removed


async def test_admin_client_helpers_drive_the_notification_controls(fake, http, receiver):
    admin = FakeTenantAdmin(fake.base_url, DEMO_TID)
    assert admin.set_notifications(retrySeconds=5)["retrySeconds"] == 5
    sub = (await subscribe(http, receiver, lifecycleNotificationUrl=receiver.url("lifecycle"))).json()
    assert [s["id"] for s in admin.notifications()["subscriptions"]] == [sub["id"]]
    assert admin.send_lifecycle(sub["id"], "missed")["url"] == receiver.url("lifecycle")
    await receiver.wait(1, "lifecycle")
    assert admin.notifications_log()["deliveries"][-1]["ok"] is True
    assert admin.set_delta(pageSize=3)["pageSize"] == 3
    assert admin.expire_delta_tokens()["pageSize"] == 3
    admin.http.post(f"{fake.origin}/_fake/reset")
    assert admin.set_notifications()["retrySeconds"] == 30 and fake.set_delta()["pageSize"] == 100


# --- delta queries ----------------------------------------------------------------------------------------


async def pages(http: httpx.AsyncClient, url: str, params: dict | None = None, **kw) -> tuple[list[list[dict]], str]:
    """Every page of a delta round: the items per page and the final deltaLink."""
    out = []
    response = await http.get(url, params=params, **kw)
    while True:
        assert response.status_code == 200, response.text
        body = response.json()
        out.append(body["value"])
        if "@odata.deltaLink" in body:
            assert "@odata.nextLink" not in body
            return out, body["@odata.deltaLink"]
        response = await http.get(body["@odata.nextLink"], **kw)


async def test_users_delta_full_pass_then_only_what_changed(fake, http):
    fake.set_delta(pageSize=7)
    rounds, link = await pages(http, "/users/delta", {"$select": "displayName,accountEnabled,mail"})
    assert len(rounds) == 6 and all(len(p) <= 7 for p in rounds)
    users = [u for page in rounds for u in page]
    assert sorted(u["id"] for u in users) == sorted(u["id"] for u in DEMO["users"])
    assert set(users[0]) == {"id", "displayName", "accountEnabled", "mail"}
    assert "$deltatoken=" in link and parse_qs(urlsplit(link).query).keys() == {"$deltatoken"}

    assert (await pages(http, link))[0] == [[]]  # nothing changed
    lee, patti = user_id("Lee Gu"), user_id("Patti Fernandez")
    await http.patch(f"/users/{lee}", json={"accountEnabled": False})
    await http.patch(f"/users/{lee}", json={"displayName": "Lee G."})
    await http.patch(f"/users/{patti}", json={"jobTitle": "CFO"})  # not selected: not tracked
    rounds, link = await pages(http, link)
    assert rounds == [[{"id": lee, "displayName": "Lee G.", "accountEnabled": False, "mail": "lee.gu@contoso.example"}]]

    await http.patch(f"/users/{patti}", json={"mail": None})
    minimal = await http.get(link, headers={"Prefer": "return=minimal"})
    assert minimal.json()["value"] == [{"id": patti, "mail": None}]  # only what changed, nulls included

    created = (await http.post("/users", json={"displayName": "New Hire",
                                               "userPrincipalName": "new.hire@contoso.example"})).json()
    await http.delete(f"/users/{lee}")
    rounds, link = await pages(http, minimal.json()["@odata.deltaLink"])
    assert rounds == [[{"id": created["id"], "displayName": "New Hire", "accountEnabled": True},  # mail never set
                       {"id": lee, "@removed": {"reason": "changed"}}]]  # deleted users can be restored


async def test_users_delta_without_select_tracks_everything_but_returns_the_default_set(fake, http):
    lee = user_id("Lee Gu")
    await http.delete(f"/users/{lee}")
    rounds, link = await pages(http, "/users/delta")
    users = [u for page in rounds for u in page]
    assert users[-1] == {"id": lee, "@removed": {"reason": "changed"}}  # deleted users come in the initial round too
    first = users[0]
    assert "accountEnabled" not in first and {"displayName", "userPrincipalName", "id"} <= set(first)
    patti = user_id("Patti Fernandez")
    await http.patch(f"/users/{patti}", json={"accountEnabled": False})
    [[changed]] = (await pages(http, link))[0]
    assert changed["id"] == patti and "accountEnabled" not in changed  # tracked, yet not returned
    latest = (await http.get("/users/delta", params={"$deltatoken": "latest"})).json()
    assert latest["value"] == [] and "@odata.deltaLink" in latest  # "sync from now"


async def test_groups_delta_with_an_id_filter_reports_member_changes(fake, http):
    finance, sales = group_id("Finance"), group_id("Sales Team")
    flt = f"id eq '{finance}' or id eq '{sales}'"
    rounds, link = await pages(http, "/groups/delta", {"$select": "displayName,members", "$filter": flt})
    groups = {g["id"]: g for page in rounds for g in page}
    assert set(groups) == {finance, sales}
    finance_members = next(g["members"] for g in DEMO["groups"] if g["id"] == finance)
    assert [m["id"] for m in groups[finance]["members@delta"]] == finance_members
    kinds = ({u["id"]: "user" for u in DEMO["users"]} | {g["id"]: "group" for g in DEMO["groups"]}
             | {d["id"]: "device" for d in DEMO.get("devices", [])})
    assert [m["@odata.type"] for m in groups[finance]["members@delta"]] == [
        f"#microsoft.graph.{kinds[m]}" for m in finance_members]

    lee, patti = user_id("Lee Gu"), user_id("Patti Fernandez")
    await http.post(f"/groups/{finance}/members/$ref",
                    json={"@odata.id": f"https://graph.microsoft.com/v1.0/directoryObjects/{lee}"})
    await http.delete(f"/groups/{finance}/members/{patti}/$ref")
    await http.patch(f"/groups/{group_id('Engineering')}", json={"displayName": "Eng"})  # filtered out
    rounds, link = await pages(http, link)
    assert rounds == [[{"displayName": "Finance", "id": finance, "members@delta": [
        {"@odata.type": "#microsoft.graph.user", "id": lee},
        {"@odata.type": "#microsoft.graph.user", "id": patti, "@removed": {"reason": "deleted"}}]}]]

    await http.delete(f"/users/{lee}")  # leaves Finance with it
    await http.delete(f"/groups/{sales}")  # a security group: gone for good
    rounds, link = await pages(http, link)
    assert rounds == [[{"displayName": "Finance", "id": finance, "members@delta": [
        {"@odata.type": "#microsoft.graph.user", "id": lee, "@removed": {"reason": "deleted"}}]},
        {"id": sales, "@removed": {"reason": "deleted"}}]]

    too_many = " or ".join(f"id eq '{i:08d}-0000-0000-0000-000000000000'" for i in range(51))
    assert (await http.get("/groups/delta", params={"$filter": too_many})).status_code == 400
    assert (await http.get("/groups/delta", params={"$filter": "displayName eq 'Finance'"})).status_code == 400
    for option in ("$top", "$orderby", "$expand"):
        assert (await http.get("/groups/delta", params={option: "members"})).status_code == 400


async def test_a_large_group_spreads_its_members_over_several_pages(fake, http):
    fake.set_delta(pageSize=4)
    engineering = group_id("Engineering")
    rounds, _ = await pages(http, "/groups/delta", {"$filter": f"id eq '{engineering}'"})
    instances = [g for page in rounds for g in page]
    assert len(instances) >= 3 and {g["id"] for g in instances} == {engineering}
    assert all(g["displayName"] == "Engineering" for g in instances)  # the same properties on every page
    members = [m["id"] for g in instances for m in g.get("members@delta", [])]
    assert members == next(g["members"] for g in DEMO["groups"] if g["id"] == engineering)
    assert {m["@odata.type"] for g in instances for m in g["members@delta"]} == {
        "#microsoft.graph.user", "#microsoft.graph.group", "#microsoft.graph.device"}


async def test_expired_and_reset_delta_tokens_answer_the_documented_errors(fake, http):
    _, link = await pages(http, "/users/delta", {"$select": "displayName"})
    fake.set_delta(tokenLifetimeSeconds=0.5)
    await asyncio.sleep(0.8)
    expired = await http.get(link)
    assert expired.status_code == 410 and expired.json()["error"]["code"] == "syncStateNotFound"
    assert fake.set_delta(expiredStatus=400)["expiredStatus"] == 400
    assert (await http.get(link)).status_code == 400
    fake.set_delta(tokenLifetimeSeconds=7 * 24 * 3600, expiredStatus=410)
    assert (await http.get(link)).status_code == 200

    fake.set_delta(expireAll=True, tenant=DEMO_TID)
    reset = await http.get(link)
    assert reset.status_code == 410 and reset.json()["error"]["code"] == "resyncRequired"
    location = reset.headers["Location"]
    assert location.endswith("$deltatoken=") and "$select=displayName" in location
    rounds, fresh = await pages(http, location)  # the restart is a full synchronization
    assert len([u for page in rounds for u in page]) == len(DEMO["users"])
    assert (await http.get(fresh)).status_code == 200
    assert (await http.get("/users/delta", params={"$deltatoken": "Dgarbage"})).status_code == 400


async def test_replayed_changes_and_other_tenants_tokens(fake, http):
    _, link = await pages(http, "/users/delta", {"$select": "displayName"})
    lee = user_id("Lee Gu")
    await http.patch(f"/users/{lee}", json={"displayName": "Lee G."})
    rounds, link = await pages(http, link)
    assert [u["id"] for u in rounds[0]] == [lee]
    fake.set_delta(replay=True)
    rounds, link = await pages(http, link)
    assert [u["id"] for u in rounds[0]] == [lee]  # replayed: the same change again
    fake.set_delta(replay=False)
    fake.add_tenant(DEMO)  # the tenant is loaded again: its old tokens mean nothing now
    assert (await http.get(link)).status_code == 410


async def test_delta_needs_the_read_permission_like_the_lists(fake):
    headers = {"Authorization": f"Bearer {fake.token_for(DEMO_TID, ['GroupMember.Read.All'])}"}
    async with httpx.AsyncClient(base_url=fake.base_url, headers=headers) as client:
        assert (await client.get("/users/delta")).status_code == 403
        assert (await client.get("/groups/delta")).status_code == 200


async def test_delta_through_the_sdk_request_builders(fake, http):
    fake.set_delta(pageSize=15)
    graph = Graph(fake, DEMO_TID)
    try:
        params = DeltaRequestBuilder.DeltaRequestBuilderGetQueryParameters(select=["displayName", "accountEnabled"])
        page = await graph.client.users.delta.get(RequestConfiguration(query_parameters=params))
        seen = [u.id for u in page.value]
        while page.odata_next_link:
            page = await graph.client.users.delta.with_url(page.odata_next_link).get()
            seen += [u.id for u in page.value]
        assert sorted(seen) == sorted(u["id"] for u in DEMO["users"]) and page.odata_delta_link
        lee = user_id("Lee Gu")
        await http.delete(f"/users/{lee}")
        changed = await graph.client.users.delta.with_url(page.odata_delta_link).get()
        [removed] = changed.value
        assert removed.id == lee and removed.additional_data["@removed"] == {"reason": "changed"}

        groups = await graph.client.groups.delta.get()
        first = groups.value[0]
        assert first.additional_data["members@delta"][0]["@odata.type"] == "#microsoft.graph.user"
    finally:
        await graph.close()


async def test_groups_delta_hides_hidden_memberships_like_the_member_lists(tls):
    tenant = load_tenant(DEMO_TENANT)
    group = next(g for g in tenant["groups"] if g["displayName"] == "Sales Team")
    group["visibility"] = "HiddenMembership"
    with FakeGraph(tenants=[tenant], registration=registration(), tls=tls) as fake:
        flt = {"$filter": f"id eq '{group['id']}'"}
        async with httpx.AsyncClient(base_url=fake.base_url) as client:
            for roles, members in ((["GroupMember.Read.All"], []),
                                   (["GroupMember.Read.All", "Member.Read.Hidden"], group["members"])):
                headers = {"Authorization": f"Bearer {fake.token_for(DEMO_TID, roles)}"}
                [item] = (await client.get("/groups/delta", params=flt, headers=headers)).json()["value"]
                assert [m["id"] for m in item.get("members@delta", [])] == members


def test_azure_admin_changes_the_tenant_through_graph_writes(capsys):
    """`python -m local.azure_admin`: what a person uses to try near-real-time sync by hand."""
    from local.azure_admin import main
    from local.fake_graph import DEMO_TENANT
    from local.fake_graph.tenant import load_tenant
    from local.identity import LocalApp

    app = LocalApp.create("00000000-0000-0000-0000-00000000d5c1", ["http://127.0.0.1:7071/api/directory/consent"])
    tid = load_tenant(DEMO_TENANT)["tenantId"]
    with FakeGraph(tenants=[DEMO_TENANT], registration=app.registration, tls=app.tls) as fake:
        admin = FakeTenantAdmin(fake.base_url, tid)
        upn = "david.cohen@contoso.example"

        def david() -> dict:
            return next(u for u in admin.dump()["users"] if u["userPrincipalName"] == upn)

        def finance() -> dict:
            return next(g for g in admin.dump()["groups"] if g["displayName"] == "Finance")

        assert main(["--graph", fake.base_url, "block", upn]) == 0 and david()["accountEnabled"] is False
        assert main(["--graph", fake.base_url, "unblock", upn]) == 0 and david()["accountEnabled"] is True
        assert david()["id"] not in finance()["members"]
        assert main(["--graph", fake.base_url, "add-member", "Finance", upn]) == 0 and david()["id"] in finance()["members"]
        assert main(["--graph", fake.base_url, "remove-member", "Finance", upn]) == 0
        assert david()["id"] not in finance()["members"]
        with pytest.raises(SystemExit):
            main(["--graph", fake.base_url, "block", "nobody@contoso.example"])
        assert "done" in capsys.readouterr().out
