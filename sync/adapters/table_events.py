"""Table Storage for the events feed: each org's events in sequence order, each once.

``{prefix}Events``, PK the org:
- RK ``n``: the org's last sequence (``last``), the counter every append moves under its ETag;
- RK ``e|<sequence, 12 digits>``: an event (``id``, ``type``, ``at``, ``data`` as JSON);
- RK ``i|<event id>``: the event's id, so recording it again fails.

An append is one entity-group transaction per chunk: the counter updated on its ETag, and each event's two rows
inserted. It commits whole or not at all, so the sequence has no gaps and no event gets two; a lost race on the
counter is read again, and an id already there is dropped before the next try.
"""
from __future__ import annotations

import asyncio
import json
import random
from datetime import datetime
from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableTransactionError, UpdateMode

from ..errors import PreconditionFailed
from ..event_model import Event
from ..ports import EventLog
from .table_repository import _dt, _etag, _Repository, call, collect, translated
from .table_text import key, long_text, read_long_text

COUNTER = "n"
CHUNK = 49  # 1 + 2 × 49 operations: a transaction holds at most 100
ATTEMPTS = 40


def _event_rk(sequence: int) -> str:
    return f"e|{sequence:012d}"


def _id_rk(event_id: str) -> str:
    return f"i|{key(event_id)}"


class TableEvents(_Repository, EventLog):
    TABLE = "Events"

    def __init__(self, store: Any) -> None:
        super().__init__(store)
        # One appender per org in this process (its group workers would otherwise race on the counter's ETag), and
        # the counter as this process last wrote it: read again only when another process moved it.
        self._locks: dict[str, asyncio.Lock] = {}
        self._counters: dict[str, tuple[int, str | None]] = {}

    async def append(self, org: str, events: list[Event]) -> list[Event]:
        seen: set[str] = set()
        unique = [e for e in events if not (e.id in seen or seen.add(e.id))]
        out: list[Event] = []
        async with self._locks.setdefault(org, asyncio.Lock()):
            for i in range(0, len(unique), CHUNK):
                out += await self._append_chunk(org, unique[i:i + CHUNK])
        return out

    async def _counter(self, table: Any, pk: str, org: str) -> tuple[int, str | None]:
        cached = self._counters.get(org)
        if cached is not None:
            return cached
        try:
            counter = await call(table.get_entity(pk, COUNTER))
            return int(counter["last"]), _etag(counter)
        except ResourceNotFoundError:
            return 0, None

    async def _append_chunk(self, org: str, events: list[Event]) -> list[Event]:
        table = await self._table()
        pk = key(org)
        for attempt in range(ATTEMPTS):
            if not events:
                return []
            last, etag = await self._counter(table, pk, org)
            numbered = [Event(e.org, e.id, e.type, e.timestamp, e.data, last + n) for n, e in enumerate(events, 1)]
            head = {"PartitionKey": pk, "RowKey": COUNTER, "kind": "counter", "last": numbered[-1].sequence}
            ops: list[tuple] = [("create", head) if etag is None else
                                ("update", head, {"mode": UpdateMode.REPLACE, "etag": etag,
                                                  "match_condition": _if_not_modified()})]
            for e in numbered:
                ops.append(("create", {"PartitionKey": pk, "RowKey": _event_rk(e.sequence), "kind": "event",
                                       "id": e.id, "type": e.type, "at": e.timestamp,
                                       **long_text("data", json.dumps(e.data, separators=(",", ":")))}))
                ops.append(("create", {"PartitionKey": pk, "RowKey": _id_rk(e.id), "kind": "id",
                                       "sequence": e.sequence}))
            try:
                etags = await call(self._store.transaction(table, ops))
            except TableTransactionError as exc:
                if exc.index and exc.index % 2 == 0 and exc.status_code == 409:  # an id row: recorded already
                    events = await self._unrecorded(table, pk, events)
                else:  # the counter moved (another process), or was created meanwhile: read it again
                    self._counters.pop(org, None)
                    await asyncio.sleep(random.uniform(0, 0.02 * min(attempt + 1, 10)))
                continue
            except BaseException:
                self._counters.pop(org, None)
                raise
            self._counters[org] = (numbered[-1].sequence, etags[0].get("etag") if etags else None)
            self._store.count_write(len(ops))
            return numbered
        raise PreconditionFailed("the events log kept changing under the writer")

    async def _unrecorded(self, table: Any, pk: str, events: list[Event]) -> list[Event]:
        async def recorded(e: Event) -> bool:
            try:
                await call(table.get_entity(pk, _id_rk(e.id)))
                return True
            except ResourceNotFoundError:
                return False
        flags = await asyncio.gather(*(recorded(e) for e in events))
        return [e for e, done in zip(events, flags) if not done]

    async def after(self, org: str, sequence: int, limit: int) -> list[Event]:
        table = await self._table()
        out: list[Event] = []
        pages = table.query_entities("PartitionKey eq @pk and RowKey gt @lo and RowKey lt @hi",
                                     parameters={"pk": key(org), "lo": _event_rk(sequence), "hi": "e}"},
                                     results_per_page=min(limit, 1000))
        with translated():
            async for e in pages:
                out.append(_event_from(org, e))
                if len(out) >= limit:
                    break
        return out

    async def last_sequence(self, org: str) -> int:
        table = await self._table()
        try:
            return int((await call(table.get_entity(key(org), COUNTER)))["last"])
        except ResourceNotFoundError:
            return 0

    async def expire(self, before: datetime) -> int:
        table = await self._table()
        rows = await collect(table.query_entities("kind eq 'event' and at lt @before", parameters={"before": before},
                                                  select=["PartitionKey", "RowKey", "id"]))
        gone = 0
        for e in rows:
            for rk in (_id_rk(e["id"]), e["RowKey"]):
                try:
                    await call(table.delete_entity(e["PartitionKey"], rk))
                except ResourceNotFoundError:
                    pass
            gone += 1
        if gone:
            self._store.count_write(2 * gone)
        return gone


def _if_not_modified() -> Any:
    from azure.core import MatchConditions

    return MatchConditions.IfNotModified


def _event_from(org: str, e: Any) -> Event:
    return Event(org=org, id=e["id"], type=e["type"], timestamp=_dt(e["at"]),
                 data=json.loads(read_long_text(e, "data") or "{}"), sequence=int(e["RowKey"][2:]))
