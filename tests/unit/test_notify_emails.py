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
