"""Table Storage adapter of the link index: which portal user a subscription's directory object is, when that user
kept its own id (a Manual user linked in place, ``linkExistingUsers``).

The index lives in the Users table, in the org's partition, at RowKey ``|l|<subscription id>|<object id>``
(``kind`` ``link``, ``userId``): the same partition as the user row and its username claims, so a link is ONE
entity-group transaction — create the index entry (never overwritten), replace the Manual user conditional on its
ETag, and move its username claim when the username changes. Either all of it is written or none: a redelivered or
concurrent worker finds the entry (``AlreadyLinked``), never a half-made link, and the first writer's entry decides
forever which row the object is. ``|l|`` sorts before the claims (``|n|``) and after every user id (which sort
before ``|``), so the grid's queries and the users' filters (``kind eq 'user'``) never meet an entry.
"""
from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any, Callable

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.data.tables import TableTransactionError, UpdateMode
from azure.data.tables.aio import TableClient

from ..errors import Transient
from ..model import User
from ..ports import AlreadyLinked, Stale, Updated, UsernameTaken
from . import table_wire
from .table_repository import _chunks, _conditional, call
from .table_text import key

LINK_PREFIX = "|l|"
_ROUNDS = 3


def index_key(subscription_id: str, azure_object_id: str) -> str:
    return f"{LINK_PREFIX}{key(subscription_id)}|{key(azure_object_id)}"


def _range(subscription_id: str) -> tuple[str, str]:
    lo = f"{LINK_PREFIX}{key(subscription_id)}|"
    return lo, lo[:-1] + "}"  # '}' sorts right after '|'


def index_entity(user: User) -> dict[str, Any]:
    assert user.subscription_id and user.azure_object_id
    return {"PartitionKey": key(user.org), "RowKey": index_key(user.subscription_id, user.azure_object_id),
            "kind": "link", "userId": user.id, "objectId": user.azure_object_id}


async def read_index(table: TableClient, org: str, subscription_id: str) -> dict[str, str]:
    """Object id → user id of every entry of the subscription (one query per 1,000 entries)."""
    lo, hi = _range(subscription_id)
    out: dict[str, str] = {}
    try:
        async for e in table_wire.query(table, "PartitionKey eq @pk and RowKey gt @lo and RowKey lt @hi",
                                        {"pk": key(org), "lo": lo, "hi": hi}, select=["objectId", "userId"]):
            out[e["objectId"]] = e["userId"]
    except HttpResponseError as exc:
        raise Transient(f"table storage answered {exc.status_code}") from exc
    return out


async def entry_of(table: TableClient, org: str, subscription_id: str, azure_object_id: str) -> str | None:
    try:
        e = await call(table.get_entity(key(org), index_key(subscription_id, azure_object_id)))
    except ResourceNotFoundError:
        return None
    return e.get("userId")


async def link(repo: Any, table: TableClient, links: list[tuple[User, str]],
               user_entity: Callable[[User], dict], claim_entity: Callable[[User], dict],
               claim_key: Callable[[str], str]) -> list[Updated | Stale | UsernameTaken | AlreadyLinked]:
    """Each link in its own transaction (index entry, user, claims: one partition, all or nothing)."""
    out: list[Any] = [None] * len(links)

    async def one(i: int) -> None:
        user, old = links[i]
        skip_claim = skip_release = False
        for _ in range(_ROUNDS):
            renamed = claim_key(user.username) != claim_key(old)
            ops: list[tuple] = [("create", index_entity(user))]
            owners = ["index"]
            if renamed and not skip_claim:
                ops.append(("create", claim_entity(user)))
                owners.append("claim")
            ops.append(("update", user_entity(user), {"mode": UpdateMode.REPLACE, **_conditional(user.etag)}))
            owners.append("user")
            if renamed and not skip_release:
                ops.append(("delete", {"PartitionKey": key(user.org), "RowKey": claim_key(old)}))
                owners.append("release")
            try:
                async with repo._store.concurrency:
                    result = await call(repo._store.transaction(table, ops))
            except TableTransactionError as exc:
                what = owners[exc.index] if exc.index is not None and exc.index < len(owners) else None
                if what == "index" and exc.error_code == "EntityAlreadyExists":
                    owner = await entry_of(table, user.org, user.subscription_id or "", user.azure_object_id or "")
                    if owner is None:
                        continue  # dropped meanwhile (the subscription is being deleted): try once more
                    out[i] = AlreadyLinked(owner)
                elif what == "user" and exc.error_code in ("UpdateConditionNotSatisfied", "ResourceNotFound"):
                    out[i] = Stale(user.id)
                elif what == "claim" and exc.error_code == "EntityAlreadyExists":
                    owner = await repo.username_owner(user.org, user.username)
                    if owner == user.id or owner is None:
                        skip_claim = True
                        continue
                    holder = await repo.get(user.org, owner)
                    out[i] = UsernameTaken(owner, holder.username if holder else user.username)
                elif what == "release" and exc.error_code == "ResourceNotFound":
                    skip_release = True
                    continue
                else:
                    raise
                return
            repo._store.count_write(len(ops), users=1)
            etag = next(r.get("etag") for r, what in zip(result, owners) if what == "user")
            out[i] = Updated(replace(user, etag=etag))
            return
        out[i] = Stale(user.id)

    for chunk in _chunks(list(range(len(links))), 25):
        await asyncio.gather(*(one(i) for i in chunk))
    return out


async def unlink_all(repo: Any, table: TableClient, org: str, subscription_id: str) -> int:
    """Delete the subscription's entries, 100 to a transaction."""
    found = await read_index(table, org, subscription_id)
    n = 0
    for chunk in _chunks(sorted(found), 100):
        ops = [("delete", {"PartitionKey": key(org), "RowKey": index_key(subscription_id, oid)}) for oid in chunk]
        try:
            async with repo._store.concurrency:
                await call(repo._store.transaction(table, ops))
        except TableTransactionError as exc:
            if exc.error_code != "ResourceNotFound":
                raise
            for oid in chunk:  # one was gone already (an earlier attempt): one by one
                try:
                    await call(table.delete_entity(key(org), index_key(subscription_id, oid)))
                except ResourceNotFoundError:
                    pass
        repo._store.count_write(len(ops))
        n += len(ops)
    return n
