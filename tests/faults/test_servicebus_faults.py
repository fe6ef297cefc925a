"""Service Bus at least once: every message delivered twice; messages abandoned until they are dead-lettered."""
import pytest

from tests.faults import figures
from tests.faults.helpers import (
    GraphFaults,
    bus_counters,
    connect,
    count_table_faults,
    emails_of_org,
    errors,
    poll,
    raw_grid,
    recipients,
    settle,
    state,
    sync,
    table_faults,
    table_injected,
)
from tests.faults.tenants import with_large_group

pytestmark = pytest.mark.faults

OPTIONS = {"deactivateBlockedUsers": True, "sendEnrollmentEmail": True}


def count_bus(devhost, before: dict, kind: str) -> int:
    """Messages delivered beyond the ones sent (duplicates and redeliveries) since ``before``, into the figures."""
    after = bus_counters(devhost)
    extra = sum((after[q]["deliveries"] - before[q]["deliveries"]) - (after[q]["sent"] - before[q]["sent"])
                for q in after)
    figures.fault(kind, extra)
    return extra


def failed_deliveries(devhost, before: dict) -> int:
    """Deliveries since ``before`` that were not completed (abandoned, the last one dead-lettered), into the figures."""
    after = bus_counters(devhost)
    failed = sum((after[q]["deliveries"] - before[q]["deliveries"]) - (after[q]["completed"] - before[q]["completed"])
                 for q in after)
    figures.fault("service bus delivery failed (abandoned until dead-lettered)", failed)
    return failed


def test_every_message_delivered_twice_ends_like_a_clean_run_with_one_email_each(devhost, new_portal, load_tenant):
    t = with_large_group(1200)
    load_tenant(t.tenant)
    groups = [t.ids["eng"], t.ids["sales"], t.ids["support"], t.ids["large"]]
    clean = new_portal()
    clean_run = sync(clean, connect(clean, groups, **OPTIONS))
    settle(devhost)

    twice = new_portal()
    sub = connect(twice, groups, **OPTIONS)
    before = bus_counters(devhost)
    devhost.control("POST", "/servicebus/faults", json={"duplicateDeliveries": True})
    try:
        run = sync(twice, sub)
        settle(devhost)
        rows = raw_grid(twice)
        again = sync(twice, sub)
        settle(devhost)
    finally:
        devhost.control("POST", "/servicebus/faults", json={"duplicateDeliveries": False})
    sent = sum(bus_counters(devhost)[q]["sent"] - before[q]["sent"] for q in before)
    # Each message came (at least) twice: the local host may also see a lock lost now and then, and redeliver.
    assert count_bus(devhost, before, "service bus duplicate delivery") >= sent

    assert run["status"] == again["status"] == "succeeded"
    assert run["counts"] == clean_run["counts"] and errors(run) == errors(clean_run)
    assert state(twice) == state(clean)
    assert recipients(emails_of_org(devhost, twice.org)) == recipients(emails_of_org(devhost, clean.org))
    assert len(emails_of_org(devhost, twice.org)) == 11
    # The second run, also delivered twice, found nothing to change and changed nothing.
    assert again["counts"]["unchanged"] == clean_run["counts"]["created"] and again["counts"]["created"] == 0
    assert raw_grid(twice) == rows


def test_a_continuation_dead_lettered_fails_the_run_and_deprovisions_nobody(devhost, portal, load_tenant):
    t = with_large_group(1200, blocked=False)
    admin = load_tenant(t.tenant)
    sub = connect(portal, [t.ids["large"]])
    assert sync(portal, sub)["status"] == "succeeded"
    left = [f"staff{i:05d}" for i in range(0, 1200, 100)]  # 12 members leave, on both pages
    for name in left:
        admin.remove_member(t.ids["large"], t.ids[name])
    settle(devhost)  # the first run's last message may still be completing
    before_bus = bus_counters(devhost)
    faults = GraphFaults(admin)
    faults.add("$skiptoken=", status=503, retry_after=1, times=1000)  # the second page never answers
    try:
        run = sync(portal, sub)
        settle(devhost)
    finally:
        faults.admin.control("DELETE", "/faults")
    figures.fault("graph 503", 4 * 3)  # three deliveries, each the SDK's four attempts
    # --max-delivery-count (3) deliveries failed; then the broker dead-lettered the message and its trigger failed the group.
    assert failed_deliveries(devhost, before_bus) >= 3

    assert run["status"] == "failed" and (run["groupsTotal"], run["groupsDone"]) == (1, 1)
    assert [e["code"] for e in run["errors"]] == ["group_sync_failed"] and "503" in run["errors"][0]["message"]
    assert all(u["status"] == "Active" for u in portal.users())  # partial data deprovisions nobody
    # The fault is gone: the next run completes and deactivates exactly the members who left.
    run = sync(portal, sub)
    assert run["status"] == "succeeded" and run["counts"]["deactivated"] == len(left)
    inactive = {u["username"].split("@")[0] for u in portal.users() if u["status"] == "Inactive"}
    assert inactive == set(left)


def test_table_storage_down_for_one_org_dead_letters_its_groups_and_the_run_fails(devhost, portal, load_tenant):
    t = with_large_group(5)
    load_tenant(t.tenant)
    sub = connect(portal, [t.ids["eng"], t.ids["sales"]])
    first = sync(portal, sub)
    settle(devhost)
    before, before_bus = table_injected(devhost), bus_counters(devhost)
    # Every query of the org's synced users fails from now on: no delivery of a group message can succeed.
    table_faults(devhost, {"match": [portal.org, "dirsyncUsers", "subscriptionId"], "status": 503, "times": 10_000})
    start = portal.full_sync(sub)
    try:
        # Both groups' messages are dead-lettered and their groups failed (progress lives in another table); the
        # run itself cannot be finalized while the org's users cannot be read.
        poll(lambda: portal.run(sub, start)["groupsDone"] == 2, 120, "both groups to fail")
    finally:
        devhost.control("DELETE", "/tables/faults")
    run = portal.wait(sub, start, timeout=60)
    settle(devhost)
    count_table_faults(devhost, before)
    assert failed_deliveries(devhost, before_bus) >= 6  # both groups' messages, three deliveries each
    assert run["status"] == "failed"
    assert sorted(e["code"] for e in run["errors"]) == ["group_sync_failed", "group_sync_failed"]
    assert all(u["status"] == "Active" for u in portal.users())
    assert sync(portal, sub)["counts"]["unchanged"] == first["counts"]["created"]


def test_a_message_that_is_no_job_is_dead_lettered_then_completed_once_not_redelivered_for_ever(devhost):
    """Issue 22 #4: the dead-letter triggers raised on a body they could not parse, so the message came back from the
    dead-letter queue for ever (about 2.4 tracebacks a second, group, enrollment and alert queues alike)."""
    from pathlib import Path

    from azure.servicebus import ServiceBusClient, ServiceBusMessage

    queues = ("group-sync", "enrollment-email", "admin-alerts")
    log = Path(devhost.log)
    start = log.stat().st_size
    before = bus_counters(devhost)
    with ServiceBusClient.from_connection_string(devhost.ready["serviceBus"]) as client:
        for queue in queues:
            with client.get_queue_sender(queue) as sender:
                sender.send_messages([ServiceBusMessage(b"not a job"), ServiceBusMessage(b'{"org": 1}')])
    settle(devhost, timeout=60)  # nothing left active, locked or dead-lettered

    def lines() -> list[str]:
        with log.open("rb") as f:
            f.seek(start)
            return [ln for ln in f.read().decode("utf-8", "replace").splitlines()
                    if "dead-lettered message is not a job" in ln]
    poll(lambda: len(lines()) >= 2 * len(queues), 10, "the dead-letter triggers' log lines")
    assert sorted(ln.split("queue=")[1].split()[0] for ln in lines()) == sorted(2 * list(queues))
    after = bus_counters(devhost)
    for queue in queues:  # three deliveries each (MAX_DELIVERY_COUNT), and one more from the dead-letter queue
        assert after[queue]["deliveries"] - before[queue]["deliveries"] <= 2 * 4, (queue, before[queue], after[queue])
    figures.tried("messages that are no job, on each queue", 2 * len(queues))
