"""Delta queries: GET /v1.0/users/delta and /v1.0/groups/delta over a tenant's change log.

A round starts without a token (every current object, then a deltaLink) or with a deltaLink's `$deltatoken`
(what changed since it was issued). Rounds page with `@odata.nextLink` (`$skiptoken`). Both tokens are opaque to
clients; here they encode the tenant's log position, the round's bounds, where the next page starts, the
$select/$filter of the first request and when they were issued. Rules and their sources: README.md, "Change
notifications and delta".
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from .changes import ADDED, CREATED, DELETED, REMOVED, UPDATED, Change, ChangeLog
from .odata import GraphError, bad_request, parse_select, unsupported
from .tenant import DEFAULTS, ODATA_TYPE, PROPERTY_LOOKUP, TYPE_NAME, Tenant

DEFAULT_TOKEN_LIFETIME_S = 7 * 24 * 3600.0  # "For directory objects, the limit is seven days" (delta-query-overview)
DEFAULT_PAGE_SIZE = 100  # Graph documents none ("the number of objects in each page can vary")
MAX_FILTER_IDS = 50  # "There is a limit of 50 filtered objects" (user-delta, group-delta)
UNSUPPORTED = ("$top", "$orderby", "$expand", "$search", "$count", "$skip", "$format")  # delta-query-overview
EXPIRED_MESSAGE = "The sync state generation is not found. The delta token is expired and data must be synchronized again."
RESYNC_MESSAGE = "The delta token is no longer valid, and the app must reset the sync state."
_ID_CLAUSE = re.compile(r"id\s+eq\s+'([^']*)'", re.IGNORECASE)


@dataclass
class DeltaSettings:
    """POST /_fake/delta: token lifetime, page size, replays, the status of an expired token."""

    token_lifetime_s: float = DEFAULT_TOKEN_LIFETIME_S
    page_size: int = DEFAULT_PAGE_SIZE
    replay: bool = False  # every deltaLink round also repeats the previous round's changes ("Replays")
    expired_status: int = 410

    def state(self) -> dict[str, Any]:
        return {"tokenLifetimeSeconds": self.token_lifetime_s, "pageSize": self.page_size, "replay": self.replay,
                "expiredStatus": self.expired_status}


def encode_token(payload: dict[str, Any]) -> str:
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return "D" + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str) -> dict[str, Any]:
    try:
        if not token.startswith("D"):
            raise ValueError
        body = token[1:]
        payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        if not isinstance(payload, dict) or payload.get("v") != 1:
            raise ValueError
        return payload
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise bad_request("Badly formed token.", code="BadRequest") from None


@dataclass
class Shape:
    """What a round tracks and returns: $select (None: the default set), members@delta, the $filter ids."""

    select: tuple[str, ...] | None
    members: bool
    ids: tuple[str, ...] | None

    def tracked(self) -> frozenset[str] | None:
        """The properties whose changes count; None: all ("If $select isn't specified, all properties of the object
        are tracked for changes", delta-query-users), though only the default set is returned."""
        return frozenset(self.select) if self.select is not None else None


def parse_shape(kind: str, select_text: str | None, filter_text: str | None,
                lookup: dict[str, str] | None = None) -> Shape:
    members = kind == "group" and select_text is None  # members@delta by default when $select is absent
    select: tuple[str, ...] | None = None
    if select_text is not None:
        names = [n.strip() for n in select_text.split(",")]
        if kind == "group" and any(n.lower() == "members" for n in names):
            members = True
            names = [n for n in names if n.lower() != "members"]
        select = parse_select(",".join(names), lookup or PROPERTY_LOOKUP[kind], TYPE_NAME[kind]) if names else ()
    ids = None
    if filter_text is not None:
        clauses = re.split(r"\s+or\s+", filter_text.strip(), flags=re.IGNORECASE)
        found = []
        for clause in clauses:
            m = _ID_CLAUSE.fullmatch(clause.strip().strip("()").strip())
            if m is None:
                raise unsupported("Unsupported filter expression for delta: only 'id eq' clauses joined by 'or' "
                                  "can be used.")
            found.append(m.group(1))
        if len(found) > MAX_FILTER_IDS:
            raise unsupported(f"Too many ids in the delta filter: {len(found)}. Max allowed: {MAX_FILTER_IDS}.")
        ids = tuple(dict.fromkeys(found))
    return Shape(select, members, ids)


def shape_of(payload: dict[str, Any]) -> Shape:
    sel = payload.get("sel")
    ids = payload.get("f")
    return Shape(tuple(sel) if sel is not None else None, bool(payload.get("m")), tuple(ids) if ids is not None else None)


@dataclass
class _Touched:
    """What one object went through in a round's window of the log."""

    first_seq: int
    created: bool = False
    deleted: bool = False
    props: set[str] = field(default_factory=set)
    members: dict[str, list[str]] = field(default_factory=dict)  # member id -> ops in order
    member_kind: dict[str, str] = field(default_factory=dict)


class DeltaRound:
    """One page of a delta round for a tenant, its collection and shape."""

    def __init__(self, tenant: Tenant, kind: str, shape: Shape, since: int | None, upto: int,
                 read_hidden: bool = False):
        self.tenant, self.kind, self.shape, self.since, self.upto = tenant, kind, shape, since, upto
        self.read_hidden = read_hidden  # Member.Read.Hidden: members of hidden-membership groups are listed
        self._filter = {i.lower() for i in shape.ids} if shape.ids is not None else None
        self.touched: dict[str, _Touched] = {}
        if since is not None:
            self._collect(tenant.changes.between(since, upto))

    def _wanted(self, oid: str) -> bool:
        return self._filter is None or oid.lower() in self._filter

    def _collect(self, changes: list[Change]) -> None:
        tracked = self.shape.tracked()
        for change in changes:
            if change.kind != self.kind or not self._wanted(change.oid):
                continue
            if change.op == UPDATED and tracked is not None and not change.props & tracked:
                continue  # "If a change occurs to a property that is not selected, [it] does not appear"
            if change.op in (ADDED, REMOVED) and not self.shape.members:
                continue
            t = self.touched.get(change.oid)
            if t is None:
                t = self.touched[change.oid] = _Touched(change.seq)
            if change.op == CREATED:
                t.created = True
            elif change.op == DELETED:
                t.deleted = True
            elif change.op == UPDATED:
                t.props |= change.props
            else:
                assert change.member is not None
                t.members.setdefault(change.member, []).append(change.op)
                t.member_kind[change.member] = change.member_kind or "user"

    def ids(self) -> list[str]:
        """The objects of the round in order: all current ones then the deleted ones (initial round: "The @removed
        object can be returned in the initial delta query response"), or those touched in the window."""
        if self.since is None:
            source = self.tenant.users if self.kind == "user" else self.tenant.groups
            gone = [oid for oid, (kind, _) in self.tenant.changes.removed.items()
                    if kind == self.kind and oid not in source]
            return [oid for oid in [*source, *gone] if self._wanted(oid)]
        return sorted(self.touched, key=lambda oid: self.touched[oid].first_seq)

    # --- representation ---------------------------------------------------------------------------------

    def _members(self, oid: str) -> list[dict[str, Any]]:
        tenant = self.tenant
        hidden = str(tenant.groups[oid].get("visibility") or "").lower() == "hiddenmembership"
        if hidden and not self.read_hidden:
            return []  # as the member lists answer (README, "Hidden membership")
        t = self.touched.get(oid)
        if self.since is None or t is None or t.created:
            return [{"@odata.type": ODATA_TYPE[tenant.kind[m]], "id": m} for m in tenant.members.get(oid, [])]
        out = []
        for member, ops in t.members.items():
            entry: dict[str, Any] = {"@odata.type": ODATA_TYPE.get(t.member_kind[member], ODATA_TYPE["user"]),
                                     "id": member}
            if ops[-1] == ADDED:
                out.append(entry)
            elif ops[0] == REMOVED:  # a member when the window opened, not at its end
                entry["@removed"] = {"reason": "deleted"}
                out.append(entry)
        return out

    def _properties(self, oid: str, minimal: bool) -> dict[str, Any]:
        t = self.touched.get(oid)
        changed = t.props if t is not None else set()
        only_changed = minimal and self.since is not None and t is not None and not t.created
        out: dict[str, Any] = {}
        for prop in self.shape.select if self.shape.select is not None else DEFAULTS[self.kind]:
            if prop == "id":
                continue
            if only_changed and prop not in changed:
                continue  # Prefer: return=minimal: unchanged properties are left out
            value = self.tenant.value(oid, prop)
            if value is None and prop not in changed:
                continue  # "If the property has never been set before it will not be included"
            out[prop] = value
        out["id"] = oid
        return out

    def page(self, cursor: tuple[int, int, str | None], budget: int, minimal: bool
             ) -> tuple[list[dict[str, Any]], tuple[int, int, str | None] | None]:
        """Items from cursor (index, member offset, id expected there) on; the next cursor or None at the end."""
        ids = self.ids()
        index, offset, expected = cursor
        if expected is not None and (index >= len(ids) or ids[index] != expected):
            if expected in ids:
                index = ids.index(expected)
            else:  # the object went away between pages (initial round): carry on from the same place
                offset = 0
        items: list[dict[str, Any]] = []
        used = 0
        while index < len(ids):
            oid = ids[index]
            if self.tenant.resolve_id(oid) != oid or self.tenant.kind.get(oid) != self.kind:
                if used + 1 > budget and items:
                    return items, (index, 0, oid)
                reason = self.tenant.changes.removed.get(oid, (self.kind, "deleted"))[1]
                items.append({"id": oid, "@removed": {"reason": reason}})
                used += 1
                index, offset = index + 1, 0
                continue
            members = self._members(oid) if self.kind == "group" and self.shape.members else []
            room = budget - used - 1
            if items and (room < 0 or (members and offset < len(members) and room < 1)):
                return items, (index, offset, oid)
            item = self._properties(oid, minimal)
            if members:
                chunk = members[offset:offset + max(room, 1)]
                if chunk:
                    item["members@delta"] = chunk
                offset += len(chunk)
                used += len(chunk)
            items.append(item)
            used += 1
            if members and offset < len(members):
                return items, (index, offset, oid)  # a large group continues on the next page
            index, offset = index + 1, 0
        return items, None


class DeltaService:
    """The two delta routes for the server: tokens, expiry, paging, the documented errors."""

    def __init__(self, settings: DeltaSettings):
        self.settings = settings

    @staticmethod
    def _options(request: Any) -> dict[str, str]:
        options: dict[str, str] = {}
        for key, value in request.query.items():
            name = key.lower()
            if not name.startswith("$") and f"${name}" in ("$select", "$filter", "$skiptoken", "$deltatoken"):
                name = f"${name}"
            if not name.startswith("$"):
                continue
            if name in UNSUPPORTED:
                raise unsupported(f"The query parameter '{key}' is not supported with delta queries on this resource.")
            if name not in ("$select", "$filter", "$skiptoken", "$deltatoken"):
                raise bad_request(f"Query option '{key}' is not supported.", code="BadRequest")
            if name in options:
                raise bad_request(f"Query option '{name}' was specified more than once, it must be specified at "
                                  "most once.", code="BadRequest")
            options[name] = value
        return options

    @staticmethod
    def _base(request: Any, kind: str) -> str:
        return f"{request.scheme}://{request.host}/v1.0/{kind}s/delta"

    def _restart_url(self, request: Any, kind: str, shape: Shape) -> str:
        """The initial request of the same round shape, with an empty $deltatoken (the 410's Location)."""
        parts = []
        if shape.select is not None:
            names = list(shape.select) + (["members"] if shape.members else [])
            parts.append("$select=" + quote(",".join(names), safe=","))
        if shape.ids is not None:
            parts.append("$filter=" + quote(" or ".join(f"id eq '{i}'" for i in shape.ids), safe="'"))
        parts.append("$deltatoken=")
        return self._base(request, kind) + "?" + "&".join(parts)

    def _check(self, request: Any, kind: str, payload: dict[str, Any], log: ChangeLog) -> None:
        if payload.get("k") != kind:
            raise bad_request("Badly formed token.", code="BadRequest")
        shape = shape_of(payload)
        if payload.get("e") != log.epoch or payload.get("g") != log.generation:
            raise GraphError(410, "resyncRequired", RESYNC_MESSAGE, {"Location": self._restart_url(request, kind, shape)})
        if time.time() - float(payload.get("t", 0)) > self.settings.token_lifetime_s:
            raise GraphError(self.settings.expired_status, "syncStateNotFound", EXPIRED_MESSAGE)

    def respond(self, request: Any, tenant: Tenant, kind: str, context: str) -> dict[str, Any]:
        """The JSON body of one delta page (GraphError for the documented failures)."""
        options = self._options(request)
        log = tenant.changes
        skiptoken, deltatoken = options.get("$skiptoken"), options.get("$deltatoken")
        if skiptoken is not None and deltatoken is not None:
            raise bad_request("Only one of $skiptoken and $deltatoken can be given.", code="BadRequest")
        minimal = "return=minimal" in request.headers.get("Prefer", "").replace(" ", "").lower()
        now = time.time()
        if skiptoken is not None:
            if "$select" in options or "$filter" in options:
                raise unsupported("Delta queries with both $select (or $filter) and $skiptoken are not supported.")
            payload = decode_token(skiptoken)
            self._check(request, kind, payload, log)
            shape = shape_of(payload)
            since, upto, prev = payload.get("s"), int(payload["u"]), int(payload["p"])
            index, offset, expected = payload["c"]
            cursor = (int(index), int(offset), expected)
        elif deltatoken and deltatoken.lower() != "latest":
            if "$filter" in options:
                raise unsupported("$filter can only be given in the initial delta request.")
            payload = decode_token(deltatoken)
            if payload.get("s") is None:
                raise bad_request("Badly formed token.", code="BadRequest")
            self._check(request, kind, payload, log)
            shape = shape_of(payload)
            if "$select" in options:  # "$select and $deltaLink ... change the properties they want to track"
                fresh = parse_shape(kind, options["$select"], None, tenant.lookup(kind))
                shape = Shape(fresh.select, fresh.members, shape.ids)
            since = int(payload["s"])
            prev = since
            if self.settings.replay:
                since = int(payload.get("p", since))
            upto, cursor = log.seq, (0, 0, None)
        else:
            shape = parse_shape(kind, options.get("$select"), options.get("$filter"), tenant.lookup(kind))
            upto = log.seq
            if deltatoken and deltatoken.lower() == "latest":  # "sync from now": only a deltaLink, no data
                link = self._link(request, kind, shape, log, "delta", s=upto, p=upto, t=now)
                return {"@odata.context": context, "@odata.deltaLink": link, "value": []}
            since, prev, cursor = None, upto, (0, 0, None)
        read_hidden = "Member.Read.Hidden" in (request.get("roles") or ())
        round_ = DeltaRound(tenant, kind, shape, since, upto, read_hidden)
        items, after = round_.page(cursor, max(1, self.settings.page_size), minimal)
        body: dict[str, Any] = {"@odata.context": context}
        if after is not None:
            body["@odata.nextLink"] = self._link(request, kind, shape, log, "skip", s=since, u=upto, p=prev,
                                                 c=list(after), t=now)
        else:
            body["@odata.deltaLink"] = self._link(request, kind, shape, log, "delta", s=upto, p=prev, t=now)
        body["value"] = items
        return body

    def _link(self, request: Any, kind: str, shape: Shape, log: ChangeLog, which: str, **fields: Any) -> str:
        payload = {"v": 1, "k": kind, "e": log.epoch, "g": log.generation,
                   "sel": list(shape.select) if shape.select is not None else None, "m": shape.members,
                   "f": list(shape.ids) if shape.ids is not None else None, **fields}
        name = "$skiptoken" if which == "skip" else "$deltatoken"
        return f"{self._base(request, kind)}?{name}={encode_token(payload)}"
