"""Hand-written fakes of the events log, the webhook endpoints and the HTTP sender (issue 25)."""
from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import datetime
from typing import Callable

from sync.errors import DeliveryFailed, PreconditionFailed
from sync.event_model import Event, Webhook
from sync.events import EventedUsers
from sync.ports import EventLog, Webhooks, WebhookSender
from tests.fakes import make_services

_etags = itertools.count(1)


class MemoryEvents(EventLog):
    def __init__(self) -> None:
        self.logs: dict[str, list[Event]] = {}
        self.ids: set[tuple[str, str]] = set()

    async def append(self, org: str, events: list[Event]) -> list[Event]:
        log = self.logs.setdefault(org, [])
        out = []
        for e in events:
            if (org, e.id) in self.ids:
                continue
            self.ids.add((org, e.id))
            e = replace(e, sequence=len(log) + 1 if not log else log[-1].sequence + 1)
            log.append(e)
            out.append(e)
        return out

    async def after(self, org: str, sequence: int, limit: int) -> list[Event]:
        return [e for e in self.logs.get(org, []) if e.sequence > sequence][:limit]

    async def last_sequence(self, org: str) -> int:
        log = self.logs.get(org)
        return log[-1].sequence if log else 0

    async def expire(self, before: datetime) -> int:
        gone = 0
        for org, log in self.logs.items():
            kept = [e for e in log if e.timestamp >= before]
            gone += len(log) - len(kept)
            self.logs[org] = kept
        return gone


class MemoryWebhooks(Webhooks):
    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], Webhook] = {}

    async def add(self, hook: Webhook) -> Webhook:
        hook = replace(hook, etag=str(next(_etags)))
        self.rows[(hook.org, hook.id)] = hook
        return hook

    async def get(self, org: str, webhook_id: str) -> Webhook | None:
        return self.rows.get((org, webhook_id))

    async def list(self, org: str) -> list[Webhook]:
        return [h for (o, _), h in self.rows.items() if o == org]

    async def save(self, hook: Webhook) -> Webhook:
        current = self.rows.get((hook.org, hook.id))
        if current is None or (hook.etag is not None and hook.etag != current.etag):
            raise PreconditionFailed("the webhook changed meanwhile")
        hook = replace(hook, etag=str(next(_etags)))
        self.rows[(hook.org, hook.id)] = hook
        return hook

    async def delete(self, org: str, webhook_id: str) -> None:
        self.rows.pop((org, webhook_id), None)


class FakeSender(WebhookSender):
    """DNS as a dict; the portal's answers as a list (a status, or an exception); records what was sent."""

    def __init__(self) -> None:
        self.dns: dict[str, list[str]] = {}
        self.answers: list[int | Exception] = []
        self.sent: list[tuple[str, dict[str, str], bytes]] = []

    async def addresses(self, host: str) -> list[str]:
        return self.dns.get(host, [])

    async def post(self, url: str, headers: dict[str, str], body: bytes, *, allowed: Callable[[str], bool],
                   timeout_s: float) -> int:
        from urllib.parse import urlsplit

        host = urlsplit(url).hostname or ""
        addresses = self.dns.get(host, [host])
        if not all(allowed(a) for a in addresses):
            raise DeliveryFailed("the host resolves to an address a webhook may not reach")
        self.sent.append((url, headers, body))
        answer = self.answers.pop(0) if self.answers else 204
        if isinstance(answer, Exception):
            raise answer
        return answer


def evented_services(**settings):
    """make_services with the events log, webhooks and a fake sender, its Users recording events as composition's do."""
    svc = make_services(**settings)
    svc.events, svc.webhooks, svc.webhook_sender = MemoryEvents(), MemoryWebhooks(), FakeSender()
    svc.users = EventedUsers(svc.users, svc)
    return svc


def webhook_jobs(svc) -> list:
    jobs, svc.queue.webhook_jobs = getattr(svc.queue, "webhook_jobs", []), []
    return jobs
