"""Races on one subscription: two Full Syncs at once, the nightly run against a manual one, deletion during a run."""
import json
import threading
from urllib.parse import urlsplit

import httpx
import pytest

from tests.faults import figures
from tests.faults.helpers import (
    connect,
    count_table_faults,
    poll,
    settle,
    table_faults,
    table_faults_left,
    table_injected,
)
from tests.faults.tenants import with_large_group

pytestmark = pytest.mark.faults


def at_once(*calls):
    """Run ``calls`` on threads released together; their results in order."""
    barrier = threading.Barrier(len(calls))
    results = [None] * len(calls)

    def run(i, call):
        barrier.wait()
        results[i] = call()

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def post(portal, path):
    return lambda: portal.http.post(portal.api + path, headers={"Authorization": f"Bearer {portal.token}"})


def test_concurrent_full_syncs_start_exactly_one_run(devhost, portal, load_tenant):
    t = with_large_group(5)
    admin = load_tenant(t.tenant)
    sub = connect(portal, [t.ids["eng"], t.ids["sales"]])
    # Each round's run waits on a slow Graph page, so it is surely still running when the last request arrives.
    admin.control("POST", "/faults", json={"path": f"/groups/{t.ids['eng']}/transitiveMembers", "delayMs": 1500,
                                           "times": 4})
    for round_ in range(4):
        answers = at_once(*[post(portal, f"/directory/subscriptions/{sub}/sync")] * 6)
        figures.tried("concurrent Full Sync requests", len(answers))
        statuses = sorted(a.status_code for a in answers)
        assert statuses == [202] + [409] * 5, [a.text for a in answers]
        assert {a.json()["code"] for a in answers if a.status_code == 409} == {"sync_in_progress"}
        [winner] = [a.json()["runId"] for a in answers if a.status_code == 202]
        assert portal.wait(sub, winner)["status"] == "succeeded"
        assert len(portal.runs(sub)) == round_ + 1
    settle(devhost)


def test_the_nightly_run_racing_a_manual_one_starts_exactly_one(devhost, portal, load_tenant):
    t = with_large_group(5)
    admin = load_tenant(t.tenant)
    sub = connect(portal, [t.ids["eng"]], nightlySync=True)
    admin.control("POST", "/faults", json={"path": f"/groups/{t.ids['eng']}/transitiveMembers", "delayMs": 1500,
                                           "times": 3})  # whichever run starts is still running when the other asks
    api = urlsplit(devhost.ready["api"])
    nightly = f"{api.scheme}://{api.netloc}/admin/functions/nightly_sync"
    for round_ in range(3):
        before = len(portal.runs(sub))
        fired, manual = at_once(lambda: httpx.post(nightly, json={}, timeout=30),
                                post(portal, f"/directory/subscriptions/{sub}/sync"))
        figures.tried("nightly run racing a manual Full Sync", 2)
        assert fired.status_code == 202
        # The timer runs in the background: wait until a run exists and no run is active.
        poll(lambda: len(portal.runs(sub)) > before and all(r["status"] not in ("queued", "running")
                                                           for r in portal.runs(sub)), 60, "the race's run")
        settle(devhost)
        runs = portal.runs(sub)
        assert len(runs) == before + 1, runs  # exactly one of the two started a run
        if manual.status_code == 202:
            assert runs[0]["trigger"] == "manual" and runs[0]["runId"] == manual.json()["runId"]
        else:
            assert manual.status_code == 409 and manual.json()["code"] == "sync_in_progress"
            assert runs[0]["trigger"] == "nightly"
        assert runs[0]["status"] == "succeeded"


def test_a_subscription_cannot_be_deleted_while_its_run_is_queued_or_starting(devhost, portal, load_tenant):
    t = with_large_group(5)
    admin = load_tenant(t.tenant)
    sub = connect(portal, [t.ids["eng"], t.ids["sales"]])
    delete = lambda: portal.http.delete(f"{portal.api}/directory/subscriptions/{sub}",  # noqa: E731
                                        headers={"Authorization": f"Bearer {portal.token}"})

    # Starting: the subscription is reserved but the run's rows are still being written (slowed by the proxy).
    before = table_injected(devhost)
    table_faults(devhost, {"match": [portal.org, "$batch", "dirsyncRuns"], "delayMs": 2000})
    starting = []
    thread = threading.Thread(target=lambda: starting.append(post(portal, f"/directory/subscriptions/{sub}/sync")()))
    thread.start()
    poll(lambda: table_faults_left(devhost) == [], 30, "the run's rows to be in flight")
    refused = delete()
    thread.join(30)
    count_table_faults(devhost, before)
    figures.tried("deletion racing a starting or queued run", 1)
    assert starting[0].status_code == 202
    assert refused.status_code == 409 and refused.json()["code"] == "sync_in_progress", refused.text
    assert portal.wait(sub, starting[0].json()["runId"])["status"] == "succeeded"

    # Queued and running: the group's members are slow to come from Graph.
    admin.control("POST", "/faults", json={"path": f"/groups/{t.ids['eng']}/transitiveMembers", "delayMs": 2000})
    run_id = portal.full_sync(sub)
    refused = delete()
    figures.tried("deletion racing a starting or queued run", 1)
    assert refused.status_code == 409 and refused.json()["code"] == "sync_in_progress"
    assert portal.wait(sub, run_id)["status"] == "succeeded"
    figures.fault("graph slow response")
    settle(devhost)

    # Finished: deleted; its users become Manual and keep their status.
    synced = {u["id"]: u["status"] for u in portal.users()}
    assert delete().status_code == 204
    assert {u["id"]: (u["status"], u["sourceType"]) for u in portal.users()} == {
        uid: (status, "Manual") for uid, status in synced.items()}
    assert portal.http.get(f"{portal.api}/directory/subscriptions/{sub}",
                           headers={"Authorization": f"Bearer {portal.token}"}).status_code == 404


def test_if_a_deletion_lands_under_a_queued_run_its_workers_fail_the_run_and_write_no_user(devhost, portal,
                                                                                            load_tenant):
    from azure.data.tables import TableServiceClient

    from sync.adapters.table_text import key

    t = with_large_group(5)
    load_tenant(t.tenant)
    sub = connect(portal, [t.ids["eng"], t.ids["sales"]])
    tables = TableServiceClient.from_connection_string(devhost.ready["tables"])
    runs_pk = f"{key(portal.org)}|{key(sub)}"
    before = table_injected(devhost)
    # Hold both group workers at their first read of the run, then remove the subscription behind the app's back
    # (the API refuses to; this is an operator or a bug elsewhere).
    table_faults(devhost, {"match": [portal.org, "dirsyncRuns"], "method": "GET", "delayMs": 2000, "times": 2})
    run_id = portal.full_sync(sub)
    poll(lambda: table_faults_left(devhost) == [], 30, "both workers to be held")
    tables.get_table_client("dirsyncSubscriptions").delete_entity(key(portal.org), key(sub))
    figures.fault("subscription row deleted under a queued run")

    def ended():
        row = tables.get_table_client("dirsyncRuns").get_entity(runs_pk, key(run_id))
        return row if row["status"] not in ("queued", "running") else None
    run = poll(ended, 60, "the run to end")
    settle(devhost)
    count_table_faults(devhost, before)
    assert run["status"] == "failed"
    groups = tables.get_table_client("dirsyncRuns").query_entities(
        "PartitionKey eq @pk and kind eq 'group'", parameters={"pk": runs_pk})
    assert sorted((g["state"], *(e["code"] for e in json.loads(g["errors"]))) for g in groups) == [
        ("failed", "subscription_deleted")] * 2
    assert portal.users() == []  # the workers wrote no user for a subscription that is gone
