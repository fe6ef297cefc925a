"""Storage requests per Users-grid call (issue 22 #9): the grid reads with queries, never a read per user scanned.

    .venv/bin/python benchmarks/users_grid.py                 # 1,500 users (the issue's org), in-memory Azurite
    .venv/bin/python benchmarks/users_grid.py --users 20000

Loads ``--users`` users into one org through the app's Table adapter (``TableStore.users.create``, on Azurite with
``local/azurite_speedups.js``), then calls ``TableUsers.page`` as the grid does and counts the HTTP requests the
Table SDK sent for each call (a transport wrapped around the SDK's, as ``benchmarks/worker.py`` counts). Prints a
table and, last, one JSON object ``{"users", "calls": {name: {"requests", "returned"}}, "bound"}``; ``bound`` is
the most a call of pageSize 50 may cost: ⌈users / 1,000⌉ query pages, then the page's users 14 to a query.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import secrets
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from azure.core.pipeline.transport import AioHttpTransport  # noqa: E402

from sync.model import User  # noqa: E402
from sync.ports import UserFilter  # noqa: E402

ORG = "org-grid"
NOW = datetime(2026, 12, 1, tzinfo=timezone.utc)


class RequestCounter(AioHttpTransport):
    """Counts every HTTP request the Table SDK sends."""

    requests = 0

    async def send(self, request: Any, **kwargs: Any) -> Any:
        self.requests += 1
        return await super().send(request, **kwargs)


def grid_user(i: int, org: str = ORG) -> User:
    """User i of the benchmark's org: every tenth Inactive, half of them AdSync."""
    return User(org=org, id=f"00000000-0000-4000-8000-{i:012d}", username=f"user{i:05d}@contoso.example",
                email=f"user{i:05d}@contoso.example", display_name=f"User {i}", status="Inactive" if i % 10 == 0
                else "Active", source_type="AdSync" if i % 2 else "Manual", created_at=NOW, updated_at=NOW)


def counting_store(connection_string: str, prefix: str) -> tuple[Any, RequestCounter]:
    """A TableStore whose requests are counted."""
    from azure.data.tables.aio import TableServiceClient

    from sync.adapters import tables

    counter = RequestCounter(connection_timeout=10, read_timeout=60)
    client = TableServiceClient.from_connection_string(connection_string, transport=counter,
                                                       **tables._client_options())
    return tables.TableStore(client, prefix), counter


async def load(store: Any, users: int, org: str = ORG) -> None:
    """``users`` users in ``org``, 50 per transaction as the workers write them."""
    everyone = [grid_user(i, org) for i in range(users)]
    for start in range(0, users, 500):
        await asyncio.gather(*(store.users.create(everyone[j:j + 50]) for j in range(start, min(start + 500, users), 50)))


CALLS: dict[str, tuple[UserFilter, int]] = {
    "first page, pageSize 50": (UserFilter(), 50),
    "pageSize 1": (UserFilter(), 1),
    "search matching nobody": (UserFilter(search="nobody-has-this"), 50),
    "search matching one, pageSize 1": (UserFilter(search="user00007@"), 1),
    "status Inactive, pageSize 50": (UserFilter(status="Inactive"), 50),
    "status Inactive and Manual, pageSize 1": (UserFilter(status="Inactive", source_type="Manual"), 1),
    "sourceType AdSync and search matching nobody": (UserFilter(source_type="AdSync", search="zzz"), 50),
}


async def measure(store: Any, counter: RequestCounter, org: str = ORG) -> dict[str, dict[str, int]]:
    """Storage requests and users returned per grid call."""
    await store.users.page(org, UserFilter(), 1, None)  # the table exists (its creation is not a grid call)
    out = {}
    for name, (filters, size) in CALLS.items():
        before = counter.requests
        users, _ = await store.users.page(org, filters, size, None)
        out[name] = {"requests": counter.requests - before, "returned": len(users)}
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from local.azurite import Azurite

    azurite = Azurite().start()
    try:
        store, counter = counting_store(azurite.connection_string, "grid" + secrets.token_hex(4))
        try:
            await load(store, args.users)
            calls = await measure(store, counter)
        finally:
            await store.close()
    finally:
        azurite.stop()
    return {"users": args.users, "calls": calls, "bound": bound(args.users, 50)}


def bound(users: int, page_size: int) -> int:
    """The most a grid call may cost: the index or the user rows a page of 1,000 at a time, then the page's users
    14 to a query."""
    return math.ceil(max(users, 1) / 1000) + math.ceil(page_size / 14)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1500)
    result = asyncio.run(run(parser.parse_args(argv)))
    print(f"Users grid on {result['users']:,} users: storage requests per call")
    for name, figures in result["calls"].items():
        print(f"  {name:<48} {figures['requests']:>5} requests  {figures['returned']:>4} users")
    print(json.dumps(result, separators=(",", ":")))


if __name__ == "__main__":
    main()
