"""What every table's repository builds on: the base class, the SDK call wrappers and the entity helpers."""
from __future__ import annotations

import asyncio
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, AsyncIterator, Iterator, TypeVar

from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError
from azure.data.tables.aio import TableClient

from ..errors import Transient

if TYPE_CHECKING:
    from .tables import TableStore

MAX_TRANSACTION = 100  # Table Storage's limit; Azurite answers 101 with a response the SDK cannot parse
T = TypeVar("T")


@contextmanager
def translated() -> Iterator[None]:
    """Inside: throttling, 5xx and network failures of the SDK become Transient."""
    try:
        yield
    except (ServiceRequestError, ServiceResponseError, asyncio.TimeoutError) as exc:
        raise Transient(f"table storage unreachable: {type(exc).__name__}") from exc
    except HttpResponseError as exc:
        if exc.status_code in (408, 429) or (exc.status_code or 0) >= 500:
            raise Transient(f"table storage answered {exc.status_code}") from exc
        raise


async def call(awaitable: Any) -> Any:
    """Await an SDK call, turning throttling, 5xx and network failures into Transient."""
    with translated():
        return await awaitable


async def collect(iterator: AsyncIterator[T]) -> list[T]:
    """Drain an SDK query iterator, with the same error mapping as ``call``."""
    out: list[T] = []
    with translated():
        async for item in iterator:
            out.append(item)
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


def _chunks(items: list[T], size: int) -> list[list[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
