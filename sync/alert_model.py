"""Admin alerts as plain data: who is told (``notifyEmails``), which events are told, and what an alert says.

Pure: no SDK, no I/O. The use case that records and queues alerts is ``sync/alerts.py``; the mailer that sends them
is ``notifications/alert_mailer.py``.
"""
from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from .errors import InvalidInput
from .mailbox import is_single_address
from .model import (
    EmailState,
    GroupState,
    NotifyAddress,
    NotifyState,
    PendingConsent,
    RunStatus,
    RunView,
    Subscription,
    iso,
    utcnow,
)

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


# ---------------------------------------------------------------- who agreed to be told

MAX_NOTIFY_KEPT = 50  # addresses remembered (listed or once listed) per subscription; the oldest unlisted go first
CONFIRM_TTL = timedelta(days=7)  # a confirmation link's validity
CONFIRM_AGAIN_AFTER = timedelta(hours=24)  # an address re-added while pending is e-mailed again only after this
CONFIRM_PURPOSE = "notify-confirm"


def with_notify_emails(sub: Subscription, addresses: tuple[str, ...], now: datetime) -> tuple[Subscription,
                                                                                            list[NotifyAddress]]:
    """``sub`` with ``notifyEmails`` set to ``addresses`` (``notify_emails`` checked them), and the addresses that
    are to get a confirmation e-mail now. An address is alerted only once its owner followed that e-mail's link:

    - a new address is ``pending`` and gets one confirmation e-mail (a link with a fresh nonce);
    - a listed address keeps its state; a pending one whose e-mail went out more than CONFIRM_AGAIN_AFTER ago (its
      link may have expired or been lost) gets a new one when the list is saved again;
    - a removed address is remembered, not listed: re-added, a confirmed one is confirmed at once (its owner agreed
      already), a pending one is asked again only as above (removing and re-adding mails nobody twice a day).
    """
    known = {a.address.casefold(): a for a in sub.notify_addresses}
    wanted = {a.casefold(): a for a in addresses}
    asks: list[NotifyAddress] = []
    for folded, address in wanted.items():
        entry = known.get(folded)
        if entry is None or (entry.state == NotifyState.PENDING and now - entry.asked_at >= CONFIRM_AGAIN_AFTER):
            entry = NotifyAddress(address, NotifyState.PENDING, secrets.token_urlsafe(16), now)
            asks.append(entry)
        known[folded] = replace(entry, address=address, listed=True)
    for folded, entry in known.items():
        if folded not in wanted and entry.listed:
            known[folded] = replace(entry, listed=False)
    kept = sorted(known.values(), key=lambda a: (not a.listed, -a.asked_at.timestamp()))[:MAX_NOTIFY_KEPT]
    return replace(sub, notify_emails=addresses, notify_addresses=tuple(kept)), asks


def pending_asks(sub: Subscription, asked: list[NotifyAddress]) -> list[NotifyAddress]:
    """The listed addresses still pending whose confirmation was asked for earlier (not in ``asked``)."""
    fresh = {a.nonce for a in asked}
    return [a for a in sub.notify_addresses if a.listed and a.state == NotifyState.PENDING and a.nonce not in fresh]


def notify_status(sub: Subscription) -> dict[str, str]:
    """``notifyEmailStatus`` of the API: each listed address, ``pending`` or ``confirmed``."""
    states = {a.address.casefold(): a.state for a in sub.notify_addresses if a.listed}
    return {address: states.get(address.casefold(), NotifyState.PENDING) for address in sub.notify_emails}


def confirmed_recipients(sub: Subscription) -> tuple[str, ...]:
    """The listed addresses whose owners agreed to get the subscription's alerts: the only ones ever alerted."""
    status = notify_status(sub)
    return tuple(a for a in sub.notify_emails if status[a] == NotifyState.CONFIRMED)


def confirmed(sub: Subscription, nonce: str) -> tuple[Subscription | None, str]:
    """``sub`` with the address whose confirmation link carries ``nonce`` confirmed, and that address; or None and
    why not: ``used`` (confirmed already), ``withdrawn`` (no longer listed, or a newer link replaced this one)."""
    for entry in sub.notify_addresses:
        if secrets.compare_digest(entry.nonce, nonce):
            if not entry.listed:
                return None, "withdrawn"
            if entry.state == NotifyState.CONFIRMED:
                return None, "used"
            done = replace(entry, state=NotifyState.CONFIRMED)
            return replace(sub, notify_addresses=tuple(done if a is entry else a for a in sub.notify_addresses)), \
                entry.address
    return None, "withdrawn"


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
    DIGEST = "digest"  # the alerts of an hour beyond ALERTS_PER_HOUR, told together
    CONFIRMATION = "notify_confirmation"  # asks an address added to notifyEmails whether it wants the alerts


# An alert past the subscription's ALERTS_PER_HOUR is kept in this state, and once the hour's digest told it, DIGESTED.
FOLDED = "folded"
DIGESTED = "digested"
EVENT_KINDS = (AlertKind.RUN_FAILED, AlertKind.RUN_NEEDS_REVIEW, AlertKind.CONSENT_LOST, AlertKind.TENANT_CLAIMED)


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
    recipients: tuple[str, ...]  # the confirmed notifyEmails when the event happened
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
                 subscription_name=sub.name, recipients=confirmed_recipients(sub), run_id=run.id, facts=facts,
                 created_at=now, updated_at=now)


def consent_alert(sub: Subscription, run_id: str | None, now: datetime) -> Alert:
    """The alert of a subscription whose admin consent Microsoft no longer honours (``run_id``: the run that found out)."""
    facts = {"tenantId": sub.azure_tenant_id, "consentedAt": iso(sub.consented_at), "detectedAt": iso(now)}
    return Alert(org=sub.org, subscription_id=sub.id, id=consent_alert_id(sub), kind=AlertKind.CONSENT_LOST,
                 subscription_name=sub.name, recipients=confirmed_recipients(sub), run_id=run_id, facts=facts,
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
                 kind=AlertKind.TENANT_CLAIMED, subscription_name=sub.name, recipients=confirmed_recipients(sub), facts=facts,
                 created_at=now, updated_at=now)


def confirmation_alert(sub: Subscription, entry: NotifyAddress, now: datetime) -> Alert:
    """The confirmation e-mail of one address added to ``notifyEmails``: one row per link (its nonce)."""
    return Alert(org=sub.org, subscription_id=sub.id, id=f"confirm:{entry.nonce}", kind=AlertKind.CONFIRMATION,
                 subscription_name=sub.name, recipients=(entry.address,), facts={"askedAt": iso(entry.asked_at)},
                 created_at=now, updated_at=now)


def confirmation_nonce(alert: Alert) -> str:
    return alert.id.split(":", 1)[1]


def over_hourly_limit(recent: list[Alert], now: datetime, per_hour: int) -> bool:
    """Have the subscription's alerts of the last hour (``recent``) used up its ALERTS_PER_HOUR? Counted: the events
    e-mailed on their own (not those folded into a digest, not digests, not confirmations)."""
    since = now - timedelta(hours=1)
    told = [a for a in recent if a.kind in EVENT_KINDS and a.state not in (FOLDED, DIGESTED) and a.created_at >= since]
    return len(told) >= per_hour


def digest_alert(sub: Subscription, now: datetime) -> tuple[Alert, float]:
    """The digest that tells the alerts folded during the current clock hour, and the delay (s) it is sent after:
    at the end of that hour. One row per subscription and hour, so folding again finds it."""
    hour = int(now.timestamp()) // 3600
    end = datetime.fromtimestamp((hour + 1) * 3600, tz=now.tzinfo)
    alert = Alert(org=sub.org, subscription_id=sub.id, id=f"digest:{hour}", kind=AlertKind.DIGEST,
                  subscription_name=sub.name, recipients=confirmed_recipients(sub),
                  facts={"until": iso(end)}, created_at=now, updated_at=now)
    return alert, max(1.0, (end - now).total_seconds())


def digest_facts(folded: list[Alert]) -> list[dict[str, Any]]:
    """What a digest lists of each folded alert (oldest first, at most MAX_DIGESTED)."""
    items = sorted(folded, key=lambda a: a.created_at)[:MAX_DIGESTED]
    return [{"kind": a.kind, "runId": a.run_id, "at": iso(a.created_at)} for a in items]


MAX_DIGESTED = 100


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def stuck(alert: Alert, now: datetime) -> bool:
    """An alert nobody is going to send any more: its claim's lease ran out, or it stayed queued past any retry."""
    if alert.state == EmailState.SENDING:
        return alert.lease_until is None or alert.lease_until <= now
    return alert.state == EmailState.QUEUED and now - alert.updated_at > RECOVER_QUEUED
