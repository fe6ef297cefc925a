"""The process hosting the functions is killed (SIGKILL) in the middle of a group or of an invitation's SMTP send,
and the dev host restarts it."""
import os
import signal
import time
from datetime import datetime, timezone
from urllib.parse import urlsplit

import httpx
import pytest

from tests.e2e.tenants import scenario
from tests.faults import figures
from tests.faults.helpers import (
    GraphFaults,
    bus_counters,
    connect,
    count_table_faults,
    emails_of_org,
    errors,
    poll,
    recipients,
    settle,
    smtp_faults,
    smtp_status,
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
    # A kill may also cut an invitation's send (the mailer runs in the same host): its claim is left "sending"
    # within its lease, and the next run sends it once the lease is over (as in the test below). Only that is
    # allowed to wait; every other invitation, those of users created just before the crash included (queued again
    # on redelivery), is sent by this run, once.
    cut = [u for u in crashed.users() if email_state(devhost, crashed, u) == "sending"]
    if cut:
        wait_out_leases(devhost, crashed, cut)
        assert sync(crashed, sub)["status"] == "succeeded"
        settle(devhost)
    assert recipients(emails_of_org(devhost, crashed.org)) == recipients(emails_of_org(devhost, clean.org))
    assert len(emails_of_org(devhost, crashed.org)) == 11


def fire_recovery_timer(devhost) -> None:
    """Run the recovery timer now (the Functions admin API), as its schedule would."""
    api = urlsplit(devhost.ready["api"])
    assert httpx.post(f"{api.scheme}://{api.netloc}/admin/functions/recovery_sweep", timeout=10).status_code == 202


def _user_row(devhost, portal, user: dict) -> dict:
    from azure.data.tables import TableServiceClient

    from sync.adapters.table_text import key

    rows = TableServiceClient.from_connection_string(devhost.ready["tables"]).get_table_client("dirsyncUsers")
    return rows.get_entity(key(portal.org), key(user["id"]))


def email_state(devhost, portal, user: dict) -> str | None:
    """The user's invitation state as stored (``sending``: claimed by a mailer, within its lease or left by one)."""
    return _user_row(devhost, portal, user).get("emailState")


def wait_out_leases(devhost, portal, users: list[dict]) -> None:
    """Sleep until the invitation claims of ``users`` have run out (INVITATION_LEASE_SECONDS, 60 s in this suite)."""
    for user in users:
        lease_until = _user_row(devhost, portal, user)["emailLeaseUntil"]
        if isinstance(lease_until, str):
            lease_until = datetime.fromisoformat(lease_until)
        time.sleep(max(0.0, (lease_until - datetime.now(timezone.utc)).total_seconds()) + 1)


# The scenario's users who get an invitation: enabled, with an address (max has no mail: his UPN is used; kim is
# blocked, the guest lou has neither).
INVITED = ("ann.lee", "bob.stone", "cat.moss", "dan.pike", "eve.ruiz", "fay.wong", "gus.hart", "hal.reed", "ivy.nash",
           "jon.cole", "max.nomail")
HOLD_MS = 20_000  # the held DATA's wait; below the mailer's SMTP_TIMEOUT_SECONDS (30), so only the kill ends it


@pytest.mark.slow  # waits out the invitation's claim lease in real time (INVITATION_LEASE_SECONDS: 60 in this suite)
@pytest.mark.timeout(600)
def test_killed_during_an_invitations_smtp_send_no_invitation_is_lost(devhost, portal, load_tenant):
    """The host dies with an invitation claimed (``sending``, a lease) and its DATA sent but not yet answered.

    The sink stores nothing for a DATA whose client went away before the answer (it never took the message over).
    The redelivered job finds the claim within its lease ("being sent") and leaves it; once the lease has run out
    the recovery timer re-queues the invitation (no Full Sync needed) and the mailer takes the claim over and sends
    it (at least once).
    """
    t = scenario()
    load_tenant(t.tenant)
    sub = connect(portal, [t.ids["eng"], t.ids["sales"], t.ids["support"]], **OPTIONS)

    def row(user: dict) -> dict:
        return _user_row(devhost, portal, user)

    cut_before = smtp_status(devhost)["counts"]["cut"]
    smtp_faults(devhost, {"stage": "DATA", "delayMs": HOLD_MS, "times": 1})
    run_id = portal.full_sync(sub)
    [held] = poll(lambda: smtp_status(devhost)["holding"], 60, "an invitation's DATA to be held by the sink")
    [killed] = held["rcptTos"]

    def only_the_held_send_in_flight() -> bool:
        queues = bus_counters(devhost)
        mail, groups = queues["enrollment-email"], queues["group-sync"]
        return (all(groups[k] == 0 for k in ("active", "locked", "scheduled"))
                and (mail["active"], mail["locked"], mail["scheduled"]) == (0, 1, 0))
    # Every other invitation is sent and recorded meanwhile, so the kill cuts exactly one send.
    poll(only_the_held_send_in_flight, HOLD_MS / 1000 - 8, "every invitation but the held one to be sent")
    assert smtp_status(devhost)["holding"] == [held]
    kill_function_host(devhost)
    poll(lambda: smtp_status(devhost)["counts"]["cut"] == cut_before + 1, 10, "the sink to see the send cut")
    figures.fault("smtp send cut by a function host kill")

    run = portal.wait(sub, run_id, timeout=120)
    settle(devhost)
    assert run["status"] == "succeeded", run
    invited = [u for u in portal.users() if u["email"] and u["status"] == "Active"]
    expected = {f"{n}@{t.domain}" for n in INVITED}
    assert {u["email"] for u in invited} == expected and killed in expected

    def sent_to(address: str) -> int:
        return recipients(emails_of_org(devhost, portal.org)).count(address)

    # After the run: the killed send stored nothing and its claim is still within its lease; every other user has
    # exactly one invitation, recorded as sent.
    [victim] = [u for u in invited if u["email"] == killed]
    assert (row(victim)["emailState"], victim["enrollmentEmailSentAt"], sent_to(killed)) == ("sending", None, 0)
    for u in invited:
        if u is not victim:
            assert (row(u)["emailState"], bool(u["enrollmentEmailSentAt"]), sent_to(u["email"])) == ("sent", True, 1), u

    # The claim's lease (INVITATION_LEASE_SECONDS, 60 s in this suite) runs out; the recovery timer (no run of any
    # kind) re-queues the invitation left "sending" under a fresh message id, and the mailer takes the claim over.
    runs_before = len(portal.runs(sub))
    wait_out_leases(devhost, portal, [victim])
    fire_recovery_timer(devhost)
    poll(lambda: row(victim)["emailState"] == "sent", 30, "the re-queued invitation to be sent")
    settle(devhost)
    assert len(portal.runs(sub)) == runs_before  # no Full Sync (nor any run) was needed

    users = {u["email"]: u for u in portal.users()}
    for u in invited:
        assert row(u)["emailState"] == "sent" and users[u["email"]]["enrollmentEmailSentAt"], u
        # Exactly the user's address as the envelope's only recipient; the cut send may have reached a real relay.
        assert 1 <= sent_to(u["email"]) <= (2 if u is victim else 1), (u["email"], sent_to(u["email"]))
    assert all(m["X-Envelope-To"] in users for m in emails_of_org(devhost, portal.org))
