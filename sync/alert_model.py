"""Admin alerts as plain data: who is told (``notifyEmails``), which events are told, and what an alert says.

Pure: no SDK, no I/O. The use case that records and queues alerts is ``sync/alerts.py``; the mailer that sends them
is ``notifications/alert_mailer.py``.
"""
from __future__ import annotations

import json
from typing import Any

from .errors import InvalidInput
from .mailbox import is_single_address

MAX_NOTIFY_EMAILS = 10
MAX_NOTIFY_ENTRIES = 100  # a longer list is refused before its entries are even looked at
SHOWN_ENTRY = 80  # characters of a refused entry echoed in the error


def notify_emails(value: Any) -> tuple[str, ...]:
    """The ``notifyEmails`` option: at most 10 addresses, each exactly one addr-spec (``sync/mailbox.py``, the rule
    every synced address passes), surrounding blanks removed, duplicates (ignoring case) dropped, first spelling
    kept. Anything else is 400 ``invalid_notify_emails`` naming the refused entries (``invalidEntries``)."""
    if not isinstance(value, list):
        raise InvalidInput("notifyEmails must be a list of e-mail addresses ([] sends no alerts)",
                           code="invalid_notify_emails")
    if len(value) > MAX_NOTIFY_ENTRIES:
        raise InvalidInput(f"notifyEmails holds at most {MAX_NOTIFY_EMAILS} addresses", code="invalid_notify_emails")
    unique: dict[str, str] = {}
    refused: list[str] = []
    for entry in value:
        address = entry.strip() if isinstance(entry, str) else None
        if address is None or not is_single_address(address):
            refused.append(_shown(entry))
            continue
        unique.setdefault(address.casefold(), address)
    if refused:
        raise InvalidInput(f"notifyEmails: not exactly one e-mail address each: {', '.join(refused)}",
                           code="invalid_notify_emails", invalidEntries=refused)
    if len(unique) > MAX_NOTIFY_EMAILS:
        raise InvalidInput(f"notifyEmails holds at most {MAX_NOTIFY_EMAILS} addresses ({len(unique)} given)",
                           code="invalid_notify_emails")
    return tuple(unique.values())


def _shown(entry: Any) -> str:
    """A refused entry as the error names it: JSON text (so quotes and control characters are visible), cut short."""
    text = json.dumps(entry, ensure_ascii=True) if entry is None or isinstance(entry, (str, int, float, bool)) \
        else type(entry).__name__
    return text if len(text) <= SHOWN_ENTRY else text[: SHOWN_ENTRY - 1] + "…"
