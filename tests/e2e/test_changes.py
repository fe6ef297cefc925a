"""Changes in Azure reach the portal within seconds: Graph's notifications through the dev host's webhook."""
import time

import pytest

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


def test_a_user_blocked_in_azure_is_inactive_within_seconds(devhost, portal, load_tenant):
    t = scenario()
    admin = load_tenant(t.tenant)
    ids = t.ids
    sub = connect(portal, admin, [ids["eng"], ids["sales"], ids["support"]], deactivateBlockedUsers=True,
                  sendEnrollmentEmail=False)
    first = sync(portal, sub)
    assert first["status"] == "succeeded", first

    def watched() -> set[str]:
        return {s["resource"] for s in admin.notifications()["subscriptions"]
                if s.get("notificationUrl", "").startswith(devhost.ready["api"])}
    deadline = time.monotonic() + 10
    while watched() != {"users", "groups"} and time.monotonic() < deadline:
        time.sleep(0.1)  # subscribed right after the run's end is recorded
    assert watched() == {"users", "groups"}

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
