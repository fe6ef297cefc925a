"""Issue 22, 2: admin alerts were an open mail relay. Any ten addresses on ``notifyEmails``, the subscription's name
(whatever its creator typed) in the alert's subject, and any number of subscriptions per org: an attacker's org sent
the portal's real sender's e-mails, subject "Mailbox suspended - restore it at https://evil.example/r", to anyone.

Now an address gets one confirmation e-mail (fixed subject) and no alert until its owner follows the link; an alert's
subject is fixed text; an org has at most MAX_SUBSCRIPTIONS_PER_ORG (20) subscriptions. (ALERTS_PER_HOUR and its
digest: tests/unit/test_notify_emails.py, on the fakes, where an hour passes in no time.)"""
import re
import time

import httpx
import pytest

from local.client import ApiError
from tests.e2e.conftest import CONFIRMATION_SUBJECT, confirm_alert_addresses, emails_to
from tests.e2e.tenants import staff_and_engineering
from tests.faults import figures
from tests.faults.helpers import settle, sync

pytestmark = pytest.mark.faults

LURE = "Mailbox suspended - restore it at https://evil.example/r"


def test_alerts_reach_only_addresses_that_confirmed_under_a_fixed_subject(devhost, portal, load_tenant):
    t = staff_and_engineering()
    admin = load_tenant(t.tenant)
    victims = [f"victim{i}@{t.domain}" for i in range(3)]
    sub = portal.create_subscription(LURE)["id"]
    assert portal.authorize(sub)["consent"] == "confirmed"
    shown = portal.update(sub, notifyEmails=victims, nightlySync=False)
    assert shown["notifyEmailStatus"] == {v: "pending" for v in victims}
    portal.select_groups(sub, [t.ids["all"], t.ids["eng"]])
    # Two runs fail: nobody has agreed to be told, so nobody is.
    admin.control("POST", "/faults", json={"path": f"/groups/{t.ids['eng']}/transitiveMembers", "status": 404,
                                           "times": 6})
    try:
        for _ in range(2):
            assert sync(portal, sub)["status"] == "failed"
    finally:
        admin.control("DELETE", "/faults")
    settle(devhost)
    time.sleep(1)  # an alert sent anyway would have arrived by now
    mails = emails_to(devhost, t.domain)
    assert sorted(m["X-Envelope-To"] for m in mails) == victims  # one confirmation each, nothing else
    for m in mails:
        assert m["Subject"] == CONFIRMATION_SUBJECT and len(m["To"].addresses) == 1
        assert not [k for k, v in m.items() if "evil.example" in str(v)]  # the lure is in no header
        text = m.get_body(("plain",)).get_content()
        assert f"Directory (its name in Contoso Identity Portal): {LURE}" in text  # labelled as the org's name
    # A confirmation link is good once; forged or altered, it is a page saying so (never a 5xx, never JSON).
    token = re.search(r"confirm\?token=(\S+)", mails[0].get_body(("plain",)).get_content()).group(1)
    base = devhost.ready["api"].rstrip("/")
    for bad in ("", "x", token[:-4] + "AAAA", "a.b", "€.€"):
        page = httpx.get(f"{base}/directory/notify-emails/confirm", params={"token": bad}, timeout=30)
        assert page.status_code == 400 and page.headers["content-type"].startswith("text/html"), page.text
    # One victim agrees: the next failure reaches that address only, under the fixed subject.
    confirm_alert_addresses(devhost, victims[:1])
    again = httpx.get(f"{base}/directory/notify-emails/confirm", params={"token": _token_of(devhost, victims[0])},
                      timeout=30)
    assert again.status_code == 410 and "token_used" in again.text
    admin.control("POST", "/faults", json={"path": f"/groups/{t.ids['eng']}/transitiveMembers", "status": 404,
                                           "times": 3})
    try:
        assert sync(portal, sub)["status"] == "failed"
    finally:
        admin.control("DELETE", "/faults")
    settle(devhost)
    alerts = [m for m in emails_to(devhost, t.domain) if m["Subject"] != CONFIRMATION_SUBJECT]
    assert [(m["X-Envelope-To"], m["Subject"]) for m in alerts] == [(victims[0], "Directory Sync failed")]
    figures.tried("alerts to addresses that did not confirm", 2 + 5 + 1 + 1)


def _token_of(devhost, address):
    [m] = [m for m in emails_to(devhost, address.rpartition("@")[2])
           if m["Subject"] == CONFIRMATION_SUBJECT and m["X-Envelope-To"] == address]
    return re.search(r"confirm\?token=(\S+)", m.get_body(("plain",)).get_content()).group(1)


def test_an_org_has_at_most_twenty_subscriptions(devhost, portal):
    for i in range(20):
        portal.create_subscription(f"directory {i}")
    with pytest.raises(ApiError) as refused:
        portal.create_subscription("one more")
    assert (refused.value.status, refused.value.body["code"]) == (409, "too_many_subscriptions")
    assert len(portal.call("GET", "/directory/subscriptions")["subscriptions"]) == 20
    figures.tried("subscriptions beyond the org's limit", 21)
