"""The SMTP sink, driven with smtplib the way a mailer would use a real relay."""

from __future__ import annotations

import json
import os
import signal
import smtplib
import socket
import struct
import subprocess
import sys
import threading
import time
from email.message import EmailMessage
from pathlib import Path

import pytest

from local.smtp_sink import SmtpSink

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def sink(tmp_path):
    with SmtpSink(tmp_path / "outbox") as server:
        yield server


def message(subject: str = "Your access was updated", to: str = "adele.vance@contoso.example") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Directory Sync <noreply@portal.example>"
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content("Hello Zoë,\n\nyou were added to “Sales Team”.\n")
    msg.add_alternative("<p>Hello Zoë, you were added to <b>Sales Team</b>.</p>", subtype="html")
    return msg


def send(sink: SmtpSink, msg: EmailMessage, **kwargs) -> dict:
    with smtplib.SMTP("127.0.0.1", sink.port, timeout=10) as client:
        return client.send_message(msg, **kwargs)


def test_message_is_written_as_eml_and_parsed(sink):
    send(sink, message(), to_addrs=["adele.vance@contoso.example", "audit@portal.example"])
    files = list(sink.outbox.iterdir())
    assert len(files) == 1 and files[0].suffix == ".eml"
    [received] = sink.messages()
    assert received["Subject"] == "Your access was updated"
    assert received["To"] == "adele.vance@contoso.example"
    assert received["X-Envelope-From"] == "noreply@portal.example"
    assert received["X-Envelope-To"] == "adele.vance@contoso.example, audit@portal.example"
    assert "“Sales Team”" in received.get_body(("plain",)).get_content()
    assert "<b>Sales Team</b>" in received.get_body(("html",)).get_content()


def test_messages_come_back_oldest_first_and_clear_empties_the_outbox(sink):
    for n in range(3):
        send(sink, message(subject=f"message {n}"))
    assert [m["Subject"] for m in sink.messages()] == ["message 0", "message 1", "message 2"]
    sink.clear()
    assert sink.messages() == [] and list(sink.outbox.iterdir()) == []


def test_transient_failure_on_data_then_success(sink):
    sink.fail_next(code=451, message="4.3.0 Try again later")
    with pytest.raises(smtplib.SMTPDataError) as caught:
        send(sink, message())
    assert caught.value.smtp_code == 451
    assert sink.messages() == []
    send(sink, message())  # what the mailer's retry does
    assert len(sink.messages()) == 1


def test_permanent_failure_on_recipients(sink):
    sink.fail_next(code=550, message="5.1.1 No such user", times=2, stage="RCPT")
    with pytest.raises(smtplib.SMTPRecipientsRefused) as caught:
        send(sink, message(), to_addrs=["a@contoso.example", "b@contoso.example"])
    assert caught.value.recipients == {"a@contoso.example": (550, b"5.1.1 No such user"),
                                       "b@contoso.example": (550, b"5.1.1 No such user")}
    send(sink, message())
    assert len(sink.messages()) == 1


def test_failure_on_mail_from(sink):
    sink.fail_next(code=421, message="4.7.0 Too many connections", stage="MAIL")
    with pytest.raises(smtplib.SMTPSenderRefused) as caught:
        send(sink, message())
    assert caught.value.smtp_code == 421


@pytest.mark.parametrize("kwargs", [{"code": 250}, {"times": 0}, {"stage": "HELO"}])
def test_fail_next_rejects_nonsense(sink, kwargs):
    with pytest.raises(ValueError):
        sink.fail_next(**kwargs)


def wait_until(check, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
    return value


def test_a_delayed_data_is_held_then_stored(sink):
    sink.delay_next(400)
    started = time.monotonic()
    sender = threading.Thread(target=send, args=(sink, message()), kwargs={"to_addrs": ["adele@contoso.example"]})
    sender.start()
    [held] = wait_until(sink.holding)
    assert (held["stage"], held["mailFrom"], held["rcptTos"], held["delayMs"]) == (
        "DATA", "noreply@portal.example", ["adele@contoso.example"], 400)
    assert sink.messages() == [] and sink.faults() == []
    sender.join(timeout=10)
    assert time.monotonic() - started >= 0.4
    assert len(sink.messages()) == 1 and sink.holding() == []
    assert sink.counts() == {"failed": 0, "held": 1, "cut": 0}
    send(sink, message())  # the delay was for one DATA only
    assert len(sink.messages()) == 2


def test_a_client_gone_while_its_data_is_held_leaves_nothing_stored(sink):
    sink.delay_next(800)
    client = smtplib.SMTP("127.0.0.1", sink.port, timeout=10)
    client.ehlo()
    client.mail("noreply@portal.example")
    client.rcpt("adele@contoso.example")
    client.putcmd("data")
    assert client.getreply()[0] == 354
    client.send(message().as_bytes().replace(b"\n", b"\r\n") + b"\r\n.\r\n")  # all of it, then no answer read
    wait_until(sink.holding)
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, no FIN
    client.close()  # as the kernel does for a process killed mid-send
    wait_until(lambda: sink.counts()["cut"] == 1)
    assert sink.holding() == []
    time.sleep(1.0)  # past the delay: the message was dropped, not stored late
    assert sink.messages() == [] and list(sink.outbox.iterdir()) == []


def test_a_delay_and_a_failure_together_hold_then_refuse(sink):
    sink.add_fault({"stage": "RCPT", "delayMs": 200, "code": 550, "message": "5.1.1 No such user"})
    assert sink.faults() == [{"code": 550, "message": "5.1.1 No such user", "times": 1, "stage": "RCPT"},
                             {"delayMs": 200, "times": 1, "stage": "RCPT"}]
    started = time.monotonic()
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        send(sink, message())
    assert time.monotonic() - started >= 0.2
    assert sink.counts() == {"failed": 1, "held": 1, "cut": 0} and sink.faults() == []


@pytest.mark.parametrize("spec", [[], {}, {"stage": "DATA"}, {"delayMs": 0}, {"delayMs": "5"}, {"delayMs": True},
                                  {"code": 250}, {"code": "451"}, {"delayMs": 10, "times": 0},
                                  {"delayMs": 10, "stage": "HELO"}, {"delayMs": 10, "colour": "red"},
                                  {"code": 451, "message": "a\r\n250 OK"}])
def test_faults_in_the_control_shape_reject_nonsense(sink, spec):
    with pytest.raises(ValueError):
        sink.add_fault(spec)
    assert sink.faults() == []


def test_delay_next_rejects_nonsense(sink):
    for kwargs in ({"ms": 0}, {"ms": 10, "times": 0}, {"ms": 10, "stage": "QUIT"}):
        with pytest.raises(ValueError):
            sink.delay_next(**kwargs)


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_auth_required(tmp_path, mechanism):
    with SmtpSink(tmp_path, auth_required=True, username="mailer", password="s3cret") as sink:
        with smtplib.SMTP("127.0.0.1", sink.port, timeout=10) as client:
            client.ehlo()
            assert set(client.esmtp_features["auth"].split()) >= {"PLAIN", "LOGIN"}
            with pytest.raises(smtplib.SMTPSenderRefused) as caught:
                client.send_message(message())
            assert caught.value.smtp_code == 530
            client.user, client.password = "mailer", "wrong"
            with pytest.raises(smtplib.SMTPAuthenticationError):
                client.auth(mechanism, getattr(client, f"auth_{mechanism.lower()}"), initial_response_ok=False)
            client.user, client.password = "mailer", "s3cret"
            code, _ = client.auth(mechanism, getattr(client, f"auth_{mechanism.lower()}"), initial_response_ok=False)
            assert code == 235
            client.send_message(message())
        assert len(sink.messages()) == 1


def test_auth_is_optional_and_accepts_anything_when_not_required(sink):
    with smtplib.SMTP("127.0.0.1", sink.port, timeout=10) as client:
        client.login("anyone", "anything")
        client.send_message(message())
    send(sink, message())
    assert len(sink.messages()) == 2


def test_auth_required_needs_credentials(tmp_path):
    with pytest.raises(ValueError):
        SmtpSink(tmp_path, auth_required=True)


def test_wait_for_messages(sink):
    sender = threading.Timer(0.2, send, args=(sink, message()))
    sender.start()
    assert len(sink.wait_for_messages(1, timeout=5)) == 1
    sender.join()
    with pytest.raises(TimeoutError):
        sink.wait_for_messages(2, timeout=0.3)


def test_stop_releases_the_port_and_thread(tmp_path):
    threads = threading.active_count()
    sink = SmtpSink(tmp_path).start()
    port = sink.port
    send(sink, message())
    sink.stop()
    assert threading.active_count() == threads
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen()


def test_cli_prints_ready_and_stops_on_sigterm(tmp_path):
    outbox = tmp_path / "cli-outbox"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "local.smtp_sink", "--outbox", str(outbox), "--port", "0"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("READY ")
        ready = json.loads(line[len("READY "):])
        assert ready["outbox"] == str(outbox.resolve())
        host, port = ready["smtp"].rsplit(":", 1)
        with smtplib.SMTP(host, int(port), timeout=10) as client:
            client.send_message(message())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert len(list(outbox.glob("*.eml"))) == 1
    finally:
        proc.kill()
        proc.wait()
