"""Issue 29: the function host is killed (SIGKILL; the dev host restarts it) in the middle of an incremental run, and
while a Full Sync request is between writing its run and sending its messages. Whoever comes next carries on at
once: the change job's redelivery takes its run over, the next request sends the stranded run's messages."""
import threading
import time
from collections import Counter

import httpx
import pytest

from tests.e2e.tenants import scenario
from tests.faults import figures
from tests.faults.helpers import (
    connect,
    emails_of_org,
    poll,
    recipients,
    settle,
    sync,
    table_faults,
    table_faults_left,
)
from tests.faults.test_crash import kill_function_host

pytestmark = pytest.mark.faults

OPTIONS = {"deactivateBlockedUsers": True, "sendEnrollmentEmail": True}


def watched(admin, devhost) -> bool:
    subs = admin.notifications()["subscriptions"]
    return {s["resource"] for s in subs if s.get("tenantId") == admin.tenant_id
            and s.get("notificationUrl", "").startswith(devhost.ready["api"])} == {"users", "groups"}


def test_killed_mid_incremental_run_the_burst_is_applied_listed_once_and_invited_once(devhost, new_portal, load_tenant):
    t = scenario()
    admin = load_tenant(t.tenant)
    # Graph's change notifications on groups need Group.Read.All (the suite's default consent grants less).
    admin.control("POST", "/consent", json={"tenant": t.tenant["tenantId"], "deny": False,
                                            "roles": ["User.Read.All", "GroupMember.Read.All", "Group.Read.All"]})
    ids, d = t.ids, t.domain
    portal = new_portal()
    sub = connect(portal, [ids["eng"], ids["sales"], ids["support"]], **OPTIONS)
    first = sync(portal, sub)
    assert first["status"] == "succeeded", first
    poll(lambda: watched(admin, devhost), 20, "the Graph subscriptions")
    settle(devhost)
    invited_before = len(emails_of_org(devhost, portal.org))

    # The burst, delivered in one notification POST: two new users, a block, a rename, a deletion, a removal.
    admin.set_notifications(paused=True)
    try:
        new = []
        for name, group in (("nia.long", "sales"), ("oli.park", "support")):
            made = admin.add_user({"displayName": name.replace(".", " ").title(), "userPrincipalName": f"{name}@{d}",
                                   "mail": f"{name}@{d}", "accountEnabled": True, "mailNickname": name,
                                   "passwordProfile": {"password": "x-Local-1!"}})
            admin.add_member(ids[group], made["id"])
            new.append(name)
        admin.block(ids["bob.stone"])
        admin.update_user(ids["cat.moss"], displayName="Catherine Moss")
        admin.delete_user(ids["fay.wong"])
        admin.remove_member(ids["support"], ids["dan.pike"])
        # The incremental run's batch creating the new users lands 3 s late: the host is killed while it waits, so
        # the users exist (with their invitations queued) and nothing after them was done.
        table_faults(devhost, {"match": [portal.org, "$batch", "dirsyncUsers", f"nia.long@{d}"], "delayMs": 3000})
    finally:
        admin.set_notifications(paused=False)
    poll(lambda: table_faults_left(devhost) == [], 60, "the incremental run's creating batch")
    [running] = [r for r in portal.runs(sub) if r["status"] == "running"]
    assert running["trigger"] == "change_notification"
    kill_function_host(devhost)
    killed = time.monotonic()

    def applied() -> bool:
        users = {u["username"]: u for u in portal.users()}
        return (all(f"{n}@{d}" in users for n in new)
                and users[f"bob.stone@{d}"]["status"] == "Inactive"
                and users[f"cat.moss@{d}"]["displayName"] == "Catherine Moss"
                and users[f"fay.wong@{d}"]["status"] == "Inactive"
                and users[f"dan.pike@{d}"]["status"] == "Inactive"
                and all(r["status"] not in ("queued", "running") for r in portal.runs(sub)))
    poll(applied, 120, "the burst to be applied after the kill")
    took = time.monotonic() - killed
    figures.fault("incremental run killed (SIGKILL)")
    print(f"\nseconds from the kill to the changes applied: {took:.1f}")
    figures.measure("seconds from the kill to the changes applied", took)
    assert took < 120

    run = portal.run(sub, running["runId"])
    assert run["status"] == "succeeded", run  # taken over by the redelivered change job, not abandoned
    later = [r for r in portal.runs(sub) if r["runId"] != first["runId"]]
    assert all(r["trigger"] == "change_notification" and r["status"] == "succeeded" for r in later), later
    listed = Counter((c["username"], c["change"]) for r in later for c in portal.changes(sub, r["runId"]))
    expected = {(f"nia.long@{d}", "created"), (f"oli.park@{d}", "created"), (f"bob.stone@{d}", "deactivated"),
                (f"cat.moss@{d}", "updated"), (f"fay.wong@{d}", "deactivated"), (f"dan.pike@{d}", "deactivated")}
    assert set(listed) == expected and all(n == 1 for n in listed.values()), listed  # each change listed once

    # A new sync is accepted at once, and every created user is invited exactly once.
    assert sync(portal, sub)["status"] == "succeeded"
    settle(devhost)
    sent = recipients(emails_of_org(devhost, portal.org))
    assert len(sent) == invited_before + 2
    assert [sent.count(f"{n}@{d}") for n in new] == [1, 1], sent


def test_killed_between_writing_a_full_sync_and_sending_it_the_next_request_sends_it(devhost, new_portal,
                                                                                      load_tenant):
    t = scenario()
    load_tenant(t.tenant)
    portal = new_portal()
    sub = connect(portal, [t.ids["eng"], t.ids["sales"], t.ids["support"]], **OPTIONS)
    # The request's write of its run (run and progress rows, one batch) lands 3 s late: the host is killed while it
    # waits, so the run is written queued and no group message is ever sent by that request.
    table_faults(devhost, {"match": [portal.org, "$batch", "dirsyncRuns"], "delayMs": 3000})
    outcome: list = []

    def request() -> None:
        try:
            outcome.append(portal.full_sync(sub))
        except (httpx.HTTPError, Exception) as exc:  # the host died under it
            outcome.append(exc)
    thread = threading.Thread(target=request)
    thread.start()
    poll(lambda: table_faults_left(devhost) == [], 30, "the request's write of its run")
    kill_function_host(devhost)
    thread.join(30)
    assert outcome and isinstance(outcome[0], Exception), outcome
    [stranded] = poll(lambda: portal.runs(sub), 10, "the run written after the kill")
    assert stranded["status"] == "queued"

    # The next request finds the run queued with no message, sends its messages, and says a sync is in progress.
    retried = time.monotonic()
    response = portal.call("POST", f"/directory/subscriptions/{sub}/sync", json={}, expect=(202, 409))
    assert response.get("code", "sync_in_progress") == "sync_in_progress"
    run = portal.wait(sub, stranded["runId"], timeout=60)
    assert run["status"] == "succeeded", run
    print(f"\nseconds from the retry to the stranded run's end: {time.monotonic() - retried:.1f}")
    assert sync(portal, sub)["status"] == "succeeded"  # and a new sync is accepted
