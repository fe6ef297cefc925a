"""SMTP adapter (stdlib smtplib in a worker thread): STARTTLS, implicit TLS or plain, optional login."""
from __future__ import annotations

import asyncio
import smtplib
import ssl
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any

from sync.mailbox import is_single_address

from .render import header_text
from .senders import MailError, MailSender, OutgoingEmail


def build_message(email: OutgoingEmail, mail_from: str) -> EmailMessage:
    """A multipart/alternative message; names are encoded by the email package, never pasted into headers."""
    message = EmailMessage()
    message["From"] = mail_from
    name = header_text(email.to_name, 998)  # no CR/LF, control character or direction override reaches a header
    to = []
    for n, address in enumerate(email.recipients):
        username, _, domain = address.partition("@")
        to.append(Address(display_name=name if n == 0 else "", username=username, domain=domain))
    message["To"] = to
    message["Subject"] = header_text(email.subject, 998)
    message["Message-ID"] = make_msgid(domain=(mail_from.rpartition("@")[2].strip(" >") or None))
    message["X-Directory-Sync"] = email.message_id_hint
    message.set_content(email.text)
    message.add_alternative(email.html, subtype="html")
    return message


class SmtpSender(MailSender):
    """Sends through any SMTP relay (Microsoft 365, SendGrid, a local sink)."""

    def __init__(self, settings: Any) -> None:
        self._s = settings

    async def send(self, email: OutgoingEmail) -> tuple[str, ...]:
        if not all(is_single_address(r) for r in email.recipients):
            raise MailError("a recipient is not exactly one e-mail address", permanent=True)
        message = build_message(email, self._s.mail_from)
        return await asyncio.to_thread(self._send_blocking, message, list(email.recipients))

    def _send_blocking(self, message: EmailMessage, recipients: list[str]) -> tuple[str, ...]:
        s = self._s
        try:
            if s.smtp_security == "tls":
                client: smtplib.SMTP = smtplib.SMTP_SSL(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout_s,
                                                        context=ssl.create_default_context())
            else:
                client = smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout_s)
            with client:
                if s.smtp_security == "starttls":
                    client.starttls(context=ssl.create_default_context())
                if s.smtp_username:
                    client.login(s.smtp_username, s.smtp_password or "")
                # The envelope names exactly the recipients given; never what a header might be parsed into.
                refused = client.send_message(message, to_addrs=recipients)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            replies = "; ".join(f"{code} {_reply(text)}" for code, text in exc.recipients.values())
            raise MailError(f"the relay refused the recipient: {replies}", permanent=all(c >= 500 for c in codes)) from None
        except smtplib.SMTPAuthenticationError as exc:  # its reply may echo what was sent: the code only
            raise MailError(f"the relay answered {exc.smtp_code}", permanent=False) from None
        except smtplib.SMTPResponseException as exc:
            raise MailError(f"the relay answered {exc.smtp_code} {_reply(exc.smtp_error)}",
                            permanent=exc.smtp_code >= 500) from None
        except (smtplib.SMTPException, OSError) as exc:
            raise MailError(f"the relay could not be reached: {type(exc).__name__}", permanent=False) from None
        return tuple(refused)  # the relay took the message for the others


def _reply(text: Any) -> str:
    """A relay's reply text as one printable line (kept on the user's invitation as ``lastError``), at most 200."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return header_text(str(text or ""), 200)
