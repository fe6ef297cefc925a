"""Hand-written in-memory fakes of the ports, with the same semantics as the adapters (ETags, inserts, claims)."""
from __future__ import annotations

import base64
import itertools
import json
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any, AsyncIterator, Collection, Iterable, Sequence

from notifications.senders import MailError, MailSender, OutgoingEmail
from sync.alert_model import Alert, AlertJob
from sync.composition import Services
from sync.errors import (
    AuthorizationLost,
    DeltaExpired,
    InvalidInput,
    NotFound,
    PageTokenExpired,
    PreconditionFailed,
    Transient,
)
from sync.linking import Candidate
from sync.model import (
    ChangeJob,
    DeltaLinks,
    DeltaState,
    DirectoryChanges,
    DirectoryGroup,
    DirectoryUser,
    EnrollmentJob,
    GroupChange,
    GroupJob,
    GroupProgress,
    MemberState,
    Run,
    RunView,
    ScopeState,
    SegmentChanges,
    SignIn,
    Subscription,
    SyncedGroup,
    User,
    UserChange,
    UserPage,
    Watch,
)
from sync.ports import (
    Alerts,
    AlreadyLinked,
    Created,
    Directory,
    DirectoryChangeFeed,
    DueReminders,
    Exists,
    Groups,
    JobQueue,
    PendingInvitations,
    Runs,
    SignIns,
    Stale,
    Subscriptions,
    Updated,
    UserFilter,
    UsernameTaken,
    Users,
    Watches,
)
from sync.settings import Settings

SECRET = "unit-test-portal-token-secret-0123456789"
SIGNING = "unit-test-signing-secret-abcdefghijklmnop"
_etags = itertools.count(1)


def etag() -> str:
    return f'W/"{next(_etags)}"'


def unit_env(**overrides: str) -> dict[str, str]:
    """App settings for logic tests (as the environment would hold them)."""
    env = {
        "PORTAL_TOKEN_SECRET": SECRET,
        "SIGNING_SECRET": SIGNING,
        "TABLES_CONNECTION_STRING": "UseDevelopmentStorage=true",
        "ServiceBusConnection": "Endpoint=sb://127.0.0.1:5672;SharedAccessKeyName=local;SharedAccessKey=local;UseDevelopmentEmulator=true",
        "GRAPH_BASE_URL": "http://127.0.0.1:9/v1.0",
        "GRAPH_CLIENT_ID": "00000000-0000-0000-0000-00000000c11e",
        "GRAPH_CREDENTIAL": "secret",
        "GRAPH_CLIENT_SECRET": "unit-test-client-secret",
        "CONSENT_REDIRECT_URI": "http://127.0.0.1:7071/api/directory/consent",
        "PORTAL_BASE_URL": "https://portal.example",
        "MAIL_FROM": "Identity Portal <no-reply@portal.example>",
        "SMTP_HOST": "127.0.0.1",
        "SMTP_SECURITY": "none",
    }
    env.update(overrides)
    return env


def unit_settings(**overrides: str) -> Settings:
    return Settings.from_env(unit_env(**overrides))


class Clock:
    """A clock the test moves."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 11, 27, 9, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


class MemorySubscriptions(Subscriptions):
    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], Subscription] = {}

    async def add(self, sub: Subscription) -> Subscription:
        assert (sub.org, sub.id) not in self.rows
        stored = replace(sub, etag=etag())
        self.rows[(sub.org, sub.id)] = stored
        return stored

    async def get(self, org: str, sub_id: str) -> Subscription | None:
        return self.rows.get((org, sub_id))

    async def list(self, org: str) -> list[Subscription]:
        return sorted((s for (o, _), s in self.rows.items() if o == org), key=lambda s: s.created_at)

    async def save(self, sub: Subscription) -> Subscription:
        current = self.rows.get((sub.org, sub.id))
        if current is None or (sub.etag is not None and current.etag != sub.etag):
            raise PreconditionFailed("changed")
        stored = replace(sub, etag=etag())
        self.rows[(sub.org, sub.id)] = stored
        return stored

    async def delete(self, sub: Subscription) -> None:
        current = self.rows.get((sub.org, sub.id))
        if current is not None and sub.etag is not None and current.etag != sub.etag:
            raise PreconditionFailed("changed")
        self.rows.pop((sub.org, sub.id), None)

    async def nightly_candidates(self) -> list[Subscription]:
        return [s for s in self.rows.values() if s.nightly_sync and s.status == "authorized"]

    async def connected_to(self, tenant_id: str) -> list[Subscription]:
        return [s for s in self.rows.values() if s.azure_tenant_id == tenant_id]

    async def with_active_run(self) -> list[Subscription]:
        return [s for s in self.rows.values() if s.active_run_id]


class MemoryInvitations(PendingInvitations):
    """The pending-invitation index: (org, user id) -> when the recovery timer looks at it."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], datetime] = {}

    async def expect(self, org: str, user_ids: Iterable[str], due_at: datetime) -> None:
        for uid in user_ids:
            self.rows[(org, uid)] = due_at

    async def due(self, before: datetime, limit: int) -> list[tuple[str, str]]:
        return [k for k, at in sorted(self.rows.items(), key=lambda kv: kv[1]) if at < before][:limit]

    async def defer(self, org: str, user_id: str, due_at: datetime) -> None:
        self.rows[(org, user_id)] = due_at

    async def drop(self, org: str, user_id: str) -> None:
        self.rows.pop((org, user_id), None)


class MemoryReminders(MemoryInvitations, DueReminders):
    """The index of reminders to come: (org, user id) -> when the user's next reminder is due."""


class MemoryRuns(Runs):
    def __init__(self) -> None:
        self.runs: dict[tuple[str, str, str], Run] = {}
        self.groups: dict[tuple[str, str, str, str], GroupProgress] = {}
        self.seen: dict[tuple[str, str, str, str, int], set[str]] = {}
        self.changes: dict[tuple[str, str, str], dict[str, list[UserChange]]] = {}

    async def add(self, run: Run, groups: Iterable[GroupProgress]) -> Run:
        stored = replace(run, etag=etag())
        self.runs[(run.org, run.subscription_id, run.id)] = stored
        for g in groups:
            self.groups[(run.org, run.subscription_id, run.id, g.group_id)] = replace(g, etag=etag())
        return stored

    async def get(self, org: str, sub_id: str, run_id: str) -> Run | None:
        return self.runs.get((org, sub_id, run_id))

    async def view(self, org: str, sub_id: str, run_id: str) -> RunView | None:
        run = self.runs.get((org, sub_id, run_id))
        if run is None:
            return None
        groups = tuple(g for (o, s, r, _), g in sorted(self.groups.items()) if (o, s, r) == (org, sub_id, run_id))
        return RunView(run, groups)

    async def recent(self, org: str, sub_id: str, limit: int) -> list[RunView]:
        ids = sorted(r for (o, s, r) in self.runs if (o, s) == (org, sub_id))[:limit]
        return [await self.view(org, sub_id, r) for r in ids]

    async def save(self, run: Run) -> Run:
        key = (run.org, run.subscription_id, run.id)
        current = self.runs.get(key)
        if current is None or (run.etag is not None and current.etag != run.etag):
            raise PreconditionFailed("changed")
        stored = replace(run, etag=etag())
        self.runs[key] = stored
        return stored

    async def get_group(self, org: str, sub_id: str, run_id: str, group_id: str) -> GroupProgress | None:
        return self.groups.get((org, sub_id, run_id, group_id))

    async def save_group(self, org: str, sub_id: str, run_id: str, progress: GroupProgress,
                         changes: SegmentChanges | None = None) -> GroupProgress:
        key = (org, sub_id, run_id, progress.group_id)
        current = self.groups.get(key)
        if (progress.etag is None) != (current is None) or (current is not None and current.etag != progress.etag):
            raise PreconditionFailed("changed")
        stored = replace(progress, etag=etag())
        self.groups[key] = stored
        if changes:  # in the same transaction as the progress row
            rows = self.changes.setdefault((org, sub_id, run_id), {})
            for page, listed in changes.pages.items():
                rows[f"x|{changes.group_id}|{changes.segment:05d}|{page:04d}"] = list(listed)
        return stored

    async def save_final_changes(self, org: str, sub_id: str, run_id: str, changes: Sequence[UserChange]) -> None:
        rows = self.changes.setdefault((org, sub_id, run_id), {})
        ordered = sorted(changes, key=lambda c: c.user_id)
        for n, start in enumerate(range(0, len(ordered), 1000)):
            rows[f"y|{n:05d}"] = ordered[start : start + 1000]

    async def change_rows(self, org: str, sub_id: str, run_id: str) -> AsyncIterator[tuple[str, list[UserChange]]]:
        for row, listed in sorted(self.changes.get((org, sub_id, run_id), {}).items()):
            yield row, list(listed)

    async def replace_change_row(self, org, sub_id, run_id, row_id, changes) -> None:
        rows = self.changes.setdefault((org, sub_id, run_id), {})
        if changes:
            rows[row_id] = list(changes)
        else:
            rows.pop(row_id, None)

    async def changes_page(self, org, sub_id, run_id, change, page_size, token):
        start, skip = ("", 0)
        if token:
            try:
                data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
                start, skip = str(data["row"]), int(data["at"])
            except (ValueError, KeyError, TypeError):
                raise InvalidInput("bad token", code="invalid_continuation_token") from None
        found: list[UserChange] = []
        for row, listed in sorted(self.changes.get((org, sub_id, run_id), {}).items()):
            if row < start:
                continue
            for i in range(skip if row == start else 0, len(listed)):
                if change is None or listed[i].change == change:
                    found.append(listed[i])
                    if len(found) >= page_size:
                        cursor = json.dumps({"row": row, "at": i + 1}).encode()
                        return found, base64.urlsafe_b64encode(cursor).decode()
        return found, None

    async def expire_changes(self, org: str, sub_id: str, before: datetime) -> int:
        n = 0
        for (o, s, r), run in list(self.runs.items()):
            if (o, s) == (org, sub_id) and run.started_at < before:
                n += len(self.changes.pop((o, s, r), {}))
                for key in [k for k in self.seen if k[:3] == (o, s, r)]:
                    del self.seen[key]
                    n += 1
        return n

    async def save_seen(self, org, sub_id, run_id, group_id, segment, user_ids) -> None:
        self.seen[(org, sub_id, run_id, group_id, segment)] = set(user_ids)

    async def load_seen(self, org, sub_id, run_id, group_id, before_segment) -> set[str]:
        out: set[str] = set()
        for (o, s, r, g, seg), ids in self.seen.items():
            if (o, s, r, g) == (org, sub_id, run_id, group_id) and seg < before_segment:
                out |= ids
        return out

    async def delete_all(self, org: str, sub_id: str) -> None:
        for key in [k for k in self.runs if k[:2] == (org, sub_id)]:
            del self.runs[key]
        for key in [k for k in self.groups if k[:2] == (org, sub_id)]:
            del self.groups[key]
        for key in [k for k in self.changes if k[:2] == (org, sub_id)]:
            del self.changes[key]


def _claim(username: str) -> str:
    return username.strip().casefold()


class MemoryUsers(Users):
    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], User] = {}
        self.claims: dict[tuple[str, str], str] = {}
        self.writes = 0
        self.membership_writes = 0
        self.existing_on_create = 0  # inserts that found the row there already
        self.max_memberships = 230  # Table Storage: 252 properties, about 22 of them the user's own
        self.link_index: dict[tuple[str, str, str], str] = {}  # (org, subscription, object id) → user id
        self.link_writes = 0

    async def get(self, org: str, user_id: str) -> User | None:
        return self.rows.get((org, user_id))

    async def get_many(self, org: str, user_ids: Iterable[str]) -> dict[str, User]:
        return {uid: self.rows[(org, uid)] for uid in set(user_ids) if (org, uid) in self.rows}

    async def page(self, org: str, filters: UserFilter, page_size: int, token: str | None) -> tuple[list[User], str | None]:
        after = json.loads(base64.urlsafe_b64decode(token))["after"] if token else ""
        matches = []
        for u in sorted((u for (o, _), u in self.rows.items() if o == org), key=lambda u: u.username.casefold()):
            if u.username.casefold() <= after:
                continue
            if filters.status and u.status != filters.status:
                continue
            if filters.source_type and u.source_type != filters.source_type:
                continue
            if filters.enrollment and (u.enrolled_at is not None) != (filters.enrollment == "enrolled"):
                continue
            needle = (filters.search or "").casefold()
            if needle and not any(needle in (x or "").casefold() for x in (u.username, u.display_name, u.email)):
                continue
            matches.append(u)
        page, rest = matches[:page_size], matches[page_size:]
        token = base64.urlsafe_b64encode(json.dumps({"after": page[-1].username.casefold()}).encode()).decode() if rest else None
        return page, token

    async def create(self, users: list[User]) -> list[Created | Exists | UsernameTaken]:
        out: list[Created | Exists | UsernameTaken] = []
        for user in users:
            if (user.org, user.id) in self.rows:
                self.existing_on_create += 1
                out.append(Exists(self.rows[(user.org, user.id)]))
                continue
            holder = self.claims.get((user.org, _claim(user.username)))
            if holder is not None and holder != user.id:
                owner = self.rows.get((user.org, holder))
                out.append(UsernameTaken(holder, owner.username if owner else user.username))
                continue
            stored = replace(user, etag=etag())
            self.claims[(user.org, _claim(user.username))] = user.id
            self.rows[(user.org, user.id)] = stored
            self.writes += 1
            out.append(Created(stored))
        return out

    async def update(self, changes: list[tuple[User, str]]) -> list[Updated | Stale | UsernameTaken]:
        out: list[Updated | Stale | UsernameTaken] = []
        for user, old in changes:
            current = self.rows.get((user.org, user.id))
            if current is None or (user.etag is not None and current.etag != user.etag):
                out.append(Stale(user.id))
                continue
            if _claim(user.username) != _claim(old):
                holder = self.claims.get((user.org, _claim(user.username)))
                if holder is not None and holder != user.id:
                    owner = self.rows.get((user.org, holder))
                    out.append(UsernameTaken(holder, owner.username if owner else user.username))
                    continue
                self.claims.pop((user.org, _claim(old)), None)
                self.claims[(user.org, _claim(user.username))] = user.id
            stored = replace(user, etag=etag())
            self.rows[(user.org, user.id)] = stored
            self.writes += 1
            out.append(Updated(stored))
        return out

    async def add_membership(self, org: str, user_ids: Iterable[str], group_id: str, keep: Collection[str]) -> int:
        def join(groups: frozenset[str]) -> frozenset[str]:
            if group_id not in groups and len(groups) >= self.max_memberships:  # the row is full: drop deselected
                groups = groups.intersection(keep)
            return groups | {group_id}
        return self._memberships(org, user_ids, join)

    async def remove_memberships(self, org: str, user_ids: Iterable[str], keep: Collection[str]) -> int:
        return self._memberships(org, user_ids, lambda groups: groups.intersection(keep))

    def _memberships(self, org: str, user_ids: Iterable[str], change) -> int:
        n = 0
        for uid in set(user_ids):
            current = self.rows.get((org, uid))
            if current is None:
                continue
            self.rows[(org, uid)] = replace(current, group_ids=change(current.group_ids), etag=etag())
            n += 1
        self.membership_writes += n
        return n

    async def group_members(self, org: str, subscription_id: str, group_id: str) -> AsyncIterator[MemberState]:
        for (o, _), u in list(self.rows.items()):
            if o == org and u.subscription_id == subscription_id and group_id in u.group_ids:
                yield MemberState(u.id, u.username, u.email, u.display_name, u.given_name, u.surname, u.status,
                                  u.status_reason, u.enrollment_email, u.last_run_id, u.last_change, u.phone,
                                  u.department, u.job_title, u.employee_id, u.office_location,
                                  dict(u.custom_attributes))

    async def subscription_users(self, org: str, subscription_id: str) -> AsyncIterator[User]:
        for (o, _), u in list(self.rows.items()):
            if o == org and u.subscription_id == subscription_id:
                yield u

    async def subscription_scope(self, org: str, subscription_id: str, group_ids: Iterable[str]) -> AsyncIterator[ScopeState]:
        wanted = set(group_ids)
        async for u in self.subscription_users(org, subscription_id):
            yield ScopeState(u.id, u.status, u.source_type, u.enrollment_email, u.last_run_id, u.last_change,
                             u.group_ids & wanted, other_groups=not u.group_ids <= wanted, username=u.username,
                             display_name=u.display_name)

    async def username_owner(self, org: str, username: str) -> str | None:
        return self.claims.get((org, _claim(username)))

    async def username_claims(self, org: str) -> AsyncIterator[tuple[str, str]]:
        for (o, name), uid in list(self.claims.items()):
            if o == org:
                yield name, uid

    async def expired_history(self, before: datetime) -> AsyncIterator[User]:
        for u in list(self.rows.values()):
            if u.history and min(e.at for e in u.history) < before:
                yield u

    async def links(self, org: str, subscription_id: str) -> dict[str, str]:
        return {oid: uid for (o, s, oid), uid in self.link_index.items() if (o, s) == (org, subscription_id)}

    async def link_candidates(self, org: str) -> list[Candidate]:
        return [Candidate(u.id, u.username, u.email) for (o, _), u in self.rows.items()
                if o == org and u.source_type == "Manual"]

    async def link(self, links: list[tuple[User, str]]) -> list[Updated | Stale | UsernameTaken | AlreadyLinked]:
        out: list[Updated | Stale | UsernameTaken | AlreadyLinked] = []
        for user, old in links:  # all or nothing per link, as the table's transaction
            entry = (user.org, user.subscription_id, user.azure_object_id)
            if entry in self.link_index:
                out.append(AlreadyLinked(self.link_index[entry]))
                continue
            [outcome] = await self.update([(user, old)])
            if isinstance(outcome, Updated):
                self.link_index[entry] = user.id
                self.link_writes += 1
            out.append(outcome)
        return out

    async def unlink_all(self, org: str, subscription_id: str) -> int:
        gone = [k for k in self.link_index if k[:2] == (org, subscription_id)]
        for k in gone:
            del self.link_index[k]
        return len(gone)


class MemoryAlerts(Alerts):
    def __init__(self) -> None:
        self.rows: dict[tuple[str, str, str], Alert] = {}

    async def add(self, alert: Alert) -> tuple[Alert, bool]:
        key = (alert.org, alert.subscription_id, alert.id)
        if key in self.rows:
            return self.rows[key], False
        stored = self.rows[key] = replace(alert, etag=etag())
        return stored, True

    async def get(self, org: str, sub_id: str, alert_id: str) -> Alert | None:
        return self.rows.get((org, sub_id, alert_id))

    async def save(self, alert: Alert) -> Alert:
        key = (alert.org, alert.subscription_id, alert.id)
        current = self.rows.get(key)
        if current is None or (alert.etag is not None and current.etag != alert.etag):
            raise PreconditionFailed("changed")
        stored = self.rows[key] = replace(alert, etag=etag())
        return stored

    async def unsent(self, org: str, sub_id: str) -> list[Alert]:
        return [a for (o, s, _), a in self.rows.items() if (o, s) == (org, sub_id) and a.state in ("queued", "sending")]

    async def recent(self, org: str, sub_id: str, since) -> list[Alert]:
        return [a for (o, s, _), a in self.rows.items() if (o, s) == (org, sub_id) and a.created_at >= since]

    async def delete_all(self, org: str, sub_id: str) -> None:
        for key in [k for k in self.rows if k[:2] == (org, sub_id)]:
            del self.rows[key]


class MemoryGroups(Groups):
    def __init__(self) -> None:
        self.rows: dict[tuple[str, str, str], SyncedGroup] = {}

    async def list(self, org: str) -> list[SyncedGroup]:
        return [g for (o, _, _), g in self.rows.items() if o == org]

    async def save(self, group: SyncedGroup) -> None:
        self.rows[(group.org, group.subscription_id, group.id)] = group

    async def delete(self, org: str, subscription_id: str, group_ids: Iterable[str] | None = None) -> None:
        for key in list(self.rows):
            if key[:2] == (org, subscription_id) and (group_ids is None or key[2] in set(group_ids)):
                del self.rows[key]


@dataclass
class FakeTenant:
    """A directory the test edits the way an Azure admin would."""

    groups: dict[str, DirectoryGroup] = field(default_factory=dict)
    members: dict[str, list[str]] = field(default_factory=dict)
    users: dict[str, DirectoryUser] = field(default_factory=dict)
    # The application permissions the tenant's consent grants (what the app asks for, unless a test says otherwise),
    # and how Graph answers a hidden group's member list without Member.Read.Hidden: "empty" or "forbidden" (403).
    permissions: set[str] = field(default_factory=lambda: {"User.Read.All", "GroupMember.Read.All"})
    hidden_answer: str = "empty"

    def add_user(self, uid: str, *, groups: Iterable[str] = (), **fields: Any) -> DirectoryUser:
        defaults = {"display_name": uid.title(), "user_principal_name": f"{uid}@contoso.example",
                    "mail": f"{uid}@contoso.example"}
        user = DirectoryUser(id=uid, **{**defaults, **fields})
        self.users[uid] = user
        for g in groups:
            self.members.setdefault(g, []).append(uid)
        return user

    def add_group(self, gid: str, name: str) -> None:
        self.groups[gid] = DirectoryGroup(gid, name)
        self.members.setdefault(gid, [])

    def hide(self, gid: str, hidden: bool = True) -> None:
        """Make a group's membership hidden (visibility HiddenMembership), as an admin can in Exchange Online."""
        self.groups[gid] = replace(self.groups[gid], visibility="HiddenMembership" if hidden else None)

    def listable(self, gid: str) -> bool:
        """Would Graph list this group's members to the app (hidden membership needs Member.Read.Hidden)?"""
        return self.groups[gid].membership_readable(self.permissions)

    def block(self, uid: str, blocked: bool = True) -> None:
        self.users[uid] = replace(self.users[uid], account_enabled=not blocked)

    def remove(self, gid: str, uid: str) -> None:
        self.members[gid].remove(uid)

    def delete_user(self, uid: str) -> None:
        del self.users[uid]
        for m in self.members.values():
            if uid in m:
                m.remove(uid)


class FakeDirectory(Directory):
    """Graph as a dict: pages of ``page_size``; ``fail`` makes the next reads of a group raise."""

    def __init__(self, page_size: int = 999) -> None:
        self.tenants: dict[str, FakeTenant] = {}
        self.page_size = page_size
        self.fail: dict[str, Exception] = {}
        self.expire_links: dict[str, int] = {}  # group id -> how many of its nextLinks answer "expired"
        self.revoked: set[str] = set()
        self.requests = 0
        self.selects: list[tuple[str, ...]] = []  # the mapping's properties each member listing selected

    def tenant(self, tid: str) -> FakeTenant:
        return self.tenants.setdefault(tid, FakeTenant())

    def _check(self, tid: str) -> FakeTenant:
        self.requests += 1
        if tid in self.revoked:
            raise AuthorizationLost("revoked")
        if tid not in self.tenants:
            raise AuthorizationLost("unknown tenant")
        return self.tenants[tid]

    async def search_groups(self, tenant_id: str, text: str, limit: int) -> list[DirectoryGroup]:
        t = self._check(tenant_id)
        if "search" in self.fail:
            raise self.fail["search"]
        words = text.casefold().split()
        found = [g for g in t.groups.values() if all(any(w2.startswith(w) for w2 in g.display_name.casefold().split()) for w in words)]
        return sorted(found, key=lambda g: g.display_name)[:limit]

    async def get_groups(self, tenant_id: str, group_ids: list[str], *,
                         interactive: bool = True) -> dict[str, DirectoryGroup]:
        t = self._check(tenant_id)
        return {g: t.groups[g] for g in group_ids if g in t.groups}

    async def granted_permissions(self, tenant_id: str) -> frozenset[str]:
        if tenant_id in self.revoked or tenant_id not in self.tenants:
            raise AuthorizationLost("no token for the tenant")
        return frozenset(self.tenants[tenant_id].permissions)

    async def group_user_pages(self, tenant_id: str, group_id: str, next_link: str | None = None, *,
                               select: Sequence[str] = ()) -> AsyncIterator[UserPage]:
        t = self._check(tenant_id)
        self.selects.append(tuple(select))
        if group_id in self.fail:
            raise self.fail[group_id]
        if group_id not in t.groups:
            raise NotFound("no group")
        if not t.listable(group_id) and t.hidden_answer == "forbidden":
            raise AuthorizationLost("Microsoft Graph refused access (403 Authorization_RequestDenied)",
                                    may_be_propagating=True)
        # A hidden group's members without Member.Read.Hidden: Graph lists nobody (the fake Graph's default)
        ids = [u for u in t.members[group_id] if u in t.users] if t.listable(group_id) else []
        start = int(next_link.rsplit("=", 1)[1]) if next_link else 0
        while True:
            if start and self.expire_links.get(group_id, 0) > 0:  # a nextLink used: Graph may say it expired
                self.expire_links[group_id] -= 1
                raise PageTokenExpired("Directory_ExpiredPageToken")
            chunk = ids[start : start + self.page_size]
            start += self.page_size
            link = f"fake://{group_id}?skip={start}" if start < len(ids) else None
            yield UserPage([selected(t.users[u], select) for u in chunk], link)
            if link is None:
                return
            self.requests += 1
            if group_id in self.fail:
                raise self.fail[group_id]


def selected(user: DirectoryUser, select: Sequence[str]) -> DirectoryUser:
    """The user as Graph returns it for a ``$select`` of the sync's own properties and ``select``: the fakes keep
    every other property in ``properties``, returned only when its (top-level) name is selected."""
    wanted = set(select)
    return replace(user, properties={k: v for k, v in user.properties.items() if k.split("/", 1)[0] in wanted})


class FakeChangeFeed(DirectoryChangeFeed):
    """Graph's delta and subscriptions over the FakeDirectory's tenants: a delta link names a snapshot of the
    tenant, and reading it reports the difference with now (what Graph's delta reports, collapsed)."""

    def __init__(self, directory: FakeDirectory) -> None:
        self.directory = directory
        self.snapshots: dict[str, tuple[dict, dict]] = {}
        self.expired: set[str] = set()
        self.subscriptions: dict[str, dict] = {}
        self.unreachable: set[str] = set()  # notification URLs whose validation handshake fails
        self.created = 0
        self.reads = 0
        self.fail: dict[str, Exception] = {}  # method name ("read_changes", "get_users", "member_of") -> raised
        self.selects: list[tuple[str, ...]] = []  # what each look-up of users selected

    def _tenant(self, tid: str, method: str | None = None) -> FakeTenant:
        """The tenant, refused as Graph would (Graph requests of the change feed are counted in ``reads``)."""
        if tid in self.directory.revoked or tid not in self.directory.tenants:
            raise AuthorizationLost("revoked")
        if method in self.fail:
            raise self.fail[method]
        return self.directory.tenants[tid]

    def _snapshot(self, tid: str) -> DeltaLinks:
        t = self._tenant(tid)
        link = f"fake-delta://{tid}/{len(self.snapshots) + 1}"
        self.snapshots[link] = (dict(t.users), {g: list(m) for g, m in t.members.items()})
        return DeltaLinks(link + "?users", link + "?groups")

    async def delta_links(self, tenant_id: str, *, select: Sequence[str] = ()) -> DeltaLinks:
        return self._snapshot(tenant_id)

    async def read_changes(self, tenant_id: str, links: DeltaLinks, max_objects: int) -> DirectoryChanges | None:
        t = self._tenant(tenant_id, "read_changes")
        self.reads += 1
        base = links.users_link.rsplit("?", 1)[0]
        if base in self.expired or base not in self.snapshots:
            raise DeltaExpired("syncStateNotFound")
        users, members = self.snapshots[base]
        changed = frozenset(u for u, du in t.users.items() if users.get(u) != du)
        removed = frozenset(set(users) - set(t.users))
        groups: dict[str, GroupChange] = {}
        for gid in set(members) | set(t.members):
            before, after = set(members.get(gid, ())), set(t.members.get(gid, ()))
            if gid in t.groups and not t.listable(gid):
                before = after = set()  # a hidden group's members@delta is empty without Member.Read.Hidden
            if gid not in t.groups and gid in members:
                groups[gid] = GroupChange(gid, removed=True)
            elif before != after:
                diff = before ^ after
                groups[gid] = GroupChange(gid, users_added=frozenset(after - before - set(t.groups)),
                                          users_removed=frozenset(before - after - set(t.groups)),
                                          groups_changed=frozenset(diff & set(t.groups) | diff & set(members)))
        if len(changed) + len(removed) > max_objects or len(groups) > max_objects:
            return None
        return DirectoryChanges(changed, removed, groups, self._snapshot(tenant_id))

    async def get_users(self, tenant_id: str, user_ids: list[str], *,
                        select: Sequence[str] = ()) -> dict[str, DirectoryUser]:
        t = self._tenant(tenant_id, "get_users")
        self.selects.append(tuple(select))
        return {u: selected(t.users[u], select) for u in user_ids if u in t.users}

    async def member_of(self, tenant_id: str, object_id: str, *, kind: str = "users") -> frozenset[str]:
        t = self._tenant(tenant_id, "member_of")
        if kind == "groups" and object_id not in t.groups:
            raise NotFound("no group")
        found: set[str] = set()
        todo = [object_id]
        while todo:
            current = todo.pop()
            for gid, ids in t.members.items():
                if current in ids and gid not in found:
                    found.add(gid)
                    todo.append(gid)
        # Graph leaves out the groups whose membership the app may not read (the fake Graph does; README)
        return frozenset(g for g in found if g not in t.groups or t.listable(g))

    async def subscribe(self, tenant_id: str, resource: str, notification_url: str, client_state: str,
                        expires_at: datetime) -> tuple[str, datetime]:
        self._tenant(tenant_id)
        self.created += 1
        sid = f"graph-sub-{self.created}"
        self.subscriptions[sid] = {"tenant": tenant_id, "resource": resource, "url": notification_url,
                                   "clientState": client_state, "expires": expires_at}
        return sid, expires_at

    async def renew(self, tenant_id: str, watch_id: str, expires_at: datetime,
                    notification_url: str | None = None) -> datetime:
        if watch_id not in self.subscriptions:
            raise NotFound("no subscription")
        if notification_url is not None:
            if notification_url in self.unreachable:  # Graph's validation of the new URL failed: nothing changes
                raise InvalidInput("Subscription validation request failed.", code="ValidationError")
            self.subscriptions[watch_id]["url"] = notification_url
        self.subscriptions[watch_id]["expires"] = expires_at
        return expires_at

    async def unsubscribe(self, tenant_id: str, watch_id: str) -> None:
        self.subscriptions.pop(watch_id, None)


class MemoryWatches(Watches):
    def __init__(self) -> None:
        self.watches: dict[str, Watch] = {}
        self.deltas: dict[tuple[str, str], DeltaState] = {}

    async def get(self, watch_id: str) -> Watch | None:
        return self.watches.get(watch_id)

    async def save(self, watch: Watch) -> None:
        self.watches[watch.id] = watch

    async def delete(self, watch_id: str) -> None:
        self.watches.pop(watch_id, None)

    async def of_subscription(self, org: str, subscription_id: str) -> list[Watch]:
        return [w for w in self.watches.values() if (w.org, w.subscription_id) == (org, subscription_id)]

    async def expiring(self, before: datetime) -> list[Watch]:
        return [w for w in self.watches.values() if w.expires_at < before]

    async def elsewhere(self, url_hash: str) -> list[Watch]:
        return [w for w in self.watches.values() if w.url_hash != url_hash]

    async def get_delta(self, org: str, subscription_id: str) -> DeltaState | None:
        return self.deltas.get((org, subscription_id))

    async def save_delta(self, state: DeltaState) -> DeltaState:
        current = self.deltas.get((state.org, state.subscription_id))
        if (current.etag if current else None) != state.etag:
            raise PreconditionFailed("delta changed")
        stored = replace(state, etag=etag())
        self.deltas[(state.org, state.subscription_id)] = stored
        return stored

    async def delete_delta(self, org: str, subscription_id: str) -> None:
        self.deltas.pop((org, subscription_id), None)

    async def with_delta(self) -> list[DeltaState]:
        return list(self.deltas.values())


class RecordingQueue(JobQueue):
    def __init__(self) -> None:
        self.group_jobs: list[GroupJob] = []
        self.enrollment_jobs: list[EnrollmentJob] = []
        self.alert_jobs: list[AlertJob] = []
        self.alert_delays: list[float] = []
        self.fail_alerts: Exception | None = None  # the next send_alert_jobs raises it
        self.delays: list[float] = []
        self.group_delays: list[float] = []
        self.change_jobs: list[ChangeJob] = []
        self.change_delays: list[float] = []
        self.fail_next: Exception | None = None
        self.message_ids: list[str] = []  # every id sent, never cleared: a re-queue must not reuse one

    async def send_group_jobs(self, jobs: list[GroupJob], *, delay_s: float = 0) -> None:
        if self.fail_next:
            exc, self.fail_next = self.fail_next, None
            raise exc
        self.group_jobs.extend(jobs)
        self.group_delays.extend([delay_s] * len(jobs))
        self.message_ids += [j.message_id for j in jobs]

    async def send_enrollment_jobs(self, jobs: list[EnrollmentJob], *, delay_s: float = 0) -> None:
        self.enrollment_jobs.extend(jobs)
        self.delays.extend([delay_s] * len(jobs))
        self.message_ids += [j.message_id for j in jobs]

    async def send_change_jobs(self, jobs: list[ChangeJob], *, delay_s: float = 0) -> None:
        self.change_jobs.extend(jobs)
        self.change_delays.extend([delay_s] * len(jobs))
        self.message_ids += [j.message_id for j in jobs]

    async def send_alert_jobs(self, jobs: list[AlertJob], *, delay_s: float = 0) -> None:
        if self.fail_alerts:
            exc, self.fail_alerts = self.fail_alerts, None
            raise exc
        self.alert_jobs.extend(jobs)
        self.alert_delays.extend([delay_s] * len(jobs))
        self.message_ids += [j.message_id for j in jobs]

    async def send_webhook_jobs(self, jobs: list, *, delay_s: float = 0) -> None:
        self.webhook_jobs = [*getattr(self, "webhook_jobs", []), *((j, delay_s) for j in jobs)]

    def take_group_jobs(self) -> list[GroupJob]:
        jobs, self.group_jobs = self.group_jobs, []
        return jobs

    def take_change_jobs(self) -> list[ChangeJob]:
        jobs, self.change_jobs = self.change_jobs, []
        return jobs


class RecordingMailSender(MailSender):
    def __init__(self) -> None:
        self.sent: list[OutgoingEmail] = []
        self.failures: list[MailError] = []

    async def send(self, email: OutgoingEmail) -> None:
        if self.failures:
            raise self.failures.pop(0)
        self.sent.append(email)


GLOBAL_ADMIN = "62e90394-69f5-4237-9190-012177145e10"


class FakeSignIns(SignIns):
    """Microsoft's sign-in as a dict: ``issue`` makes an id_token it will later "verify"; anything else is refused."""

    def __init__(self) -> None:
        self.issued: dict[str, tuple[SignIn, str]] = {}

    def issue(self, tenant: str, *, nonce: str, roles: tuple[str, ...] = (GLOBAL_ADMIN,),
              username: str | None = "admin@contoso.example", name: str | None = "Ada Admin") -> str:
        token = f"id-token-{len(self.issued) + 1}"
        self.issued[token] = (SignIn(tenant_id=tenant, object_id=f"oid-{tenant}", directory_roles=roles,
                                     username=username, display_name=name), nonce)
        return token

    async def verify(self, id_token: str, *, nonce: str) -> SignIn:
        found = self.issued.get(id_token)
        if found is None or found[1] != nonce:
            raise InvalidInput("the sign-in's id_token is not valid", code="tenant_unverified")
        return found[0]


def make_services(**settings_overrides: str) -> Services:
    """Services wired to the in-memory fakes, with a movable clock."""
    directory = FakeDirectory()
    return Services(
        settings=unit_settings(**settings_overrides),
        subscriptions=MemorySubscriptions(),
        runs=MemoryRuns(),
        users=MemoryUsers(),
        groups=MemoryGroups(),
        directory=directory,
        queue=RecordingQueue(),
        changes=FakeChangeFeed(directory),
        watches=MemoryWatches(),
        sign_ins=FakeSignIns(),
        mail_sender=RecordingMailSender(),
        alerts=MemoryAlerts(),
        invitations=MemoryInvitations(),
        reminders=MemoryReminders(),
        clock=Clock(),
    )


__all__ = ["make_services", "unit_settings", "Clock", "FakeDirectory", "FakeTenant", "RecordingQueue",
           "RecordingMailSender", "MemoryUsers", "SECRET", "SIGNING", "Transient", "InvalidInput"]
