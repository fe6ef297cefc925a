"""Admin alerts as plain data: who is told (``notifyEmails``), which events are told, and what an alert says.

Pure: no SDK, no I/O. The use case that records and queues alerts is ``sync/alerts.py``; the mailer that sends them
is ``notifications/alert_mailer.py``.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from .errors import InvalidInput
from .mailbox import is_single_address
from .model import EmailState, GroupState, PendingConsent, RunStatus, RunView, Subscription, iso, utcnow

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


# ---------------------------------------------------------------- events


class AlertKind:
    RUN_FAILED = "run_failed"
    RUN_NEEDS_REVIEW = "run_needs_review"
    CONSENT_LOST = "consent_lost"
    TENANT_CLAIMED = "tenant_claimed"  # another org confirmed (or was refused) a consent of this subscription's tenant


# Only these endings are told. Anything else — succeeded, a dry run's preview, a status added later — is not.
RUN_ALERTS = {RunStatus.FAILED: AlertKind.RUN_FAILED, RunStatus.NEEDS_REVIEW: AlertKind.RUN_NEEDS_REVIEW}

# A claim (``sending``) older than this was left by a delivery that died: it may be taken over. Longer than a send
# takes (SMTP_TIMEOUT_SECONDS, 30), shorter than the queue's 5-minute lock: the redelivery of a message whose host
# died comes when the lock expires, finds the claim expired, and sends. The longest retry delay is an hour, so an
# alert still ``queued`` after RECOVER_QUEUED has lost its message.
SEND_LEASE = timedelta(minutes=2)
RECOVER_QUEUED = timedelta(hours=1) + SEND_LEASE

MAX_LISTED = 10  # failed groups, error codes and run notes an alert lists
MAX_TEXT = 300  # characters of one error message or note
MAX_NAME = 256  # characters of a group name (Graph's limit)


def owed_alert(status: str) -> str | None:
    """The status to record on a run that ends with ``status`` as its owed alert, or None."""
    return status if status in RUN_ALERTS else None


@dataclass(frozen=True)
class Alert:
    """One event told to a subscription's admins, and how far telling it has got (claimed like an invitation)."""

    org: str
    subscription_id: str
    id: str  # the event: run:<run id>:<status> or consent:<consent time, ms>; one row, one e-mail, per event
    kind: str
    subscription_name: str
    recipients: tuple[str, ...]  # notifyEmails when the event happened
    run_id: str | None = None
    facts: dict[str, Any] = field(default_factory=dict)  # what happened, as the e-mail tells it (taken at the event)
    state: str = EmailState.QUEUED
    lease_until: datetime | None = None
    sent_at: datetime | None = None
    error: str | None = None
    refused: tuple[str, ...] = ()  # recipients the relay refused while it accepted the others
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)
    etag: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class AlertJob:
    """The Service Bus message asking the alert mailer to send one alert."""

    org: str
    subscription_id: str
    alert_id: str
    attempt: int = 0  # retries after the relay refused for a while
    tag: str = ""  # a re-queue of a claim left by a delivery that died: a message id of its own

    @property
    def message_id(self) -> str:
        """Deterministic (duplicate detection drops a send retried after a lost answer) and short (Service Bus
        allows 128 characters; org ids may be 256)."""
        digest = hashlib.sha256(f"{self.org}\n{self.subscription_id}\n{self.alert_id}".encode()).hexdigest()[:40]
        base = f"alert:{digest}"
        if self.attempt:
            base += f":retry{self.attempt}"
        return f"{base}:{self.tag}" if self.tag else base

    def to_json(self) -> str:
        return json.dumps({"org": self.org, "subscriptionId": self.subscription_id, "alertId": self.alert_id,
                           "attempt": self.attempt, "tag": self.tag}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> "AlertJob":
        data = json.loads(text)
        return cls(org=str(data["org"]), subscription_id=str(data["subscriptionId"]), alert_id=str(data["alertId"]),
                   attempt=int(data.get("attempt") or 0), tag=str(data.get("tag") or ""))

    @classmethod
    def of(cls, alert: Alert, **kw: Any) -> "AlertJob":
        return cls(alert.org, alert.subscription_id, alert.id, **kw)


def run_alert_id(run_id: str, status: str) -> str:
    return f"run:{run_id}:{status}"


def consent_alert_id(sub: Subscription) -> str:
    """One consent-lost event per consent given: a consent given again and lost again is a new event."""
    at = int(sub.consented_at.timestamp() * 1000) if sub.consented_at else 0
    return f"consent:{at}"


def run_alert(sub: Subscription, view: RunView, status: str, now: datetime) -> Alert:
    """The alert of a run that ended ``status`` (failed or needs_review): its counts, failed groups and errors."""
    run = view.run
    names = {g.id: g.display_name for g in sub.groups}
    failed = [g for g in view.groups if g.state == GroupState.FAILED]
    codes: dict[str, int] = {}
    for e in view.errors:
        codes[e.code] = codes.get(e.code, 0) + 1
    failed_groups = []
    for g in failed[:MAX_LISTED]:
        last = g.errors[-1] if g.errors else None
        failed_groups.append({"id": g.group_id, "name": _cut(names.get(g.group_id, g.group_id), MAX_NAME),
                              "code": last.code if last else "group_sync_failed",
                              "message": _cut(last.message if last else (g.last_error or "the group failed"), MAX_TEXT)})
    counts = run.final_counts.to_api()
    facts = {
        "status": status,
        "trigger": run.trigger,
        "startedAt": iso(run.started_at),
        "finishedAt": iso(run.finished_at),
        "groupsTotal": len(run.group_ids),
        "counts": {k: counts[k] for k in ("created", "updated", "reactivated", "deactivated", "unchanged", "skipped",
                                          "emailsQueued")},
        "pendingDeactivations": run.pending_deactivations if status == RunStatus.NEEDS_REVIEW else 0,
        "errorCodes": [[code, n] for code, n in sorted(codes.items(), key=lambda kv: (-kv[1], kv[0]))][:MAX_LISTED],
        "failedGroups": failed_groups,
        "failedGroupsMore": max(0, len(failed) - MAX_LISTED),
        "notes": [_cut(e.message, MAX_TEXT) for e in run.errors[:MAX_LISTED]],
    }
    return Alert(org=sub.org, subscription_id=sub.id, id=run_alert_id(run.id, status), kind=RUN_ALERTS[status],
                 subscription_name=sub.name, recipients=sub.notify_emails, run_id=run.id, facts=facts,
                 created_at=now, updated_at=now)


def consent_alert(sub: Subscription, run_id: str | None, now: datetime) -> Alert:
    """The alert of a subscription whose admin consent Microsoft no longer honours (``run_id``: the run that found out)."""
    facts = {"tenantId": sub.azure_tenant_id, "consentedAt": iso(sub.consented_at), "detectedAt": iso(now)}
    return Alert(org=sub.org, subscription_id=sub.id, id=consent_alert_id(sub), kind=AlertKind.CONSENT_LOST,
                 subscription_name=sub.name, recipients=sub.notify_emails, run_id=run_id, facts=facts,
                 created_at=now, updated_at=now)


def tenant_claim_alert(sub: Subscription, held: PendingConsent, claimed_by: str, connected: bool,
                       now: datetime) -> Alert:
    """The alert to ``sub``'s admins that another org (``claimed_by``) tried to connect their tenant: one per consent
    code and outcome (``connected``: it was allowed to, ALLOW_SHARED_TENANTS; else refused)."""
    outcome = "connected" if connected else "refused"
    facts = {"tenantId": held.tenant_id, "claimingOrg": _cut(claimed_by, MAX_NAME), "outcome": outcome,
             "adminName": _cut(held.admin_name or "", MAX_NAME) or None,
             "adminUsername": _cut(held.admin_username or "", MAX_NAME) or None,
             "consentedAt": iso(held.signed_in_at), "detectedAt": iso(now)}
    return Alert(org=sub.org, subscription_id=sub.id, id=f"tenant-claim:{held.code_nonce}:{outcome}",
                 kind=AlertKind.TENANT_CLAIMED, subscription_name=sub.name, recipients=sub.notify_emails, facts=facts,
                 created_at=now, updated_at=now)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def stuck(alert: Alert, now: datetime) -> bool:
    """An alert nobody is going to send any more: its claim's lease ran out, or it stayed queued past any retry."""
    if alert.state == EmailState.SENDING:
        return alert.lease_until is None or alert.lease_until <= now
    return alert.state == EmailState.QUEUED and now - alert.updated_at > RECOVER_QUEUED
