"""Table Storage adapter of the admin alerts: ``{prefix}Alerts``, PK ``org|subscription``, RK the event's id.

A table of its own (on ``table_repository.py``, as every table's module): one row per event, inserted with "create"
so a second recording of the same event finds the first.
"""
from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import UpdateMode

from ..alert_model import Alert
from ..errors import PreconditionFailed
from ..model import EmailState
from ..ports import Alerts
from .table_repository import _conditional, _dt, _etag, _Repository, call, collect
from .table_text import key


class TableAlerts(_Repository, Alerts):
    TABLE = "Alerts"

    @staticmethod
    def _pk(org: str, sub_id: str) -> str:
        return f"{key(org)}|{key(sub_id)}"

    async def add(self, alert: Alert) -> tuple[Alert, bool]:
        table = await self._table()
        try:
            meta = await call(table.create_entity(_entity(alert)))
        except ResourceExistsError:
            stored = await self.get(alert.org, alert.subscription_id, alert.id)
            if stored is None:  # deleted in between (the subscription is being deleted): nothing to tell
                return alert, False
            return stored, False
        self._store.count_write(1)
        return replace(alert, etag=meta.get("etag")), True

    async def get(self, org: str, sub_id: str, alert_id: str) -> Alert | None:
        table = await self._table()
        try:
            entity = await call(table.get_entity(self._pk(org, sub_id), key(alert_id)))
        except ResourceNotFoundError:
            return None
        return _alert_from(entity)

    async def save(self, alert: Alert) -> Alert:
        table = await self._table()
        try:
            meta = await call(table.update_entity(_entity(alert), mode=UpdateMode.REPLACE, **_conditional(alert.etag)))
        except (ResourceModifiedError, ResourceNotFoundError):
            raise PreconditionFailed("the alert changed meanwhile") from None
        self._store.count_write(1)
        return replace(alert, etag=meta.get("etag"))

    async def unsent(self, org: str, sub_id: str) -> list[Alert]:
        table = await self._table()
        # The SDK substitutes only parameters followed by a space: "@sending)" would not be found.
        rows = await collect(table.query_entities(
            "PartitionKey eq @pk and ( state eq @queued or state eq @sending )",
            parameters={"pk": self._pk(org, sub_id), "queued": EmailState.QUEUED, "sending": EmailState.SENDING}))
        return [_alert_from(e) for e in rows]

    async def recent(self, org: str, sub_id: str, since: datetime) -> list[Alert]:
        table = await self._table()
        rows = await collect(table.query_entities(
            "PartitionKey eq @pk and createdAt ge @since",
            parameters={"pk": self._pk(org, sub_id), "since": since}))
        return [_alert_from(e) for e in rows]

    async def delete_all(self, org: str, sub_id: str) -> None:
        table = await self._table()
        pk = self._pk(org, sub_id)
        rows = await collect(table.query_entities("PartitionKey eq @pk", parameters={"pk": pk}, select=["RowKey"]))
        for row in rows:
            try:
                await call(table.delete_entity(pk, row["RowKey"]))
                self._store.count_write(1)
            except ResourceNotFoundError:
                pass


def _entity(alert: Alert) -> dict[str, Any]:
    # Bounded: 10 recipients of 254 characters, facts of at most 10 listed items of 300 characters (alert_model).
    return {
        "PartitionKey": TableAlerts._pk(alert.org, alert.subscription_id),
        "RowKey": key(alert.id),
        "org": alert.org,
        "subscriptionId": alert.subscription_id,
        "id": alert.id,
        "kind": alert.kind,
        "subscriptionName": alert.subscription_name,
        "recipients": json.dumps(list(alert.recipients), ensure_ascii=False),
        "runId": alert.run_id,
        "facts": json.dumps(alert.facts, ensure_ascii=False),
        "state": alert.state,
        "leaseUntil": alert.lease_until,
        "sentAt": alert.sent_at,
        "error": alert.error,
        "refused": json.dumps(list(alert.refused), ensure_ascii=False),
        "createdAt": alert.created_at,
        "updatedAt": alert.updated_at,
    }


def _alert_from(e: Any) -> Alert:
    return Alert(
        org=e["org"],
        subscription_id=e["subscriptionId"],
        id=e["id"],
        kind=e["kind"],
        subscription_name=e.get("subscriptionName") or "",
        recipients=tuple(json.loads(e.get("recipients") or "[]")),
        run_id=e.get("runId"),
        facts=json.loads(e.get("facts") or "{}"),
        state=e["state"],
        lease_until=_dt(e.get("leaseUntil")),
        sent_at=_dt(e.get("sentAt")),
        error=e.get("error"),
        refused=tuple(json.loads(e.get("refused") or "[]")),
        created_at=_dt(e.get("createdAt")),
        updated_at=_dt(e.get("updatedAt")),
        etag=_etag(e),
    )
