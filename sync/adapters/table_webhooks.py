"""Table Storage for the portal's webhook endpoints: ``{prefix}Webhooks``, PK the org, RK the webhook id.

The row holds the signing secret (the app must sign with it) and the delivery state: the last sequence handled,
the failed attempts at the next one and when it is tried again, and the lease of the worker delivering.
"""
from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import UpdateMode

from ..errors import Conflict, PreconditionFailed
from ..event_model import Webhook
from ..ports import Webhooks
from .table_repository import _conditional, _dt, _etag, _Repository, call, collect
from .table_text import key


class TableWebhooks(_Repository, Webhooks):
    TABLE = "Webhooks"

    async def add(self, hook: Webhook) -> Webhook:
        table = await self._table()
        try:
            meta = await call(table.create_entity(_entity(hook)))
        except ResourceExistsError:
            raise Conflict("the webhook exists already", code="webhook_exists") from None
        self._store.count_write(1)
        return replace(hook, etag=meta.get("etag"))

    async def get(self, org: str, webhook_id: str) -> Webhook | None:
        table = await self._table()
        try:
            return _hook_from(await call(table.get_entity(key(org), key(webhook_id))))
        except ResourceNotFoundError:
            return None

    async def list(self, org: str) -> list[Webhook]:
        table = await self._table()
        rows = await collect(table.query_entities("PartitionKey eq @pk", parameters={"pk": key(org)}))
        return [_hook_from(e) for e in rows]

    async def save(self, hook: Webhook) -> Webhook:
        table = await self._table()
        try:
            meta = await call(table.update_entity(_entity(hook), mode=UpdateMode.REPLACE, **_conditional(hook.etag)))
        except (ResourceModifiedError, ResourceNotFoundError):
            raise PreconditionFailed("the webhook changed meanwhile") from None
        self._store.count_write(1)
        return replace(hook, etag=meta.get("etag"))

    async def delete(self, org: str, webhook_id: str) -> None:
        table = await self._table()
        try:
            await call(table.delete_entity(key(org), key(webhook_id)))
        except ResourceNotFoundError:
            return
        self._store.count_write(1)


def _entity(h: Webhook) -> dict[str, Any]:
    row = {"PartitionKey": key(h.org), "RowKey": key(h.id), "kind": "webhook", "org": h.org, "id": h.id,
            "url": h.url, "secret": h.secret, "events": json.dumps(list(h.events)), "status": h.status,
            "createdAt": h.created_at, "cursor": h.cursor, "attempts": h.attempts,
            "nextAttemptAt": h.next_attempt_at, "failingSince": h.failing_since, "leaseUntil": h.lease_until}
    return {k: v for k, v in row.items() if v is not None}


def _hook_from(e: Any) -> Webhook:
    return Webhook(org=e["org"], id=e["id"], url=e["url"], secret=e["secret"], events=tuple(json.loads(e["events"])),
                   status=e["status"], created_at=_dt(e["createdAt"]), cursor=int(e.get("cursor") or 0),
                   attempts=int(e.get("attempts") or 0), next_attempt_at=_dt(e.get("nextAttemptAt")),
                   failing_since=_dt(e.get("failingSince")), lease_until=_dt(e.get("leaseUntil")), etag=_etag(e))
