"""The mail sender port and the settings-driven choice of its implementation."""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class OutgoingEmail:
    """One multipart/alternative e-mail to one person."""

    to_address: str
    to_name: str
    subject: str
    html: str
    text: str
    message_id_hint: str


class MailError(Exception):
    """A send failed; ``permanent`` says whether trying again could help."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


class MailSender(abc.ABC):
    """Delivers e-mails. SMTP first; Graph sendMail or Azure Communication Services fit the same port."""

    @abc.abstractmethod
    async def send(self, email: OutgoingEmail) -> None:
        """Send or raise MailError."""

    async def close(self) -> None:
        return None


def build_sender(mail: Any) -> MailSender:
    """The sender the settings choose (``MAIL_SENDER``)."""
    if mail.sender == "smtp":
        from .smtp import SmtpSender

        return SmtpSender(mail)
    raise ValueError(f"unknown mail sender {mail.sender!r}")
