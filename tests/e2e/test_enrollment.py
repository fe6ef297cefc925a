"""Enrollment e-mails end to end: the .eml files the SMTP sink received, and completing enrollment with their link."""
import re
import time

import pytest

from local.client import ApiError
from tests.e2e.conftest import emails_to
from tests.e2e.tenants import TenantBuilder

pytestmark = pytest.mark.e2e


def connect(portal, groups, **options):
    sub = portal.create_subscription("Invitations")
    assert portal.authorize(sub["id"])["consent"] == "confirmed"
    portal.update(sub["id"], **options)
    portal.select_groups(sub["id"], groups)
    return sub["id"]


def sync(portal, sub_id):
    return portal.wait(sub_id, portal.full_sync(sub_id), timeout=120)


def settle(devhost, domain, expected, timeout=30):
    deadline = time.monotonic() + timeout
    while len(emails_to(devhost, domain)) < expected and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1)
    return emails_to(devhost, domain)


def test_invitations_render_escape_and_complete(devhost, portal, load_tenant):
    t = TenantBuilder()
    t.user("tom.jerry", display='Tom & "Jerry" <script>alert(1)</script>')
    t.user("noor.rtl", display="نور الهدى Noor")
    t.user("existing.user")
    t.user("blocked.user", enabled=False)
    t.user("guest.nomail", guest=True, mail=None)
    t.group("team", "Team", ["existing.user"])
    admin = load_tenant(t.tenant)
    sub = connect(portal, [t.ids["team"]], sendEnrollmentEmail=False, deactivateBlockedUsers=True)
    assert sync(portal, sub)["counts"]["emailsQueued"] == 0
    for name in ("tom.jerry", "noor.rtl", "blocked.user", "guest.nomail"):
        admin.add_member(t.ids["team"], t.ids[name])
    portal.update(sub, sendEnrollmentEmail=True)
    run = sync(portal, sub)
    assert run["counts"]["created"] == 4 and run["counts"]["emailsQueued"] == 2
    mails = settle(devhost, t.domain, 2)
    assert sorted(m["X-Envelope-To"] for m in mails) == [f"noor.rtl@{t.domain}", f"tom.jerry@{t.domain}"]
    tom = next(m for m in mails if m["X-Envelope-To"].startswith("tom"))
    assert tom.get_content_type() == "multipart/alternative"
    assert tom["Subject"] == 'Tom & "Jerry" <script>alert(1)</script>, activate your Contoso Identity Portal account'
    html = tom.get_body(("html",)).get_content()
    text = tom.get_body(("plain",)).get_content()
    assert "<script>" not in html and "&lt;script&gt;" in html and "Tom &amp; &#34;Jerry&#34;" in html
    assert 'Tom & "Jerry" <script>alert(1)</script>' in text
    link = re.search(r"http://localhost:3000/enroll\?token=(\S+)", text)
    assert link and link.group(0) in html
    user = portal.call("POST", "/enrollment/complete", json={"token": link.group(1)})
    assert user["username"] == f"tom.jerry@{t.domain}" and user["enrolledAt"] and user["enrollmentEmailSentAt"]
    with pytest.raises(ApiError) as err:
        portal.call("POST", "/enrollment/complete", json={"token": link.group(1)})
    assert (err.value.status, err.value.body["code"]) == (409, "token_used")
    with pytest.raises(ApiError) as err:
        portal.call("POST", "/enrollment/complete", json={"token": link.group(1)[:-2] + "xx"})
    assert (err.value.status, err.value.body["code"]) == (400, "invalid_token")
    # The existing user was not invited; nobody is invited twice by further syncs.
    sync(portal, sub)
    assert len(settle(devhost, t.domain, 2)) == 2


def test_option_off_sends_nothing(devhost, portal, load_tenant):
    t = TenantBuilder()
    for n in ("a.one", "b.two", "c.three"):
        t.user(n)
    t.group("g", "Quiet Group", ["a.one", "b.two", "c.three"])
    load_tenant(t.tenant)
    sub = connect(portal, [t.ids["g"]], sendEnrollmentEmail=False)
    assert sync(portal, sub)["counts"]["created"] == 3
    time.sleep(1)
    assert emails_to(devhost, t.domain) == []


def test_a_directory_mail_can_never_add_a_recipient(devhost, portal, load_tenant):
    """Separators, a NEL or a line separator followed by a header: the user is synced with no e-mail, no invitation."""
    t = TenantBuilder()
    d = t.domain
    hostile = {
        "carl.comma": f"carl.comma@{d},attacker@evil.example",
        "carl.semi": f"carl.semi@{d};attacker@evil.example",
        "carl.nel": f"carl.nel@{d}\u0085Bcc: attacker@evil.example",
        "carl.ls": f"carl.ls@{d}\u2028Bcc: attacker@evil.example",
        "carl.name": '"Carl" <attacker@evil.example>',
    }
    for name, mail in hostile.items():
        t.user(name, mail=mail)
    t.user("honest.user")
    t.group("all", "Everyone", [*hostile, "honest.user"])
    load_tenant(t.tenant)
    sub = connect(portal, [t.ids["all"]], sendEnrollmentEmail=True)
    run = sync(portal, sub)
    assert run["status"] == "succeeded" and run["counts"]["created"] == 6, run
    assert sorted(e["code"] for e in run["errors"]) == ["invalid_mail"] * len(hostile)
    users = {u["username"]: u for u in portal.users()}
    assert all(users[f"{name}@{d}"]["email"] is None for name in hostile)
    time.sleep(2)  # any invitation would have arrived by now
    arrived = emails_to(devhost, d)
    assert [m["X-Envelope-To"] for m in arrived] == [f"honest.user@{d}"]
    from pathlib import Path

    for path in Path(devhost.ready["outbox"]).glob("*.eml"):
        head = path.read_bytes().split(b"\r\n\r\n", 1)[0].decode(errors="replace")
        assert "evil.example" not in head, head  # no envelope, To or Bcc of any message names the attacker
