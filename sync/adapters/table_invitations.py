"""Table Storage for the index of invitations not yet sent.

``{prefix}Invitations``: PK org, RK user id, ``dueAt`` (when the recovery timer looks at it). Rows exist only while
an invitation may be pending, so the timer's query (``dueAt lt now``, across partitions) reads those and no user.
"""
from __future__ import annotations

from datetime import datetime
from typing import Iterable

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import UpdateMode

from ..ports import PendingInvitations
from .table_repository import MAX_TRANSACTION, _Repository, call, collect
from .table_text import key


class TableInvitations(_Repository, PendingInvitations):
    TABLE = "Invitations"

    async def expect(self, org: str, user_ids: Iterable[str], due_at: datetime) -> None:
        table = await self._table()
        ids = sorted(set(user_ids))
        for start in range(0, len(ids), MAX_TRANSACTION):
            ops = [("upsert", _entity(org, uid, due_at), {"mode": UpdateMode.REPLACE})
                   for uid in ids[start:start + MAX_TRANSACTION]]
            async with self._store.concurrency:
                await call(self._store.transaction(table, ops))
            self._store.count_write(len(ops))

    async def due(self, before: datetime, limit: int) -> list[tuple[str, str]]:
        table = await self._table()
        found: list[tuple[str, str]] = []
        pages = table.query_entities("dueAt lt @before", parameters={"before": before}, select=["org", "userId"],
                                     results_per_page=min(limit, 1000))
        for e in await collect(_first(pages, limit)):
            found.append((e["org"], e["userId"]))
        return found

    async def defer(self, org: str, user_id: str, due_at: datetime) -> None:
        table = await self._table()
        await call(table.upsert_entity(_entity(org, user_id, due_at), mode=UpdateMode.REPLACE))
        self._store.count_write(1)

    async def drop(self, org: str, user_id: str) -> None:
        table = await self._table()
        try:
            await call(table.delete_entity(key(org), key(user_id)))
        except ResourceNotFoundError:
            return
        self._store.count_write(1)


def _entity(org: str, user_id: str, due_at: datetime) -> dict:
    return {"PartitionKey": key(org), "RowKey": key(user_id), "org": org, "userId": user_id, "dueAt": due_at}


async def _first(pages, limit: int):
    n = 0
    async for e in pages:
        yield e
        n += 1
        if n >= limit:
            return
