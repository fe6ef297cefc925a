"""Events the portal is told of (webhooks, the events feed) and its webhook endpoints, as plain dataclasses.

An event is one change the store accepted: its id is derived from what the change wrote (the user's history entry,
the run, the consent lost), so recording it again (a redelivered message, a retried write) finds it already there.
"""
from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .model import ChangeKind, HistoryEntry, User, iso, utcnow


class EventType:
    USER_CREATED = "user.created"
    USER_UPDATED = "user.updated"
    USER_DEACTIVATED = "user.deactivated"
    USER_REACTIVATED = "user.reactivated"
    USER_LINKED = "user.linked"  # an existing Manual user linked in place to a directory user (linkExistingUsers)
    USER_UNLINKED = "user.unlinked"
    RUN_COMPLETED = "run.completed"
    CONSENT_REVOKED = "subscription.consent_revoked"
    ALL = (USER_CREATED, USER_UPDATED, USER_DEACTIVATED, USER_REACTIVATED, USER_LINKED, USER_UNLINKED, RUN_COMPLETED,
           CONSENT_REVOKED)


OF_CHANGE = {ChangeKind.CREATED: EventType.USER_CREATED, ChangeKind.UPDATED: EventType.USER_UPDATED,
             ChangeKind.DEACTIVATED: EventType.USER_DEACTIVATED, ChangeKind.REACTIVATED: EventType.USER_REACTIVATED,
             ChangeKind.LINKED: EventType.USER_LINKED}


def event_id(org: str, what: str) -> str:
    """The event's id, the same whoever records it again: ``evt_`` + 32 hex digits of what it is."""
    return "evt_" + hashlib.sha256(f"{org}\n{what}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Event:
    """One change told to the portal; ``sequence`` is given by the event log (per org, in the order recorded)."""

    org: str
    id: str
    type: str
    timestamp: datetime
    data: dict[str, Any]
    sequence: int = 0

    def to_api(self) -> dict[str, Any]:
        """``{"id","type","timestamp","data"}``; ``data.sequence`` is the event's place in its org's log."""
        return {"id": self.id, **self.body()}

    def body(self) -> dict[str, Any]:
        """What a webhook delivery carries (Standard Webhooks' ``{"type","timestamp","data"}``)."""
        return {"type": self.type, "timestamp": iso(self.timestamp), "data": {**self.data, "sequence": self.sequence}}


def user_event(user: User, entry: HistoryEntry, group_names: dict[str, str]) -> Event:
    """The event of the history entry a write of ``user`` carried."""
    data = {**user.to_api(group_names), "previous": {k: v[0] for k, v in entry.fields.items()},
            "reason": entry.reason, "runId": entry.run_id, "subscriptionId": user.subscription_id}
    return Event(user.org, user_event_id(user, entry), OF_CHANGE[entry.change], entry.at, data)


def user_event_id(user: User, entry: HistoryEntry) -> str:
    return event_id(user.org, f"user\n{user.id}\n{iso(entry.at)}\n{entry.run_id}\n{entry.change}\n{entry.group_id}")


def unlinked_event(user: User, subscription_id: str, group_names: dict[str, str], at: datetime) -> Event:
    """A user handed back to the admins (Manual) because its subscription was deleted."""
    data = {**user.to_api(group_names), "previous": {"sourceType": "AdSync", "subscriptionId": subscription_id},
            "reason": "subscription_deleted", "runId": None, "subscriptionId": subscription_id}
    return Event(user.org, event_id(user.org, f"unlinked\n{user.id}\n{subscription_id}"), EventType.USER_UNLINKED,
                 at, data)


class WebhookStatus:
    ENABLED = "enabled"
    FAILING = "failing"  # every retry failed: nothing is sent until it is enabled again


@dataclass(frozen=True)
class Webhook:
    """An endpoint of the portal's that receives the org's events; ``cursor``: the last sequence handled."""

    org: str
    id: str
    url: str
    secret: str = field(repr=False)
    events: tuple[str, ...] = EventType.ALL
    status: str = WebhookStatus.ENABLED
    created_at: datetime = field(default_factory=utcnow)
    cursor: int = 0
    attempts: int = 0  # failed attempts at the event after ``cursor``
    next_attempt_at: datetime | None = None
    failing_since: datetime | None = None
    lease_until: datetime | None = None  # a worker is delivering (one at a time keeps the order)
    etag: str | None = field(default=None, compare=False)

    def to_api(self) -> dict[str, Any]:
        return {"id": self.id, "url": self.url, "events": list(self.events), "status": self.status,
                "createdAt": iso(self.created_at)}


@dataclass(frozen=True)
class WebhookJob:
    """The Service Bus message asking the delivery worker to deliver what a webhook has not had yet."""

    org: str
    webhook_id: str
    tag: str = ""  # a retry's or a continuation's: deterministic; a nudge has none and is never dropped as a duplicate

    @property
    def message_id(self) -> str:
        digest = hashlib.sha256(f"{self.org}\n{self.webhook_id}".encode()).hexdigest()[:40]
        return f"webhook:{digest}:{self.tag or uuid.uuid4().hex}"

    def to_json(self) -> str:
        return json.dumps({"org": self.org, "webhookId": self.webhook_id, "tag": self.tag}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> "WebhookJob":
        data = json.loads(text)
        return cls(org=str(data["org"]), webhook_id=str(data["webhookId"]), tag=str(data.get("tag") or ""))
