"""The SMTP sender against the local SMTP sink: multipart mail, login, and how failures are classified."""
import asyncio

import pytest

from local.smtp_sink import SmtpSink
from notifications.senders import MailError, OutgoingEmail
from notifications.smtp import SmtpSender
from sync.settings import MailSettings


def settings(port: int, **kw) -> MailSettings:
    values = dict(sender="smtp", mail_from="Portal <no-reply@portal.example>", smtp_host="127.0.0.1", smtp_port=port,
                  smtp_security="none", smtp_username=None, smtp_password=None, smtp_timeout_s=10)
    values.update(kw)
    return MailSettings(**values)


EMAIL = OutgoingEmail(to_address="zoe@contoso.example", to_name="Zoë \"Z\" Ångström", subject="Activate your account",
                      html="<p>Hello</p>", text="Hello", message_id_hint="enroll:org:u1")


@pytest.fixture
def sink(tmp_path):
    server = SmtpSink(tmp_path / "outbox").start()
    yield server
    server.stop()


async def test_sends_one_multipart_alternative_message(sink):
    await SmtpSender(settings(sink.port)).send(EMAIL)
    [message] = sink.messages()
    assert message["X-Envelope-To"] == "zoe@contoso.example"
    assert message["To"].addresses[0].display_name == 'Zoë "Z" Ångström'
    assert message.get_content_type() == "multipart/alternative"
    assert message.get_body(("html",)).get_content().strip() == "<p>Hello</p>"
    assert message.get_body(("plain",)).get_content().strip() == "Hello"


async def test_login(tmp_path):
    with SmtpSink(tmp_path / "auth", auth_required=True, username="relay", password="s3cret") as sink:
        await SmtpSender(settings(sink.port, smtp_username="relay", smtp_password="s3cret")).send(EMAIL)
        assert len(sink.messages()) == 1
        with pytest.raises(MailError) as err:
            await SmtpSender(settings(sink.port, smtp_username="relay", smtp_password="wrong")).send(EMAIL)
        assert not err.value.permanent  # our credentials are wrong: retry after the operator fixes them


@pytest.mark.parametrize("code,stage,permanent", [(451, "DATA", False), (421, "MAIL", False), (550, "RCPT", True),
                                                  (554, "DATA", True)])
async def test_failures_are_classified(sink, code, stage, permanent):
    sink.fail_next(code=code, stage=stage)
    with pytest.raises(MailError) as err:
        await SmtpSender(settings(sink.port)).send(EMAIL)
    assert err.value.permanent is permanent
    assert sink.messages() == []


async def test_a_permanent_refusal_of_the_recipient_carries_the_relays_reply(sink):
    sink.fail_next(code=550, stage="RCPT", message="5.1.1 <nobody> mailbox unavailable")
    with pytest.raises(MailError) as err:
        await SmtpSender(settings(sink.port)).send(EMAIL)
    assert err.value.permanent and "550 5.1.1 <nobody> mailbox unavailable" in str(err.value)


async def test_a_relay_slower_than_the_timeout_is_transient_and_keeps_nothing(sink):
    sink.delay_next(3000)  # DATA answered after 3 s; the sender gives up after 1 s and closes the connection
    with pytest.raises(MailError) as err:
        await SmtpSender(settings(sink.port, smtp_timeout_s=1)).send(EMAIL)
    assert not err.value.permanent
    deadline = asyncio.get_running_loop().time() + 5
    while sink.counts()["cut"] != 1:
        assert asyncio.get_running_loop().time() < deadline, sink.counts()
        await asyncio.sleep(0.05)
    assert sink.messages() == []  # the relay never took the message over: the mailer's retry sends the only copy


async def test_unreachable_relay_is_transient():
    with pytest.raises(MailError) as err:
        await SmtpSender(settings(9)).send(EMAIL)
    assert not err.value.permanent


async def test_an_alert_is_one_message_to_every_admin(sink):
    alert = OutgoingEmail(to_address="ops@contoso.example", to_name="", also_to=("lead@contoso.example", "zoë@bücher.example"),
                          subject="Directory Sync failed: Contoso", html="<p>failed</p>", text="failed",
                          message_id_hint="alert:abc")
    assert await SmtpSender(settings(sink.port)).send(alert) == ()
    [message] = sink.messages()
    assert message["X-Envelope-To"] == "ops@contoso.example, lead@contoso.example, zoë@bücher.example"
    to = [a.addr_spec for a in message["To"].addresses]
    assert to[:2] == ["ops@contoso.example", "lead@contoso.example"] and len(to) == 3


async def test_a_recipient_refused_among_others_is_reported_and_the_rest_get_it(sink):
    alert = OutgoingEmail(to_address="gone@contoso.example", to_name="", also_to=("ops@contoso.example",),
                          subject="s", html="<p>h</p>", text="t", message_id_hint="alert:abc")
    sink.fail_next(code=550, stage="RCPT")
    assert await SmtpSender(settings(sink.port)).send(alert) == ("gone@contoso.example",)
    [message] = sink.messages()
    assert message["X-Envelope-To"] == "ops@contoso.example"


async def test_one_bad_recipient_refuses_the_whole_message_before_the_relay(sink):
    alert = OutgoingEmail(to_address="ops@contoso.example", to_name="", also_to=("a@x.example,b@evil.example",),
                          subject="s", html="<p>h</p>", text="t", message_id_hint="alert:abc")
    with pytest.raises(MailError) as err:
        await SmtpSender(settings(sink.port)).send(alert)
    assert err.value.permanent and sink.messages() == []
