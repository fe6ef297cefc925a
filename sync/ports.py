"""The ports the use cases depend on; one adapter per technology implements each (and tests use fakes)."""
from __future__ import annotations

import abc
from dataclasses import dataclass
from datetime import datetime
from typing import AsyncIterator, Collection, Iterable, Sequence

from .alert_model import Alert, AlertJob
from .event_model import Event, Webhook, WebhookJob
from .linking import Candidate
from .model import (
    ChangeJob,
    DeltaLinks,
    DeltaState,
    DirectoryChanges,
    DirectoryGroup,
    DirectoryUser,
    EnrollmentJob,
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


class Subscriptions(abc.ABC):
    """Directory subscriptions of each organisation."""

    @abc.abstractmethod
    async def add(self, sub: Subscription) -> Subscription: ...

    @abc.abstractmethod
    async def get(self, org: str, sub_id: str) -> Subscription | None: ...

    @abc.abstractmethod
    async def list(self, org: str) -> list[Subscription]: ...

    @abc.abstractmethod
    async def save(self, sub: Subscription) -> Subscription:
        """Write ``sub`` if nobody changed it since it was read (its etag); else PreconditionFailed."""

    @abc.abstractmethod
    async def delete(self, sub: Subscription) -> None:
        """Delete if unchanged since read; else PreconditionFailed."""

    @abc.abstractmethod
    async def connected_to(self, tenant_id: str) -> list[Subscription]:
        """Subscriptions of every org connected to the Entra tenant ``tenant_id`` (lower case; reads no users)."""

    @abc.abstractmethod
    async def nightly_candidates(self) -> list[Subscription]:
        """Subscriptions of every org with nightly sync on and status authorized (reads no users)."""

    @abc.abstractmethod
    async def with_active_run(self) -> list[Subscription]:
        """Subscriptions of every org that hold an active run (the recovery timer's round; reads no users)."""


class Runs(abc.ABC):
    """Full Sync runs and the progress of each of their groups."""

    @abc.abstractmethod
    async def add(self, run: Run, groups: Iterable[GroupProgress]) -> Run: ...

    @abc.abstractmethod
    async def get(self, org: str, sub_id: str, run_id: str) -> Run | None: ...

    @abc.abstractmethod
    async def view(self, org: str, sub_id: str, run_id: str) -> RunView | None:
        """The run with all its group progress rows."""

    @abc.abstractmethod
    async def recent(self, org: str, sub_id: str, limit: int) -> list[RunView]:
        """Newest first."""

    @abc.abstractmethod
    async def save(self, run: Run) -> Run:
        """Conditional on the run's etag; PreconditionFailed if it changed."""

    @abc.abstractmethod
    async def get_group(self, org: str, sub_id: str, run_id: str, group_id: str) -> GroupProgress | None: ...

    @abc.abstractmethod
    async def save_group(self, org: str, sub_id: str, run_id: str, progress: GroupProgress,
                         changes: SegmentChanges | None = None) -> GroupProgress:
        """Conditional on the progress row's etag; PreconditionFailed if it changed. ``changes`` (the user changes
        a segment recorded) are stored with it, in the same transaction when they fit: a segment's report lands
        whole or not at all, and a redelivered segment's replaces it (same keys)."""

    @abc.abstractmethod
    async def save_final_changes(self, org: str, sub_id: str, run_id: str, changes: Sequence[UserChange]) -> None:
        """Store the changes of the run's end (its deactivations), replacing what an earlier call stored."""

    @abc.abstractmethod
    def change_rows(self, org: str, sub_id: str, run_id: str) -> AsyncIterator[tuple[str, list[UserChange]]]:
        """Every stored part of the run's change list, in order, with an id for ``replace_change_row``."""

    @abc.abstractmethod
    async def replace_change_row(self, org: str, sub_id: str, run_id: str, row_id: str,
                                 changes: Sequence[UserChange]) -> None:
        """Rewrite one part of the run's change list (deleted when ``changes`` is empty)."""

    @abc.abstractmethod
    async def changes_page(self, org: str, sub_id: str, run_id: str, change: str | None, page_size: int,
                           token: str | None) -> tuple[list[UserChange], str | None]:
        """One page of the run's change list (only ``change`` ones when given) and the opaque token of the next;
        InvalidInput (``invalid_continuation_token``) for a token this method did not return."""

    @abc.abstractmethod
    async def expire_changes(self, org: str, sub_id: str, before: datetime) -> int:
        """Delete the change lists (and seen-user rows) of the runs started before ``before``; rows deleted."""

    @abc.abstractmethod
    async def save_seen(self, org: str, sub_id: str, run_id: str, group_id: str, segment: int, user_ids: Iterable[str]) -> None:
        """Remember which users a segment of a large group saw (idempotent per segment)."""

    @abc.abstractmethod
    async def load_seen(self, org: str, sub_id: str, run_id: str, group_id: str, before_segment: int) -> set[str]:
        """Users seen by the segments before ``before_segment``."""

    @abc.abstractmethod
    async def delete_all(self, org: str, sub_id: str) -> None: ...


@dataclass(frozen=True)
class Created:
    user: User


@dataclass(frozen=True)
class Exists:
    """The row was already there (another worker created it, or a redelivery); here it is, as stored."""

    user: User


@dataclass(frozen=True)
class UsernameTaken:
    """Another user of the org holds the username."""

    owner_id: str
    owner_username: str


@dataclass(frozen=True)
class Updated:
    user: User


@dataclass(frozen=True)
class Stale:
    """The row changed since it was read (ETag); re-read and decide again."""

    user_id: str


@dataclass(frozen=True)
class AlreadyLinked:
    """The directory object is linked already (another worker, or an earlier delivery): to this user."""

    user_id: str


@dataclass(frozen=True)
class UserFilter:
    status: str | None = None
    source_type: str | None = None
    search: str | None = None
    enrollment: str | None = None  # "enrolled" or "not_enrolled"


class Users(abc.ABC):
    """Portal users, their unique usernames and their memberships of synced groups."""

    @abc.abstractmethod
    async def get(self, org: str, user_id: str) -> User | None: ...

    @abc.abstractmethod
    async def get_many(self, org: str, user_ids: Iterable[str]) -> dict[str, User]: ...

    @abc.abstractmethod
    async def page(self, org: str, filters: UserFilter, page_size: int, token: str | None) -> tuple[list[User], str | None]:
        """One page of the Users grid and the opaque token of the next (None at the end)."""

    @abc.abstractmethod
    async def create(self, users: list[User]) -> list[Created | Exists | UsernameTaken]:
        """Insert users with their username claims; one outcome per user, in order. Never overwrites."""

    @abc.abstractmethod
    async def update(self, changes: list[tuple[User, str]]) -> list[Updated | Stale | UsernameTaken]:
        """Replace each user (conditional on its etag); the str is the username stored before the change."""

    @abc.abstractmethod
    async def add_membership(self, org: str, user_ids: Iterable[str], group_id: str, keep: Collection[str]) -> int:
        """Mark users as members of a group without touching anything else; returns rows written.

        A row that cannot hold one more membership (Table Storage allows 252 properties) first loses its memberships
        of groups outside ``keep`` (groups no longer selected)."""

    @abc.abstractmethod
    async def remove_memberships(self, org: str, user_ids: Iterable[str], keep: Collection[str]) -> int:
        """Remove from users every membership of a group outside ``keep`` (the row keeps nothing of it); returns
        rows written."""

    @abc.abstractmethod
    def group_members(self, org: str, subscription_id: str, group_id: str) -> AsyncIterator[MemberState]:
        """Users of a subscription currently recorded as members of a group (only what a sync compares)."""

    @abc.abstractmethod
    def subscription_users(self, org: str, subscription_id: str) -> AsyncIterator[User]:
        """Every user synced by a subscription."""

    @abc.abstractmethod
    def subscription_scope(self, org: str, subscription_id: str, group_ids: Iterable[str]) -> AsyncIterator[ScopeState]:
        """Every user synced by a subscription, reduced to what a run's finalizer reads (memberships of ``group_ids``,
        and whether the row holds memberships of other groups)."""

    @abc.abstractmethod
    async def username_owner(self, org: str, username: str) -> str | None:
        """The id of the user holding a username, if any."""

    @abc.abstractmethod
    def username_claims(self, org: str) -> AsyncIterator[tuple[str, str]]:
        """Every username of the org and the id of the user holding it (every user holds one: a dry run's view of
        which users exist and which usernames are taken)."""

    @abc.abstractmethod
    def expired_history(self, before: datetime) -> AsyncIterator[User]:
        """Users of every org whose oldest history entry is older than ``before`` (the nightly's retention)."""

    @abc.abstractmethod
    async def links(self, org: str, subscription_id: str) -> dict[str, str]:
        """The link index of a subscription: Azure object id → id of the linked user (users that kept their own id)."""

    @abc.abstractmethod
    async def link_candidates(self, org: str) -> list[Candidate]:
        """The org's Manual users, only what matching reads (id, username, e-mail)."""

    @abc.abstractmethod
    async def link(self, links: list[tuple[User, str]]) -> list[Updated | Stale | UsernameTaken | AlreadyLinked]:
        """Take over Manual users in place, each in one atomic write: its index entry (created, never overwritten),
        the user (conditional on its etag) and, when the username changes, its claims. The str is the username
        stored before. AlreadyLinked: the user's directory object has an index entry already."""

    @abc.abstractmethod
    async def unlink_all(self, org: str, subscription_id: str) -> int:
        """Drop a subscription's link index (its users are Manual again); returns entries removed."""


class Groups(abc.ABC):
    """The Groups grid: synced groups with their user counts."""

    @abc.abstractmethod
    async def list(self, org: str) -> list[SyncedGroup]: ...

    @abc.abstractmethod
    async def save(self, group: SyncedGroup) -> None: ...

    @abc.abstractmethod
    async def delete(self, org: str, subscription_id: str, group_ids: Iterable[str] | None = None) -> None:
        """Delete some (or, with None, all) synced groups of a subscription."""


class Alerts(abc.ABC):
    """Admin alerts: one row per event, created once, then claimed, sent and recorded like an invitation."""

    @abc.abstractmethod
    async def add(self, alert: Alert) -> tuple[Alert, bool]:
        """Insert the event's row unless it exists: (the stored row, whether this call created it). Never overwrites."""

    @abc.abstractmethod
    async def get(self, org: str, sub_id: str, alert_id: str) -> Alert | None: ...

    @abc.abstractmethod
    async def save(self, alert: Alert) -> Alert:
        """Conditional on the row's etag; PreconditionFailed if it changed (or is gone)."""

    @abc.abstractmethod
    async def unsent(self, org: str, sub_id: str) -> list[Alert]:
        """The subscription's alerts still queued or being sent."""

    @abc.abstractmethod
    async def recent(self, org: str, sub_id: str, since: datetime) -> list[Alert]:
        """The subscription's alerts recorded at ``since`` or later (what ALERTS_PER_HOUR and digests count)."""

    @abc.abstractmethod
    async def delete_all(self, org: str, sub_id: str) -> None: ...


class Directory(abc.ABC):
    """A customer's Entra ID tenant, read through Microsoft Graph with app-only permissions."""

    @abc.abstractmethod
    async def search_groups(self, tenant_id: str, text: str, limit: int) -> list[DirectoryGroup]: ...

    @abc.abstractmethod
    async def get_groups(self, tenant_id: str, group_ids: list[str], *,
                         interactive: bool = True) -> dict[str, DirectoryGroup]:
        """The groups that exist among ``group_ids`` (missing ones are absent from the result); ``interactive``
        False for a worker's look-up (it never takes a person's share of Graph)."""

    @abc.abstractmethod
    def group_user_pages(self, tenant_id: str, group_id: str, next_link: str | None = None, *,
                         select: Sequence[str] = ()) -> AsyncIterator[UserPage]:
        """Transitive user members, a page at a time, starting at ``next_link`` when given; ``select``: properties
        the attribute mapping reads, beyond the sync's own."""

    @abc.abstractmethod
    async def granted_permissions(self, tenant_id: str) -> frozenset[str]:
        """The application permissions the tenant grants the app now (e.g. Member.Read.Hidden): what Graph lets the
        next requests read."""


class DirectoryChangeFeed(abc.ABC):
    """The tenant's changes: Graph delta queries, change-notification subscriptions, and the look-ups an
    incremental run needs (kept apart from Directory, which a Full Sync needs alone)."""

    @abc.abstractmethod
    async def delta_links(self, tenant_id: str, *, select: Sequence[str] = ()) -> DeltaLinks:
        """Links to the tenant's current state of users and groups (``$deltatoken=latest``: no data read); the users
        link tracks the sync's own properties and ``select``."""

    @abc.abstractmethod
    async def read_changes(self, tenant_id: str, links: DeltaLinks, max_objects: int) -> DirectoryChanges | None:
        """Every change since ``links``; None if more than ``max_objects`` changed (a Full Sync is cheaper).
        Raises DeltaExpired when Graph no longer knows a link."""

    @abc.abstractmethod
    async def get_users(self, tenant_id: str, user_ids: list[str], *,
                        select: Sequence[str] = ()) -> dict[str, DirectoryUser]:
        """The users that exist among ``user_ids``, with the properties a sync reads and ``select``."""

    @abc.abstractmethod
    async def member_of(self, tenant_id: str, object_id: str, *, kind: str = "users") -> frozenset[str]:
        """Every group a user (or, with kind ``groups``, a group) is a member of, directly or through nested groups."""

    @abc.abstractmethod
    async def subscribe(self, tenant_id: str, resource: str, notification_url: str, client_state: str,
                        expires_at: datetime) -> tuple[str, datetime]:
        """Create a change-notification subscription (Graph validates the URL first); its id and expiry."""

    @abc.abstractmethod
    async def renew(self, tenant_id: str, watch_id: str, expires_at: datetime,
                    notification_url: str | None = None) -> datetime:
        """Extend a subscription, and move it to ``notification_url`` when given (Graph validates the new URL first);
        NotFound if Graph no longer has it."""

    @abc.abstractmethod
    async def unsubscribe(self, tenant_id: str, watch_id: str) -> None:
        """Delete a subscription (gone already is fine)."""


class PendingInvitations(abc.ABC):
    """The index of invitations not yet sent (``queued`` or ``sending``), so the recovery timer reads only those and
    never every user. A row is written before the user it names holds such an invitation and dropped once the
    invitation is sent or failed; a row naming a user with nothing pending is dropped by the timer (so the index
    may hold more than is pending, never less)."""

    @abc.abstractmethod
    async def expect(self, org: str, user_ids: Iterable[str], due_at: datetime) -> None:
        """Index invitations about to be queued; the timer looks at them from ``due_at``."""

    @abc.abstractmethod
    async def due(self, before: datetime, limit: int) -> list[tuple[str, str]]:
        """(org, user id) of up to ``limit`` indexed invitations due before ``before``, of every org."""

    @abc.abstractmethod
    async def defer(self, org: str, user_id: str, due_at: datetime) -> None:
        """Look at the invitation again from ``due_at``."""

    @abc.abstractmethod
    async def drop(self, org: str, user_id: str) -> None:
        """Forget the invitation (sent, failed, or nothing pending); gone already is fine."""


class DueReminders(PendingInvitations):
    """The index of enrollment reminders to come: (org, user id) -> when the user's next reminder is due. The same
    four operations as the pending-invitation index, in a table of its own so each timer's query reads only its own
    due rows. A row is written when a user's first invitation is sent (their subscription has enrollmentReminders),
    moved to the next step's time after each reminder, and dropped after the last step or once the user no longer
    qualifies (enrolled, inactive, no e-mail, out of scope)."""


class Watches(abc.ABC):
    """Graph subscriptions we hold and the delta links of each sync subscription."""

    @abc.abstractmethod
    async def get(self, watch_id: str) -> Watch | None: ...

    @abc.abstractmethod
    async def save(self, watch: Watch) -> None: ...

    @abc.abstractmethod
    async def delete(self, watch_id: str) -> None: ...

    @abc.abstractmethod
    async def of_subscription(self, org: str, subscription_id: str) -> list[Watch]: ...

    @abc.abstractmethod
    async def expiring(self, before: datetime) -> list[Watch]:
        """Every watch (of every org) that expires before ``before``."""

    @abc.abstractmethod
    async def elsewhere(self, url_hash: str) -> list[Watch]:
        """Every watch (of every org) created for another notification URL than the one of ``url_hash`` (or before
        URLs were recorded)."""

    @abc.abstractmethod
    async def get_delta(self, org: str, subscription_id: str) -> DeltaState | None: ...

    @abc.abstractmethod
    async def save_delta(self, state: DeltaState) -> DeltaState:
        """Write conditional on the state's etag (None: only if absent); PreconditionFailed if it changed."""

    @abc.abstractmethod
    async def delete_delta(self, org: str, subscription_id: str) -> None: ...

    @abc.abstractmethod
    async def with_delta(self) -> list[DeltaState]:
        """Every subscription's delta state (the renewal timer finds the subscriptions to watch)."""


class SignIns(abc.ABC):
    """Microsoft's OpenID Connect sign-in of the admin who consented."""

    @abc.abstractmethod
    async def verify(self, id_token: str, *, nonce: str) -> SignIn:
        """The verified sign-in; InvalidInput (code ``tenant_unverified``) for any token Microsoft did not sign for us."""


class JobQueue(abc.ABC):
    """Service Bus queues between the functions."""

    @abc.abstractmethod
    async def send_group_jobs(self, jobs: list[GroupJob], *, delay_s: float = 0) -> None:
        """Queue group jobs, now or ``delay_s`` later (a job waiting for a fresh consent to propagate)."""

    @abc.abstractmethod
    async def send_enrollment_jobs(self, jobs: list[EnrollmentJob], *, delay_s: float = 0) -> None:
        """Queue invitations, now or (a retry after a relay refused for a while) ``delay_s`` later."""

    @abc.abstractmethod
    async def send_change_jobs(self, jobs: list[ChangeJob], *, delay_s: float = 0) -> None:
        """Queue incremental runs, now or ``delay_s`` later (notifications of a burst share one run)."""
    async def send_alert_jobs(self, jobs: list[AlertJob], *, delay_s: float = 0) -> None:
        """Queue admin alerts (a queue of their own: never behind a run's thousands of invitations)."""

    async def send_webhook_jobs(self, jobs: list[WebhookJob], *, delay_s: float = 0) -> None:
        """Queue webhook deliveries (a queue of their own: a slow portal never slows a sync)."""
        raise NotImplementedError


class EventLog(abc.ABC):
    """Each org's events in the order recorded, each once."""

    @abc.abstractmethod
    async def append(self, org: str, events: list[Event]) -> list[Event]:
        """Record the events not recorded yet (by id), each with the org's next sequence; returns those recorded."""

    @abc.abstractmethod
    async def after(self, org: str, sequence: int, limit: int) -> list[Event]:
        """Up to ``limit`` events of the org with a sequence above ``sequence``, in sequence order."""

    @abc.abstractmethod
    async def last_sequence(self, org: str) -> int:
        """The sequence of the org's last event (0: none yet)."""

    @abc.abstractmethod
    async def expire(self, before: datetime) -> int:
        """Drop every org's events older than ``before``; returns how many went."""


class Webhooks(abc.ABC):
    """The portal's webhook endpoints, per org."""

    @abc.abstractmethod
    async def add(self, hook: Webhook) -> Webhook: ...

    @abc.abstractmethod
    async def get(self, org: str, webhook_id: str) -> Webhook | None: ...

    @abc.abstractmethod
    async def list(self, org: str) -> list[Webhook]: ...

    @abc.abstractmethod
    async def save(self, hook: Webhook) -> Webhook:
        """Write if unchanged since read (its etag); PreconditionFailed otherwise."""

    @abc.abstractmethod
    async def delete(self, org: str, webhook_id: str) -> None: ...


class WebhookSender(abc.ABC):
    """HTTP out to the portal's endpoints, connecting only to addresses the caller allows."""

    @abc.abstractmethod
    async def addresses(self, host: str) -> list[str]:
        """The IP addresses ``host`` resolves to (empty when it does not resolve)."""

    @abc.abstractmethod
    async def post(self, url: str, headers: dict[str, str], body: bytes, *, allowed, timeout_s: float) -> int:
        """POST without following redirects; the HTTP status. ``allowed(ip) -> bool`` vets every resolved address
        before connecting (only vetted ones are used); raises DeliveryFailed when none is or nothing answers."""
