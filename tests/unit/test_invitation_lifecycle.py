"""The enrollment invitation's lifecycle on fakes (issue 26): reminders (the timer, its index, catch-up, once per
step), reissue of an expired link, resend to one user or to everyone not enrolled, and what the Users grid shows."""
import re
from datetime import timedelta

import pytest

from notifications.mailer import send_invitation
from notifications.senders import MailError
from sync import invitation_lifecycle as lifecycle
from sync import subscriptions, users
from sync.errors import InvalidInput
from sync.model import EmailState, SourceType, UserStatus
from tests.helpers import call
from tests.unit.syncdsl import TENANT, caller, connect, full_sync, users_of

SALES = "g-sales"
DAY = timedelta(days=1)


@pytest.fixture
def tenant(svc):
    t = svc.directory.tenant(TENANT)
    t.add_group(SALES, "Sales Team")
    for name in ("ann", "bob", "cat"):
        t.add_user(name, groups=[SALES])
    t.add_user("zoe", groups=[SALES], account_enabled=False)
    return t


async def mail_all(svc) -> list:
    """The mailer takes every queued message (once each); the e-mails it sent, in order."""
    jobs, svc.queue.enrollment_jobs = svc.queue.enrollment_jobs, []
    before = len(svc.mail_sender.sent)
    for job in jobs:
        await send_invitation(svc, job)
    return svc.mail_sender.sent[before:]


def link_token(email) -> str:
    return re.search(r"token=([A-Za-z0-9._~-]+)", email.text).group(1)


def by_name(svc) -> dict:
    return {u.username.split("@")[0]: u for u in users_of(svc).values()}


async def synced(svc, reminders=(2, 10)):
    sub = await connect(svc, groups=(SALES,), deactivateBlockedUsers=True, sendEnrollmentEmail=True,
                        enrollmentReminders=list(reminders))
    await full_sync(svc, sub)
    first = await mail_all(svc)
    assert sorted(e.to_address.split("@")[0] for e in first) == ["ann", "bob", "cat"]  # zoe is blocked
    return sub, {e.to_address.split("@")[0]: link_token(e) for e in first}


async def fire(svc) -> list:
    """The reminder timer fires; the reminder e-mails the mailer then sends."""
    await lifecycle.send_due_reminders(svc)
    return await mail_all(svc)


def names(emails) -> list[str]:
    return sorted(e.to_address.split("@")[0] for e in emails)


# --- the option --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [[0], [61], [3, 2], [2, 2], [1, 2, 3, 4, 5, 6], "2", [1.5], [True], None, {"a": 1}])
async def test_enrollment_reminders_are_whole_increasing_days_1_to_60_at_most_5_else_400_and_nothing_changes(svc, value):
    sub = await connect(svc, enrollmentReminders=[2, 10])
    with pytest.raises(InvalidInput) as err:
        await subscriptions.update(svc, caller(), sub.id, {"enrollmentReminders": value, "name": "Renamed"})
    assert err.value.code == "invalid_enrollment_reminders"
    after = await subscriptions.get(svc, caller(), sub.id)
    assert after.enrollment_reminders == (2, 10) and after.name == sub.name


async def test_enrollment_reminders_default_to_none_and_show_on_the_subscription(svc):
    sub = await connect(svc)
    assert sub.enrollment_reminders == ()
    status, body, _ = await call("update_subscription", body={"enrollmentReminders": [1, 5, 60]},
                                 route={"subscriptionId": sub.id})
    assert status == 200 and body["enrollmentReminders"] == [1, 5, 60]


# --- reminders ---------------------------------------------------------------------------------------------------

async def test_two_reminders_go_to_pending_users_only_and_none_after_the_schedule_ends(svc, tenant):
    sub, tokens = await synced(svc)
    await users.complete_enrollment(svc, caller(), {"token": tokens["ann"]})  # enrolled: no reminder
    manual = await users.create_manual(svc, caller(), {"username": "max", "email": "max@contoso.example"})
    svc.clock.advance(days=1, hours=23)
    assert await fire(svc) == []  # nobody is due yet
    svc.clock.advance(hours=2)
    tenant.block("cat")
    await full_sync(svc, sub)  # cat is now Inactive
    second = await fire(svc)
    assert names(second) == ["bob"] and second[0].subject.startswith("Reminder:")
    assert "This is a reminder" in second[0].text
    svc.clock.advance(days=8)
    third = await fire(svc)
    assert names(third) == ["bob"]
    svc.clock.advance(days=60)
    assert await fire(svc) == []
    bob = by_name(svc)["bob"]
    assert bob.reminders_sent == 2 and bob.next_reminder_at is None
    reasons = [e.reason for e in bob.history if e.change == "invited"]
    assert reasons == ["reminder", "reminder", "invitation"]
    assert svc.reminders.rows == {}  # nothing left to look at
    assert svc.users.rows[('org-a', manual.id)].enrollment_email is None


async def test_the_timer_fired_twice_and_its_messages_redelivered_send_each_step_once(svc, tenant):
    await synced(svc, reminders=(2,))
    svc.clock.advance(days=2, minutes=1)
    await lifecycle.send_due_reminders(svc)
    await lifecycle.send_due_reminders(svc)  # fired again (or on another instance) before the mail went
    jobs = list(svc.queue.enrollment_jobs)
    assert len(jobs) == 3 and {j.message_id.rsplit(":", 1)[1] for j in jobs} == {"reminder1"}
    svc.queue.enrollment_jobs += jobs  # every message delivered twice
    sent = await mail_all(svc)
    assert names(sent) == ["ann", "bob", "cat"]


async def test_a_concurrent_timer_that_lost_the_race_queues_nothing(svc, tenant):
    await synced(svc, reminders=(2,))
    svc.clock.advance(days=3)
    ann = by_name(svc)["ann"]
    sub = await svc.subscriptions.get("org-a", ann.subscription_id)
    # Both timers read ann before either wrote: the second one's write is stale, and its re-read finds step 1 sent.
    first = await lifecycle._queue_reminder(svc, sub, ann, 1, svc.clock())
    again = await lifecycle._queue_reminder(svc, sub, ann, 1, svc.clock())
    assert first is not None and again is None
    assert svc.users.rows[("org-a", ann.id)].reminders_sent == 1


async def test_after_downtime_only_the_latest_step_due_is_sent(svc, tenant):
    await synced(svc, reminders=(2, 10, 20))
    svc.clock.advance(days=15)  # the timer did not fire for two weeks: steps 1 and 2 are both due
    sent = await fire(svc)
    assert names(sent) == ["ann", "bob", "cat"]
    assert {u.reminders_sent for u in by_name(svc).values() if u.status == UserStatus.ACTIVE} == {2}
    assert await fire(svc) == []
    svc.clock.advance(days=6)
    assert names(await fire(svc)) == ["ann", "bob", "cat"]


async def test_the_timer_reads_only_the_users_due(svc, tenant):
    await synced(svc, reminders=(2,))
    ann = by_name(svc)["ann"]
    svc.reminders.rows = {k: at + (timedelta(0) if k[1] == ann.id else 10 * DAY) for k, at in svc.reminders.rows.items()}
    reads = []
    real = svc.users.get

    async def counted(org, uid):
        reads.append(uid)
        return await real(org, uid)

    svc.users.get = counted
    svc.clock.advance(days=2, minutes=1)
    summary = await lifecycle.send_due_reminders(svc)
    assert summary.sent == 1 and set(reads) == {ann.id}


async def test_reminders_use_the_short_day_of_the_setting(tenant):
    from sync import composition
    from tests.fakes import make_services

    svc = make_services(REMINDER_DAY_SECONDS="60")
    composition.override(svc)
    try:
        svc.directory.tenants = {}
        t = svc.directory.tenant(TENANT)
        t.add_group(SALES, "Sales Team")
        t.add_user("ann", groups=[SALES])
        sub = await connect(svc, groups=(SALES,), sendEnrollmentEmail=True, enrollmentReminders=[2])
        await full_sync(svc, sub)
        await mail_all(svc)
        svc.clock.advance(seconds=119)
        assert await fire(svc) == []
        svc.clock.advance(seconds=2)
        assert len(await fire(svc)) == 1
    finally:
        composition.override(None)


async def test_disconnected_users_and_users_without_an_e_mail_get_no_reminder(svc, tenant):
    sub, _ = await synced(svc, reminders=(2,))
    bob = by_name(svc)["bob"]
    key = ("org-a", bob.id)
    from dataclasses import replace
    svc.users.rows[key] = replace(svc.users.rows[key], email=None)
    await subscriptions.delete(svc, caller(), sub.id)  # everyone becomes Manual
    svc.clock.advance(days=3)
    assert await fire(svc) == []
    assert svc.reminders.rows == {}


# --- links, reissue ------------------------------------------------------------------------------------------------

async def test_every_link_not_expired_enrolls_and_the_first_used_wins(svc, tenant):
    _, tokens = await synced(svc, reminders=(2,))
    svc.clock.advance(days=2, minutes=1)
    reminder = [e for e in await fire(svc) if e.to_address.startswith("ann")][0]
    assert link_token(reminder) != tokens["ann"]
    status, _, _ = await call("complete_enrollment", body={"token": tokens["ann"]})  # the first link still works
    assert status == 200
    status, body, _ = await call("complete_enrollment", body={"token": link_token(reminder)})
    assert status == 409 and body["code"] == "token_used"


async def test_an_expired_link_is_reissued_once_per_interval_and_still_answers_410_on_complete(svc, tenant):
    _, tokens = await synced(svc, reminders=())
    svc.clock.advance(days=8)  # links live 7 days
    status, body, _ = await call("complete_enrollment", body={"token": tokens["bob"]})
    assert status == 410 and body["code"] == "token_expired"
    status, body, _ = await call("reissue_enrollment", body={"token": tokens["bob"]})
    assert status == 202 and body["invitation"]["status"] == "queued"
    status, body, headers = await call("reissue_enrollment", body={"token": tokens["bob"]})
    assert status == 429 and body["code"] == "invitation_too_soon" and int(headers["Retry-After"]) > 0
    [email] = await mail_all(svc)
    status, _, _ = await call("complete_enrollment", body={"token": link_token(email)})
    assert status == 200
    assert [e.reason for e in by_name(svc)["bob"].history if e.change == "invited"] == ["reissued", "invitation"]
    status, body, _ = await call("reissue_enrollment", body={"token": tokens["bob"]})
    assert status == 409 and body["code"] == "already_enrolled"


async def test_reissue_refuses_links_not_expired_inactive_users_and_bad_tokens(svc, tenant):
    sub, tokens = await synced(svc, reminders=())
    status, body, _ = await call("reissue_enrollment", body={"token": tokens["ann"]})
    assert status == 409 and body["code"] == "token_not_expired"
    tenant.block("cat")
    await full_sync(svc, sub)
    svc.clock.advance(days=8)
    status, body, _ = await call("reissue_enrollment", body={"token": tokens["cat"]})
    assert status == 409 and body["code"] == "user_inactive"
    status, body, _ = await call("reissue_enrollment", body={"token": tokens["ann"][:-3] + "abc"})
    assert status == 400 and body["code"] == "invalid_token"


async def test_token_lifetime_may_be_fractional_hours(tenant):
    from tests.fakes import unit_settings

    assert unit_settings(ENROLLMENT_TOKEN_TTL_HOURS="0.5").enrollment_token_ttl_hours == 0.5


# --- resend --------------------------------------------------------------------------------------------------------

async def test_resend_to_one_user_and_its_refusals(svc, tenant):
    _, tokens = await synced(svc, reminders=())
    ann, bob = by_name(svc)["ann"], by_name(svc)["bob"]
    status, body, _ = await call("resend_invitation", route={"userId": bob.id})
    assert status == 429 and body["code"] == "invitation_too_soon"  # just invited
    svc.clock.advance(hours=1, seconds=1)
    status, body, _ = await call("resend_invitation", route={"userId": bob.id})
    assert status == 202 and body["invitation"]["status"] == "queued"
    status, body, headers = await call("resend_invitation", route={"userId": bob.id})
    assert status == 429 and "Retry-After" in headers
    [email] = await mail_all(svc)
    assert email.to_address.startswith("bob") and not email.subject.startswith("Reminder")
    await users.complete_enrollment(svc, caller(), {"token": tokens["ann"]})
    status, body, _ = await call("resend_invitation", route={"userId": ann.id})
    assert status == 409 and body["code"] == "already_enrolled"
    zoe = by_name(svc)["zoe"]
    status, body, _ = await call("resend_invitation", route={"userId": zoe.id})
    assert status == 409 and body["code"] == "user_inactive"
    nomail = await users.create_manual(svc, caller(), {"username": "nomail"})
    status, body, _ = await call("resend_invitation", route={"userId": nomail.id})
    assert status == 409 and body["code"] == "no_email"
    other = await users.create_manual(svc, caller("org-b"), {"username": "x", "email": "x@b.example"})
    status, body, _ = await call("resend_invitation", route={"userId": other.id})
    assert status == 404


async def test_a_manual_user_with_an_e_mail_is_invited_and_its_link_enrolls(svc):
    max_ = await users.create_manual(svc, caller(), {"username": "max", "email": "max@contoso.example"})
    status, _, _ = await call("resend_invitation", route={"userId": max_.id})
    assert status == 202
    [email] = await mail_all(svc)
    status, body, _ = await call("complete_enrollment", body={"token": link_token(email)})
    assert status == 200 and body["enrolledAt"]
    assert [e.reason for e in svc.users.rows[('org-a', max_.id)].history if e.change == "invited"] == ["resent_by_admin"]


async def test_bulk_resend_queues_users_not_enrolled_skips_recent_ones_and_twice_queues_nobody(svc, tenant):
    sub, tokens = await synced(svc, reminders=())
    await users.complete_enrollment(svc, caller(), {"token": tokens["ann"]})
    status, body, _ = await call("resend_invitations", body={"filter": "not_enrolled"}, route={"subscriptionId": sub.id})
    assert status == 202 and body == {"queued": 0, "skipped": 2}  # bob and cat were invited a moment ago
    svc.clock.advance(hours=2)
    status, body, _ = await call("resend_invitations", body={"filter": "not_enrolled"}, route={"subscriptionId": sub.id})
    assert body == {"queued": 2, "skipped": 0}
    status, body, _ = await call("resend_invitations", body={"filter": "not_enrolled"}, route={"subscriptionId": sub.id})
    assert body == {"queued": 0, "skipped": 2}
    assert names(await mail_all(svc)) == ["bob", "cat"]
    for bad in ({"filter": "all"}, {}, {"filter": "not_enrolled", "x": 1}):
        status, body, _ = await call("resend_invitations", body=bad, route={"subscriptionId": sub.id})
        assert status == 400


async def test_two_bulk_resends_at_once_queue_each_user_once(svc, tenant):
    import asyncio

    sub, _ = await synced(svc, reminders=())
    svc.clock.advance(hours=2)
    both = await asyncio.gather(*(lifecycle.resend_not_enrolled(svc, caller(), sub.id, {"filter": "not_enrolled"})
                                  for _ in range(2)))
    assert sum(r["queued"] for r in both) == 3 and len(svc.queue.enrollment_jobs) == 3


# --- what the portal sees ------------------------------------------------------------------------------------------

async def test_the_grid_shows_the_invitation_and_filters_by_enrollment(svc, tenant):
    _, tokens = await synced(svc, reminders=(2, 10))
    await users.complete_enrollment(svc, caller(), {"token": tokens["ann"]})
    status, body, _ = await call("list_users", params={"enrollment": "not_enrolled", "status": "Active"})
    assert [u["username"].split("@")[0] for u in body["users"]] == ["bob", "cat"]
    inv = body["users"][0]["invitation"]
    assert inv["status"] == "sent" and inv["remindersSent"] == 0 and inv["lastError"] is None
    assert inv["nextReminderAt"] == "2026-11-29T09:00:00.000Z" and inv["expiresAt"] == "2026-12-04T09:00:00.000Z"
    status, body, _ = await call("list_users", params={"enrollment": "enrolled"})
    assert [u["username"].split("@")[0] for u in body["users"]] == ["ann"]
    status, body, _ = await call("list_users", params={"enrollment": "enrolled", "pageSize": "1", "search": "zoe"})
    assert body["users"] == []
    status, body, _ = await call("list_users", params={"enrollment": "maybe"})
    assert status == 400 and body["code"] == "invalid_enrollment"
    zoe = by_name(svc)["zoe"]
    assert zoe.to_api({})["invitation"]["status"] == "none"


async def test_a_relays_permanent_refusal_is_failed_with_its_reply(svc, tenant):
    max_ = await users.create_manual(svc, caller(), {"username": "max", "email": "max@contoso.example"})
    await lifecycle.resend(svc, caller(), max_.id)
    svc.mail_sender.failures.append(MailError("the relay refused the recipient: 550 5.1.1 mailbox unavailable",
                                              permanent=True))
    await mail_all(svc)
    user = svc.users.rows[('org-a', max_.id)]
    inv = user.to_api({})["invitation"]
    assert inv["status"] == EmailState.FAILED and "550 5.1.1 mailbox unavailable" in inv["lastError"]
    assert user.source_type == SourceType.MANUAL
