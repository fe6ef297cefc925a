"""The customer's Global Admin revokes the app's consent while a Full Sync is half-way through a large group."""
import pytest

from tests.faults import figures
from tests.faults.helpers import GraphFaults, connect, expect_error, poll, settle, sync
from tests.faults.tenants import with_large_group

pytestmark = pytest.mark.faults


def test_consent_revoked_mid_run_fails_it_marks_the_subscription_and_deprovisions_nobody(devhost, portal, load_tenant):
    t = with_large_group(1200, blocked=False)  # two Graph pages: two messages for the large group
    admin = load_tenant(t.tenant)
    groups = [t.ids["eng"], t.ids["large"]]
    # Tokens already issued keep working after a revocation until they expire (as at Microsoft: no CAE for app-only
    # tokens of multi-tenant apps), so they are short here and the slow page outlives the token it was sent with.
    admin.control("POST", "/authority", json={"tokenLifetimeSeconds": 3})
    sub = connect(portal, groups)
    first = sync(portal, sub)
    assert first["status"] == "succeeded"
    leavers = [f"staff{i:05d}" for i in range(0, 1200, 50)]  # on both pages
    for name in leavers:
        admin.remove_member(t.ids["large"], t.ids[name])
    before = {u["id"]: (u["status"], u["updatedAt"]) for u in portal.users()}

    faults = GraphFaults(admin)
    faults.add("$skiptoken=", delay_ms=4000)  # the second page is slow; consent goes while it is awaited
    run_id = portal.full_sync(sub)
    poll(lambda: faults.pending() == [], 60, "the second page to be requested")
    admin.control("POST", "/consent", json={"revoked": True, "revokedTenant": t.tenant["tenantId"]})
    figures.fault("admin consent revoked mid-run")
    run = portal.wait(sub, run_id, timeout=120)
    settle(devhost)
    faults.count()

    assert run["status"] == "failed", run
    assert "consent_revoked" in {e["code"] for e in run["errors"]}
    assert portal.call("GET", f"/directory/subscriptions/{sub}")["status"] == "consent_revoked"
    # Nobody deprovisioned, not even the members who really left: the run saw only part of the directory.
    assert {u["id"]: (u["status"], u["updatedAt"]) for u in portal.users()} == before
    # The portal is told to ask for consent again.
    expect_error(lambda: portal.search_groups(sub, "Depa"), 409, "consent_revoked")
    expect_error(lambda: portal.full_sync(sub), 409, "not_authorized")

    # Consent given again: the next run completes and deactivates exactly the leavers.
    assert portal.authorize(sub)["consent"] == "confirmed"
    run = sync(portal, sub)
    assert run["status"] == "succeeded" and run["counts"]["deactivated"] == len(leavers)
    assert {u["username"].split("@")[0] for u in portal.users() if u["status"] == "Inactive"} == set(leavers)
