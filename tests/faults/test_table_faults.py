"""Table Storage failing under the app (through the dev host's proxy), and many workers writing one run at once."""
import pytest

from tests.faults import figures
from tests.faults.helpers import (
    connect,
    count_table_faults,
    emails_of_org,
    errors,
    recipients,
    settle,
    state,
    sync,
    table_faults,
    table_faults_left,
    table_injected,
)
from tests.faults.tenants import many_small_groups, with_large_group

pytestmark = pytest.mark.faults

OPTIONS = {"deactivateBlockedUsers": True, "sendEnrollmentEmail": True}


def test_busy_dropped_slow_and_lost_table_answers_during_a_sync_end_like_a_clean_run(devhost, new_portal, load_tenant):
    t = with_large_group(1200)
    load_tenant(t.tenant)
    groups = [t.ids["eng"], t.ids["sales"], t.ids["support"], t.ids["large"]]
    clean = new_portal()
    clean_run = sync(clean, connect(clean, groups, **OPTIONS))
    assert clean_run["status"] == "succeeded", clean_run
    settle(devhost)

    faulty = new_portal()
    sub = connect(faulty, groups, **OPTIONS)
    org = faulty.org
    before = table_injected(devhost)
    # Only the faulty org's user rows and run rows are hit (the sync's start only touches the other tables).
    users, runs = [org, "dirsyncUsers"], [org, "dirsyncRuns"]
    table_faults(
        devhost,
        # Reads: busy within the SDK's retries, and connections dropped (GETs are retried by the SDK).
        {"match": users, "method": "GET", "status": 503, "times": 2, "retryAfter": 0},
        {"match": users, "method": "GET", "mode": "reset", "times": 2},
        # Transactions of user rows: busy five times (within the SDK's five status retries), a dropped
        # connection (POSTs are not retried by the SDK), and two whose rows landed but whose answer was lost.
        {"match": ["$batch", *users], "status": 503, "times": 5},
        {"match": ["$batch", *users], "mode": "reset", "times": 1},
        {"match": ["$batch", *users], "mode": "lose", "times": 2},
        # The run's progress rows and the run row: replaced, answer lost, so the SDK's retry meets its own write.
        {"match": runs, "method": "PUT", "mode": "lose", "times": 3},
        {"match": runs, "status": 500, "times": 2},
        {"match": runs, "delayMs": 300, "times": 10},
    )
    run = sync(faulty, sub)
    settle(devhost)
    assert table_faults_left(devhost) == []  # every fault was met
    injected = count_table_faults(devhost, before)
    assert injected == {"status_503": 7, "reset": 3, "lose": 5, "status_500": 2, "delay": 10}

    assert run["status"] == "succeeded", run
    assert (run["groupsTotal"], run["groupsDone"]) == (4, 4)
    assert run["counts"] == clean_run["counts"]
    assert errors(run) == errors(clean_run)
    assert state(faulty) == state(clean)
    # Every new active user with an address is invited exactly once: none lost, none twice.
    assert recipients(emails_of_org(devhost, org)) == recipients(emails_of_org(devhost, clean.org))
    assert len(emails_of_org(devhost, org)) == 11
    # The run released the subscription: it shows as the last run, and the next sync starts.
    assert faulty.call("GET", f"/directory/subscriptions/{sub}")["lastRun"]["runId"] == run["runId"]
    again = sync(faulty, sub)
    assert again["status"] == "succeeded" and again["counts"]["created"] == 0


def test_a_table_failure_while_starting_a_sync_neither_hangs_the_run_nor_blocks_the_next(devhost, portal, load_tenant):
    t = with_large_group(5)
    load_tenant(t.tenant)
    sub = connect(portal, [t.ids["eng"], t.ids["sales"]])
    before = table_injected(devhost)
    # 503 six times: past the Table client's five status retries (sync/adapters/tables.py), so the request fails.
    for fault in ({"status": 503, "times": 6}, {"mode": "lose", "times": 1}, {"mode": "reset", "times": 1}):
        # The run and its progress rows are written in one transaction when the sync starts.
        table_faults(devhost, {"match": ["$batch", portal.org, "dirsyncRuns"], **fault})
        refused = portal.http.post(f"{portal.api}/directory/subscriptions/{sub}/sync",
                                   headers={"Authorization": f"Bearer {portal.token}"})
        assert refused.status_code == 503 and refused.json()["code"] and int(refused.headers["Retry-After"]) >= 1
        assert table_faults_left(devhost) == []
        # Whatever landed, nothing stays queued or running, and trying again (as told) starts a sync.
        assert all(r["status"] not in ("queued", "running") for r in portal.runs(sub))
        run = sync(portal, sub)
        assert run["status"] == "succeeded", run
    # The run whose rows landed though its answer was lost was failed; the others never existed.
    assert sorted((r["status"], tuple(e["code"] for e in r["errors"])) for r in portal.runs(sub)) == [
        ("failed", ("storage_unavailable",)), ("succeeded", ()), ("succeeded", ()), ("succeeded", ())]
    count_table_faults(devhost, before)
    settle(devhost)


def test_thirty_two_groups_finishing_together_count_exactly(devhost, portal, load_tenant):
    t = many_small_groups(32, per_group=3)
    admin = load_tenant(t.tenant)
    groups = [t.ids[f"g{g:02d}"] for g in range(32)]
    sub = connect(portal, groups)
    conflicts_before = devhost.control("GET", "/tables/stats")["upstreamErrors"].get("412", 0)
    before = table_injected(devhost)
    admin.control("POST", "/latency", json={"ms": 300})  # every group's one page arrives together
    # The first writes of the run row are slow, so the workers that start together overlap on it.
    table_faults(devhost, {"match": [portal.org, "dirsyncRuns"], "method": "PUT", "delayMs": 200, "times": 8})
    try:
        run = sync(portal, sub)
    finally:
        admin.control("POST", "/latency", json={"ms": 0})
    conflicts = devhost.control("GET", "/tables/stats")["upstreamErrors"].get("412", 0) - conflicts_before
    count_table_faults(devhost, before)
    figures.fault("table storage 412 from concurrent writers (natural)", conflicts)
    assert conflicts > 0  # the workers did race on shared rows
    assert run["status"] == "succeeded", run
    assert (run["groupsTotal"], run["groupsDone"]) == (32, 32)
    assert run["counts"]["created"] == 96 and run["counts"]["updated"] == 0 and run["counts"]["unchanged"] == 0
    users = state(portal)["users"]
    assert len(users) == 96
    assert all(len(u[-1]) == (2 if name.endswith(".0@" + t.domain) else 1) for name, u in users.items())
    assert state(portal)["groups"] == {f"Team {g:02d}": 4 for g in range(32)}
    again = sync(portal, sub)
    assert (again["groupsDone"], again["counts"]["unchanged"], again["counts"]["created"]) == (32, 96, 0)
    settle(devhost)


def test_a_lost_answer_to_the_runs_final_write_still_releases_the_subscription(devhost, portal, load_tenant):
    t = many_small_groups(1, per_group=30)
    admin = load_tenant(t.tenant)
    sub = connect(portal, [t.ids["g00"]])
    assert sync(portal, sub)["counts"]["created"] == 30
    for n in range(20):
        admin.remove_member(t.ids["g00"], t.ids[f"u00.{n}"])
    before = table_injected(devhost)
    # The run's terminal write (held for review) lands, but its answer is lost: the SDK's retry meets a 412.
    table_faults(devhost, {"match": [portal.org, "dirsyncRuns", "needs_review"], "method": "PUT", "mode": "lose"})
    run = sync(portal, sub)
    assert table_faults_left(devhost) == []
    count_table_faults(devhost, before)
    assert run["status"] == "needs_review" and run["pendingDeactivations"] == 20, run
    approved = portal.call("POST", f"/directory/subscriptions/{sub}/runs/{run['runId']}/approve")
    assert approved["status"] == "succeeded" and approved["counts"]["deactivated"] == 20
    assert sum(u["status"] == "Inactive" for u in portal.users()) == 20
    assert portal.call("GET", f"/directory/subscriptions/{sub}")["lastRun"]["runId"] == run["runId"]


def test_a_lost_answer_to_creating_users_still_reports_them_like_a_clean_run(devhost, new_portal, load_tenant):
    t = with_large_group(0)
    load_tenant(t.tenant)
    groups = [t.ids["sales"]]  # one group: no other worker creates its users first
    clean = new_portal()
    clean_run = sync(clean, connect(clean, groups, **OPTIONS))
    settle(devhost)
    faulty = new_portal()
    sub = connect(faulty, groups, **OPTIONS)
    before = table_injected(devhost)
    # The transaction creating the Sales users (lou.guest has no address: no invitation, reported as skipped) lands,
    # its answer is lost, and the message is redelivered: the users exist, the report must not be lost.
    table_faults(devhost, {"match": [faulty.org, "$batch", "dirsyncUsers", f"lou.guest_ext#EXT#@{t.domain}"],
                           "mode": "lose"})
    run = sync(faulty, sub)
    settle(devhost)
    assert table_faults_left(devhost) == []
    count_table_faults(devhost, before)
    assert run["status"] == "succeeded"
    assert run["counts"] == clean_run["counts"] and run["counts"]["skippedReasons"] == {"no_email_address": 1}
    assert errors(run) == errors(clean_run)
    assert state(faulty) == state(clean)
    assert recipients(emails_of_org(devhost, faulty.org)) == recipients(emails_of_org(devhost, clean.org))
