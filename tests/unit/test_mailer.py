"""The mailer on fakes: one invitation per user whatever is redelivered; rendering escapes; failures classified."""
from datetime import datetime, timezone
from urllib.parse import parse_qs, urlsplit

import azure.functions.servicebus as sb
import pytest

from notifications.mailer import handle_dead_lettered, send_invitation
from notifications.render import render_invitation
from notifications.senders import MailError
from notifications.smtp import build_message
from sync import signing
from sync.model import EmailState, EnrollmentJob
from tests.fakes import SIGNING
from tests.helpers import functions_by_name
from tests.unit.syncdsl import TENANT, connect, full_sync, users_of

G = "g-sales"


@pytest.fixture
async def invited(svc):
    t = svc.directory.tenant(TENANT)
    t.add_group(G, "Sales Team")
    t.add_user("tom", groups=[G], display_name='Tom & "Jerry" <script>alert(1)</script>')
    t.add_user("zoe", groups=[G], display_name="زينب Zoë")
    sub = await connect(svc, groups=(G,), sendEnrollmentEmail=True)
    await full_sync(svc, sub)
    return svc.queue.enrollment_jobs


async def test_each_invitation_is_sent_once_even_when_redelivered(svc, invited):
    assert len(invited) == 2
    for job in invited * 3:
        await send_invitation(svc, job)
    sent = svc.mail_sender.sent
    assert sorted(e.to_address for e in sent) == ["tom@contoso.example", "zoe@contoso.example"]
    users = users_of(svc)
    assert all(u.enrollment_email == EmailState.SENT and u.enrollment_email_sent_at for u in users.values())


async def test_trigger_function_decodes_the_service_bus_message(svc, invited):
    job = invited[0]
    msg = sb.ServiceBusMessage(body=job.to_json().encode(), message_id=job.message_id, application_properties={},
                               user_properties={}, delivery_count=1)
    await functions_by_name()["mailer"].get_user_function()(msg)
    assert len(svc.mail_sender.sent) == 1


async def test_link_token_names_org_and_user_and_expires(svc, invited):
    await send_invitation(svc, invited[0])
    email = svc.mail_sender.sent[0]
    link = next(w for w in email.text.split() if w.startswith("https://portal.example/enroll?token="))
    claims = signing.verify(SIGNING, "enrollment", parse_qs(urlsplit(link).query)["token"][0])
    assert claims["org"] == "org-a" and claims["uid"] == invited[0].user_id
    assert claims["exp"] == int(svc.clock().timestamp()) + 7 * 24 * 3600


async def test_html_escapes_names_and_text_keeps_them(svc, invited):
    await send_invitation(svc, invited[0])
    email = next(e for e in svc.mail_sender.sent if e.to_address.startswith("tom"))
    assert "<script>" not in email.html
    assert "Tom &amp; &#34;Jerry&#34; &lt;script&gt;" in email.html
    assert 'Tom & "Jerry" <script>alert(1)</script>' in email.text
    message = build_message(email, "Portal <no-reply@portal.example>")
    assert message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]


def test_crlf_in_names_never_reaches_a_header():
    rendered = render_invitation(portal_name="Portal", portal_url="https://p.example", display_name="Eve\r\nBcc: x@evil.example",
                                 username="eve", link="https://p.example/enroll?token=t", expires_at=datetime.now(timezone.utc))
    assert "\n" not in rendered.subject and "\r" not in rendered.subject
    from notifications.senders import OutgoingEmail
    msg = build_message(OutgoingEmail("eve@x.example", "Eve\r\nBcc: x@evil.example", rendered.subject, rendered.html,
                                      rendered.text, "hint"), "Portal <no-reply@portal.example>")
    headers = msg.as_string().split("\n\n", 1)[0]
    assert "\nBcc:" not in headers and msg["Bcc"] is None
    assert email_lines_are_folded_only(headers)


def email_lines_are_folded_only(headers: str) -> bool:
    """Every header line is a 'Name: value' line or a folded continuation (starts with whitespace)."""
    return all(line[:1] in (" ", "\t") or ":" in line.split(" ", 1)[0] for line in headers.splitlines())


async def test_transient_failure_is_retried_later_permanent_is_recorded(svc, invited):
    svc.mail_sender.failures.append(MailError("451 try later", permanent=False))
    queued = len(svc.queue.enrollment_jobs)
    assert await send_invitation(svc, invited[0]) == "retry_scheduled"
    assert users_of(svc)["tom@contoso.example"].enrollment_email == EmailState.QUEUED
    [retry] = svc.queue.enrollment_jobs[queued:]
    assert retry.attempt == 1 and retry.user_id == invited[0].user_id and svc.queue.delays[-1] == 60
    assert retry.message_id != invited[0].message_id
    assert await send_invitation(svc, retry) == "sent"
    assert await send_invitation(svc, invited[0]) == "already_sent"
    svc.mail_sender.failures.append(MailError("550 no such mailbox", permanent=True))
    assert await send_invitation(svc, invited[1]) == "failed"
    zoe = users_of(svc)["zoe@contoso.example"]
    assert zoe.enrollment_email == EmailState.FAILED and "550" in zoe.enrollment_email_error
    assert await send_invitation(svc, invited[1]) == "not_due"


async def test_a_send_in_progress_elsewhere_is_not_repeated_until_its_lease_ends(svc, invited):
    from dataclasses import replace

    from sync.users import change_user

    async def claim(u):
        return replace(u, enrollment_email=EmailState.SENDING, enrollment_email_lease_until=svc.clock().replace(year=2100))
    await change_user(svc, "org-a", invited[0].user_id, claim)
    assert await send_invitation(svc, invited[0]) == "being_sent"
    assert svc.mail_sender.sent == []


async def test_a_claim_left_by_a_delivery_that_died_is_taken_over_after_its_lease(svc, invited):
    from dataclasses import replace
    from datetime import timedelta

    from sync.users import change_user

    lease = timedelta(seconds=svc.settings.invitation_lease_s)

    async def claim(u):  # what the killed delivery had written
        return replace(u, enrollment_email=EmailState.SENDING, enrollment_email_lease_until=svc.clock() + lease)
    await change_user(svc, "org-a", invited[0].user_id, claim)
    assert await send_invitation(svc, invited[0]) == "being_sent"  # within the lease: the claimer may be sending
    svc.clock.advance(seconds=lease.total_seconds() + 1)
    assert await send_invitation(svc, invited[0]) == "sent"
    assert await send_invitation(svc, invited[0]) == "already_sent"
    assert [m.to_address for m in svc.mail_sender.sent] == ["tom@contoso.example"]


async def test_dead_lettered_invitation_is_recorded(svc, invited):
    await handle_dead_lettered(svc, invited[0], "MaxDeliveryCountExceeded")
    tom = users_of(svc)["tom@contoso.example"]
    assert tom.enrollment_email == EmailState.FAILED and "MaxDeliveryCountExceeded" in tom.enrollment_email_error


async def test_retries_back_off_and_give_up(svc, invited):
    from dataclasses import replace as copy
    job = copy(invited[0], attempt=svc.settings.mail.retry_attempts - 1)
    svc.mail_sender.failures += [MailError("421 busy", permanent=False)] * 2
    assert await send_invitation(svc, job) == "retry_scheduled"
    assert svc.queue.delays[-1] == 3600  # capped
    assert await send_invitation(svc, svc.queue.enrollment_jobs[-1]) == "failed"
    tom = users_of(svc)["tom@contoso.example"]
    assert tom.enrollment_email == EmailState.FAILED and "gave up after" in tom.enrollment_email_error


async def test_the_next_run_requeues_an_invitation_an_earlier_run_left_claimed(svc, invited):
    from dataclasses import replace

    from sync import runs
    from sync.users import change_user
    from tests.unit.syncdsl import caller, deliver

    tom = users_of(svc)["tom@contoso.example"]

    async def stuck(u):  # claimed by a delivery that died, and its message is gone
        return replace(u, enrollment_email=EmailState.SENDING, enrollment_email_lease_until=svc.clock())
    await change_user(svc, "org-a", tom.id, stuck)
    svc.queue.enrollment_jobs.clear()
    svc.clock.advance(minutes=10)
    await runs.start(svc, caller(), tom.subscription_id)
    await deliver(svc)
    assert [j.user_id for j in svc.queue.enrollment_jobs] == [tom.id]
    # Under a message id of its own: within the duplicate-detection window Service Bus drops a message whose id it
    # saw (the first send's, enroll:<org>:<user>), as accepted.
    [requeued] = svc.queue.enrollment_jobs
    assert svc.queue.message_ids.count(requeued.message_id) == 1
    assert requeued.message_id != EnrollmentJob("org-a", tom.id).message_id
    assert await send_invitation(svc, svc.queue.enrollment_jobs[0]) == "sent"
    assert users_of(svc)["tom@contoso.example"].enrollment_email == EmailState.SENT


HOSTILE = "Eve\x00\x1b[31m\x85\x9b\u202eexe.txt\u2066\u2067\u2068\u2069\u202a\u202b\u202c\u202d\u200e\u200f\u061c Smith"


async def test_control_characters_and_direction_overrides_never_reach_to_or_subject(svc):
    """NUL, ESC, C1 controls and bidirectional overrides/isolates in a directory name: cleaned from the invitation's
    To display name and Subject as an alert's subject is (one helper, ``render.header_text``)."""
    t = svc.directory.tenant(TENANT)
    t.add_group(G, "Sales Team")
    t.add_user("eve", groups=[G], display_name=HOSTILE)
    sub = await connect(svc, groups=(G,), sendEnrollmentEmail=True)
    await full_sync(svc, sub)
    [job] = svc.queue.enrollment_jobs
    await send_invitation(svc, job)
    [email] = svc.mail_sender.sent
    for header in (email.to_name, email.subject):
        assert header.startswith("Eve [31m exe.txt Smith"), header
        assert not any(ord(c) < 32 or 0x7F <= ord(c) <= 0x9F or 0x202A <= ord(c) <= 0x202E
                       or 0x2066 <= ord(c) <= 0x2069 or ord(c) in (0x200E, 0x200F, 0x061C) for c in header), header
    message = build_message(email, "Portal <no-reply@portal.example>")
    assert message["To"].addresses[0].display_name == "Eve [31m exe.txt Smith"
    # Whatever a sender is handed, the SMTP adapter cleans the same way.
    from notifications.senders import OutgoingEmail
    raw = build_message(OutgoingEmail("eve@x.example", HOSTILE, HOSTILE, "<p>x</p>", "x", "hint"), "p@portal.example")
    assert raw["To"].addresses[0].display_name == raw["Subject"] == "Eve [31m exe.txt Smith"


def _token_of(email) -> str:
    link = next(w for w in email.text.split() if "/enroll?token=" in w)
    return parse_qs(urlsplit(link).query)["token"][0]


async def test_a_link_is_bound_to_its_address_and_a_corrected_address_is_invited_once(svc, invited):
    """Issue 22, 3: the Azure admin corrects the address of a user invited at a wrong one. The old link answers 410
    ``address_changed``; the new address gets one invitation (redelivered run and mailer messages included), whose
    link enrols."""
    from dataclasses import replace

    from tests.helpers import call

    for job in invited:
        await send_invitation(svc, job)
    old = _token_of(next(e for e in svc.mail_sender.sent if e.to_address.startswith("tom")))
    t = svc.directory.tenant(TENANT)
    t.users["tom"] = replace(t.users["tom"], mail="thomas@contoso.example")
    t.users["zoe"] = replace(t.users["zoe"], display_name="Zoë B.")  # another change: no new invitation
    svc.queue.enrollment_jobs.clear()
    tom = users_of(svc)["tom@contoso.example"]
    await full_sync(svc, await svc.subscriptions.get("org-a", tom.subscription_id), times=2)  # every job twice
    jobs = svc.queue.enrollment_jobs
    # Its own message id (the first invitation's may still be in the broker's duplicate detection window).
    assert {j.user_id for j in jobs} == {tom.id} and any(j.to for j in jobs), jobs
    for job in jobs * 2:
        await send_invitation(svc, job)
    to_new = [e for e in svc.mail_sender.sent if e.to_address == "thomas@contoso.example"]
    assert len(to_new) == 1 and len(svc.mail_sender.sent) == 3
    status, err, _ = await call("complete_enrollment", body={"token": old})
    assert (status, err["code"]) == (410, "address_changed"), err
    status, user, _ = await call("complete_enrollment", body={"token": _token_of(to_new[0])})
    assert status == 200 and user["enrolledAt"]
    # Enrolled: a later correction of the address invites nobody.
    t.users["tom"] = replace(t.users["tom"], mail="tom.b@contoso.example")
    svc.queue.enrollment_jobs.clear()
    await full_sync(svc, await svc.subscriptions.get("org-a", tom.subscription_id))
    assert svc.queue.enrollment_jobs == []


async def test_an_outcome_of_a_send_to_an_old_address_does_not_cover_the_new_address_invitation(svc, invited):
    """A send to the old address still in flight when the directory corrects it: its outcome is not written over
    the new address's queued invitation (which would then never go)."""
    from dataclasses import replace

    tom = users_of(svc)["tom@contoso.example"]
    job = next(j for j in invited if j.user_id == tom.id)
    sender = svc.mail_sender
    original = sender.send

    async def slow_send(email):
        t = svc.directory.tenant(TENANT)
        t.users["tom"] = replace(t.users["tom"], mail="thomas@contoso.example")
        svc.queue.enrollment_jobs.clear()
        await full_sync(svc, await svc.subscriptions.get("org-a", tom.subscription_id))
        return await original(email)

    sender.send = slow_send
    assert await send_invitation(svc, job) == "sent"
    sender.send = original
    assert users_of(svc)["tom@contoso.example"].enrollment_email == EmailState.QUEUED
    [again] = svc.queue.enrollment_jobs
    assert await send_invitation(svc, again) == "sent"
    assert [e.to_address for e in svc.mail_sender.sent][-1] == "thomas@contoso.example"
