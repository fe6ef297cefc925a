"""The process hosting the functions is killed (SIGKILL) in the middle of a group, and the dev host restarts it."""
import os
import signal

import httpx
import pytest

from tests.faults import figures
from tests.faults.helpers import (
    GraphFaults,
    connect,
    count_table_faults,
    emails_of_org,
    errors,
    poll,
    recipients,
    settle,
    state,
    sync,
    table_faults,
    table_faults_left,
    table_injected,
)
from tests.faults.tenants import with_large_group

pytestmark = pytest.mark.faults

OPTIONS = {"deactivateBlockedUsers": True, "sendEnrollmentEmail": True}


def kill_function_host(devhost) -> None:
    """SIGKILL the function host (Azurite, the broker and the fake tenant live on in the dev host); wait for its
    replacement to serve again."""
    status = devhost.control("GET", "/status")
    os.kill(status["hostPid"], signal.SIGKILL)
    figures.fault("function host killed (SIGKILL)")

    def restarted() -> bool:
        now = devhost.control("GET", "/status")
        if now["restarts"] != status["restarts"] + 1 or now["hostPid"] == status["hostPid"]:
            return False
        try:
            return httpx.get(devhost.ready["api"] + "/health", timeout=5).status_code == 200
        except httpx.TransportError:
            return False
    poll(restarted, 60, "the function host to be restarted")


def test_killed_mid_group_twice_the_run_completes_like_a_clean_run(devhost, new_portal, load_tenant):
    t = with_large_group(2500)  # 2,504 members: three Graph pages, so three messages of one page each
    load_tenant(t.tenant)
    groups = [t.ids["eng"], t.ids["sales"], t.ids["support"], t.ids["large"]]
    clean = new_portal()
    clean_run = sync(clean, connect(clean, groups, **OPTIONS))
    assert clean_run["status"] == "succeeded", clean_run
    settle(devhost)

    crashed = new_portal()
    sub = connect(crashed, groups, **OPTIONS)
    before = table_injected(devhost)
    # Two slow moments to be killed in: a batch creating users (ann.lee among them) that lands only after the kill,
    # so the users exist but their invitations were never queued; and a continuation page of the large group.
    table_faults(devhost, {"match": [crashed.org, "$batch", "dirsyncUsers", f"ann.lee@{t.domain}"], "delayMs": 3000})
    graph = GraphFaults(load_tenant(t.tenant))
    graph.add("$skiptoken=", delay_ms=4000, times=1)

    run_id = crashed.full_sync(sub)
    kills = 0
    for _ in range(2):
        # Kill as soon as the worker is inside one of the slow calls, once for each.
        poll(lambda: (table_faults_left(devhost) == []) + (graph.pending() == []) > kills, 120, "a slow call")
        kill_function_host(devhost)
        kills += 1
    run = crashed.wait(sub, run_id, timeout=180)
    settle(devhost)
    count_table_faults(devhost, before)
    graph.count()

    assert devhost.control("GET", "/status")["restarts"] >= kills == 2
    assert run["status"] == "succeeded", run
    assert (run["groupsTotal"], run["groupsDone"]) == (4, 4)
    assert run["counts"] == clean_run["counts"] and errors(run) == errors(clean_run)
    assert state(crashed) == state(clean)
    assert state(crashed)["groups"]["Large Department"] == 2504
    # Invitations of users created just before the crash were queued again on redelivery, and sent once.
    assert recipients(emails_of_org(devhost, crashed.org)) == recipients(emails_of_org(devhost, clean.org))
    assert len(emails_of_org(devhost, crashed.org)) == 11
