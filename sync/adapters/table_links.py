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
from .table_repository import MAX_TRANSACTION, _chunks, _conditional, call
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
    """Links in transactions of at most 100 entities (each link whole: index entry, user, claims; one partition, all
    or nothing). A link the service refuses is settled on its own and the rest of its transaction sent again."""
    out: dict[int, Any] = {}
    skip_claim: set[int] = set()
    skip_release: set[int] = set()

    def ops_of(i: int) -> list[tuple[tuple, str]]:
        user, old = links[i]
        renamed = claim_key(user.username) != claim_key(old)
        ops = [(("create", index_entity(user)), "index")]
        if renamed and i not in skip_claim:
            ops.append((("create", claim_entity(user)), "claim"))
        ops.append((("update", user_entity(user), {"mode": UpdateMode.REPLACE, **_conditional(user.etag)}), "user"))
        if renamed and i not in skip_release:
            ops.append((("delete", {"PartitionKey": key(user.org), "RowKey": claim_key(old)}), "release"))
        return ops

    def keys_of(i: int) -> set[tuple[str, str]]:
        user, old = links[i]
        return {(user.org, k) for k in (user.id, claim_key(user.username), claim_key(old),
                                        index_key(user.subscription_id or "", user.azure_object_id or ""))}

    async def send(chunk: list[int], again: list[int]) -> None:
        todo = list(chunk)
        while todo:
            ops: list[tuple] = []
            owners: list[tuple[int, str]] = []
            for i in todo:
                for op, what in ops_of(i):
                    ops.append(op)
                    owners.append((i, what))
            try:
                async with repo._store.concurrency:
                    result = await call(repo._store.transaction(table, ops))
            except TableTransactionError as exc:
                i, what = owners[exc.index] if exc.index is not None and exc.index < len(owners) else (None, None)
                if i is None:
                    raise
                todo.remove(i)
                user = links[i][0]
                if (what == "index" and exc.error_code == "EntityAlreadyExists") or (
                        what == "user" and exc.error_code == "UpdateConditionNotSatisfied"):
                    # Usually another worker linked these users a moment ago, several of them: read the
                    # subscription's entries once and settle every link of this transaction that has one.
                    found = await read_index(table, user.org, user.subscription_id or "")
                    for j in [j for j in todo if links[j][0].azure_object_id in found]:
                        todo.remove(j)
                        out[j] = AlreadyLinked(found[links[j][0].azure_object_id or ""])
                    if user.azure_object_id in found:
                        out[i] = AlreadyLinked(found[user.azure_object_id or ""])
                        continue
                if what == "index" and exc.error_code == "EntityAlreadyExists":
                    owner = await entry_of(table, user.org, user.subscription_id or "", user.azure_object_id or "")
                    if owner is None:
                        again.append(i)  # dropped meanwhile (the subscription is being deleted): once more
                    else:
                        out[i] = AlreadyLinked(owner)
                elif what == "user" and exc.error_code in ("UpdateConditionNotSatisfied", "ResourceNotFound"):
                    out[i] = Stale(user.id)
                elif what == "claim" and exc.error_code == "EntityAlreadyExists":
                    owner = await repo.username_owner(user.org, user.username)
                    if owner == user.id or owner is None:
                        skip_claim.add(i)
                        again.append(i)
                    else:
                        holder = await repo.get(user.org, owner)
                        out[i] = UsernameTaken(owner, holder.username if holder else user.username)
                elif what == "release" and exc.error_code == "ResourceNotFound":
                    skip_release.add(i)
                    again.append(i)
                else:
                    raise
                continue
            repo._store.count_write(len(ops), users=len(todo))
            for (i, what), r in zip(owners, result):
                if what == "user":
                    out[i] = Updated(replace(links[i][0], etag=r.get("etag")))
            todo = []

    pending = list(range(len(links)))
    for _ in range(_ROUNDS * 2):
        if not pending:
            break
        rounds: list[list[int]] = []
        taken: set[tuple[str, str]] = set()
        later: list[int] = []
        current: list[int] = []
        size = 0
        for i in pending:  # never one row twice in a transaction; each transaction of one org, ≤ 100 entities
            if keys_of(i) & taken or (current and links[current[0]][0].org != links[i][0].org):
                later.append(i)
                continue
            taken |= keys_of(i)
            n = len(ops_of(i))
            if current and size + n > MAX_TRANSACTION:
                rounds.append(current)
                current, size = [], 0
            current.append(i)
            size += n
        if current:
            rounds.append(current)
        again: list[int] = []
        await asyncio.gather(*(send(c, again) for c in rounds))
        pending = later + again
    for i in pending:
        out[i] = Stale(links[i][0].id)
    return [out[i] for i in range(len(links))]


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
