"""Admin alerts end to end: the e-mails the SMTP sink received when runs failed, needed review and consent was lost."""
import time

import pytest

from local.client import ApiError
from tests.e2e.conftest import alerts_to, confirm_alert_addresses
from tests.e2e.tenants import STAFF, TenantBuilder, staff_and_engineering

pytestmark = pytest.mark.e2e


def wait_for_emails(devhost, domain, n, timeout=60):
    """The sink's alerts to ``domain`` once there are ``n`` — and a moment more, so a duplicate would show too."""
    deadline = time.monotonic() + timeout
    while len(alerts_to(devhost, domain)) < n and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.5)
    return alerts_to(devhost, domain)


def bodies(message):
    return message.get_body(("plain",)).get_content(), message.get_body(("html",)).get_content()


def test_a_failed_run_and_a_run_needing_review_each_email_the_admins_once(devhost, portal, load_tenant):
    t = staff_and_engineering('R&D <Engineering> "Core"')
    admin = load_tenant(t.tenant)
    d = t.domain
    admins = [f"ops@{d}", f"Lead@{d}"]
    sub = portal.create_subscription('Fabrikam <script>alert(1)</script>\u2028Bcc: attacker@hostile.test')["id"]
    assert portal.authorize(sub)["consent"] == "confirmed"
    body = portal.update(sub, notifyEmails=[*admins, f" ops@{d.upper()} "])
    assert body["notifyEmails"] == admins  # the duplicate (ignoring case, blanks around) is dropped
    with pytest.raises(ApiError) as err:
        portal.update(sub, notifyEmails=[f"ops@{d}", f"a@{d},b@evil.example"])
    assert (err.value.status, err.value.body["code"]) == (400, "invalid_notify_emails")
    assert err.value.body["invalidEntries"] == [f'"a@{d},b@evil.example"']
    assert body["notifyEmailStatus"] == {a: "pending" for a in admins}
    confirm_alert_addresses(devhost, admins)  # each admin follows the link in their confirmation e-mail
    shown = portal.call("GET", f"/directory/subscriptions/{sub}")["notifyEmailStatus"]
    assert shown == {a: "confirmed" for a in admins}
    portal.select_groups(sub, [t.ids["all"], t.ids["eng"]])
    first = portal.wait(sub, portal.full_sync(sub), timeout=120)
    assert first["status"] == "succeeded"

    # 1. A group Graph no longer finds: the run fails.
    admin.control("POST", "/faults", json={"path": f"/groups/{t.ids['eng']}/transitiveMembers", "status": 404,
                                           "times": 1})
    failed = portal.wait(sub, portal.full_sync(sub), timeout=120)
    assert failed["status"] == "failed", failed
    [mail] = wait_for_emails(devhost, d, 1)
    assert mail["X-Envelope-To"] == ", ".join(admins)  # exactly the configured admins, one message
    assert [a.addr_spec for a in mail["To"].addresses] == admins and mail["Cc"] is None and mail["Bcc"] is None
    assert mail["Subject"] == "Directory Sync failed"  # fixed text: the name is only in the body, labelled
    text, html = bodies(mail)
    link = f"http://localhost:3000/directory-sync?subscriptionId={sub}&runId={failed['runId']}"
    assert link in text and link.replace("&", "&amp;") in html
    assert "group_not_found" in text and 'R&D <Engineering> "Core"' in text
    assert "Directory (its name in Contoso Identity Portal): Fabrikam <script>alert(1)</script> Bcc: " in text
    assert "<script>" not in html and "&lt;script&gt;" in html and "R&amp;D &lt;Engineering&gt; &#34;Core&#34;" in html
    head = mail.as_string().split("\n\n", 1)[0]
    assert not any(line.lower().startswith("bcc") for line in head.splitlines())  # folded lines start with a blank
    # The name reaches no header at all (test_enrollment checks no header of any stored e-mail names evil.example).
    assert [k for k, v in mail.items() if "hostile.test" in str(v)] == []

    # 2. 20 of 31 users leave: the guard holds the deactivations back and the run waits for review.
    for n in STAFF[:20]:
        admin.remove_member(t.ids["all"], t.ids[n])
    review = portal.wait(sub, portal.full_sync(sub), timeout=120)
    assert review["status"] == "needs_review" and review["pendingDeactivations"] == 20
    mails = wait_for_emails(devhost, d, 2)
    assert len(mails) == 2 and mails[1]["X-Envelope-To"] == ", ".join(admins)
    assert mails[1]["Subject"] == "Directory Sync needs your review"
    text, _ = bodies(mails[1])
    assert f"runId={review['runId']}" in text and "20 user(s) would be deactivated" in text
    portal.call("POST", f"/directory/subscriptions/{sub}/runs/{review['runId']}/approve")
    # 3. A run that succeeds, and nobody is told twice.
    assert portal.wait(sub, portal.full_sync(sub), timeout=120)["status"] == "succeeded"
    assert len(wait_for_emails(devhost, d, 3, timeout=3)) == 2


def test_consent_lost_emails_the_admins_once(devhost, portal, load_tenant):
    t = TenantBuilder()
    t.user("ann.lee")
    t.group("team", "Team", ["ann.lee"])
    admin = load_tenant(t.tenant)
    admin.control("POST", "/authority", json={"tokenLifetimeSeconds": 3})  # a revocation shows once tokens expire
    try:
        sub = portal.create_subscription("Contoso")["id"]
        assert portal.authorize(sub)["consent"] == "confirmed"
        portal.update(sub, notifyEmails=[f"it@{t.domain}"])
        confirm_alert_addresses(devhost, [f"it@{t.domain}"])
        portal.select_groups(sub, [t.ids["team"]])
        admin.control("POST", "/consent", json={"revoked": True, "revokedTenant": t.tenant["tenantId"]})
        time.sleep(4)
        for _ in range(3):
            with pytest.raises(ApiError) as err:
                portal.search_groups(sub, "Team")
            assert (err.value.status, err.value.body["code"]) == (409, "consent_revoked")
    finally:
        admin.control("POST", "/authority", json={"tokenLifetimeSeconds": 3600})
    [mail] = wait_for_emails(devhost, t.domain, 1)
    assert mail["X-Envelope-To"] == f"it@{t.domain}"
    assert mail["Subject"] == "Directory Sync lost access to a directory"
    text, _ = bodies(mail)
    assert t.tenant["tenantId"] in text and f"?subscriptionId={sub}\r\n" in text and "authorizes the directory again" in text
