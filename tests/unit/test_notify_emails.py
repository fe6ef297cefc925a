"""The ``notifyEmails`` option through the HTTP functions: validated like a synced address, stored, shown."""
import pytest

from sync.alert_model import notify_emails
from sync.errors import InvalidInput
from tests.helpers import call


async def _sub():
    status, body, _ = await call("create_subscription", body={"name": "Contoso AD"})
    assert status == 201
    return body


async def _patch(sub_id, **body):
    return await call("update_subscription", route={"subscriptionId": sub_id}, body=body)


async def test_set_dedupe_show_and_clear(svc):
    sub = await _sub()
    assert sub["notifyEmails"] == []
    status, body, _ = await _patch(sub["id"], notifyEmails=[" ops@contoso.example ", "Lead@Contoso.example",
                                                            "OPS@contoso.example", "lead@contoso.EXAMPLE"])
    assert status == 200 and body["notifyEmails"] == ["ops@contoso.example", "Lead@Contoso.example"]
    _, again, _ = await call("get_subscription", route={"subscriptionId": sub["id"]})
    assert again["notifyEmails"] == ["ops@contoso.example", "Lead@Contoso.example"]
    _, listed, _ = await call("list_subscriptions")
    assert listed["subscriptions"][0]["notifyEmails"] == again["notifyEmails"]
    status, body, _ = await _patch(sub["id"], notifyEmails=[])
    assert status == 200 and body["notifyEmails"] == []


@pytest.mark.parametrize("bad", [
    "ops@contoso.example",  # not a list
    None,
    {"ops": "ops@contoso.example"},
    [f"admin{i}@contoso.example" for i in range(11)],
    ["admin@contoso.example"] * 101,
])
async def test_not_a_list_of_at_most_ten_is_refused_and_nothing_changes(svc, bad):
    sub = await _sub()
    await _patch(sub["id"], notifyEmails=["ops@contoso.example"])
    status, body, _ = await _patch(sub["id"], notifyEmails=bad, nightlySync=False)
    assert (status, body["code"]) == (400, "invalid_notify_emails"), body
    _, again, _ = await call("get_subscription", route={"subscriptionId": sub["id"]})
    assert again["notifyEmails"] == ["ops@contoso.example"] and again["nightlySync"] is True


async def test_each_refused_entry_is_named(svc):
    sub = await _sub()
    entries = ["ok@contoso.example", "a@contoso.example,b@evil.example", "x@evil.example;y@evil.example",
               '"Boss" <boss@contoso.example>', "line@contoso.example\r\nBcc: z@evil.example",
               "nel@contoso.example\u0085Bcc: z@evil.example", "ls@contoso.example\u2028Bcc: z@evil.example", "no-at-sign", "", 7, None,
               ["nested@contoso.example"], "two@@contoso.example", "a b@contoso.example"]
    status, body, _ = await _patch(sub["id"], notifyEmails=entries)
    assert (status, body["code"]) == (400, "invalid_notify_emails")
    assert len(body["invalidEntries"]) == len(entries) - 1
    assert '"a@contoso.example,b@evil.example"' in body["invalidEntries"]
    assert '"line@contoso.example\\r\\nBcc: z@evil.example"' in body["invalidEntries"]  # escaped, never raw
    assert "7" in body["invalidEntries"] and "null" in body["invalidEntries"] and "list" in body["invalidEntries"]
    assert "\r" not in body["message"] and "\n" not in body["message"] and "\u2028" not in body["message"]
    assert "ok@contoso.example" not in body["message"]
    _, again, _ = await call("get_subscription", route={"subscriptionId": sub["id"]})
    assert again["notifyEmails"] == []


def test_long_entries_are_cut_in_the_error_and_unicode_addresses_pass():
    with pytest.raises(InvalidInput) as err:
        notify_emails(["x" * 500])
    assert len(err.value.details["invalidEntries"][0]) == 80
    assert notify_emails(["zoë@bücher.example", "Zoë@Bücher.example"]) == ("zoë@bücher.example",)
    assert notify_emails(["\u2028ops@contoso.example\t"]) == ("ops@contoso.example",)  # blanks around: removed


# ---------------------------------------------------------------- issue 22, 2: recipients who agreed, bounded alerts

def _link_token(email) -> str:
    from urllib.parse import parse_qs, urlsplit

    link = next(w for w in email.text.split() if "/notify-emails/confirm?token=" in w)
    assert link.startswith("http://127.0.0.1:7071/api/directory/notify-emails/confirm?token=")  # this app's public URL
    return parse_qs(urlsplit(link).query)["token"][0]


async def _open(token):
    """The browser follows the link: (status, HTML page)."""
    import azure.functions as func

    from tests.helpers import functions_by_name

    fn = functions_by_name()["confirm_notify_email"].get_user_function()
    resp = await fn(func.HttpRequest("GET", "http://localhost/api/directory/notify-emails/confirm",
                                     params={} if token is None else {"token": token}, body=b""))
    assert resp.mimetype == "text/html"
    return resp.status_code, resp.get_body().decode()


async def _mails(svc):
    from notifications.alert_mailer import send_alert

    while svc.queue.alert_jobs:
        jobs, svc.queue.alert_jobs, svc.queue.alert_delays = svc.queue.alert_jobs, [], []
        for job in jobs:
            await send_alert(svc, job)
            await send_alert(svc, job)  # every message delivered twice: still one e-mail
    sent, svc.mail_sender.sent = list(svc.mail_sender.sent), []
    return sent


async def test_each_added_address_is_asked_once_and_is_alerted_only_once_it_confirmed(svc):
    sub = await _sub()
    await _patch(sub["id"], name='Mailbox suspended <b>restore</b> at https://evil.example/r')
    status, body, _ = await _patch(sub["id"], notifyEmails=["victim@other.example", "ops@contoso.example"])
    assert status == 200
    assert body["notifyEmailStatus"] == {"victim@other.example": "pending", "ops@contoso.example": "pending"}
    mails = await _mails(svc)
    assert sorted(m.to_address for m in mails) == ["ops@contoso.example", "victim@other.example"]
    for m in mails:  # fixed subject, one recipient; the org's name for the directory in the body, labelled, escaped
        assert m.subject == "Confirm that you want Directory Sync alerts" and m.also_to == ()
        assert "Directory (its name in Identity Portal): Mailbox suspended <b>restore</b>" in m.text
        assert "<b>restore</b>" not in m.html and "&lt;b&gt;restore&lt;/b&gt;" in m.html
    ops = next(m for m in mails if m.to_address.startswith("ops"))
    status, page = await _open(_link_token(ops))
    assert status == 200 and "ops@contoso.example" in page and "&lt;b&gt;restore&lt;/b&gt;" in page
    assert "<b>" not in page
    _, shown, _ = await call("get_subscription", route={"subscriptionId": sub["id"]})
    assert shown["notifyEmailStatus"] == {"victim@other.example": "pending", "ops@contoso.example": "confirmed"}
    status, page = await _open(_link_token(ops))  # single use
    assert status == 410 and "token_used" in page
    for bad in (None, "nonsense", _link_token(ops)[:-3] + "abc"):
        status, page = await _open(bad)
        assert status == 400 and "invalid_token" in page
    # Saving the list again asks nobody again; the alerts go to the confirmed address only.
    await _patch(sub["id"], notifyEmails=["victim@other.example", "ops@contoso.example"])
    assert await _mails(svc) == []
    from sync import alerts, subscriptions
    from sync.alert_model import consent_alert
    from tests.unit.syncdsl import caller

    stored = await subscriptions.get(svc, caller(), sub["id"])
    assert await alerts.tell(svc, consent_alert(stored, None, svc.clock()), stored) == "queued"
    [alert] = await _mails(svc)
    assert alert.recipients == ("ops@contoso.example",)
    assert alert.subject == "Directory Sync lost access to a directory" and "evil" not in alert.subject


async def test_a_confirmation_whose_message_was_lost_is_queued_again_when_the_list_is_saved_again(svc):
    sub = await _sub()
    svc.queue.fail_alerts = RuntimeError("Service Bus unavailable")
    status, body, _ = await _patch(sub["id"], notifyEmails=["ops@contoso.example"])
    assert status == 200 and body["notifyEmailStatus"] == {"ops@contoso.example": "pending"}
    assert await _mails(svc) == []  # its message was lost (logged)
    await _patch(sub["id"], notifyEmails=["ops@contoso.example"])
    [ask] = await _mails(svc)
    assert ask.to_address == "ops@contoso.example"
    await _patch(sub["id"], notifyEmails=["ops@contoso.example"])
    assert await _mails(svc) == []  # sent once: saving again never sends it twice
    assert (await _open(_link_token(ask)))[0] == 200


async def test_removing_and_re_adding_an_address(svc):
    sub = await _sub()
    await _patch(sub["id"], notifyEmails=["ops@contoso.example", "new@contoso.example"])
    mails = await _mails(svc)
    ops = next(m for m in mails if m.to_address.startswith("ops"))
    new = next(m for m in mails if m.to_address.startswith("new"))
    assert (await _open(_link_token(ops)))[0] == 200
    status, body, _ = await _patch(sub["id"], notifyEmails=[])
    assert body["notifyEmailStatus"] == {}
    status, page = await _open(_link_token(new))  # a link of an address no longer listed confirms nothing
    assert status == 410 and "confirmation_withdrawn" in page
    # Re-added: the confirmed one is confirmed (its owner agreed), the pending one waits; nobody is mailed twice a day.
    status, body, _ = await _patch(sub["id"], notifyEmails=["OPS@contoso.example", "new@contoso.example"])
    assert body["notifyEmailStatus"] == {"OPS@contoso.example": "confirmed", "new@contoso.example": "pending"}
    assert await _mails(svc) == []
    assert (await _open(_link_token(new)))[0] == 200  # its link works again while listed
    # A day later an address still pending is asked again when the list is saved; the older link is withdrawn.
    await _patch(sub["id"], notifyEmails=["ops@contoso.example", "late@contoso.example"])
    [first] = await _mails(svc)
    svc.clock.advance(hours=25)
    await _patch(sub["id"], notifyEmails=["ops@contoso.example", "late@contoso.example"])
    [second] = await _mails(svc)
    assert (await _open(_link_token(first)))[1].count("confirmation_withdrawn") == 1
    assert (await _open(_link_token(second)))[0] == 200
    svc.clock.advance(days=8)
    await _patch(sub["id"], notifyEmails=["ops@contoso.example", "late@contoso.example", "slow@contoso.example"])
    [slow] = await _mails(svc)
    svc.clock.advance(days=8)
    status, page = await _open(_link_token(slow))
    assert status == 410 and "token_expired" in page


async def test_at_most_max_subscriptions_per_org(svc):
    from dataclasses import replace

    svc.settings = replace(svc.settings, max_subscriptions_per_org=3)
    for _ in range(3):
        await _sub()
    status, body, _ = await call("create_subscription", body={"name": "one too many"})
    assert (status, body["code"], body["limit"]) == (409, "too_many_subscriptions", 3)
    status, _, _ = await call("create_subscription", body={"name": "another org's"}, auth=f"Bearer {_token('org-b')}")
    assert status == 201


def _token(org):
    from tests.helpers import token

    return token(org=org)


async def test_alerts_past_the_hourly_limit_are_folded_into_one_digest(svc):
    """ALERTS_PER_HOUR alerts of a subscription go out on their own; the rest wait for one digest at the end of the
    hour, recorded and scheduled once however often they are told."""
    from dataclasses import replace

    from notifications.alert_mailer import send_alert
    from sync import alerts, subscriptions
    from sync.alert_model import FOLDED, AlertKind, consent_alert
    from tests.unit.syncdsl import caller, confirm_notify_emails

    svc.settings = replace(svc.settings, alerts_per_hour=3)
    sub = await _sub()
    await _patch(sub["id"], notifyEmails=["ops@contoso.example"])
    await confirm_notify_emails(svc)
    svc.queue.alert_jobs, svc.queue.alert_delays = [], []
    stored = await subscriptions.get(svc, caller(), sub["id"])
    svc.clock.advance(minutes=10)  # 09:10
    outcomes, folded_at = [], None
    for i in range(8):
        if i == 3:
            folded_at = svc.clock()
        event = replace(consent_alert(stored, None, svc.clock()), id=f"consent:{i}")
        outcomes += [await alerts.tell(svc, event, stored), await alerts.tell(svc, event, stored)]  # told twice
        svc.clock.advance(minutes=1)
    assert outcomes[::2] == ["queued"] * 3 + ["folded"] * 5
    delays = {}
    for job, delay in zip(svc.queue.alert_jobs, svc.queue.alert_delays):
        delays.setdefault(job, delay)  # the first time each was queued
    individual = [j for j in svc.queue.alert_jobs if not j.alert_id.startswith("digest:")]
    digests = [j for j in svc.queue.alert_jobs if j.alert_id.startswith("digest:")]
    assert len({j.alert_id for j in individual}) == 3 and {j.alert_id for j in digests} == {digests[0].alert_id}
    due = folded_at.timestamp() + delays[digests[0]]
    assert due % 3600 == 0 and 0 < due - folded_at.timestamp() <= 3600  # sent at the end of the hour
    assert all(delays[j] == 0 for j in individual)
    svc.queue.alert_jobs, svc.queue.alert_delays = [], []
    for job in individual + digests:
        await send_alert(svc, job)
    for job in digests:
        assert await send_alert(svc, job) in ("already_sent", "being_sent")
    sent = svc.mail_sender.sent
    assert len(sent) == 4
    [digest] = [m for m in sent if m.subject == "Directory Sync: alerts held back in the last hour"]
    assert digest.recipients == ("ops@contoso.example",) and digest.text.count("Microsoft no longer lets") == 5
    rows = [a for a in svc.alerts.rows.values() if a.kind == AlertKind.CONSENT_LOST]
    assert sorted(a.state for a in rows) == ["digested"] * 5 + ["sent"] * 3 and all(a.sent_at for a in rows)
    assert not any(a.state == FOLDED for a in rows)
    # An hour after the three that went out on their own (the digested ones are not counted): on its own again.
    svc.clock.advance(minutes=57)
    assert await alerts.tell(svc, replace(consent_alert(stored, None, svc.clock()), id="consent:late"), stored) \
        == "queued"
