"""Changes in Azure reach the portal within seconds: Graph's notifications through the dev host's webhook."""
import time
from urllib.parse import urlsplit

import httpx
import pytest

from tests.e2e.conftest import emails_to
from tests.e2e.tenants import scenario
from tests.e2e.test_full_sync import connect, grid, sync

pytestmark = pytest.mark.e2e


def wait_for_run(portal, sub, after: set[str], timeout=30):
    """The first run of ``sub`` not in ``after`` once it has ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = portal.call("GET", f"/directory/subscriptions/{sub}/runs")["runs"]
        new = [r for r in runs if r["runId"] not in after and r["status"] not in ("queued", "running")]
        if new:
            return new[0]
        time.sleep(0.2)
    raise AssertionError(f"no new run of {sub} within {timeout} s")


def poll(check, timeout=30, what="the change"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} did not happen within {timeout} s")


def watches(devhost, admin) -> list[dict]:
    """The Graph subscriptions of the admin's tenant that deliver to the dev host."""
    return [s for s in admin.notifications()["subscriptions"]
            if s.get("notificationUrl", "").startswith(devhost.ready["api"]) and s.get("tenantId") == admin.tenant_id]


def connected(devhost, portal, load_tenant, **options):
    """The scenario tenant, synced once with its three departments selected, and watched."""
    t = scenario()
    admin = load_tenant(t.tenant)
    sub = connect(portal, admin, [t.ids["eng"], t.ids["sales"], t.ids["support"]], deactivateBlockedUsers=True,
                  **options)
    first = sync(portal, sub)
    assert first["status"] == "succeeded", first
    # subscribed right after the run's end is recorded
    poll(lambda: {w["resource"] for w in watches(devhost, admin)} == {"users", "groups"}, 10, "the subscriptions")
    return t, admin, sub, first


def test_a_user_blocked_in_azure_is_inactive_within_seconds(devhost, portal, load_tenant):
    t, admin, sub, first = connected(devhost, portal, load_tenant, sendEnrollmentEmail=False)
    ids = t.ids

    seen = {first["runId"]}
    started = time.monotonic()
    admin.block(ids["bob.stone"])
    run = wait_for_run(portal, sub, seen)
    took = time.monotonic() - started
    assert (run["trigger"], run["status"]) == ("change_notification", "succeeded"), run
    assert run["counts"]["deactivated"] == 1 and run["counts"]["created"] == 0
    bob = grid(portal)[f"bob.stone@{t.domain}"]
    assert (bob["status"], bob["statusReason"]) == ("Inactive", "blocked_in_directory")
    print(f"blocked in Azure → Inactive in the portal: {took:.1f} s")
    assert took < 30

    seen.add(run["runId"])
    admin.remove_member(ids["sales"], ids["ann.lee"])  # ann stays in Engineering and Support
    admin.remove_member(ids["level3"], ids["jon.cole"])  # jon was in Engineering only, three groups deep
    deadline = time.monotonic() + 30
    while grid(portal)[f"jon.cole@{t.domain}"]["status"] != "Inactive" and time.monotonic() < deadline:
        time.sleep(0.2)  # one run, or two if Graph's notifications of the two changes came apart
    users = grid(portal)
    assert sorted(g["displayName"] for g in users[f"ann.lee@{t.domain}"]["groups"]) == [
        "Engineering Department", "Support Department"]
    jon = users[f"jon.cole@{t.domain}"]
    assert (jon["status"], jon["statusReason"], jon["groups"]) == ("Inactive", "removed_from_directory", [])
    later = [r for r in portal.call("GET", f"/directory/subscriptions/{sub}/runs")["runs"] if r["runId"] not in seen]
    assert later and all(r["trigger"] == "change_notification" and r["status"] == "succeeded" for r in later), later


def test_added_deleted_and_nested_members_arrive(devhost, portal, load_tenant):
    t, admin, sub, first = connected(devhost, portal, load_tenant, sendEnrollmentEmail=True)
    ids, d = t.ids, t.domain
    new = admin.add_user({"displayName": "Nia Long", "userPrincipalName": f"nia.long@{d}", "mail": f"nia.long@{d}",
                          "accountEnabled": True, "mailNickname": "nia.long",
                          "passwordProfile": {"password": "x-Local-1!"}})
    admin.add_member(ids["sales"], new["id"])  # a new user in a selected group
    admin.add_member(ids["level3"], ids["gus.hart"])  # nested three deep: gus is in Engineering already
    admin.delete_user(ids["fay.wong"])  # deleted in Azure
    poll(lambda: {u["username"] for u in portal.users()} >= {f"nia.long@{d}"} and
         grid(portal)[f"fay.wong@{d}"]["status"] == "Inactive", 30, "the three changes")
    users = grid(portal)
    nia = users[f"nia.long@{d}"]
    assert (nia["status"], nia["sourceType"], [g["displayName"] for g in nia["groups"]]) == (
        "Active", "AdSync", ["Sales Department"])
    assert (users[f"fay.wong@{d}"]["status"], users[f"fay.wong@{d}"]["statusReason"]) == (
        "Inactive", "removed_from_directory")
    poll(lambda: any(m["X-Envelope-To"] == f"nia.long@{d}" for m in emails_to(devhost, d)), 20, "nia's invitation")
    runs = portal.call("GET", f"/directory/subscriptions/{sub}/runs")["runs"]
    assert all(r["trigger"] == "change_notification" for r in runs if r["runId"] != first["runId"])


def test_a_member_added_to_a_nested_group_is_active(devhost, portal, load_tenant):
    t, admin, sub, first = connected(devhost, portal, load_tenant, sendEnrollmentEmail=False)
    ids, d = t.ids, t.domain
    admin.add_member(ids["level2"], ids["kim.blocked"])  # kim is blocked: Inactive, but now in Engineering too
    admin.remove_member(ids["support"], ids["max.nomail"])
    admin.add_member(ids["level3"], ids["max.nomail"])  # max moves from Support into Engineering, nested
    poll(lambda: [g["displayName"] for g in grid(portal)[f"max.nomail@{d}"]["groups"]] == ["Engineering Department"],
         30, "max's move")
    users = grid(portal)
    assert users[f"max.nomail@{d}"]["status"] == "Active"
    assert sorted(g["displayName"] for g in users[f"kim.blocked@{d}"]["groups"]) == [
        "Engineering Department", "Sales Department"]


def test_users_read_back_in_short_pages_are_updated_not_deprovisioned(devhost, portal, load_tenant):
    """Users changed at once are read back by one `id in (…)` look-up, which Graph may answer with fewer users and a
    nextLink (learn.microsoft.com/graph/paging; the fake does): a user on the second page is not taken for deleted."""
    t, admin, sub, first = connected(devhost, portal, load_tenant, sendEnrollmentEmail=False)
    d, renamed = t.domain, ("bob.stone", "cat.moss", "dan.pike", "eve.ruiz", "gus.hart")
    before = grid(portal)
    for name in renamed:
        admin.update_user(t.ids[name], displayName=f"{name} renamed")
    run = wait_for_run(portal, sub, {first["runId"]})
    assert (run["trigger"], run["status"]) == ("change_notification", "succeeded"), run

    def settled():
        users = grid(portal)
        done = all(users[f"{n}@{d}"]["displayName"] == f"{n} renamed" for n in renamed)
        return users if done or any(users[f"{n}@{d}"]["status"] != "Active" for n in renamed) else None

    after = poll(settled, 30, "the renames")
    for name in renamed:
        user = after[f"{name}@{d}"]
        assert (user["status"], user["groups"]) == ("Active", before[f"{name}@{d}"]["groups"]), user
    assert {u: v["status"] for u, v in after.items()} == {u: v["status"] for u, v in before.items()}


def test_forged_notifications_and_the_validation_handshake(devhost, portal, load_tenant):
    t, admin, sub, first = connected(devhost, portal, load_tenant, sendEnrollmentEmail=False)
    hook = devhost.ready["api"] + "/directory/notifications"
    token = "Validation: Testing client application reachability for subscription Request-Id: 1 <b>x</b>"
    echoed = httpx.post(hook, params={"validationToken": token}, timeout=10)
    assert (echoed.status_code, echoed.text, echoed.headers["content-type"].split(";")[0]) == (200, token, "text/plain")
    [users_watch] = [w for w in watches(devhost, admin) if w["resource"] == "users"]
    forged = {"value": [{"subscriptionId": users_watch["id"], "clientState": "guessed", "changeType": "updated",
                         "resource": f"Users/{t.ids['ann.lee']}", "tenantId": t.tenant["tenantId"],
                         "resourceData": {"id": t.ids["ann.lee"]}}]}
    answer = httpx.post(hook, json=forged, timeout=10)
    assert answer.status_code == 202 and answer.json() == {"accepted": 0, "ignored": 1, "queued": 0}
    assert httpx.post(hook, content=b"{not json", timeout=10).status_code == 400
    time.sleep(3)  # longer than the debounce: a queued job would have made a run by now
    assert [r["runId"] for r in portal.call("GET", f"/directory/subscriptions/{sub}/runs")["runs"]] == [first["runId"]]


def test_the_renewal_timer_extends_the_subscriptions(devhost, portal, load_tenant):
    t, admin, sub, first = connected(devhost, portal, load_tenant, sendEnrollmentEmail=False)
    before = {w["id"]: w["expirationDateTime"] for w in watches(devhost, admin)}
    api = urlsplit(devhost.ready["api"])
    time.sleep(1.1)  # the renewed expiry is later by at least the time passed
    fired = httpx.post(f"{api.scheme}://{api.netloc}/admin/functions/watch_renewal", timeout=10)
    assert fired.status_code == 202
    poll(lambda: all(w["expirationDateTime"] > before[w["id"]] for w in watches(devhost, admin)
                     if w["id"] in before), 20, "the renewal")


def test_an_expired_delta_link_makes_the_next_run_a_full_sync(devhost, portal, load_tenant):
    t, admin, sub, first = connected(devhost, portal, load_tenant, sendEnrollmentEmail=False)
    admin.expire_delta_tokens()
    admin.block(t.ids["cat.moss"])
    run = wait_for_run(portal, sub, {first["runId"]})
    assert run["status"] == "succeeded" and [e["code"] for e in run["errors"]] == ["delta_expired"], run
    assert run["groupsDone"] == 3
    assert grid(portal)[f"cat.moss@{t.domain}"]["status"] == "Inactive"
