"""Table Storage adapter of the runs.

``{prefix}Runs``: PK ``org|subscription``; RK run id (ids sort newest first) for the run,
``<run id>|g|<group id>`` for each group's progress, ``<run id>|s|<group id>|<segment>|<n>`` for the users a
segment of a large group (or any group of a dry run) saw, ``<run id>|x|<group id>|<segment>|<page>|<part>`` for
the user changes a segment recorded, one row per Graph page, and ``<run id>|y|<part>`` for the deactivations of
the run's end (``table_changes``).
"""
from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from datetime import datetime
from typing import Any, AsyncIterator, Iterable, Sequence

from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableTransactionError, UpdateMode
from azure.data.tables.aio import TableClient

from ..errors import PreconditionFailed, Transient
from ..model import Counts, DeltaLinks, GroupProgress, Run, RunError, RunView, SegmentChanges, UserChange
from ..ports import Runs
from . import table_changes, table_wire
from .table_repository import MAX_TRANSACTION, _chunks, _conditional, _dt, _etag, _Repository, call, collect
from .table_text import key
from .table_text import long_text as _long_text
from .table_text import read_long_text as _read_long_text

SEEN_IDS_PER_PROPERTY = 850  # 37 chars each: a string property holds at most 32K UTF-16 characters
SEEN_PROPERTIES_PER_ENTITY = 15  # ~15 x 64 KiB keeps each entity under the 1 MiB limit
CHANGE_ROWS_PER_CALL = 20  # change-list rows (a Graph page each) read per call at most, when filtered


class TableRuns(_Repository, Runs):
    TABLE = "Runs"

    @staticmethod
    def _pk(org: str, sub_id: str) -> str:
        return f"{key(org)}|{key(sub_id)}"

    async def add(self, run: Run, groups: Iterable[GroupProgress]) -> Run:
        table = await self._table()
        pk = self._pk(run.org, run.subscription_id)
        ops: list[tuple] = [("create", _run_entity(pk, run))]
        ops += [("create", _progress_entity(pk, run.id, g)) for g in groups]
        etag = None
        for chunk in _chunks(ops, MAX_TRANSACTION):
            result = await call(self._store.transaction(table, chunk))
            self._store.count_write(len(chunk))
            if etag is None:
                etag = result[0].get("etag")
        return replace(run, etag=etag)

    async def get(self, org: str, sub_id: str, run_id: str) -> Run | None:
        table = await self._table()
        try:
            entity = await call(table.get_entity(self._pk(org, sub_id), key(run_id)))
        except ResourceNotFoundError:
            return None
        return _run_from(entity)

    async def view(self, org: str, sub_id: str, run_id: str) -> RunView | None:
        table = await self._table()
        rk = key(run_id)
        rows = await collect(
            table.query_entities(
                "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi",
                parameters={"pk": self._pk(org, sub_id), "lo": rk, "hi": rk + "|h"},
            )
        )
        run = next((_run_from(e) for e in rows if e["RowKey"] == rk), None)
        if run is None:
            return None
        groups = tuple(_progress_from(e) for e in rows if e.get("kind") == "group")
        return RunView(run, groups)

    async def recent(self, org: str, sub_id: str, limit: int) -> list[RunView]:
        table = await self._table()
        ids: list[str] = []
        pages = table.query_entities(
            "PartitionKey eq @pk and kind eq 'run'", parameters={"pk": self._pk(org, sub_id)}, select=["id"],
            results_per_page=limit,
        ).by_page()
        try:
            async for page in pages:
                async for entity in page:
                    ids.append(entity["id"])
                break
        except HttpResponseError as exc:
            raise Transient(f"table storage answered {exc.status_code}") from exc
        views = await asyncio.gather(*(self.view(org, sub_id, rid) for rid in ids[:limit]))
        return [v for v in views if v is not None]

    async def save(self, run: Run) -> Run:
        table = await self._table()
        entity = _run_entity(self._pk(run.org, run.subscription_id), run)
        try:
            meta = await call(table.update_entity(entity, mode=UpdateMode.REPLACE, **_conditional(run.etag)))
        except (ResourceModifiedError, ResourceNotFoundError):
            raise PreconditionFailed("the run changed meanwhile") from None
        self._store.count_write(1)
        return replace(run, etag=meta.get("etag"))

    async def get_group(self, org: str, sub_id: str, run_id: str, group_id: str) -> GroupProgress | None:
        table = await self._table()
        try:
            entity = await call(table.get_entity(self._pk(org, sub_id), f"{key(run_id)}|g|{key(group_id)}"))
        except ResourceNotFoundError:
            return None
        return _progress_from(entity)

    async def save_group(self, org: str, sub_id: str, run_id: str, progress: GroupProgress,
                         changes: SegmentChanges | None = None) -> GroupProgress:
        table = await self._table()
        entity = _progress_entity(self._pk(org, sub_id), run_id, progress)
        if changes:
            return await self._save_group_with_changes(table, run_id, progress, entity, changes)
        try:
            if progress.etag is None:
                meta = await call(table.create_entity(entity))
            else:
                meta = await call(table.update_entity(entity, mode=UpdateMode.REPLACE, **_conditional(progress.etag)))
        except (ResourceModifiedError, ResourceNotFoundError, ResourceExistsError):
            raise PreconditionFailed("the group's progress changed meanwhile") from None
        self._store.count_write(1)
        return replace(progress, etag=meta.get("etag"))

    async def _save_group_with_changes(self, table: TableClient, run_id: str, progress: GroupProgress,
                                       entity: dict[str, Any], changes: SegmentChanges) -> GroupProgress:
        """The progress row and the segment's change rows in one transaction (the change rows that do not fit go
        first, in transactions of their own: rewriting them is idempotent)."""
        packs = table_changes.transactions(table_changes.segment_entities(entity["PartitionKey"], run_id, changes),
                                           reserve=1)
        for pack in packs[:-1]:
            await self._upsert_all(table, pack)
        if progress.etag is None:
            first: tuple = ("create", entity)
        else:
            first = ("update", entity, {"mode": UpdateMode.REPLACE, **_conditional(progress.etag)})
        ops = [first, *(("upsert", e, {"mode": UpdateMode.REPLACE}) for e in packs[-1])]
        try:
            result = await call(self._store.transaction(table, ops))
        except TableTransactionError as exc:
            if exc.index == 0 and exc.error_code in ("UpdateConditionNotSatisfied", "ResourceNotFound",
                                                     "EntityAlreadyExists"):
                raise PreconditionFailed("the group's progress changed meanwhile") from None
            raise
        self._store.count_write(len(ops))
        return replace(progress, etag=result[0].get("etag"))

    async def _upsert_all(self, table: TableClient, entities: list[dict[str, Any]]) -> None:
        if entities:
            await call(self._store.transaction(table, [("upsert", e, {"mode": UpdateMode.REPLACE}) for e in entities]))
            self._store.count_write(len(entities))

    async def save_final_changes(self, org: str, sub_id: str, run_id: str, changes: Sequence[UserChange]) -> None:
        table = await self._table()
        for pack in table_changes.transactions(table_changes.final_entities(self._pk(org, sub_id), run_id, changes)):
            await self._upsert_all(table, pack)

    async def change_rows(self, org: str, sub_id: str, run_id: str) -> AsyncIterator[tuple[str, list[UserChange]]]:
        table = await self._table()
        lo, hi = table_changes.list_range(run_id)
        query = "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi"
        try:
            async for e in table_wire.query(table, query, {"pk": self._pk(org, sub_id), "lo": lo, "hi": hi},
                                            page_size=4):
                yield e["RowKey"], table_changes.changes_of(e)
        except HttpResponseError as exc:
            raise Transient(f"table storage answered {exc.status_code}") from exc

    async def replace_change_row(self, org: str, sub_id: str, run_id: str, row_id: str,
                                 changes: Sequence[UserChange]) -> None:
        table = await self._table()
        pk = self._pk(org, sub_id)
        if changes:
            await call(table.upsert_entity(table_changes.row_entity(pk, row_id, changes), mode=UpdateMode.REPLACE))
        else:
            try:
                await call(table.delete_entity(pk, row_id))
            except ResourceNotFoundError:
                pass
        self._store.count_write(1)

    async def changes_page(self, org: str, sub_id: str, run_id: str, change: str | None, page_size: int,
                           token: str | None) -> tuple[list[UserChange], str | None]:
        """Rows are read from the token's on, a few at a time; a filtered call reads at most CHANGE_ROWS_PER_CALL
        rows and may answer fewer changes than asked for, with a token."""
        table = await self._table()
        start, skip = table_changes.decode_cursor(token, run_id)
        _, hi = table_changes.list_range(run_id)
        query = "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi"
        found: list[UserChange] = []
        rows = 0
        try:
            async for e in table_wire.query(table, query, {"pk": self._pk(org, sub_id), "lo": start, "hi": hi},
                                            page_size=1):
                rows += 1
                listed = table_changes.changes_of(e)
                first = skip if e["RowKey"] == start else 0
                for i in range(first, len(listed)):
                    if change is None or listed[i].change == change:
                        found.append(listed[i])
                        if len(found) >= page_size:
                            return found, table_changes.cursor_after(e["RowKey"], i + 1, len(listed))
                if rows >= CHANGE_ROWS_PER_CALL:
                    return found, table_changes.cursor_after(e["RowKey"], len(listed), len(listed))
        except HttpResponseError as exc:
            raise Transient(f"table storage answered {exc.status_code}") from exc
        return found, None

    async def expire_changes(self, org: str, sub_id: str, before: datetime) -> int:
        table = await self._table()
        pk = self._pk(org, sub_id)
        # Run ids sort newest first: every run started before ``before`` has a greater key than this.
        older = f"{10**13 - int(before.timestamp() * 1000):013d}"
        rows = await collect(table.query_entities(
            "PartitionKey eq @pk and RowKey gt @older and (kind eq 'changes' or kind eq 'seen')",
            parameters={"pk": pk, "older": older}, select=["RowKey"]))
        for chunk in _chunks([("delete", {"PartitionKey": pk, "RowKey": r["RowKey"]}) for r in rows], MAX_TRANSACTION):
            await call(self._store.transaction(table, chunk))
            self._store.count_write(len(chunk))
        return len(rows)

    async def save_seen(self, org: str, sub_id: str, run_id: str, group_id: str, segment: int, user_ids: Iterable[str]) -> None:
        table = await self._table()
        pk = self._pk(org, sub_id)
        ids = sorted(user_ids)
        per_entity = SEEN_IDS_PER_PROPERTY * SEEN_PROPERTIES_PER_ENTITY
        for n, start in enumerate(range(0, max(len(ids), 1), per_entity)):
            part = ids[start : start + per_entity]
            entity: dict[str, Any] = {"PartitionKey": pk, "RowKey": f"{key(run_id)}|s|{key(group_id)}|{segment:05d}|{n:04d}",
                                      "kind": "seen"}
            for p, at in enumerate(range(0, len(part), SEEN_IDS_PER_PROPERTY)):
                entity[f"ids{p:03d}"] = "\n".join(part[at : at + SEEN_IDS_PER_PROPERTY])
            await call(table.upsert_entity(entity, mode=UpdateMode.REPLACE))
            self._store.count_write(1)

    async def load_seen(self, org: str, sub_id: str, run_id: str, group_id: str, before_segment: int) -> set[str]:
        table = await self._table()
        prefix = f"{key(run_id)}|s|{key(group_id)}|"
        rows = await collect(
            table.query_entities(
                "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi",
                parameters={"pk": self._pk(org, sub_id), "lo": prefix, "hi": f"{prefix}{before_segment:05d}"},
            )
        )
        seen: set[str] = set()
        for row in rows:
            for name, value in row.items():
                if name.startswith("ids") and value:
                    seen.update(value.split("\n"))
        return seen

    async def delete_all(self, org: str, sub_id: str) -> None:
        table = await self._table()
        pk = self._pk(org, sub_id)
        rows = await collect(table.query_entities("PartitionKey eq @pk", parameters={"pk": pk}, select=["RowKey"]))
        for chunk in _chunks([("delete", {"PartitionKey": pk, "RowKey": r["RowKey"]}) for r in rows], MAX_TRANSACTION):
            await call(self._store.transaction(table, chunk))
            self._store.count_write(len(chunk))


def _run_entity(pk: str, run: Run) -> dict[str, Any]:
    return {
        "PartitionKey": pk,
        "RowKey": key(run.id),
        "kind": "run",
        "org": run.org,
        "subscriptionId": run.subscription_id,
        "id": run.id,
        "trigger": run.trigger,
        "status": run.status,
        "groupIds": json.dumps(list(run.group_ids)),
        "startedAt": run.started_at,
        "finishedAt": run.finished_at,
        "finalCounts": json.dumps(run.final_counts.to_api()),
        **_long_text("errors", json.dumps([e.to_api() for e in run.errors], ensure_ascii=False)),
        "pendingDeactivations": run.pending_deactivations,
        "updatedAt": run.updated_at,
        **(_long_text("usersDeltaLink", run.delta_links.users_link) if run.delta_links else {}),
        **(_long_text("groupsDeltaLink", run.delta_links.groups_link) if run.delta_links else {}),
        **({"deltaMappingTag": run.delta_links.mapping_tag} if run.delta_links and run.delta_links.mapping_tag else {}),
        "alertDue": run.alert_due,
        "dryRun": run.dry_run,
        "jobsSent": run.jobs_sent,
        "jobId": run.job_id,
        "jobDelivery": run.job_delivery,
        "jobGroup": run.job_group,
        "applying": run.applying,
    }


def _run_from(e: Any) -> Run:
    return Run(
        org=e["org"],
        subscription_id=e["subscriptionId"],
        id=e["id"],
        trigger=e["trigger"],
        status=e["status"],
        group_ids=tuple(json.loads(e.get("groupIds") or "[]")),
        started_at=_dt(e["startedAt"]),
        finished_at=_dt(e.get("finishedAt")),
        final_counts=Counts.from_api(json.loads(e.get("finalCounts") or "{}")),
        errors=tuple(RunError.from_api(x) for x in json.loads(_read_long_text(e, "errors") or "[]")),
        pending_deactivations=int(e.get("pendingDeactivations") or 0),
        updated_at=_dt(e.get("updatedAt")),
        alert_due=e.get("alertDue"),
        dry_run=bool(e.get("dryRun")),
        etag=_etag(e),
        delta_links=_delta_links(e),
        jobs_sent=e.get("jobsSent") is not False,  # rows written before the property: sent
        job_id=e.get("jobId"),
        job_delivery=int(e.get("jobDelivery") or 0),
        job_group=e.get("jobGroup"),
        applying=bool(e.get("applying")),
    )


def _delta_links(e: Any) -> DeltaLinks | None:
    users, groups = _read_long_text(e, "usersDeltaLink"), _read_long_text(e, "groupsDeltaLink")
    return DeltaLinks(users, groups, e.get("deltaMappingTag") or "") if users and groups else None


def _progress_entity(pk: str, run_id: str, g: GroupProgress) -> dict[str, Any]:
    return {
        "PartitionKey": pk,
        "RowKey": f"{key(run_id)}|g|{key(g.group_id)}",
        "kind": "group",
        "groupId": g.group_id,
        "state": g.state,
        "segment": g.segment,
        "counts": json.dumps(g.counts.to_api()),
        **_long_text("errors", json.dumps([e.to_api() for e in g.errors], ensure_ascii=False)),
        "errorsDropped": g.errors_dropped,
        "userCount": g.user_count,
        "pages": g.pages,
        "lastError": g.last_error,
        "updatedAt": g.updated_at,
        "finishedAt": g.finished_at,
    }


def _progress_from(e: Any) -> GroupProgress:
    return GroupProgress(
        group_id=e["groupId"],
        state=e["state"],
        segment=int(e.get("segment") or 0),
        counts=Counts.from_api(json.loads(e.get("counts") or "{}")),
        errors=tuple(RunError.from_api(x) for x in json.loads(_read_long_text(e, "errors") or "[]")),
        errors_dropped=int(e.get("errorsDropped") or 0),
        user_count=int(e.get("userCount") or 0),
        pages=int(e.get("pages") or 0),
        last_error=e.get("lastError"),
        updated_at=_dt(e.get("updatedAt")),
        finished_at=_dt(e.get("finishedAt")),
        etag=_etag(e),
    )
