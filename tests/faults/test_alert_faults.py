"""Admin alerts at least once: every Service Bus message (group jobs and the alerts themselves) delivered twice, and
still exactly one e-mail per event — a failed run, a run needing review, a lost consent and the run it failed."""
import time
from collections import Counter

import pytest

from tests.e2e.conftest import alerts_to, confirm_alert_addresses
from tests.e2e.tenants import STAFF, staff_and_engineering
from tests.faults import figures
from tests.faults.helpers import bus_counters, connect, settle, sync

pytestmark = pytest.mark.faults


def test_every_message_delivered_twice_still_one_alert_per_event(devhost, portal, load_tenant):
    t = staff_and_engineering()
    admin = load_tenant(t.tenant)
    admin.control("POST", "/authority", json={"tokenLifetimeSeconds": 3})  # a revocation shows once tokens expire
    admins = [f"ops@{t.domain}", f"lead@{t.domain}", f"oncall@{t.domain}"]
    sub = connect(portal, [t.ids["all"], t.ids["eng"]], notifyEmails=admins)
    confirm_alert_addresses(devhost, admins)  # as the admins would: the link in each one's confirmation e-mail
    assert sync(portal, sub)["status"] == "succeeded"
    settle(devhost)
    before = bus_counters(devhost)
    devhost.control("POST", "/servicebus/faults", json={"duplicateDeliveries": True})
    events = []
    try:
        # A group Graph no longer finds (both copies of its message meet the 404): the run fails.
        admin.control("POST", "/faults", json={"path": f"/groups/{t.ids['eng']}/transitiveMembers", "status": 404,
                                               "times": 20})
        failed = sync(portal, sub)
        admin.control("DELETE", "/faults")
        assert failed["status"] == "failed", failed
        events.append(("Directory Sync failed", failed["runId"]))
        settle(devhost)
        # 20 of 31 leave: held back for review.
        for n in STAFF[:20]:
            admin.remove_member(t.ids["all"], t.ids[n])
        review = sync(portal, sub)
        assert review["status"] == "needs_review", review
        events.append(("Directory Sync needs your review", review["runId"]))
        settle(devhost)
        # The tenant revokes the consent: the run's workers find out, the subscription is consent_revoked and the
        # run fails — two events.
        admin.control("POST", "/consent", json={"revoked": True, "revokedTenant": t.tenant["tenantId"]})
        figures.fault("admin consent revoked before a run")
        time.sleep(4)
        lost = sync(portal, sub)
        assert lost["status"] == "failed" and "consent_revoked" in {e["code"] for e in lost["errors"]}, lost
        events += [("Directory Sync lost access to a directory", lost["runId"]),
                   ("Directory Sync failed", lost["runId"])]
        settle(devhost)
        time.sleep(1.5)  # a duplicate e-mail would have arrived by now
    finally:
        devhost.control("POST", "/servicebus/faults", json={"duplicateDeliveries": False})
    after = bus_counters(devhost)
    extra = {q: (after[q]["deliveries"] - before[q]["deliveries"]) - (after[q]["sent"] - before[q]["sent"])
             for q in after}
    figures.fault("service bus duplicate delivery", sum(extra.values()))
    alert_sends = after["admin-alerts"]["sent"] - before["admin-alerts"]["sent"]
    assert alert_sends >= 4 and extra["admin-alerts"] >= alert_sends  # every alert message came (at least) twice

    mails = alerts_to(devhost, t.domain)
    assert all(m["X-Envelope-To"] == ", ".join(admins) for m in mails)
    told = Counter()
    for m in mails:
        text = m.get_body(("plain",)).get_content()
        run_id = next(run for _, run in events if f"runId={run}" in text)
        told[(m["Subject"], run_id)] += 1
    assert told == Counter(events), told  # each event once, none twice, none missing
