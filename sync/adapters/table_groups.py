"""Table Storage adapter of the Groups grid: ``{prefix}Groups``, PK org, RK ``subscription|group``."""
from __future__ import annotations

from typing import Iterable

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import UpdateMode

from ..model import SyncedGroup
from ..ports import Groups
from .table_repository import _dt, _Repository, call, collect
from .table_text import key


class TableGroups(_Repository, Groups):
    TABLE = "Groups"

    async def list(self, org: str) -> list[SyncedGroup]:
        table = await self._table()
        rows = await collect(table.query_entities("PartitionKey eq @pk", parameters={"pk": key(org)}))
        return [
            SyncedGroup(org=e["org"], subscription_id=e["subscriptionId"], id=e["groupId"], display_name=e["displayName"],
                        user_count=int(e.get("userCount") or 0), last_synced_at=_dt(e.get("lastSyncedAt")))
            for e in rows
        ]

    async def save(self, group: SyncedGroup) -> None:
        table = await self._table()
        entity = {
            "PartitionKey": key(group.org), "RowKey": f"{key(group.subscription_id)}|{key(group.id)}",
            "org": group.org, "subscriptionId": group.subscription_id, "groupId": group.id,
            "displayName": group.display_name, "userCount": group.user_count, "lastSyncedAt": group.last_synced_at,
        }
        await call(table.upsert_entity(entity, mode=UpdateMode.REPLACE))
        self._store.count_write(1)

    async def delete(self, org: str, subscription_id: str, group_ids: Iterable[str] | None = None) -> None:
        table = await self._table()
        prefix = f"{key(subscription_id)}|"
        if group_ids is None:
            rows = await collect(table.query_entities(
                "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi",
                parameters={"pk": key(org), "lo": prefix, "hi": prefix + "\x7f"}, select=["RowKey"]))
            keys = [r["RowKey"] for r in rows]
        else:
            keys = [prefix + key(g) for g in group_ids]
        for rk in keys:
            try:
                await call(table.delete_entity(key(org), rk))
                self._store.count_write(1)
            except ResourceNotFoundError:
                pass
