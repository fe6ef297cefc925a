"""Issue 25 on fakes: one event per applied change, the feed, webhook endpoints and their URL rules, and delivery
(Standard Webhooks signatures verified with the ``standardwebhooks`` library, as a portal would)."""
import json
from datetime import datetime, timedelta, timezone

import pytest
import standardwebhooks

from sync import events, retention, subscriptions, webhooks
from sync.errors import Conflict, DeliveryFailed, InvalidInput, NotFound
from sync.event_model import EventType, WebhookJob, WebhookStatus
from tests.fakes_events import evented_services, webhook_jobs
from tests.unit.syncdsl import caller, connect, dry_run, four_groups, full_sync

PUBLIC = "93.184.216.34"
URL = "https://portal.example.com/hooks/dirsync"


@pytest.fixture
def svc():
    s = evented_services()
    s.clock.now = datetime.now(timezone.utc).replace(microsecond=0)  # the library checks webhook-timestamp's age
    s.webhook_sender.dns["portal.example.com"] = [PUBLIC]
    return s


def log_of(svc, org="org-a"):
    return svc.events.logs.get(org, [])


def user_events(svc, org="org-a"):
    return [e for e in log_of(svc, org) if e.type.startswith("user.")]


async def deliver_all(svc) -> list[str]:
    """Run the delivery worker for every queued job (not the delayed ones: those are returned as their delays)."""
    outcomes = []
    for job, delay in webhook_jobs(svc):
        if delay:
            svc.queue.webhook_jobs = [*getattr(svc.queue, "webhook_jobs", []), (job, delay)]
            break
        outcomes.append(await webhooks.deliver(svc, job))
    return outcomes


def received(svc, secret, *, now=True):
    """The bodies the portal got, verified as a receiver does (``now=False``: sent at a moved clock's time, so the
    signature is checked with the library without its check of the timestamp's age)."""
    hook = standardwebhooks.Webhook(secret)
    if now:
        return [hook.verify(body, headers) for _, headers, body in svc.webhook_sender.sent]
    out = []
    for _, headers, body in svc.webhook_sender.sent:
        at = datetime.fromtimestamp(int(headers["webhook-timestamp"]), timezone.utc)
        if hook.sign(headers["webhook-id"], at, body) not in headers["webhook-signature"].split(" "):
            raise standardwebhooks.WebhookVerificationError("No matching signature found")
        out.append(json.loads(body))
    return out


# ---------------------------------------------------------------- events


async def test_every_change_of_a_full_sync_is_one_event_redelivery_and_dry_runs_make_none(svc):
    four_groups(svc)
    sub = await connect(svc, groups=("g-sales", "g-eng", "g-platform", "g-ops"), deactivateBlockedUsers=True)
    view = await full_sync(svc, sub, times=2)  # every message delivered twice
    created = view.run.final_counts.created + view.run.final_counts.deactivated
    assert created == 5 and len(user_events(svc)) == 5
    assert {e.data["username"] for e in user_events(svc)} == {u.username for u in svc.users.rows.values()}
    assert [e.sequence for e in log_of(svc)] == list(range(1, len(log_of(svc)) + 1))
    assert [e.type for e in log_of(svc)][-1] == EventType.RUN_COMPLETED
    completed = log_of(svc)[-1].data
    assert completed["status"] == "succeeded" and completed["trigger"] == "manual" and completed["counts"]["created"] == 5

    before = len(log_of(svc))
    await dry_run(svc, sub)
    svc.directory.tenant("11111111-2222-3333-4444-555555555555").block("ann")
    await dry_run(svc, sub)
    assert len(log_of(svc)) == before  # a dry run tells nothing
    await full_sync(svc, sub, times=2)
    new = log_of(svc)[before:]
    assert [e.type for e in new] == [EventType.USER_DEACTIVATED, EventType.RUN_COMPLETED]
    data = new[0].data
    assert data["status"] == "Inactive" and data["previous"]["status"] == "Active"
    assert data["reason"] == "blocked_in_directory" and data["runId"] and data["subscriptionId"] == sub.id
    assert new[0].to_api()["data"]["sequence"] == before + 1


async def test_a_lost_attempt_records_its_events_on_redelivery_exactly_once(svc):
    four_groups(svc)
    sub = await connect(svc, groups=("g-sales",))
    real = svc.events.append
    calls = {"n": 0}

    async def dies_once(org, evs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("the worker died after the users were written")
        return await real(org, evs)

    svc.events.append = dies_once
    from sync import runs
    from tests.unit.syncdsl import deliver
    await runs.start(svc, caller(), sub.id, "manual")
    job = svc.queue.take_group_jobs()[0]
    from sync import group_sync
    with pytest.raises(ConnectionError):
        await group_sync.handle_group_job(svc, job)
    await group_sync.handle_group_job(svc, job, redelivered=True)
    await group_sync.handle_group_job(svc, job, redelivered=True)
    await deliver(svc)
    assert sorted(e.data["username"] for e in user_events(svc)) == sorted(
        u.username for u in svc.users.rows.values())
    assert len(user_events(svc)) == 2


async def test_unlinked_and_consent_revoked_are_events(svc):
    four_groups(svc)
    sub = await connect(svc, groups=("g-sales",))
    await full_sync(svc, sub)
    await subscriptions.mark_consent_revoked(svc, "org-a", sub.id)
    await subscriptions.mark_consent_revoked(svc, "org-a", sub.id)
    assert [e.type for e in log_of(svc)].count(EventType.CONSENT_REVOKED) == 1
    await subscriptions.delete(svc, caller(), sub.id)
    unlinked = [e for e in log_of(svc) if e.type == EventType.USER_UNLINKED]
    assert len(unlinked) == 2 and all(e.data["sourceType"] == "Manual" for e in unlinked)
    assert unlinked[0].data["previous"] == {"sourceType": "AdSync", "subscriptionId": sub.id}


# ---------------------------------------------------------------- the feed


async def test_the_feed_pages_by_cursor_and_refuses_foreign_or_malformed_cursors(svc):
    four_groups(svc)
    sub = await connect(svc, groups=("g-sales", "g-eng"))
    await full_sync(svc, sub)
    total = len(log_of(svc))
    page = await events.feed(svc, "org-a", {"limit": "2"})
    seen = [e["id"] for e in page["events"]]
    while page["events"]:
        page = await events.feed(svc, "org-a", {"after": page["cursor"], "limit": "2"})
        seen += [e["id"] for e in page["events"]]
    assert seen == [e.id for e in log_of(svc)] and len(seen) == total
    assert (await events.feed(svc, "org-a", {"after": page["cursor"]}))["events"] == []  # caught up: same cursor
    other = await events.feed(svc, "org-b", {})
    assert other["events"] == []
    for bad in (other["cursor"], "nonsense", "MTIzLmFiYw", "x" * 300):
        with pytest.raises(InvalidInput) as exc:
            await events.feed(svc, "org-a", {"after": bad})
        assert exc.value.code == "invalid_cursor"
    for limit in ("0", "1001", "ten", "-1"):
        with pytest.raises(InvalidInput):
            await events.feed(svc, "org-a", {"limit": limit})


async def test_events_older_than_the_retention_go(svc):
    four_groups(svc)
    sub = await connect(svc, groups=("g-sales",))
    await full_sync(svc, sub)
    assert (await events.feed(svc, "org-a", {}))["events"]
    svc.clock.advance(days=31)
    assert (await events.feed(svc, "org-a", {}))["events"] == []
    summary = await retention.apply(svc)
    assert summary["eventsExpired"] == 3 and log_of(svc) == []


# ---------------------------------------------------------------- endpoints and URL rules


@pytest.mark.parametrize("url", [
    "http://portal.example.com/hooks",  # https only
    "https://user:pw@portal.example.com/hooks",
    "https://127.0.0.1/hooks", "https://localhost/hooks", "https://a.localhost/x", "https://[::1]/hooks",
    "https://169.254.169.254/latest/meta-data", "https://168.63.129.16/machine", "https://10.0.0.8/x", "https://192.168.1.1/x", "https://172.16.0.1/x",
    "https://100.64.0.1/x", "https://0.0.0.0/x", "https://[fe80::1]/x", "https://[fd00::1]/x", "https://224.0.0.1/x",
    "https://[::ffff:127.0.0.1]/x", "https://[64:ff9b::a9fe:a9fe]/x", "https://[2002:a9fe:a9fe::1]/x",
    "https://intranet/x", "ftp://portal.example.com/x", "https:///x", "not a url",
    "https://portal.example.com/" + "a" * 2040, 42, None,
    "https://rebind-metadata.example.com/x", "https://rebind-loopback.example.com/x",
])
async def test_hostile_urls_are_refused(svc, url):
    svc.webhook_sender.dns["rebind-metadata.example.com"] = ["169.254.169.254"]
    svc.webhook_sender.dns["rebind-loopback.example.com"] = [PUBLIC, "127.0.0.1"]
    with pytest.raises(InvalidInput) as exc:
        await webhooks.create(svc, "org-a", {"url": url})
    assert exc.value.code == "invalid_webhook_url"


async def test_http_to_loopback_only_when_the_setting_allows_it():
    svc = evented_services(WEBHOOK_ALLOW_HTTP_LOOPBACK="true")
    svc.webhook_sender.dns["localhost"] = ["127.0.0.1"]
    for url in ("http://127.0.0.1:8080/hooks", "http://localhost:9/x", "https://127.0.0.1/x"):
        assert (await webhooks.create(svc, "org-a", {"url": url}))["url"] == url
    for url in ("http://portal.example.com/x", "https://169.254.169.254/x", "http://10.0.0.1/x"):
        with pytest.raises(InvalidInput):
            await webhooks.create(svc, "org-a", {"url": url})


async def test_endpoints_are_org_scoped_limited_and_never_show_the_secret(svc):
    created = await webhooks.create(svc, "org-a", {"url": URL, "events": ["user.deactivated"]})
    assert created["secret"].startswith("whsec_") and 24 <= len(__import__("base64").b64decode(created["secret"][6:])) <= 64
    assert created["events"] == ["user.deactivated"] and created["status"] == "enabled" and created["createdAt"]
    listed = await webhooks.listed(svc, "org-a")
    assert [h["id"] for h in listed["webhooks"]] == [created["id"]] and "secret" not in json.dumps(listed)
    assert (await webhooks.listed(svc, "org-b"))["webhooks"] == []
    for act in (webhooks.delete, webhooks.rotate_secret, webhooks.enable):
        with pytest.raises(NotFound):
            await act(svc, "org-b", created["id"])
    with pytest.raises(InvalidInput) as exc:
        await webhooks.create(svc, "org-a", {"url": URL, "events": ["user.merged"]})
    assert exc.value.code == "invalid_event_type"
    for _ in range(4):
        await webhooks.create(svc, "org-a", {"url": URL})
    with pytest.raises(Conflict) as exc:
        await webhooks.create(svc, "org-a", {"url": URL})
    assert exc.value.code == "too_many_webhooks"
    await webhooks.delete(svc, "org-a", created["id"])
    with pytest.raises(NotFound):
        await webhooks.delete(svc, "org-a", created["id"])
    assert len((await webhooks.listed(svc, "org-a"))["webhooks"]) == 4


# ---------------------------------------------------------------- delivery


async def test_deliveries_are_signed_in_order_filtered_and_follow_a_rotation(svc):
    four_groups(svc)
    sub = await connect(svc, groups=("g-sales", "g-eng"))
    hook = await webhooks.create(svc, "org-a", {"url": URL})
    only = await webhooks.create(svc, "org-a", {"url": "https://portal.example.com/only", "events": ["run.completed"]})
    await full_sync(svc, sub)
    await deliver_all(svc)
    to_hook = [(u, h, b) for u, h, b in svc.webhook_sender.sent if u == URL]
    to_only = [(u, h, b) for u, h, b in svc.webhook_sender.sent if u != URL]
    svc.webhook_sender.sent = to_hook
    bodies = received(svc, hook["secret"])
    assert [b["data"]["sequence"] for b in bodies] == [e.sequence for e in log_of(svc)]
    assert [h["webhook-id"] for _, h, _ in to_hook] == [e.id for e in log_of(svc)]
    assert {b["type"] for b in bodies} == {"user.created", "run.completed"} and all("timestamp" in b for b in bodies)
    svc.webhook_sender.sent = to_only
    assert [b["type"] for b in received(svc, only["secret"])] == ["run.completed"]

    rotated = (await webhooks.rotate_secret(svc, "org-a", hook["id"]))["secret"]
    svc.webhook_sender.sent = []
    await webhooks.delete(svc, "org-a", only["id"])
    await events.record(svc, "org-a", [_event("after-rotation")])
    await deliver_all(svc)
    assert [b["data"]["n"] for b in received(svc, rotated)] == ["after-rotation"]
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        received(svc, hook["secret"])


def _event(n: str):
    from sync.event_model import Event, event_id

    return Event("org-a", event_id("org-a", n), EventType.RUN_COMPLETED, datetime.now(timezone.utc), {"n": n})


async def test_a_failure_is_retried_with_the_same_id_and_holds_back_later_events(svc):
    hook = await webhooks.create(svc, "org-a", {"url": URL})
    svc.webhook_sender.answers = [500, DeliveryFailed("timeout")]
    await events.record(svc, "org-a", [_event("one"), _event("two")])
    assert await deliver_all(svc) == ["failed"]
    [(job, delay)] = webhook_jobs(svc)
    assert delay == webhooks.RETRY_DELAYS_S[0]
    await events.record(svc, "org-a", [_event("three")])  # no nudge while the retry waits
    assert getattr(svc.queue, "webhook_jobs", []) == []
    svc.clock.advance(seconds=delay)
    assert await webhooks.deliver(svc, job) == "failed"
    [(job, delay)] = webhook_jobs(svc)
    assert delay == webhooks.RETRY_DELAYS_S[1]
    svc.clock.advance(seconds=delay)
    assert await webhooks.deliver(svc, job) == "delivered"
    ids = [h["webhook-id"] for _, h, _ in svc.webhook_sender.sent]
    assert ids[:3] == [ids[0]] * 3 and len(set(ids)) == 3  # the same webhook-id on every retry, then in order
    assert [b["data"]["n"] for b in received(svc, hook["secret"], now=False)] == ["one"] * 3 + ["two", "three"]


async def test_after_the_last_retry_the_endpoint_is_failing_told_once_and_paused_until_enabled(svc):
    four_groups(svc)
    await connect(svc, groups=("g-sales",), notifyEmails=["ops@contoso.example"])  # the address confirmed, as alerts need
    hook = await webhooks.create(svc, "org-a", {"url": URL})
    svc.webhook_sender.answers = [503] * (len(webhooks.RETRY_DELAYS_S) + 1)
    await events.record(svc, "org-a", [_event("one")])
    await deliver_all(svc)
    for expected in webhooks.RETRY_DELAYS_S:
        [(job, delay)] = webhook_jobs(svc)
        assert delay == expected
        svc.clock.advance(seconds=delay)
        await webhooks.deliver(svc, job)
    assert webhook_jobs(svc) == []
    stored = await svc.webhooks.get("org-a", hook["id"])
    assert stored.status == WebhookStatus.FAILING and len(svc.webhook_sender.sent) == 8
    alerts = [a for a in svc.alerts.rows.values() if a.kind == "webhook_failing"]
    assert len(alerts) == 1 and alerts[0].recipients == ("ops@contoso.example",)
    assert (await webhooks.listed(svc, "org-a"))["webhooks"][0]["status"] == "failing"
    await events.record(svc, "org-a", [_event("two")])
    assert webhook_jobs(svc) == [] and await webhooks.deliver(svc, WebhookJob("org-a", hook["id"])) == "inactive"
    assert (await webhooks.enable(svc, "org-a", hook["id"]))["status"] == "enabled"
    assert await deliver_all(svc) == ["delivered"]
    assert [b["data"]["n"] for b in received(svc, hook["secret"], now=False)][-2:] == ["one", "two"]


async def test_an_address_that_turns_private_at_send_time_is_never_contacted(svc):
    await webhooks.create(svc, "org-a", {"url": URL})
    svc.webhook_sender.dns["portal.example.com"] = ["169.254.169.254"]
    await events.record(svc, "org-a", [_event("one")])
    assert await deliver_all(svc) == ["failed"] and svc.webhook_sender.sent == []


async def test_a_busy_endpoint_is_left_to_the_worker_holding_it(svc):
    hook = await webhooks.create(svc, "org-a", {"url": URL})
    stored = await svc.webhooks.get("org-a", hook["id"])
    await svc.webhooks.save(stored.__class__(**{**stored.__dict__, "lease_until": svc.clock() + timedelta(seconds=30)}))
    await events.record(svc, "org-a", [_event("one")])
    assert await deliver_all(svc) == ["busy"] and svc.webhook_sender.sent == []
    [(job, delay)] = webhook_jobs(svc)  # should the holder die, a look once its lease has run out takes over
    assert 30 <= delay <= 32
    svc.clock.advance(seconds=delay)
    assert await webhooks.deliver(svc, job) == "delivered" and len(svc.webhook_sender.sent) == 1


def test_the_failing_alert_names_the_endpoint_and_how_to_resume():
    from notifications.render import render_alert

    facts = {"webhookId": "h1", "url": "https://portal.example.com/hooks", "eventId": "evt_1",
             "eventType": "user.deactivated", "lastError": "HTTP 503", "failingSince": "2026-11-27T09:00:00+00:00"}
    mail = render_alert(portal_name="Contoso Portal", portal_url="https://portal.example", kind="webhook_failing",
                        subscription_name="Contoso <b>", run_id=None, facts=facts, link="https://portal.example/x")
    assert mail.subject == "Directory Sync cannot deliver events to your portal"  # fixed text (issue 22 #2)
    assert "POST /api/webhooks/h1/enable" in mail.text and "HTTP 503" in mail.text
    assert "Contoso &lt;b&gt;" in mail.html and "<b>" not in mail.html.split("<body")[1].replace("<br>", "")


async def test_an_administrators_changes_of_manual_users_are_events(svc):
    from sync import users as users_uc

    made = await users_uc.create_manual(svc, caller(), {"username": "max@contoso.example"})
    svc.clock.advance(seconds=1)
    await users_uc.set_active(svc, caller(), made.id, active=False)
    await users_uc.set_active(svc, caller(), made.id, active=False)  # already inactive: no change, no event
    assert [(e.type, e.data["reason"]) for e in user_events(svc)] == [
        ("user.created", "created_by_admin"), ("user.deactivated", "deactivated_by_admin")]
    assert user_events(svc)[1].data["previous"]["status"] == "Active"


async def test_a_block_applied_by_a_change_notification_is_one_event_even_if_the_first_attempt_died(svc):
    from sync import changes
    from sync.model import ChangeJob, Trigger

    svc.settings = __import__("dataclasses").replace(svc.settings, notification_url="https://dirsync.example/api/n")
    t = four_groups(svc)
    sub = await connect(svc, groups=("g-sales", "g-eng"), deactivateBlockedUsers=True)
    await full_sync(svc, sub)
    before = len(log_of(svc))
    t.block("ann")
    real, calls = svc.events.append, []

    async def dies_once(org, evs):
        calls.append(len(evs))
        if len(calls) == 1:
            raise ConnectionError("the worker died after the user was written")
        return await real(org, evs)

    svc.events.append = dies_once
    svc.clock.advance(seconds=2)
    job = ChangeJob(sub.org, sub.id, Trigger.CHANGE_NOTIFICATION, svc.clock())
    with pytest.raises(ConnectionError):
        await changes.handle_change_job(svc, job, delivery=1)
    await changes.handle_change_job(svc, job, delivery=2)  # redelivered: the user is written already
    await changes.handle_change_job(svc, job, delivery=3)
    blocked = [e for e in log_of(svc)[before:] if e.type == EventType.USER_DEACTIVATED]
    assert [e.data["username"] for e in blocked] == [svc.users.rows[next(k for k, u in svc.users.rows.items()
                                                                         if u.username.startswith("ann"))].username]


async def test_the_http_functions_answer_as_documented(svc):
    from azure.functions.servicebus import ServiceBusMessage

    from sync import composition
    from sync.functions.webhooks_api import webhook_worker
    from tests.helpers import call

    composition.override(svc)
    try:
        status, created, headers = await call("create_webhook", body={"url": URL})
        assert status == 201 and headers["Location"] == f"/api/webhooks/{created['id']}" and created["secret"]
        assert "no-store" in headers["Cache-Control"]
        status, listed, _ = await call("list_webhooks")
        assert status == 200 and listed["webhooks"][0]["id"] == created["id"] and "secret" not in listed["webhooks"][0]
        status, rotated, _ = await call("rotate_webhook_secret", route={"webhookId": created["id"]})
        assert status == 200 and rotated["secret"] != created["secret"]
        status, body, _ = await call("enable_webhook", route={"webhookId": created["id"]})
        assert status == 200 and body["status"] == "enabled"
        await events.record(svc, "org-a", [_event("one")])
        for job, _ in webhook_jobs(svc):
            await webhook_worker(ServiceBusMessage(body=job.to_json().encode(), message_id=job.message_id,
                                                   application_properties={}, user_properties={}))
        assert [json.loads(b)["data"]["n"] for _, _, b in svc.webhook_sender.sent] == ["one"]
        status, page, _ = await call("list_events", params={"limit": "1"})
        assert status == 200 and [e["data"]["n"] for e in page["events"]] == ["one"] and page["cursor"]
        status, body, _ = await call("list_events", params={"since": "x"})
        assert (status, body["code"]) == (400, "unknown_parameter")
        status, body, _ = await call("list_events", params={"after": page["cursor"]}, auth=None)
        assert status == 401
        status, body, _ = await call("create_webhook", body={"url": URL, "secret": "mine"})
        assert (status, body["code"]) == (400, "unknown_field")
        status, body, _ = await call("delete_webhook", route={"webhookId": created["id"]})
        assert status == 204 and body is None
        status, body, _ = await call("delete_webhook", route={"webhookId": created["id"]})
        assert (status, body["code"]) == (404, "webhook_not_found")
    finally:
        composition.override(None)


async def test_sending_the_invitations_records_nothing_and_asks_the_log_nothing(svc):
    from notifications.mailer import send_invitation

    four_groups(svc)
    sub = await connect(svc, groups=("g-sales", "g-eng"), sendEnrollmentEmail=True)
    await full_sync(svc, sub)
    before, calls = len(log_of(svc)), []
    real = svc.events.append

    async def counted(org, evs):
        calls.append(len(evs))
        return await real(org, evs)

    svc.events.append = counted
    assert [await send_invitation(svc, job) for job in svc.queue.enrollment_jobs] == ["sent"] * 3
    assert len(log_of(svc)) == before and calls == []  # the invitation's writes carry no new history entry


async def test_a_manual_user_linked_in_place_is_one_user_linked_event(svc):
    """Issue 25 with issue 24: the link is an applied change like any other, told once (a re-sync tells nothing)."""
    from sync import users as users_uc

    four_groups(svc)
    ann = await users_uc.create_manual(svc, caller(), {"username": "ann@contoso.example"})
    sub = await connect(svc, groups=("g-sales",), linkExistingUsers="username")
    before = len(log_of(svc))
    await full_sync(svc, sub)
    await full_sync(svc, sub)
    linked = [e for e in log_of(svc)[before:] if e.type == EventType.USER_LINKED]
    assert [(e.data["id"], e.data["sourceType"], e.data["reason"]) for e in linked] == [
        (ann.id, "AdSync", "matched_username")]
    assert linked[0].data["previous"]["sourceType"] == "Manual"


@pytest.mark.parametrize("limit", ["²", "①", "٣", "9" * 5000, "0", "1001", "-1", ""])
async def test_the_feeds_limit_is_an_ascii_number_within_bounds_or_400(svc, limit):
    """Issue 22 #5 on the events feed: ``str.isdigit`` took ``²``, which ``int`` refuses (a 500)."""
    if limit == "":
        assert (await events.feed(svc, "org-a", {"limit": limit}))["events"] == []  # absent: the default
        return
    with pytest.raises(InvalidInput) as exc:
        await events.feed(svc, "org-a", {"limit": limit})
    assert exc.value.code == "invalid_limit"
