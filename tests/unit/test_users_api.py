"""Users grid, Groups grid, manual users, and enrollment completion through the HTTP functions on fakes."""
import time
from datetime import timedelta

import pytest

from sync import signing
from sync.users import enrollment_token
from tests.fakes import SIGNING
from tests.helpers import call, token
from tests.unit.syncdsl import TENANT, connect, full_sync

SALES, ENG = "g-sales", "g-eng"


@pytest.fixture
async def synced(svc):
    t = svc.directory.tenant(TENANT)
    t.add_group(SALES, "Sales Team")
    t.add_group(ENG, "Engineering")
    t.add_user("ann", groups=[SALES], display_name="Ann Archer")
    t.add_user("bob", groups=[SALES, ENG], display_name="Bob <script>alert(1)</script>")
    t.add_user("zoe", groups=[ENG], display_name="Zoë Ångström", account_enabled=False)
    sub = await connect(svc, groups=(SALES, ENG), deactivateBlockedUsers=True)
    await full_sync(svc, sub)
    return sub


async def test_users_grid_shows_synced_users_with_groups(svc, synced):
    status, body, _ = await call("list_users")
    assert status == 200 and body["continuationToken"] is None
    by_name = {u["username"]: u for u in body["users"]}
    bob = by_name["bob@contoso.example"]
    assert bob["sourceType"] == "AdSync" and bob["subscriptionId"] == synced.id and bob["azureObjectId"] == "bob"
    assert bob["groups"] == [{"id": ENG, "displayName": "Engineering"}, {"id": SALES, "displayName": "Sales Team"}]
    assert by_name["zoe@contoso.example"]["status"] == "Inactive"
    assert by_name["zoe@contoso.example"]["statusReason"] == "blocked_in_directory"
    status, body, _ = await call("list_users", params={"status": "Inactive"})
    assert [u["username"] for u in body["users"]] == ["zoe@contoso.example"]
    status, body, _ = await call("list_users", params={"search": "ångström"})
    assert [u["displayName"] for u in body["users"]] == ["Zoë Ångström"]
    status, body, _ = await call("list_users", params={"sourceType": "Manual"})
    assert body["users"] == []


async def test_users_grid_pages(svc, synced):
    seen = []
    token_ = None
    for _ in range(5):
        params = {"pageSize": "1", **({"continuationToken": token_} if token_ else {})}
        status, body, _ = await call("list_users", params=params)
        seen += [u["id"] for u in body["users"]]
        token_ = body["continuationToken"]
        if not token_:
            break
    assert len(seen) == len(set(seen)) == 3


@pytest.mark.parametrize("params,code", [
    ({"status": "Blocked"}, "invalid_status"),
    ({"sourceType": "LDAP"}, "invalid_source_type"),
    ({"pageSize": "0"}, "invalid_page_size"),
    ({"pageSize": "501"}, "invalid_page_size"),
    ({"pageSize": "ten"}, "invalid_page_size"),
    ({"search": "x" * 300}, "invalid_search"),
    ({"colour": "red"}, "unknown_parameter"),
])
async def test_grid_bad_parameters(svc, params, code):
    status, body, _ = await call("list_users", params=params)
    assert (status, body["code"]) == (400, code)


async def test_groups_grid(svc, synced):
    status, body, _ = await call("list_groups")
    assert status == 200
    assert [(g["displayName"], g["userCount"], g["subscriptionId"]) for g in body["groups"]] == [
        ("Engineering", 2, synced.id), ("Sales Team", 2, synced.id)]
    assert all(g["lastSyncedAt"] for g in body["groups"])
    status, body, _ = await call("list_groups", auth=f"Bearer {token(org='org-b')}")
    assert body == {"groups": []}


async def test_synced_users_can_only_be_deactivated_in_azure(svc, synced):
    _, body, _ = await call("list_users", params={"search": "ann"})
    ann = body["users"][0]
    for action in ("deactivate_user", "activate_user"):
        status, err, _ = await call(action, route={"userId": ann["id"]})
        assert (status, err["code"]) == (409, "managed_by_directory")
        assert "Azure" in err["message"]
    _, again, _ = await call("get_user", route={"userId": ann["id"]})
    assert again["status"] == "Active"


async def test_manual_users(svc, synced):
    status, user, headers = await call("create_user", body={"username": "carol", "email": "carol@portal.example",
                                                             "displayName": "Carol"})
    assert status == 201 and user["sourceType"] == "Manual" and user["subscriptionId"] is None
    status, err, _ = await call("create_user", body={"username": "ANN@contoso.example", "displayName": "Dup"})
    assert (status, err["code"]) == (409, "username_taken")
    status, off, _ = await call("deactivate_user", route={"userId": user["id"]})
    assert (status, off["status"], off["statusReason"]) == (200, "Inactive", "deactivated_by_admin")
    status, on, _ = await call("activate_user", route={"userId": user["id"]})
    assert (status, on["status"], on["statusReason"]) == (200, "Active", None)
    for bad in ({"username": ""}, {"username": "a\r\nb"}, {"username": "x", "email": "not-an-email"},
                {"username": "x", "role": "Owner"}, {"username": 5}):
        status, err, _ = await call("create_user", body=bad)
        assert status == 400, bad


async def test_other_orgs_users_are_404(svc, synced):
    _, body, _ = await call("list_users")
    uid = body["users"][0]["id"]
    other = f"Bearer {token(org='org-b')}"
    for name in ("get_user", "deactivate_user", "activate_user"):
        status, err, _ = await call(name, route={"userId": uid}, auth=other)
        assert (status, err["code"]) == (404, "user_not_found")
    _, listed, _ = await call("list_users", auth=other)
    assert listed["users"] == []


async def test_enrollment_completion(svc, synced):
    _, body, _ = await call("list_users", params={"search": "ann"})
    ann = body["users"][0]
    good = enrollment_token(SIGNING, "org-a", ann["id"], ann["email"], svc.clock() + timedelta(days=7))
    status, user, _ = await call("complete_enrollment", body={"token": good})
    assert status == 200 and user["enrolledAt"]
    status, err, _ = await call("complete_enrollment", body={"token": good})
    assert (status, err["code"]) == (409, "token_used")
    expired = enrollment_token(SIGNING, "org-a", ann["id"], ann["email"], svc.clock() - timedelta(seconds=1))
    status, err, _ = await call("complete_enrollment", body={"token": expired})
    assert (status, err["code"]) == (410, "token_expired")
    forged = signing.sign("another-secret-that-is-long-enough-xxxx", "enrollment",
                          {"org": "org-a", "uid": ann["id"], "exp": int(time.time()) + 99})
    for bad in (forged, "nonsense", enrollment_token(SIGNING, "org-b", ann["id"], ann["email"], svc.clock() + timedelta(days=1))):
        status, err, _ = await call("complete_enrollment", body={"token": bad})
        assert (status, err["code"]) == (400, "invalid_token")
    status, err, _ = await call("complete_enrollment", body={})
    assert (status, err["code"]) == (400, "invalid_token")


async def test_only_an_active_synced_user_may_complete_enrollment(svc, synced):
    from sync import subscriptions
    from tests.unit.syncdsl import caller

    _, body, _ = await call("list_users")
    users = {u["username"].split("@")[0]: u for u in body["users"]}

    def link(name):
        return enrollment_token(SIGNING, "org-a", users[name]["id"], users[name]["email"], svc.clock() + timedelta(days=7))

    status, err, _ = await call("complete_enrollment", body={"token": link("zoe")})  # blocked in Azure
    assert (status, err["code"]) == (409, "user_inactive")
    svc.directory.tenant(TENANT).remove(SALES, "ann")  # removed from the synced groups: deprovisioned
    await full_sync(svc, synced)
    status, err, _ = await call("complete_enrollment", body={"token": link("ann")})
    assert (status, err["code"]) == (409, "user_inactive")
    await subscriptions.delete(svc, caller(), synced.id)  # disconnected: bob is Manual now, still Active
    status, err, _ = await call("complete_enrollment", body={"token": link("bob")})
    assert (status, err["code"]) == (410, "invitation_revoked")
    _, after, _ = await call("list_users")
    assert all(u["enrolledAt"] is None for u in after["users"])  # nothing recorded


async def test_an_older_link_without_its_address_is_refused_once_the_address_changed(svc, synced):
    """Issue 22, 3: links minted before they named their address (no ``to``) stay good until the address changes."""
    from dataclasses import replace as swap

    _, body, _ = await call("list_users", params={"search": "ann"})
    ann = body["users"][0]
    exp = int((svc.clock() + timedelta(days=7)).timestamp())
    legacy = signing.sign(SIGNING, "enrollment", {"org": "org-a", "uid": ann["id"], "exp": exp})
    t = svc.directory.tenant(TENANT)
    t.users["ann"] = swap(t.users["ann"], mail="anne@contoso.example")
    svc.clock.advance(minutes=1)
    await full_sync(svc, synced)
    status, err, _ = await call("complete_enrollment", body={"token": legacy})
    assert (status, err["code"]) == (410, "address_changed")
    _, body, _ = await call("list_users", params={"search": "bob"})
    bob = body["users"][0]
    legacy = signing.sign(SIGNING, "enrollment", {"org": "org-a", "uid": bob["id"], "exp": exp})
    status, user, _ = await call("complete_enrollment", body={"token": legacy})
    assert status == 200 and user["enrolledAt"]
