"""Table Storage adapter (azure-data-tables, async): the only module that knows entities, keys and transactions.

Schema (PK = PartitionKey, RK = RowKey; key parts are percent-encoded so any org id is a valid key):
- ``{prefix}Subscriptions``  PK org, RK subscription id.
- ``{prefix}Users``          PK org. RK user id for users; RK ``|n|<sha256 of the lower-cased username>`` for the
  username claim that makes usernames unique per org (created in the same transaction as the user). Membership of
  a synced group is a boolean property ``g_<group id>`` on the user row, so workers of different groups touching
  the same user merge different properties and never conflict.
- ``{prefix}Runs``           PK ``org|subscription``; RK run id (ids sort newest first) for the run,
  ``<run id>|g|<group id>`` for each group's progress, ``<run id>|s|<group id>|<segment>|<n>`` for the users a
  segment of a large group (or any group of a dry run) saw, ``<run id>|x|<group id>|<segment>|<page>|<part>`` for
  the user changes a segment recorded, one row per Graph page, and ``<run id>|y|<part>`` for the deactivations of
  the run's end (``table_changes``).
  A user row also keeps its history (``history``, newest first, and ``historyOldest`` for the nightly's retention).
- ``{prefix}Groups``         PK org, RK ``subscription|group``: the Groups grid.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Callable, Collection, Iterable, Sequence, TypeVar

from azure.core import MatchConditions
from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.data.tables import TableTransactionError, UpdateMode
from azure.data.tables.aio import TableClient, TableServiceClient

from ..errors import InvalidInput, PreconditionFailed, Transient
from ..logs import get_logger
from ..model import (
    Counts,
    DeltaLinks,
    GroupProgress,
    GroupRef,
    MemberState,
    Run,
    RunError,
    RunView,
    ScopeState,
    SegmentChanges,
    Subscription,
    SyncedGroup,
    User,
    UserChange,
    is_guid,
)
from ..ports import (
    Created,
    Exists,
    Groups,
    Runs,
    Stale,
    Subscriptions,
    Updated,
    UserFilter,
    UsernameTaken,
    Users,
)
from . import table_changes, table_wire
from .table_text import key
from .table_text import long_text as _long_text
from .table_text import read_long_text as _read_long_text

log = get_logger(__name__)

MAX_TRANSACTION = 100  # Table Storage's limit; Azurite answers 101 with a response the SDK cannot parse
_ROW_FULL = ("TooManyProperties", "EntityTooLarge")  # Table Storage's entity limits: 252 properties, 1 MiB
_REWRITE_ROUNDS = 5
CLAIM_PREFIX = "|n|"
CLAIM_END = "|n}"  # every claim key sorts before this
USER_RK_END = "|"  # every user id sorts before this; claims sort after it
SEEN_IDS_PER_PROPERTY = 850  # 37 chars each: a string property holds at most 32K UTF-16 characters
SEEN_PROPERTIES_PER_ENTITY = 15  # ~15 x 64 KiB keeps each entity under the 1 MiB limit
SCAN_LIMIT = 5000  # rows read per Users-grid call at most, so a rare search never scans a whole org at once
CHANGE_ROWS_PER_CALL = 20  # change-list rows (a Graph page each) read per call at most, when filtered
T = TypeVar("T")


def username_key(username: str) -> str:
    """The claim row key of a username: usernames are unique per org regardless of case, and the keys sort as the
    case-folded usernames do (code point order), so the claims are the Users grid's index. Only what a key may not
    hold is escaped (and '%'); a name too long for a key keeps its first 400 characters and a hash of the rest."""
    folded = username.strip().casefold()
    text = "".join(f"%{ord(c):02X}" if c in _KEY_UNSAFE or ord(c) < 32 or 0x7F <= ord(c) <= 0x9F
                   else f"%u{ord(c):04X}" if 0xD800 <= ord(c) <= 0xDFFF else c for c in folded)
    if len(text) > 400:
        text = text[:400] + "|" + hashlib.sha256(folded.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return CLAIM_PREFIX + text


_KEY_UNSAFE = frozenset("%/\\#?")




def membership_property(group_id: str) -> str:
    """The user-row property that says the user is a member of ``group_id`` (reversible, a valid property name)."""
    if is_guid(group_id):
        return "g_" + group_id.replace("-", "").lower()
    return "gx_" + group_id.encode().hex()


def group_of_property(name: str) -> str | None:
    """Inverse of membership_property; None for other properties."""
    if name.startswith("g_") and len(name) == 34:
        h = name[2:]
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    if name.startswith("gx_"):
        try:
            return bytes.fromhex(name[3:]).decode()
        except (ValueError, UnicodeDecodeError):
            return None
    return None


@dataclass
class WriteCounters:
    """Write requests sent to Table Storage (a transaction counts once) and entities written."""

    requests: int = 0
    entities: int = 0
    user_rows: int = 0
    membership_rows: int = 0

    def reset(self) -> None:
        self.requests = self.entities = self.user_rows = self.membership_rows = 0


class TableStore:
    """Owns the service client and the four tables; hands out the repositories."""

    def __init__(self, service: TableServiceClient, prefix: str, concurrency: int = 8) -> None:
        self._service = service
        self._prefix = prefix
        self._ready: dict[str, asyncio.Future] = {}
        self.counters = WriteCounters()
        self.concurrency = asyncio.Semaphore(concurrency)
        self.subscriptions = TableSubscriptions(self)
        self.users = TableUsers(self)
        self.runs = TableRuns(self)
        self.groups = TableGroups(self)

    @classmethod
    def from_connection_string(cls, connection_string: str, prefix: str) -> "TableStore":
        return cls(TableServiceClient.from_connection_string(connection_string, **_client_options()), prefix)

    @classmethod
    def from_endpoint(cls, endpoint: str, credential: Any, prefix: str) -> "TableStore":
        return cls(TableServiceClient(endpoint=endpoint, credential=credential, **_client_options()), prefix)

    async def table(self, name: str) -> TableClient:
        """The table client, creating the table the first time this process uses it."""
        full = f"{self._prefix}{name}"
        ready = self._ready.get(full)
        if ready is None:
            ready = self._ready[full] = asyncio.ensure_future(self._create(full))
        try:
            await asyncio.shield(ready)
        except BaseException:
            self._ready.pop(full, None)
            raise
        return self._service.get_table_client(full)

    async def _create(self, full: str) -> None:
        await call(self._service.create_table_if_not_exists(full))

    async def close(self) -> None:
        await self._service.close()

    async def transaction(self, table: TableClient, operations: list[tuple]) -> list[dict[str, Any]]:
        """One entity-group transaction (see ``table_wire``: the SDK's own encoder was most of the worker's CPU)."""
        return await table_wire.submit(table, operations)

    def count_write(self, entities: int, *, users: int = 0, memberships: int = 0) -> None:
        self.counters.requests += 1
        self.counters.entities += entities
        self.counters.user_rows += users
        self.counters.membership_rows += memberships


def _client_options() -> dict[str, Any]:
    return {"connection_timeout": 10, "read_timeout": 60, "retry_total": 4, "retry_backoff_factor": 0.4}


async def call(awaitable: Any) -> Any:
    """Await an SDK call, turning throttling, 5xx and network failures into Transient."""
    try:
        return await awaitable
    except (ServiceRequestError, ServiceResponseError, asyncio.TimeoutError) as exc:
        raise Transient(f"table storage unreachable: {type(exc).__name__}") from exc
    except HttpResponseError as exc:
        if exc.status_code in (408, 429) or (exc.status_code or 0) >= 500:
            raise Transient(f"table storage answered {exc.status_code}") from exc
        raise


async def collect(iterator: AsyncIterator[T]) -> list[T]:
    """Drain an SDK query iterator, with the same error mapping as ``call``."""
    out: list[T] = []
    try:
        async for item in iterator:
            out.append(item)
    except (ServiceRequestError, ServiceResponseError, asyncio.TimeoutError) as exc:
        raise Transient(f"table storage unreachable: {type(exc).__name__}") from exc
    except HttpResponseError as exc:
        if exc.status_code in (408, 429) or (exc.status_code or 0) >= 500:
            raise Transient(f"table storage answered {exc.status_code}") from exc
        raise
    return out


def _etag(entity: Any) -> str | None:
    return getattr(entity, "metadata", {}).get("etag")


def _dt(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _conditional(etag: str | None) -> dict[str, Any]:
    if etag is None:
        return {"match_condition": MatchConditions.Unconditionally}
    return {"etag": etag, "match_condition": MatchConditions.IfNotModified}


class _Repository:
    """One table of the store."""

    TABLE = ""

    def __init__(self, store: TableStore) -> None:
        self._store = store

    async def _table(self) -> TableClient:
        return await self._store.table(self.TABLE)


# ---------------------------------------------------------------- subscriptions


class TableSubscriptions(_Repository, Subscriptions):
    TABLE = "Subscriptions"

    async def add(self, sub: Subscription) -> Subscription:
        table = await self._table()
        meta = await call(table.create_entity(_sub_entity(sub)))
        self._store.count_write(1)
        return replace(sub, etag=meta.get("etag"))

    async def get(self, org: str, sub_id: str) -> Subscription | None:
        table = await self._table()
        try:
            entity = await call(table.get_entity(key(org), key(sub_id)))
        except ResourceNotFoundError:
            return None
        return _sub_from(entity)

    async def list(self, org: str) -> list[Subscription]:
        table = await self._table()
        rows = await collect(table.query_entities("PartitionKey eq @pk", parameters={"pk": key(org)}))
        return sorted((_sub_from(e) for e in rows), key=lambda s: s.created_at)

    async def save(self, sub: Subscription) -> Subscription:
        table = await self._table()
        try:
            meta = await call(table.update_entity(_sub_entity(sub), mode=UpdateMode.REPLACE, **_conditional(sub.etag)))
        except (ResourceModifiedError, ResourceNotFoundError):
            raise PreconditionFailed("the subscription changed meanwhile") from None
        self._store.count_write(1)
        return replace(sub, etag=meta.get("etag"))

    async def delete(self, sub: Subscription) -> None:
        table = await self._table()
        try:
            await call(table.delete_entity(key(sub.org), key(sub.id), **_conditional(sub.etag)))
        except ResourceModifiedError:
            raise PreconditionFailed("the subscription changed meanwhile") from None
        self._store.count_write(1)

    async def nightly_candidates(self) -> list[Subscription]:
        table = await self._table()
        rows = await collect(
            table.query_entities("nightlySync eq true and status eq @status", parameters={"status": "authorized"})
        )
        return [_sub_from(e) for e in rows]

    async def with_active_run(self) -> list[Subscription]:
        table = await self._table()
        rows = await collect(table.query_entities("activeRunId gt ''"))
        return [_sub_from(e) for e in rows]


def _sub_entity(sub: Subscription) -> dict[str, Any]:
    return {
        "PartitionKey": key(sub.org),
        "RowKey": key(sub.id),
        "org": sub.org,
        "id": sub.id,
        "name": sub.name,
        "status": sub.status,
        "azureTenantId": sub.azure_tenant_id,
        "usernameAttribute": sub.username_attribute,
        "deactivateBlockedUsers": sub.deactivate_blocked_users,
        "sendEnrollmentEmail": sub.send_enrollment_email,
        "nightlySync": sub.nightly_sync,
        **_long_text("groups", json.dumps([[g.id, g.display_name, *([] if g.hidden_membership is None else
                                                                    [g.hidden_membership])]
                                           for g in sub.groups], ensure_ascii=False)),
        "createdAt": sub.created_at,
        "updatedAt": sub.updated_at,
        "activeRunId": sub.active_run_id,
        "lastRunId": sub.last_run_id,
        "consentNonce": sub.consent_nonce,
        "consentedAt": sub.consented_at,
        "consentedBy": sub.consented_by,
        "deleting": sub.deleting,
        "notifyEmails": json.dumps(list(sub.notify_emails), ensure_ascii=False),
    }


def _sub_from(e: Any) -> Subscription:
    return Subscription(
        org=e["org"],
        id=e["id"],
        name=e.get("name") or "",
        status=e["status"],
        azure_tenant_id=e.get("azureTenantId"),
        username_attribute=e.get("usernameAttribute") or "userPrincipalName",
        deactivate_blocked_users=bool(e.get("deactivateBlockedUsers")),
        send_enrollment_email=bool(e.get("sendEnrollmentEmail")),
        nightly_sync=bool(e.get("nightlySync")),
        groups=tuple(GroupRef(*ref[:3]) for ref in json.loads(_read_long_text(e, "groups") or "[]")),
        created_at=_dt(e.get("createdAt")),
        updated_at=_dt(e.get("updatedAt")),
        active_run_id=e.get("activeRunId"),
        last_run_id=e.get("lastRunId"),
        consent_nonce=e.get("consentNonce"),
        consented_at=_dt(e["consentedAt"]) if e.get("consentedAt") else None,
        consented_by=e.get("consentedBy"),
        deleting=bool(e.get("deleting")),
        notify_emails=tuple(json.loads(e.get("notifyEmails") or "[]")),
        etag=_etag(e),
    )


# ---------------------------------------------------------------- runs


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
    return DeltaLinks(users, groups) if users and groups else None


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


# ---------------------------------------------------------------- users


class TableUsers(_Repository, Users):
    TABLE = "Users"

    async def get(self, org: str, user_id: str) -> User | None:
        table = await self._table()
        if not user_id or user_id.startswith("|"):
            return None
        try:
            entity = await call(table.get_entity(key(org), key(user_id)))
        except ResourceNotFoundError:
            return None
        return _user_from(entity) if entity.get("kind") == "user" else None

    async def get_many(self, org: str, user_ids: Iterable[str]) -> dict[str, User]:
        async def one(uid: str) -> User | None:
            async with self._store.concurrency:
                return await self.get(org, uid)

        found = await asyncio.gather(*(one(uid) for uid in set(user_ids)))
        return {u.id: u for u in found if u is not None}

    async def page(self, org: str, filters: UserFilter, page_size: int, token: str | None) -> tuple[list[User], str | None]:
        """Users in username order: the username claims are the index (their keys sort as the usernames do); the
        users they name are read by key, a chunk at a time, and filtered here."""
        table = await self._table()
        after = max(_decode_token(token), CLAIM_PREFIX)
        query = "PartitionKey eq @pk and RowKey gt @after and RowKey lt @end"
        params: dict[str, Any] = {"pk": key(org), "after": after, "end": CLAIM_END}
        needle = (filters.search or "").strip().casefold()
        chunk_size = page_size if not (needle or filters.status or filters.source_type) else max(page_size, 100)
        found: list[User] = []
        scanned = 0
        chunk: list[tuple[str, str]] = []  # (claim row key, user id)

        def wanted(user: User | None) -> bool:
            return (user is not None and (not filters.status or user.status == filters.status)
                    and (not filters.source_type or user.source_type == filters.source_type)
                    and (not needle or needle in _search_text(user)))

        async def take() -> str | None:
            """Add the chunk's wanted users; the row key to continue after if the page is full, else None."""
            users = await self.get_many(org, [uid for _, uid in chunk])
            for row_key, uid in chunk:
                if wanted(users.get(uid)):
                    found.append(users[uid])
                    if len(found) >= page_size:
                        return row_key
            return None

        try:
            async for claim in table_wire.query(table, query, params, select=["RowKey", "userId"],
                                                page_size=min(1000, chunk_size)):
                scanned += 1
                chunk.append((claim["RowKey"], claim["userId"]))
                if len(chunk) >= chunk_size or scanned >= SCAN_LIMIT:
                    full = await take()
                    last = chunk[-1][0]
                    chunk = []
                    if full is not None:
                        return found, _encode_token(full)
                    if scanned >= SCAN_LIMIT:  # a rare filter: answer what was found, continue from here
                        return found, _encode_token(last)
            # The claims ran out: a page filled by the very last one has nothing after it.
            if chunk and (full := await take()) is not None and full != chunk[-1][0]:
                return found, _encode_token(full)
        except HttpResponseError as exc:
            raise Transient(f"table storage answered {exc.status_code}") from exc
        return found, None

    async def create(self, users: list[User]) -> list[Created | Exists | UsernameTaken]:
        table = await self._table()
        outcomes: dict[int, Created | Exists | UsernameTaken] = {}
        # Users whose claim is already ours (an earlier attempt wrote it) are retried without the claim.
        without_claim: set[int] = set()
        pending = list(range(len(users)))
        while pending:
            rounds, pending = _disjoint_rounds(
                pending,
                lambda i: (users[i].org, users[i].id, username_key(users[i].username)),
                lambda i: 1 if i in without_claim else 2,
            )
            await asyncio.gather(*(self._create_chunk(table, users, chunk, without_claim, outcomes, pending) for chunk in rounds))
        return [outcomes[i] for i in range(len(users))]

    async def _create_chunk(
        self,
        table: TableClient,
        users: list[User],
        chunk: list[int],
        without_claim: set[int],
        outcomes: dict[int, Any],
        retry_later: list[int],
    ) -> None:
        todo = list(chunk)
        while todo:
            ops: list[tuple] = []
            owners: list[tuple[int, str]] = []
            for i in todo:
                user = users[i]
                if i not in without_claim:
                    ops.append(("create", _claim_entity(user)))
                    owners.append((i, "claim"))
                ops.append(("create", _user_entity(user)))
                owners.append((i, "user"))
            try:
                async with self._store.concurrency:
                    result = await call(self._store.transaction(table, ops))
            except TableTransactionError as exc:
                i, what = owners[exc.index] if exc.index is not None and exc.index < len(owners) else (None, None)
                if i is None or exc.error_code != "EntityAlreadyExists":
                    raise
                # One conflict usually means several (workers of overlapping groups in other processes create the
                # same users): read the chunk once and settle every user that exists, not one per failed transaction.
                found = await self.get_many(users[i].org, [users[j].id for j in todo])
                for j in [j for j in todo if users[j].id in found]:
                    todo.remove(j)
                    outcomes[j] = Exists(found[users[j].id])
                if i not in todo:
                    continue
                todo.remove(i)
                if what == "user":  # deleted between the two calls: try again in the next round
                    retry_later.append(i)
                else:
                    owner = await self.username_owner(users[i].org, users[i].username)
                    if owner == users[i].id or owner is None:
                        without_claim.add(i)
                        retry_later.append(i)
                    else:
                        holder = await self.get(users[i].org, owner)
                        outcomes[i] = UsernameTaken(owner, holder.username if holder else users[i].username)
                continue
            self._store.count_write(len(ops), users=len(todo))
            etags = [r.get("etag") for r, (_, what) in zip(result, owners) if what == "user"]
            for i, etag in zip(todo, etags):
                outcomes[i] = Created(replace(users[i], etag=etag))
            todo = []

    async def update(self, changes: list[tuple[User, str]]) -> list[Updated | Stale | UsernameTaken]:
        table = await self._table()
        outcomes: dict[int, Updated | Stale | UsernameTaken] = {}
        skip_claim: set[int] = set()
        skip_release: set[int] = set()

        def renamed(i: int) -> bool:
            user, old = changes[i]
            return username_key(user.username) != username_key(old)

        def row_keys(i: int) -> tuple:
            user, old = changes[i]
            extra = (username_key(user.username), username_key(old)) if renamed(i) else ()
            return (user.org, user.id, *extra)

        def entities(i: int) -> int:
            return 1 + (renamed(i) and i not in skip_claim) + (renamed(i) and i not in skip_release)

        pending = list(range(len(changes)))
        while pending:
            rounds, pending = _disjoint_rounds(pending, row_keys, entities)
            await asyncio.gather(
                *(self._update_chunk(table, changes, chunk, skip_claim, skip_release, outcomes, pending) for chunk in rounds)
            )
        return [outcomes[i] for i in range(len(changes))]

    async def _update_chunk(self, table, changes, chunk, skip_claim, skip_release, outcomes, retry_later) -> None:
        todo = list(chunk)
        while todo:
            ops: list[tuple] = []
            owners: list[tuple[int, str]] = []
            for i in todo:
                user, old = changes[i]
                renamed = username_key(user.username) != username_key(old)
                if renamed and i not in skip_claim:
                    ops.append(("create", _claim_entity(user)))
                    owners.append((i, "claim"))
                ops.append(("update", _user_entity(user), {"mode": UpdateMode.REPLACE, **_conditional(user.etag)}))
                owners.append((i, "user"))
                if renamed and i not in skip_release:
                    ops.append(("delete", {"PartitionKey": key(user.org), "RowKey": username_key(old)}))
                    owners.append((i, "release"))
            try:
                async with self._store.concurrency:
                    result = await call(self._store.transaction(table, ops))
            except TableTransactionError as exc:
                i, what = owners[exc.index] if exc.index is not None and exc.index < len(owners) else (None, None)
                if i is None:
                    raise
                todo.remove(i)
                user = changes[i][0]
                if what == "user" and exc.error_code in ("UpdateConditionNotSatisfied", "ResourceNotFound"):
                    outcomes[i] = Stale(user.id)
                elif what == "claim" and exc.error_code == "EntityAlreadyExists":
                    owner = await self.username_owner(user.org, user.username)
                    if owner == user.id or owner is None:
                        skip_claim.add(i)
                        retry_later.append(i)
                    else:
                        holder = await self.get(user.org, owner)
                        outcomes[i] = UsernameTaken(owner, holder.username if holder else user.username)
                elif what == "release" and exc.error_code == "ResourceNotFound":
                    skip_release.add(i)
                    retry_later.append(i)
                else:
                    raise
                continue
            self._store.count_write(len(ops), users=len(todo))
            etags = [r.get("etag") for r, (_, what) in zip(result, owners) if what == "user"]
            for i, etag in zip(todo, etags):
                outcomes[i] = Updated(replace(changes[i][0], etag=etag))
            todo = []

    async def add_membership(self, org: str, user_ids: Iterable[str], group_id: str, keep: Collection[str]) -> int:
        table = await self._table()
        prop = membership_property(group_id)
        ids = sorted(set(user_ids))
        full: list[str] = []  # rows at Table Storage's property limit: rewritten without deselected groups

        async def send(chunk: list[str]) -> int:
            todo = list(chunk)
            while todo:
                ops = [("update", {"PartitionKey": key(org), "RowKey": key(uid), prop: True}, {"mode": UpdateMode.MERGE})
                       for uid in todo]
                try:
                    async with self._store.concurrency:
                        await call(self._store.transaction(table, ops))
                except TableTransactionError as exc:
                    if exc.index is None or exc.error_code not in ("ResourceNotFound", *_ROW_FULL):
                        raise
                    uid = todo.pop(exc.index)  # ResourceNotFound: the user row is gone, nothing to mark
                    if exc.error_code in _ROW_FULL:
                        full.append(uid)
                    continue
                self._store.count_write(len(ops), memberships=len(ops))
                return len(ops)
            return 0

        written = sum(await asyncio.gather(*(send(c) for c in _chunks(ids, MAX_TRANSACTION))))
        if full:
            kept = {membership_property(g) for g in keep} | {prop}
            written += await self._rewrite_memberships(org, full, lambda u: _memberships_in(u, kept) | {group_id})
        return written

    async def remove_memberships(self, org: str, user_ids: Iterable[str], keep: Collection[str]) -> int:
        kept = {membership_property(g) for g in keep}
        return await self._rewrite_memberships(org, set(user_ids), lambda u: _memberships_in(u, kept))

    async def _rewrite_memberships(self, org: str, user_ids: Iterable[str],
                                   memberships: Callable[[User], frozenset[str]]) -> int:
        """Replace rows whose memberships change (a merge cannot remove a property), conditional on their etags: a
        row another writer changed meanwhile is read and decided again."""
        table = await self._table()
        pending = set(user_ids)
        written = 0
        for _ in range(_REWRITE_ROUNDS):
            if not pending:
                return written
            stored = await self.get_many(org, pending)
            # Every row asked for is written: one holding a membership left as `false` (by an older version) has the
            # same groups before and after, and only a replace drops the property.
            changed = [replace(u, group_ids=memberships(u)) for u in stored.values()]
            pending = set()

            async def send(chunk: list[User]) -> int:
                todo = list(chunk)
                while todo:
                    ops = [("update", _user_entity(u), {"mode": UpdateMode.REPLACE, **_conditional(u.etag)}) for u in todo]
                    try:
                        async with self._store.concurrency:
                            await call(self._store.transaction(table, ops))
                    except TableTransactionError as exc:
                        if exc.index is None or exc.error_code not in ("UpdateConditionNotSatisfied", "ResourceNotFound"):
                            raise
                        lost = todo.pop(exc.index)
                        if exc.error_code == "UpdateConditionNotSatisfied":
                            pending.add(lost.id)
                        continue
                    self._store.count_write(len(ops), memberships=len(ops))
                    return len(ops)
                return 0

            written += sum(await asyncio.gather(*(send(c) for c in _chunks(changed, MAX_TRANSACTION))))
        if pending:
            raise PreconditionFailed("user rows kept changing while their memberships were rewritten")
        return written

    async def group_members(self, org: str, subscription_id: str, group_id: str) -> AsyncIterator[MemberState]:
        table = await self._table()
        query = f"PartitionKey eq @pk and subscriptionId eq @sub and {membership_property(group_id)} eq true"
        try:
            async for e in table_wire.query(table, query, {"pk": key(org), "sub": subscription_id}, select=_MEMBER_COLUMNS):
                yield MemberState(id=e["id"], username=e["username"], email=e.get("email"),
                                  display_name=e["displayName"], given_name=e.get("givenName"),
                                  surname=e.get("surname"), status=e["status"], status_reason=e.get("statusReason"),
                                  enrollment_email=e.get("emailState"), last_run_id=e.get("lastRunId"),
                                  last_change=e.get("lastChange"))
        except HttpResponseError as exc:
            raise Transient(f"table storage answered {exc.status_code}") from exc

    async def subscription_users(self, org: str, subscription_id: str) -> AsyncIterator[User]:
        table = await self._table()
        query = "PartitionKey eq @pk and subscriptionId eq @sub and kind eq 'user'"
        try:
            async for entity in table.query_entities(query, parameters={"pk": key(org), "sub": subscription_id}, results_per_page=1000):
                yield _user_from(entity)
        except HttpResponseError as exc:
            raise Transient(f"table storage answered {exc.status_code}") from exc

    async def subscription_scope(self, org: str, subscription_id: str, group_ids: Iterable[str]) -> AsyncIterator[ScopeState]:
        table = await self._table()
        props = {membership_property(g): g for g in group_ids}
        query = "PartitionKey eq @pk and subscriptionId eq @sub and kind eq 'user'"
        try:
            # Whole rows: the membership properties of groups since deselected are found only by reading them all.
            async for e in table_wire.query(table, query, {"pk": key(org), "sub": subscription_id}):
                yield ScopeState(id=e["id"], status=e["status"], source_type=e["sourceType"],
                                 enrollment_email=e.get("emailState"), last_run_id=e.get("lastRunId"),
                                 last_change=e.get("lastChange"),
                                 group_ids=frozenset(g for p, g in props.items() if e.get(p) is True),
                                 other_groups=any(n not in props and _is_membership(n) for n in e),
                                 username=e["username"], display_name=e.get("displayName") or "")
        except HttpResponseError as exc:
            raise Transient(f"table storage answered {exc.status_code}") from exc

    async def username_owner(self, org: str, username: str) -> str | None:
        table = await self._table()
        try:
            entity = await call(table.get_entity(key(org), username_key(username)))
        except ResourceNotFoundError:
            return None
        return entity.get("userId")

    async def username_claims(self, org: str) -> AsyncIterator[tuple[str, str]]:
        table = await self._table()
        query = "PartitionKey eq @pk and RowKey gt @lo and RowKey lt @hi"
        try:
            async for e in table_wire.query(table, query, {"pk": key(org), "lo": CLAIM_PREFIX, "hi": CLAIM_END},
                                            select=["username", "userId"]):
                yield e["username"], e["userId"]
        except HttpResponseError as exc:
            raise Transient(f"table storage answered {exc.status_code}") from exc

    async def expired_history(self, before: datetime) -> AsyncIterator[User]:
        table = await self._table()
        # Every org's partition, filtered by the service: only rows whose oldest entry expired come back.
        pages = table.query_entities("kind eq 'user' and historyOldest lt @before", parameters={"before": before},
                                     results_per_page=1000)
        try:
            async for entity in pages:
                yield _user_from(entity)
        except HttpResponseError as exc:
            raise Transient(f"table storage answered {exc.status_code}") from exc


_MEMBER_COLUMNS = ["id", "username", "email", "displayName", "givenName", "surname", "status", "statusReason",
                   "emailState", "lastRunId", "lastChange"]


def _claim_entity(user: User) -> dict[str, Any]:
    return {"PartitionKey": key(user.org), "RowKey": username_key(user.username), "kind": "claim",
            "userId": user.id, "username": user.username}


_USER_FIELDS = (
    ("username", "username"), ("email", "email"), ("display_name", "displayName"), ("given_name", "givenName"),
    ("surname", "surname"), ("status", "status"), ("status_reason", "statusReason"), ("source_type", "sourceType"),
    ("subscription_id", "subscriptionId"), ("azure_object_id", "azureObjectId"),
    ("enrollment_email", "emailState"), ("enrollment_email_lease_until", "emailLeaseUntil"),
    ("enrollment_email_sent_at", "emailSentAt"), ("enrollment_email_error", "emailError"),
    ("enrolled_at", "enrolledAt"), ("last_run_id", "lastRunId"), ("last_change", "lastChange"),
    ("created_at", "createdAt"), ("updated_at", "updatedAt"),
)
_DATES = {"enrollment_email_lease_until", "enrollment_email_sent_at", "enrolled_at", "created_at", "updated_at"}


def _user_entity(user: User) -> dict[str, Any]:
    entity: dict[str, Any] = {"PartitionKey": key(user.org), "RowKey": key(user.id), "kind": "user", "org": user.org, "id": user.id}
    for attr, prop in _USER_FIELDS:
        value = getattr(user, attr)
        if value is not None:
            entity[prop] = value
    for gid in user.group_ids:
        entity[membership_property(gid)] = True
    entity.update(table_changes.history_properties(user.history))
    return entity


def _is_membership(name: str) -> bool:
    return name.startswith(("g_", "gx_")) and group_of_property(name) is not None


def _memberships_in(user: User, props: set[str]) -> frozenset[str]:
    """The user's groups whose membership property is one of ``props``."""
    return frozenset(g for g in user.group_ids if membership_property(g) in props)


def _user_from(e: Any) -> User:
    values: dict[str, Any] = {}
    for attr, prop in _USER_FIELDS:
        value = e.get(prop)
        values[attr] = _dt(value) if attr in _DATES else value
    groups = frozenset(g for name, v in e.items() if v is True and (g := group_of_property(name)))
    return User(org=e["org"], id=e["id"], group_ids=groups, history=table_changes.history_of(e), etag=_etag(e),
                **values)


def _search_text(user: User) -> str:
    return "\n".join(x for x in (user.username, user.display_name, user.email) if x).casefold()


def _encode_token(row_key: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": row_key}).encode()).decode().rstrip("=")


def _decode_token(token: str | None) -> str:
    if not token:
        return ""
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        after = data["after"]
        if not isinstance(after, str) or len(after) > 1024:
            raise ValueError
        after.encode("utf-8")  # a lone surrogate (json allows "\ud800") is no RowKey: the same 400 as any other
        return after
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError, UnicodeEncodeError):
        raise InvalidInput("continuationToken is not one this API returned", code="invalid_continuation_token") from None


# ---------------------------------------------------------------- groups grid


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


# ---------------------------------------------------------------- helpers


def _chunks(items: list[T], size: int) -> list[list[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _disjoint_rounds(
    indexes: list[int], keys_of: Callable[[int], tuple], entities_of: Callable[[int], int]
) -> tuple[list[list[int]], list[int]]:
    """Split work into transactions of whole users (≤100 entities each) with no row key twice in one call.

    ``keys_of(i)`` is (org, row keys...). Items whose keys collide with an earlier item wait for the next round,
    so a transaction never holds the same row twice and two concurrent transactions never race on one claim.
    """
    taken: set = set()
    later: list[int] = []
    by_org: dict[str, list[int]] = {}
    for i in indexes:
        org, *row_keys = keys_of(i)
        keys = {(org, k) for k in row_keys}
        if keys & taken:
            later.append(i)
            continue
        taken |= keys
        by_org.setdefault(org, []).append(i)
    rounds: list[list[int]] = []
    for members in by_org.values():
        current: list[int] = []
        size = 0
        for i in members:
            n = entities_of(i)
            if current and size + n > MAX_TRANSACTION:
                rounds.append(current)
                current, size = [], 0
            current.append(i)
            size += n
        if current:
            rounds.append(current)
    return rounds, later
