"""Graph's notification webhook attacked, and Graph's own delivery at its worst (duplicates, reordering, delays)."""
import time
from collections import Counter

import httpx
import pytest

from tests.faults import figures
from tests.faults.helpers import connect, emails_of_org, poll, settle, sync
from tests.faults.tenants import with_large_group

pytestmark = pytest.mark.faults

ROLES = ["User.Read.All", "GroupMember.Read.All", "Group.Read.All"]


def watched(devhost, portal, load_tenant, **options):
    """A synced subscription of a tenant of its own, with its Graph subscriptions (watches) on users and groups."""
    t = with_large_group(3)
    admin = load_tenant(t.tenant)
    admin.control("POST", "/consent", json={"tenant": t.tenant["tenantId"], "deny": False, "roles": ROLES})
    sub = connect(portal, [t.ids["eng"], t.ids["sales"]], deactivateBlockedUsers=True, **options)
    first = sync(portal, sub)
    assert first["status"] == "succeeded", first

    def mine():
        return [w for w in admin.notifications()["subscriptions"]
                if w.get("tenantId") == admin.tenant_id and w["notificationUrl"].startswith(devhost.ready["api"])]
    poll(lambda: {w["resource"] for w in mine()} == {"users", "groups"}, 15, "the Graph subscriptions")
    return t, admin, sub, first, {w["resource"]: w for w in mine()}


def runs_of(portal, sub):
    return portal.call("GET", f"/directory/subscriptions/{sub}/runs")["runs"]


def graph_reads(admin) -> int:
    """The app's Graph requests so far (the admin's own writes and the fake's controls are not counted)."""
    stats = admin.control("GET", "/stats")["byRoute"]
    return sum(n for route, n in stats.items() if route.startswith("GET /v1.0"))


def test_forged_replayed_and_malformed_notifications_change_nothing(devhost, portal, load_tenant, victim):
    t, admin, sub, first, watches = watched(devhost, portal, load_tenant)
    victim_before = victim.snapshot()
    hook = devhost.ready["api"] + "/directory/notifications"
    users = watches["users"]
    other = [w for w in admin.notifications()["subscriptions"] if w.get("tenantId") == victim.tenant_id]
    ann = t.ids["ann.lee"]

    def note(**kw):
        return {"subscriptionId": users["id"], "clientState": users["clientState"], "changeType": "updated",
                "resource": f"Users/{ann}", "tenantId": t.tenant["tenantId"], "resourceData": {"id": ann}, **kw}

    forged = [
        note(clientState="guessed"), note(clientState=""), note(clientState=users["clientState"].upper()),
        note(clientState=users["clientState"] + " "), note(clientState=None), note(clientState=["x"]),
        note(subscriptionId="00000000-0000-0000-0000-000000000000"), note(subscriptionId="' or 1 eq 1 or '"),
        note(subscriptionId="x" * 5000), note(subscriptionId=None),
        note(tenantId="99999999-9999-9999-9999-999999999999"),  # a valid secret replayed for another tenant
        note(clientState=watches["groups"]["clientState"]),  # the other watch's secret
        *[note(subscriptionId=w["id"], clientState=users["clientState"]) for w in other],  # another org's watch
        *[note(subscriptionId=w["id"], clientState=w["clientState"], tenantId=t.tenant["tenantId"]) for w in other],
        "not an object", 7, None, [],
    ]
    before_reads = graph_reads(admin)
    for item in forged:
        answer = httpx.post(hook, json={"value": [item]}, timeout=10)
        assert answer.status_code == 202 and answer.json()["queued"] == 0, (item, answer.text)
    for body, status in [(b"{", 400), (b'{"value": 1}', 400), (b'{"value": [' + b"{}," * 1000 + b"{}]}", 400),
                         (b"[" + b" " * (1024 * 1024) + b"]", 413), (b"", 400)]:
        answer = httpx.post(hook, content=body, headers={"Content-Type": "application/json"}, timeout=10)
        assert answer.status_code == status and answer.json()["code"], (status, answer.text[:200])
    for token in ["a\r\nSet-Cookie: x=1", "x" * 5000, "\x00"]:
        assert httpx.post(hook, params={"validationToken": token}, timeout=10).status_code == 400
    figures.tried("forged, replayed and malformed Graph notifications", len(forged) + 8)
    time.sleep(3)  # longer than the debounce
    assert graph_reads(admin) == before_reads  # nothing forged made the app ask Graph anything
    assert [r["runId"] for r in runs_of(portal, sub)] == [first["runId"]]

    # The real one, sent three times (Graph retries and duplicates), makes one run.
    admin.block(ann)
    for _ in range(3):
        assert httpx.post(hook, json={"value": [note()]}, timeout=10).json()["queued"] == 1
    poll(lambda: len(runs_of(portal, sub)) > 1 and runs_of(portal, sub)[0]["status"] == "succeeded", 30,
         "the incremental run")
    settle(devhost)
    later = [r for r in runs_of(portal, sub) if r["runId"] != first["runId"]]
    assert len(later) == 1 and later[0]["counts"]["deactivated"] == 1, later
    assert victim.snapshot() == victim_before


def test_duplicated_reordered_and_delayed_deliveries_apply_once(devhost, portal, load_tenant):
    t, admin, sub, first, _ = watched(devhost, portal, load_tenant, sendEnrollmentEmail=True)
    admin.set_notifications(duplicate=True, reorder=True, delayMs=700)
    try:
        figures.fault("graph notifications duplicated, reordered and delayed")
        d = t.domain
        new = admin.add_user({"displayName": "Nia Long", "userPrincipalName": f"nia.long@{d}", "mail": f"nia.long@{d}",
                              "accountEnabled": True, "mailNickname": "nia.long",
                              "passwordProfile": {"password": "x-Local-1!"}})
        admin.add_member(t.ids["sales"], new["id"])
        admin.block(t.ids["bob.stone"])
        admin.block(t.ids["bob.stone"], False)  # blocked and unblocked again: the last word wins
        admin.remove_member(t.ids["eng"], t.ids["gus.hart"])

        def arrived():
            users = {u["username"]: u for u in portal.users()}
            return (f"nia.long@{d}" in users and users[f"gus.hart@{d}"]["status"] == "Inactive") and users
        users = poll(arrived, 40, "the changes")
        admin.wait_for_deliveries(20)
        settle(devhost)
    finally:
        admin.set_notifications(duplicate=False, reorder=False, delayMs=0)
    users = {u["username"]: u for u in portal.users()}
    assert users[f"bob.stone@{d}"]["status"] == "Active"
    assert users[f"nia.long@{d}"]["status"] == "Active"
    sent = Counter(m["X-Envelope-To"] for m in emails_of_org(devhost, portal.org))
    assert sent[f"nia.long@{d}"] == 1 and set(sent.values()) == {1}, sent  # however often Graph delivered a change
    assert all(r["status"] == "succeeded" for r in runs_of(portal, sub)), runs_of(portal, sub)
