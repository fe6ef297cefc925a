"""A sync under Azure's scalability targets (``--azure-limits``'s metering, set low so a small tenant meets them):
Table Storage answers 503 ServerBusy past its entities per partition and account, Graph 429 with Retry-After past the
tenant's resource units. The run is slower, not different: it ends in the clean run's state."""
import time

import pytest

from local.client import FakeTenantAdmin
from tests.faults import figures
from tests.faults.helpers import bus_counters, connect, emails_of_org, errors, recipients, settle, state, sync
from tests.faults.tenants import with_large_group

pytestmark = pytest.mark.faults

OPTIONS = {"deactivateBlockedUsers": True, "sendEnrollmentEmail": True}
# Low enough that ~1,000 entities and a dozen Graph pages meet them; high enough that the Table store's 8 transactions
# in flight (800 entities of debt at most) are paid off in 4 s, well within the SDK's ~10 s of back-off.
TABLE_LIMITS = {"enabled": True, "partitionEntitiesPerSecond": 200, "accountEntitiesPerSecond": 500}
GRAPH_LIMITS = {"enabled": True, "resourceUnitsPer10s": 12}


def test_a_sync_throttled_by_table_storage_and_graph_limits_ends_like_a_clean_run(devhost, new_portal, load_tenant):
    t = with_large_group(400)
    load_tenant(t.tenant)
    groups = [t.ids["eng"], t.ids["sales"], t.ids["support"], t.ids["large"]]
    clean = new_portal()
    clean_run = sync(clean, connect(clean, groups, **OPTIONS))
    assert clean_run["status"] == "succeeded", clean_run
    settle(devhost)

    faulty = new_portal()
    sub = connect(faulty, groups, **OPTIONS)
    fake = FakeTenantAdmin(devhost.ready["graph"], "-")
    devhost.control("POST", "/tables/limits", json=TABLE_LIMITS)
    fake.control("POST", "/limits", json=GRAPH_LIMITS)
    abandoned = bus_counters(devhost)["group-sync"]["abandoned"]
    started = time.monotonic()
    try:
        run = sync(faulty, sub, timeout=120)
        settle(devhost)
        seconds = time.monotonic() - started
        abandoned = bus_counters(devhost)["group-sync"]["abandoned"] - abandoned
        table = devhost.control("GET", "/tables/limits")
        graph = fake.control("GET", "/limits")
    finally:
        devhost.control("POST", "/tables/limits", json={"enabled": False})
        fake.control("POST", "/limits", json={"enabled": False})
    throttled = table["throttled"]["partition"] + table["throttled"]["account"]
    figures.fault("table 503 ServerBusy (scalability limits)", throttled)
    figures.fault("graph 429 (resource-unit limits)", graph["throttled"])
    assert throttled > 0 and graph["throttled"] > 0, (table, graph)

    # The SDK's back-off sat the throttling out: no group message was given back for redelivery because of it.
    assert abandoned == 0
    assert run["status"] == "succeeded", (run, seconds)
    assert (run["groupsTotal"], run["groupsDone"]) == (4, 4)
    assert run["counts"] == clean_run["counts"]
    assert errors(run) == errors(clean_run)
    assert state(faulty) == state(clean)
    # Every new active user with an address is invited exactly once: none lost, none twice.
    assert recipients(emails_of_org(devhost, faulty.org)) == recipients(emails_of_org(devhost, clean.org))
