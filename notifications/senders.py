"""The mail sender port and the settings-driven choice of its implementation."""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class OutgoingEmail:
    """One multipart/alternative e-mail to one person (an invitation), or to a few who all see each other in To
    (an admin alert: ``also_to``)."""

    to_address: str
    to_name: str
    subject: str
    html: str
    text: str
    message_id_hint: str
    also_to: tuple[str, ...] = ()  # further recipients, addresses only

    @property
    def recipients(self) -> tuple[str, ...]:
        return (self.to_address, *self.also_to)


class MailError(Exception):
    """A send failed; ``permanent`` says whether trying again could help."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


class MailSender(abc.ABC):
    """Delivers e-mails. SMTP first; Graph sendMail or Azure Communication Services fit the same port."""

    @abc.abstractmethod
    async def send(self, email: OutgoingEmail) -> tuple[str, ...] | None:
        """Send or raise MailError (every recipient refused is a MailError too); returns the recipients the relay
        refused while it accepted the others."""

    async def close(self) -> None:
        return None


def build_sender(mail: Any) -> MailSender:
    """The sender the settings choose (``MAIL_SENDER``)."""
    if mail.sender == "smtp":
        from .smtp import SmtpSender

        return SmtpSender(mail)
    raise ValueError(f"unknown mail sender {mail.sender!r}")


def relay_retry_delay(retry_attempts: int, retry_base_s: float, attempt: int) -> float | None:
    """How long after a relay's temporary refusal the next try goes (doubling, at most an hour: at once is what relays
    punish); None once ``retry_attempts`` tries are used up."""
    if attempt >= retry_attempts:
        return None
    return min(retry_base_s * 2 ** attempt, 3600.0)
