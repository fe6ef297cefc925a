"""Table Storage adapter of the users.

``{prefix}Users``: PK org. RK user id for users; RK ``|n|<sha256 of the lower-cased username>`` for the
username claim that makes usernames unique per org (created in the same transaction as the user). Membership of
a synced group is a boolean property ``g_<group id>`` on the user row, so workers of different groups touching
the same user merge different properties and never conflict.
A user row also keeps its history (``history``, newest first, and ``historyOldest`` for the nightly's retention).
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Callable, Collection, Iterable

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.data.tables import TableTransactionError, UpdateMode
from azure.data.tables.aio import TableClient

from ..errors import InvalidInput, PreconditionFailed, Transient
from ..linking import Candidate
from ..model import MemberState, ScopeState, SourceType, User, is_guid
from ..ports import AlreadyLinked, Created, Exists, Stale, Updated, UserFilter, UsernameTaken, Users
from . import table_changes, table_links, table_wire
from .table_repository import MAX_TRANSACTION, _chunks, _conditional, _dt, _etag, _Repository, call
from .table_text import key

_ROW_FULL = ("TooManyProperties", "EntityTooLarge")  # Table Storage's entity limits: 252 properties, 1 MiB
_REWRITE_ROUNDS = 5
CLAIM_PREFIX = "|n|"
CLAIM_END = "|n}"  # every claim key sorts before this
USER_RK_END = "|"  # every user id sorts before this; claims sort after it
QUERY_KEYS = 14  # RowKeys named in one query: a filter holds at most 15 comparisons


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
        """Users in username order, read with queries, never a point read per user scanned.

        Unfiltered: the username claims are the index (their keys sort as the usernames do): one query for the
        page's claims. Filtered (``status``, ``sourceType``, search): one query over the org's user rows, the filters
        on the service where OData can (``status``, ``sourceType``) and only the columns the search and the order
        need (1,000 rows a request), sorted here by claim key. Then the page's users are read in full, 14 to a query.
        So a call costs at most ⌈users / 1,000⌉ + ⌈page_size / 14⌉ requests: a filter that matches nobody 2 for
        1,500 users (it read each user it scanned before, one request each, up to 5,000 a call)."""
        table = await self._table()
        after = max(_decode_token(token), CLAIM_PREFIX)
        needle = (filters.search or "").strip().casefold()
        try:
            if needle or filters.status or filters.source_type or filters.enrollment:
                keyed = await self._matching_keys(table, org, filters, needle, after)
            else:
                query = "PartitionKey eq @pk and RowKey gt @after and RowKey lt @end"
                params: dict[str, Any] = {"pk": key(org), "after": after, "end": CLAIM_END}
                keyed = []
                async for claim in table_wire.query(table, query, params, select=["RowKey", "userId"],
                                                    page_size=min(1000, page_size + 1)):
                    keyed.append((claim["RowKey"], claim["userId"]))
                    if len(keyed) > page_size:
                        break
        except HttpResponseError as exc:
            raise Transient(f"table storage answered {exc.status_code}") from exc
        chosen = keyed[:page_size]
        users = await self._read_by_query(table, org, [uid for _, uid in chosen])
        found = [users[uid] for _, uid in chosen if uid in users]
        return found, (_encode_token(chosen[-1][0]) if len(keyed) > page_size else None)

    async def _read_by_query(self, table: TableClient, org: str, user_ids: list[str]) -> dict[str, User]:
        """Users by id, 14 to a query (a filter holds at most 15 comparisons, PartitionKey's included:
        learn.microsoft.com/rest/api/storageservices/querying-tables-and-entities), rather than a read each."""
        async def chunk(ids: list[str]) -> list[User]:
            params = {"pk": key(org), **{f"k{i}": key(uid) for i, uid in enumerate(ids)}}
            query = "PartitionKey eq @pk and ( " + " or ".join(f"RowKey eq @k{i}" for i in range(len(ids))) + " )"
            async with self._store.concurrency:
                return [_user_from(e) async for e in table_wire.query(table, query, params) if e.get("kind") == "user"]

        try:
            found = await asyncio.gather(*(chunk(c) for c in _chunks(sorted(set(user_ids)), QUERY_KEYS)))
        except HttpResponseError as exc:
            raise Transient(f"table storage answered {exc.status_code}") from exc
        return {u.id: u for users in found for u in users}

    async def _matching_keys(self, table: TableClient, org: str, filters: UserFilter, needle: str,
                             after: str) -> list[tuple[str, str]]:
        """(claim key, user id) of the org's users that pass the filters and sort after ``after``, in order."""
        clauses, params = ["PartitionKey eq @pk", "kind eq 'user'"], {"pk": key(org)}
        if filters.status:
            clauses.append("status eq @status")
            params["status"] = filters.status
        if filters.source_type:
            clauses.append("sourceType eq @source")
            params["source"] = filters.source_type
        keyed = []
        if filters.enrollment == "enrolled":  # a row without the property never matches a comparison with it
            clauses.append("enrolledAt ge @epoch")
            params["epoch"] = datetime(1970, 1, 1, tzinfo=timezone.utc)
        # not_enrolled (enrolledAt absent) cannot be asked of the service: the column comes back and is tested here.
        select = ["id", "username", "displayName", "email"] + (["enrolledAt"] if filters.enrollment else [])
        async for e in table_wire.query(table, " and ".join(clauses), params, select=select):
            row_key = username_key(e.get("username") or "")
            text = "\n".join(x for x in (e.get("username"), e.get("displayName"), e.get("email")) if x).casefold()
            if filters.enrollment and (e.get("enrolledAt") is not None) != (filters.enrollment == "enrolled"):
                continue
            if row_key > after and (not needle or needle in text):
                keyed.append((row_key, e["id"]))
        keyed.sort()
        return keyed

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
                                  last_change=e.get("lastChange"), phone=e.get("phone"),
                                  department=e.get("department"), job_title=e.get("jobTitle"),
                                  employee_id=e.get("employeeId"), office_location=e.get("officeLocation"),
                                  custom_attributes=_custom_of(e))
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

    async def links(self, org: str, subscription_id: str) -> dict[str, str]:
        return await table_links.read_index(await self._table(), org, subscription_id)

    async def link_candidates(self, org: str) -> list[Candidate]:
        table = await self._table()
        query = "PartitionKey eq @pk and kind eq 'user' and sourceType eq @manual"
        try:
            return [Candidate(e["id"], e["username"], e.get("email")) async for e in table_wire.query(
                table, query, {"pk": key(org), "manual": SourceType.MANUAL}, select=["id", "username", "email"])]
        except HttpResponseError as exc:
            raise Transient(f"table storage answered {exc.status_code}") from exc

    async def link(self, links: list[tuple[User, str]]) -> list[Updated | Stale | UsernameTaken | AlreadyLinked]:
        return await table_links.link(self, await self._table(), links, _user_entity, _claim_entity, username_key)

    async def unlink_all(self, org: str, subscription_id: str) -> int:
        return await table_links.unlink_all(self, await self._table(), org, subscription_id)


_MEMBER_COLUMNS = ["id", "username", "email", "displayName", "givenName", "surname", "status", "statusReason",
                   "emailState", "lastRunId", "lastChange", "phone", "department", "jobTitle", "employeeId",
                   "officeLocation", "customAttributes"]


def _claim_entity(user: User) -> dict[str, Any]:
    return {"PartitionKey": key(user.org), "RowKey": username_key(user.username), "kind": "claim",
            "userId": user.id, "username": user.username}


_USER_FIELDS = (
    ("username", "username"), ("email", "email"), ("display_name", "displayName"), ("given_name", "givenName"),
    ("surname", "surname"), ("status", "status"), ("status_reason", "statusReason"), ("source_type", "sourceType"),
    ("phone", "phone"), ("department", "department"), ("job_title", "jobTitle"), ("employee_id", "employeeId"),
    ("office_location", "officeLocation"),
    ("subscription_id", "subscriptionId"), ("azure_object_id", "azureObjectId"),
    ("enrollment_email", "emailState"), ("enrollment_email_lease_until", "emailLeaseUntil"),
    ("enrollment_email_sent_at", "emailSentAt"), ("enrollment_email_error", "emailError"),
    ("enrolled_at", "enrolledAt"), ("last_run_id", "lastRunId"), ("last_change", "lastChange"),
    ("created_at", "createdAt"), ("updated_at", "updatedAt"),
    ("invited_at", "invitedAt"), ("reminders_sent", "remindersSent"), ("next_reminder_at", "nextReminderAt"),
    ("invitation_expires_at", "invitationExpiresAt"), ("invitation_reason", "invitationReason"),
    ("invitation_queued_at", "invitationQueuedAt"),
)
_DATES = {"enrollment_email_lease_until", "enrollment_email_sent_at", "enrolled_at", "created_at", "updated_at",
          "invited_at", "next_reminder_at", "invitation_expires_at", "invitation_queued_at"}


def _user_entity(user: User) -> dict[str, Any]:
    entity: dict[str, Any] = {"PartitionKey": key(user.org), "RowKey": key(user.id), "kind": "user", "org": user.org, "id": user.id}
    for attr, prop in _USER_FIELDS:
        value = getattr(user, attr)
        if value is not None:
            entity[prop] = value
    if user.custom_attributes:  # one JSON property: at most 10 small values, and never a g_ membership name
        entity["customAttributes"] = json.dumps(user.custom_attributes, sort_keys=True, separators=(",", ":"))
    for gid in user.group_ids:
        entity[membership_property(gid)] = True
    entity.update(table_changes.history_properties(user.history))
    return entity


def _custom_of(e: Any) -> dict[str, str]:
    text = e.get("customAttributes")
    return dict(json.loads(text)) if text else {}


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
    values["reminders_sent"] = int(values["reminders_sent"] or 0)
    groups = frozenset(g for name, v in e.items() if v is True and (g := group_of_property(name)))
    return User(org=e["org"], id=e["id"], group_ids=groups, history=table_changes.history_of(e), etag=_etag(e),
                custom_attributes=_custom_of(e), **values)


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
