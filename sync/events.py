"""Events, the use case: record one event per change the store accepted, nudge the webhooks, and serve the feed.

Every write of a user goes through ``EventedUsers`` (composition wraps the store's Users with it): a create or an
update the store accepted whose row carries a new history entry (the entry's time is the row's ``updatedAt``) is
an event. Its id is derived from the entry, so a message redelivered after the write (which finds the entry and
writes nothing) or a second group touching the user (no new entry) records nothing new; the group worker's
recovery path records the entry of a lost attempt again, which the log finds already there.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections import OrderedDict
from datetime import timedelta
from typing import Any, Iterable

from .errors import InvalidInput
from .event_model import (
    OF_CHANGE,
    Event,
    EventType,
    WebhookJob,
    WebhookStatus,
    event_id,
    unlinked_event,
    user_event,
    user_event_id,
)
from .inputs import page_size
from .logs import get_logger
from .model import Run, Subscription, User, iso
from .ports import Created, Updated

# ``svc`` below is composition.Services, untyped here: composition wraps the store's Users with this module.
Services = Any

log = get_logger(__name__)

FEED_DEFAULT_LIMIT = 100
FEED_MAX_LIMIT = 1000
# An entry older than this is not a write happening now (a retention rewrite, a mailer's update of an old row).
FRESH = timedelta(hours=1)


async def record(svc: Services, org: str, events: list[Event]) -> list[Event]:
    """Append the events the log does not hold yet and nudge the org's enabled webhooks; returns the new ones."""
    if svc.events is None or not events:
        return []
    new = await svc.events.append(org, events)
    if new:
        await nudge(svc, org)
        log.info("events recorded", extra={"org": org, "events": len(new), "last_sequence": new[-1].sequence})
    return new


async def nudge(svc: Services, org: str) -> None:
    """Ask the delivery worker to deliver to each enabled webhook of the org (not one waiting for its retry)."""
    if svc.webhooks is None:
        return
    now = svc.clock()
    jobs = [WebhookJob(org, h.id) for h in await svc.webhooks.list(org)
            if h.status == WebhookStatus.ENABLED and (h.next_attempt_at is None or h.next_attempt_at <= now)]
    if jobs:
        await svc.queue.send_webhook_jobs(jobs)


async def group_names(svc: Services, org: str) -> dict[str, str]:
    return {g.id: g.display_name for g in await svc.groups.list(org)}


def carried_entry(user: User, now, *, created: bool = False) -> Any:
    """The history entry this write of ``user`` added, or None (a write that changed nothing a user event tells).
    A created row's entry is new; an updated row's newest entry is new when it is as old as the write."""
    if not user.history:
        return None
    entry = user.history[0]
    if (not created and entry.at != user.updated_at) or entry.at < now - FRESH or entry.change not in OF_CHANGE:
        return None
    return entry


class RecentIds:
    """Ids of events this process recorded lately: a later write of the same row (the mailer's claim of an
    invitation keeps ``updatedAt``) then costs no request to find its entry recorded."""

    def __init__(self, capacity: int = 50_000) -> None:
        self._capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._ids

    def add(self, event_id: str) -> None:
        self._ids[event_id] = None
        self._ids.move_to_end(event_id)
        while len(self._ids) > self._capacity:
            self._ids.popitem(last=False)


async def users_written(svc: Services, users: Iterable[User], *, created: bool = False,
                        recent: RecentIds | None = None) -> list[Event]:
    """Record the events of the history entries these accepted writes carried (``recent``: those known recorded
    are left out)."""
    now = svc.clock()
    written = [(u, e) for u in users if (e := carried_entry(u, now, created=created)) is not None]
    if recent is not None:
        written = [(u, e) for u, e in written if user_event_id(u, e) not in recent]
    out: list[Event] = []
    for org in sorted({u.org for u, _ in written}):
        names = await group_names(svc, org)
        out += await record(svc, org, [user_event(u, e, names) for u, e in written if u.org == org])
    if recent is not None:
        for u, e in written:
            recent.add(user_event_id(u, e))
    return out


async def users_unlinked(svc: Services, org: str, sub_id: str, users: list[User]) -> None:
    """Record that these users went back to Manual with their subscription."""
    if users:
        now = svc.clock()
        await record(svc, org, [unlinked_event(u, sub_id, {}, now) for u in users])


async def run_completed(svc: Services, run: Run) -> None:
    """Record ``run.completed`` of a real run that ended (a dry run's preview tells nothing)."""
    if run.dry_run or run.finished_at is None:
        return
    data = {"runId": run.id, "subscriptionId": run.subscription_id, "status": run.status, "trigger": run.trigger,
            "startedAt": iso(run.started_at), "finishedAt": iso(run.finished_at),
            "counts": run.final_counts.to_api()}
    event = Event(run.org, event_id(run.org, f"run\n{run.subscription_id}\n{run.id}\n{run.status}"), EventType.RUN_COMPLETED,
                  run.finished_at, data)
    await record(svc, run.org, [event])


async def consent_revoked(svc: Services, sub: Subscription, run_id: str | None) -> None:
    """Record ``subscription.consent_revoked`` once per consent lost (the consent it lost names it)."""
    at = int(sub.consented_at.timestamp() * 1000) if sub.consented_at else 0
    now = svc.clock()
    data = {"subscriptionId": sub.id, "name": sub.name, "tenantId": sub.azure_tenant_id, "runId": run_id,
            "consentedAt": iso(sub.consented_at), "detectedAt": iso(now)}
    event = Event(sub.org, event_id(sub.org, f"consent\n{sub.id}\n{at}"), EventType.CONSENT_REVOKED, now, data)
    await record(svc, sub.org, [event])


class EventedUsers:
    """The store's Users, recording the event of every create and update it accepts (see the module's docstring)."""

    def __init__(self, inner: Any, svc: Services) -> None:
        self._inner = inner
        self._svc = svc
        self._recent = RecentIds()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def create(self, users: list[User]) -> list:
        outcomes = await self._inner.create(users)
        await users_written(self._svc, [u for u, o in zip(users, outcomes) if isinstance(o, Created)], created=True,
                            recent=self._recent)
        return outcomes

    async def update(self, changes: list[tuple[User, str]]) -> list:
        outcomes = await self._inner.update(changes)
        await users_written(self._svc, [u for (u, _), o in zip(changes, outcomes) if isinstance(o, Updated)],
                            recent=self._recent)
        return outcomes

    async def link(self, links: list[tuple[User, str]]) -> list:
        outcomes = await self._inner.link(links)
        await users_written(self._svc, [u for (u, _), o in zip(links, outcomes) if isinstance(o, Updated)],
                            recent=self._recent)
        return outcomes


# ---------------------------------------------------------------- the feed


def _cursor_mac(secret: str, org: str, sequence: int) -> str:
    return hmac.new(secret.encode(), f"events-cursor\n{org}\n{sequence}".encode(), hashlib.sha256).hexdigest()[:16]


def cursor_of(secret: str, org: str, sequence: int) -> str:
    """An opaque cursor naming a place in the org's log (signed: another org's cursor is refused)."""
    text = f"{sequence}.{_cursor_mac(secret, org, sequence)}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def sequence_of(secret: str, org: str, cursor: str) -> int:
    """The sequence a cursor of this org names; InvalidInput ``invalid_cursor`` for anything else."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        seq_text, mac = text.split(".", 1)
        sequence = int(seq_text)
    except (ValueError, UnicodeDecodeError, binascii.Error):
        sequence, mac = -1, ""
    if len(cursor) > 200 or sequence < 0 or not hmac.compare_digest(mac, _cursor_mac(secret, org, sequence)):
        raise InvalidInput("the cursor is not one this feed gave", code="invalid_cursor")
    return sequence


def _limit(params: dict[str, str]) -> int:
    return page_size(params.get("limit"), default=FEED_DEFAULT_LIMIT, maximum=FEED_MAX_LIMIT, name="limit",
                     code="invalid_limit")


async def feed(svc: Services, org: str, params: dict[str, str]) -> dict[str, Any]:
    """``{"events": [...], "cursor"}``: the org's events after ``after`` in sequence order, and where to go on from."""
    limit = _limit(params)
    secret = svc.settings.signing_secret
    after = sequence_of(secret, org, params["after"]) if params.get("after") else 0
    keep_since = svc.clock() - timedelta(days=svc.settings.event_retention_days)
    events = await svc.events.after(org, after, limit) if svc.events is not None else []
    last = events[-1].sequence if events else after
    return {"events": [e.to_api() for e in events if e.timestamp >= keep_since], "cursor": cursor_of(secret, org, last)}


async def expire(svc: Services) -> int:
    """Drop events older than EVENT_RETENTION_DAYS (the nightly retention)."""
    if svc.events is None:
        return 0
    return await svc.events.expire(svc.clock() - timedelta(days=svc.settings.event_retention_days))
