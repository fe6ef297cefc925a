"""Table Storage adapter (azure-data-tables, async): the store that owns the service client and the tables.

Key parts are percent-encoded (``table_text.key``) so any org id is a valid key. One module per table, each with its
schema: ``table_subscriptions``, ``table_users``, ``table_runs`` (with ``table_changes``), ``table_groups``,
``table_watches`` and ``alert_table``; what they share is in ``table_repository``.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from azure.data.tables.aio import TableClient, TableServiceClient

from ..logs import get_logger
from . import table_wire
from .table_groups import TableGroups
from .table_repository import call
from .table_runs import TableRuns
from .table_subscriptions import TableSubscriptions
from .table_users import TableUsers

log = get_logger(__name__)


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
    """Timeouts and the SDK's retry policy (azure-core's, which retries 503 for every method, POST and PATCH too).

    Table Storage answers 503 ServerBusy past a partition's ~2,000 entities/s or the account's 20,000 and asks for
    exponential back-off (learn.microsoft.com/azure/storage/tables/scalability-targets); it sends no Retry-After (one
    would be honoured). The SDK's default of 3 status retries (0, 0.8, 1.6 s here) gave up within 2.4 s, so a burst
    past the partition's target cost the group message a delivery (measured: tests/faults/test_azure_limits.py).
    Five status retries back off 0, 0.8, 1.6, 3.2, 4 s: a worker sits out ~10 s of throttling before its message
    goes back for redelivery, and a person waits no longer than that for a 503 with Retry-After.
    """
    return {"connection_timeout": 10, "read_timeout": 60, "retry_total": 5, "retry_status": 5,
            "retry_backoff_factor": 0.4, "retry_backoff_max": 4}
