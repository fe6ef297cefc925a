"""Issue 26 through the dev host, with a reminder "day" of 2 s: reminders reach pending users only, once per step
with every Service Bus message delivered twice and the timer fired again and again, none after the schedule ends;
a single and a bulk resend; an expired link reissued once per interval; the Users grid's invitation state and
enrollment filter. (Catch-up after downtime and the other refusals are unit tests:
tests/unit/test_invitation_lifecycle.py.)"""
import re
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

import httpx
import pytest

from local.__main__ import LOCAL_SIGNING_SECRET
from local.client import ApiError
from sync.users import enrollment_token
from tests.faults import figures
from tests.faults.helpers import connect, emails_of_org, poll, settle, sync
from tests.faults.tenants import with_large_group

pytestmark = pytest.mark.faults


def _token(message) -> str:
    return re.search(r"/enroll\?token=(\S+)", message.get_body(preferencelist=("plain",)).get_content()).group(1)


def fire_reminder_timer(devhost) -> None:
    """Run the reminder timer now (the Functions admin API), as its schedule would."""
    api = urlsplit(devhost.ready["api"])
    assert httpx.post(f"{api.scheme}://{api.netloc}/admin/functions/enrollment_reminders", timeout=10).status_code == 202


def test_reminders_reach_pending_users_once_per_step_and_admins_resend_to_one_or_all(devhost, portal, load_tenant):
    t = with_large_group(0)
    for name in ("rem.ann", "rem.bob", "rem.cat"):
        t.user(name)
    t.group("invited", "Invited", ["rem.ann", "rem.bob", "rem.cat"])
    admin = load_tenant(t.tenant)
    # Reminders 1 and 5 "days" (2 s and 10 s) after the first invitation.
    sub = connect(portal, [t.ids["invited"]], sendEnrollmentEmail=True, deactivateBlockedUsers=True,
                  enrollmentReminders=[1, 5])
    assert sync(portal, sub)["status"] == "succeeded"
    poll(lambda: len(emails_of_org(devhost, portal.org)) == 3, 30, "the invitations")
    settle(devhost)
    first = emails_of_org(devhost, portal.org)
    ann = next(m for m in first if m["X-Envelope-To"].startswith("rem.ann"))
    portal.call("POST", "/enrollment/complete", json={"token": _token(ann)})  # enrolled: no reminder
    admin.block(t.ids["rem.cat"])  # Inactive after the next sync: no reminder
    assert sync(portal, sub)["status"] == "succeeded"

    def to(name: str) -> list:
        return [m for m in emails_of_org(devhost, portal.org) if m["X-Envelope-To"].startswith(name)]

    devhost.control("POST", "/servicebus/faults", json={"duplicateDeliveries": True})
    try:
        def fired_until(count: int):
            fire_reminder_timer(devhost)  # fired again and again: each step still goes once
            return len(to("rem.bob")) >= count

        poll(lambda: fired_until(2), 20, "the first reminder", interval=0.5)
        poll(lambda: fired_until(3), 20, "the second reminder", interval=0.5)
        for _ in range(3):  # the schedule has ended: nothing more, however often it fires
            fire_reminder_timer(devhost)
        settle(devhost)
    finally:
        devhost.control("POST", "/servicebus/faults", json={"duplicateDeliveries": False})
    sent = Counter(m["X-Envelope-To"].split("@")[0] for m in emails_of_org(devhost, portal.org))
    assert sent == {"rem.ann": 1, "rem.bob": 3, "rem.cat": 1}
    subjects = [m["Subject"] for m in to("rem.bob")]
    assert not subjects[0].startswith("Reminder") and all(s.startswith("Reminder:") for s in subjects[1:])

    # The grid: who has not enrolled, and where each invitation stands.
    pending = portal.users(enrollment="not_enrolled", status="Active")
    assert [u["username"].split("@")[0] for u in pending] == ["rem.bob"]
    invitation = pending[0]["invitation"]
    assert invitation["status"] == "sent" and invitation["remindersSent"] == 2
    assert invitation["nextReminderAt"] is None and invitation["expiresAt"]
    assert [u["username"].split("@")[0] for u in portal.users(enrollment="enrolled")] == ["rem.ann"]
    history = portal.history(pending[0]["id"])
    assert [e["reason"] for e in history if e["change"] == "invited"] == ["reminder", "reminder", "invitation"]

    # Resend: too soon after the last reminder (INVITATION_MIN_INTERVAL_SECONDS is 4 s here), then once.
    bob = pending[0]["id"]
    with pytest.raises(ApiError) as refused:
        portal.call("POST", f"/users/{bob}/invitation")
    assert refused.value.status == 429 and refused.value.body["code"] == "invitation_too_soon"
    time.sleep(4)  # the interval is the rule under test
    assert portal.call("POST", f"/users/{bob}/invitation", expect=202)["invitation"]["status"] == "queued"
    bulk = portal.call("POST", f"/directory/subscriptions/{sub}/invitations", json={"filter": "not_enrolled"},
                       expect=202)
    assert bulk == {"queued": 0, "skipped": 1}  # bob was just invited
    poll(lambda: len(to("rem.bob")) == 4, 20, "the resent invitation")
    time.sleep(4)
    bulk = portal.call("POST", f"/directory/subscriptions/{sub}/invitations", json={"filter": "not_enrolled"},
                       expect=202)
    assert bulk == {"queued": 1, "skipped": 0}
    poll(lambda: len(to("rem.bob")) == 5, 20, "the bulk resend")

    # An expired link (signed as the app signs them, to bob's address): 410 on complete, reissued once per interval.
    expired = enrollment_token(LOCAL_SIGNING_SECRET, portal.org, bob, pending[0]["email"],
                               datetime.now(timezone.utc) - timedelta(minutes=1))
    with pytest.raises(ApiError) as gone:
        portal.call("POST", "/enrollment/complete", json={"token": expired})
    assert (gone.value.status, gone.value.body["code"]) == (410, "token_expired")
    time.sleep(4)
    assert portal.call("POST", "/enrollment/reissue", json={"token": expired}, expect=202)["invitation"]["status"]
    with pytest.raises(ApiError) as again:
        portal.call("POST", "/enrollment/reissue", json={"token": expired})
    assert again.value.status == 429 and int(again.value.headers["Retry-After"]) >= 1
    poll(lambda: len(to("rem.bob")) == 6, 20, "the reissued invitation")
    settle(devhost)
    mails = to("rem.bob")
    assert len(mails) == 6 and portal.call("POST", "/enrollment/complete", json={"token": _token(mails[2])})["enrolledAt"]
    with pytest.raises(ApiError) as used:  # the first link used wins; the others answer token_used
        portal.call("POST", "/enrollment/complete", json={"token": _token(mails[5])})
    assert (used.value.status, used.value.body["code"]) == (409, "token_used")
    reasons = [e["reason"] for e in portal.history(bob) if e["change"] == "invited"]
    assert reasons == ["reissued", "resent_by_admin", "resent_by_admin", "reminder", "reminder", "invitation"]
    figures.tried("enrollment reminders with every message delivered twice", 1)
