"""Plain dataclasses the use cases work on; no SDK types cross into here."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from typing import Any, Collection

from .attribute_mapping import DEFAULT_MAPPING, AttributeMapping

ALLOWED_ROLES = frozenset({"Owner", "Administrator", "User Manager"})
USERNAME_ATTRIBUTES = ("userPrincipalName", "mail", "onPremisesSamAccountName", "employeeId")


def utcnow() -> datetime:
    """Timezone-aware now, truncated to milliseconds (what Table Storage keeps)."""
    now = datetime.now(timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def iso(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with a Z, or None."""
    if value is None:
        return None
    return value.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _from_iso(text: str) -> datetime:
    return datetime.fromisoformat(str(text).replace("Z", "+00:00")).astimezone(timezone.utc)


@dataclass(frozen=True)
class Caller:
    """The portal administrator behind an HTTP request."""

    org: str
    subject: str
    role: str


class SubscriptionStatus:
    AUTHORIZATION_REQUIRED = "authorization_required"
    AUTHORIZATION_PENDING = "authorization_pending"  # consented and signed in; waits for the portal user's confirm
    AUTHORIZED = "authorized"
    CONSENT_REVOKED = "consent_revoked"


_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def is_guid(value: str) -> bool:
    """An Entra object or tenant id has this shape; nothing else can be one."""
    return isinstance(value, str) and _GUID.fullmatch(value) is not None


class RunStatus:
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    NEEDS_REVIEW = "needs_review"
    PREVIEWED = "previewed"  # a dry run that finished: it changed nothing and lists what a real run would do
    ACTIVE = frozenset({"queued", "running"})
    TERMINAL = frozenset({"succeeded", "failed", "needs_review", "previewed"})


class UserStatus:
    ACTIVE = "Active"
    INACTIVE = "Inactive"


class StatusReason:
    BLOCKED = "blocked_in_directory"
    REMOVED = "removed_from_directory"
    BY_ADMIN = "deactivated_by_admin"


class SourceType:
    AD_SYNC = "AdSync"
    MANUAL = "Manual"


class ChangeKind:
    """What a run (or an administrator) did to a user, as change lists and histories name it."""

    CREATED = "created"
    UPDATED = "updated"
    REACTIVATED = "reactivated"
    DEACTIVATED = "deactivated"
    LINKED = "linked"  # an existing Manual user taken over in place by the directory (linkExistingUsers)
    ALL = ("created", "updated", "reactivated", "deactivated", "linked")


class ChangeReason:
    """Why a user changed."""

    JOINED = "joined_selected_group"  # created: a member of a selected group
    BLOCKED = "blocked_in_directory"  # sign-in blocked in Entra ID (deactivateBlockedUsers on)
    UNBLOCKED = "unblocked_in_directory"  # sign-in allowed again (or deactivateBlockedUsers turned off)
    RETURNED = "returned_to_selected_group"  # in a selected group again after being removed
    REMOVED = "removed_from_directory"  # in none of the selected groups any more
    ATTRIBUTES = "attributes_changed"  # username, e-mail, names or mapped attributes changed in the directory
    MATCHED_USERNAME = "matched_username"  # linked: a Manual user of the same username
    MATCHED_EMAIL = "matched_email"  # linked: the one Manual user of the same e-mail (usernameOrEmail)
    CREATED_BY_ADMIN = "created_by_admin"
    ACTIVATED_BY_ADMIN = "activated_by_admin"
    DEACTIVATED_BY_ADMIN = "deactivated_by_admin"


@dataclass(frozen=True, slots=True)
class UserChange:
    """One user's change in a run: proposed by a dry run, applied by a real one.

    ``fields`` maps the API names of the fields the directory decides to ``[old, new]`` (old is None for a user
    created by the run)."""

    user_id: str
    username: str
    display_name: str
    change: str
    reason: str
    fields: dict[str, list] = field(default_factory=dict)
    group_id: str | None = None  # the group whose worker decided it; None for the run's deactivations at its end
    email_queued: bool = False  # created with an invitation queued (a dry run's emailsQueued)

    def to_api(self) -> dict[str, Any]:
        return {"userId": self.user_id, "username": self.username, "displayName": self.display_name,
                "change": self.change, "reason": self.reason, "fields": {k: list(v) for k, v in self.fields.items()},
                "groupId": self.group_id}


@dataclass(frozen=True)
class HistoryEntry:
    """One change in a user's history, kept on the user's row (newest first)."""

    at: datetime
    run_id: str | None  # None: an administrator in the portal
    trigger: str  # the run's trigger (manual, nightly), or manual for an administrator
    change: str
    reason: str
    fields: dict[str, list] = field(default_factory=dict)
    group_id: str | None = None

    def to_api(self) -> dict[str, Any]:
        return {"at": iso(self.at), "runId": self.run_id, "trigger": self.trigger, "change": self.change,
                "reason": self.reason, "fields": {k: list(v) for k, v in self.fields.items()}, "groupId": self.group_id}


class EmailState:
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"


class InvitationReason:
    """Why an invitation e-mail went out (the ``invited`` history entry's reason)."""

    INVITATION = "invitation"  # the first one, when the user was synced (or a new address's)
    REMINDER = "reminder"  # the subscription's enrollmentReminders
    RESENT_BY_ADMIN = "resent_by_admin"
    REISSUED = "reissued"  # the user asked for a new link with an expired one
    ALL = ("invitation", "reminder", "resent_by_admin", "reissued")


INVITED = "invited"  # the history entry of an invitation sent


@dataclass(frozen=True)
class GroupRef:
    """A directory group as the portal shows it."""

    id: str
    display_name: str
    # Its visibility when it was selected: True for HiddenMembership, None when not known (selected before this was
    # kept). Workers read the visibility again for a group kept hidden or unknown; an empty listing, always.
    hidden_membership: bool | None = None

    def to_api(self) -> dict[str, str]:
        return {"id": self.id, "displayName": self.display_name}


@dataclass(frozen=True)
class NotifyAddress:
    """An address ever put on a subscription's ``notifyEmails``, and whether its owner agreed to get alerts
    (``sync/alert_model.py`` decides; kept after removal so re-adding it neither asks again nor mails it again)."""

    address: str
    state: str  # NotifyState
    nonce: str  # the current confirmation link's; a new one withdraws the old link
    asked_at: datetime  # when the confirmation e-mail was (last) asked for
    listed: bool = True  # on notifyEmails now

    def to_json(self) -> list:
        return [self.address, self.state, self.nonce, iso(self.asked_at), self.listed]

    @classmethod
    def from_json(cls, data: list) -> "NotifyAddress":
        return cls(str(data[0]), str(data[1]), str(data[2]), datetime.fromisoformat(data[3].replace("Z", "+00:00")),
                   bool(data[4]))


class NotifyState:
    PENDING = "pending"
    CONFIRMED = "confirmed"


@dataclass(frozen=True)
class Subscription:
    """A connection of one portal organisation to one Entra tenant ("New Active Directory")."""

    org: str
    id: str
    name: str
    status: str = SubscriptionStatus.AUTHORIZATION_REQUIRED
    azure_tenant_id: str | None = None
    username_attribute: str = "userPrincipalName"
    deactivate_blocked_users: bool = False
    send_enrollment_email: bool = False
    enrollment_reminders: tuple[int, ...] = ()  # days after the first invitation when a reminder goes out
    nightly_sync: bool = True
    link_existing_users: str = "off"  # sync.linking.LINK_MODES: take over Manual users of the same username/e-mail
    groups: tuple[GroupRef, ...] = ()
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)
    active_run_id: str | None = None
    last_run_id: str | None = None
    consent_nonce: str | None = None
    consent_requested_by: str | None = None  # the portal token's ``sub`` that asked for the current consent link
    pending_consent: "PendingConsent | None" = None  # a consent proven by a sign-in, not yet confirmed in the portal
    consented_at: datetime | None = None  # when the last admin consent was proven (its roles may still propagate)
    consented_by: str | None = None  # object id of the admin whose signed sign-in proved the tenant
    deleting: bool = False
    notify_emails: tuple[str, ...] = ()  # admins e-mailed when a run fails or needs review, or consent is lost
    notify_addresses: tuple[NotifyAddress, ...] = ()  # their confirmation; only confirmed ones are e-mailed
    attribute_mapping: AttributeMapping = DEFAULT_MAPPING  # which directory property fills which portal field
    etag: str | None = field(default=None, compare=False)

    @property
    def group_ids(self) -> tuple[str, ...]:
        return tuple(g.id for g in self.groups)


@dataclass(frozen=True)
class PendingConsent:
    """A tenant's admin consent, proven by its admin's signed sign-in, waiting for the portal user who asked for it
    (``requested_by``, of the subscription's org) to confirm it with the single-use code ``code_nonce`` names."""

    tenant_id: str
    admin_object_id: str
    requested_by: str
    code_nonce: str
    expires_at: datetime
    signed_in_at: datetime
    admin_name: str | None = None
    admin_username: str | None = None

    @property
    def tenant_domain(self) -> str | None:
        """The domain of the admin's sign-in name: a verified domain of the tenant (a UPN's suffix must be one)."""
        name = self.admin_username or ""
        domain = name.rpartition("@")[2].strip().lower()
        return domain if "@" in name and domain else None

    def to_json(self) -> dict[str, Any]:
        return {"tenantId": self.tenant_id, "adminObjectId": self.admin_object_id, "requestedBy": self.requested_by,
                "codeNonce": self.code_nonce, "expiresAt": iso(self.expires_at), "signedInAt": iso(self.signed_in_at),
                "adminName": self.admin_name, "adminUsername": self.admin_username}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "PendingConsent":
        return cls(tenant_id=data["tenantId"], admin_object_id=data["adminObjectId"], requested_by=data["requestedBy"],
                   code_nonce=data["codeNonce"], expires_at=_from_iso(data["expiresAt"]),
                   signed_in_at=_from_iso(data["signedInAt"]), admin_name=data.get("adminName"),
                   admin_username=data.get("adminUsername"))


@dataclass(frozen=True)
class Counts:
    """What a run (or one group of it) did to users."""

    created: int = 0
    updated: int = 0
    reactivated: int = 0
    deactivated: int = 0
    unchanged: int = 0
    emailsQueued: int = 0
    linked: int = 0
    skipped: int = 0
    skippedReasons: dict[str, int] = field(default_factory=dict)

    def __add__(self, other: "Counts") -> "Counts":
        reasons = dict(self.skippedReasons)
        for key, value in other.skippedReasons.items():
            reasons[key] = reasons.get(key, 0) + value
        numbers = {f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self) if f.name != "skippedReasons"}
        return Counts(**numbers, skippedReasons=reasons)

    def skip(self, reason: str, n: int = 1) -> "Counts":
        """These counts plus ``n`` items skipped for ``reason``."""
        reasons = dict(self.skippedReasons)
        reasons[reason] = reasons.get(reason, 0) + n
        return replace(self, skipped=self.skipped + n, skippedReasons=reasons)

    def bump(self, name: str, n: int = 1) -> "Counts":
        return replace(self, **{name: getattr(self, name) + n})

    def to_api(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_api(cls, data: dict[str, Any] | None) -> "Counts":
        data = data or {}
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class RunError:
    """One problem recorded on a run."""

    code: str
    message: str
    group_id: str | None = None
    user_id: str | None = None

    def to_api(self) -> dict[str, str]:
        out = {"code": self.code, "message": self.message}
        if self.group_id:
            out["groupId"] = self.group_id
        if self.user_id:
            out["userId"] = self.user_id
        return out

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> "RunError":
        return cls(code=data["code"], message=data["message"], group_id=data.get("groupId"), user_id=data.get("userId"))


class GroupState:
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    FINISHED = frozenset({"done", "failed"})


@dataclass(frozen=True)
class GroupProgress:
    """How far one group of a run has got; a run's counts are the sum over its groups."""

    group_id: str
    state: str = GroupState.PENDING
    segment: int = 0
    counts: Counts = field(default_factory=Counts)
    errors: tuple[RunError, ...] = ()
    errors_dropped: int = 0
    user_count: int = 0
    last_error: str | None = None
    updated_at: datetime = field(default_factory=utcnow)
    finished_at: datetime | None = None
    pages: int = 0  # Graph pages read for this group (all its segments and restarts)
    etag: str | None = field(default=None, compare=False)

    @property
    def finished(self) -> bool:
        return self.state in GroupState.FINISHED


@dataclass(frozen=True)
class Run:
    """One Full Sync of a subscription, manual or nightly."""

    org: str
    subscription_id: str
    id: str
    trigger: str
    status: str
    group_ids: tuple[str, ...]
    started_at: datetime
    finished_at: datetime | None = None
    final_counts: Counts = field(default_factory=Counts)
    errors: tuple[RunError, ...] = ()
    pending_deactivations: int = 0
    updated_at: datetime = field(default_factory=utcnow)
    # The status whose admin alert is owed: written with the terminal transition, cleared once the alert is recorded
    # and queued (sync/alerts.py), so a worker that dies in between leaves it for the redelivery to finish.
    alert_due: str | None = None
    dry_run: bool = False  # reads the directory and decides, but writes no user, membership, invitation or grid row
    etag: str | None = field(default=None, compare=False)
    delta_links: "DeltaLinks | None" = None  # where the next incremental run continues once this one has ended
    # Full Sync: False from writing the run until its group messages are sent; a queued run whose request died in
    # between is found by the next request (or the recovery timer), which sends them (sync/recovery.py).
    jobs_sent: bool = True
    # Incremental run: the change job's message id and delivery count that apply it, the group whose progress row
    # carries the job's change list, and True until the job has applied its plan (the run cannot end before). A
    # later delivery of the same message takes the run over (sync/changes.py).
    job_id: str | None = None
    job_delivery: int = 0
    job_group: str | None = None
    applying: bool = False


@dataclass(frozen=True)
class SegmentChanges:
    """The user changes one segment of a group recorded, by the segment's Graph page (0, 1, …)."""

    group_id: str
    segment: int
    pages: dict[int, tuple[UserChange, ...]] = field(default_factory=dict)

    def __len__(self) -> int:
        return sum(len(p) for p in self.pages.values())


@dataclass(frozen=True)
class RunView:
    """A run with its groups folded in: what the API shows."""

    run: Run
    groups: tuple[GroupProgress, ...]

    MAX_ERRORS = 100

    @property
    def groups_done(self) -> int:
        return sum(1 for g in self.groups if g.finished)

    @property
    def counts(self) -> Counts:
        """Exact once the run has finished (recounted from the users); a running sum of the groups before."""
        if self.run.status in RunStatus.TERMINAL:
            return self.run.final_counts
        total = Counts()
        for g in self.groups:
            total = total + g.counts
        return total

    @property
    def progress(self) -> dict[str, int]:
        """What a portal can draw while the run is in flight: groups, Graph pages and memberships processed so far."""
        processed = 0
        for g in self.groups:
            c = g.counts
            processed += c.created + c.updated + c.reactivated + c.unchanged + c.skipped
        return {"groupsDone": self.groups_done, "groupsTotal": len(self.run.group_ids),
                "pagesRead": sum(g.pages for g in self.groups), "membershipsProcessed": processed}

    @property
    def last_activity(self) -> datetime:
        return max([self.run.updated_at, *(g.updated_at for g in self.groups)])

    @property
    def errors(self) -> list[RunError]:
        errors = list(self.run.errors)
        for g in self.groups:
            errors.extend(g.errors)
        return errors

    def to_api(self) -> dict[str, Any]:
        errors = self.errors
        dropped = sum(g.errors_dropped for g in self.groups) + max(0, len(errors) - self.MAX_ERRORS)
        body: dict[str, Any] = {
            "runId": self.run.id,
            "subscriptionId": self.run.subscription_id,
            "trigger": self.run.trigger,
            "status": self.run.status,
            "dryRun": self.run.dry_run,
            "groupsTotal": len(self.run.group_ids),
            "groupsDone": self.groups_done,
            "counts": self.counts.to_api(),
            # While a run is in flight its counts are per-group sums (a user in three groups counts three times,
            # one joining a group counts as unchanged): only the recount at the end is final. Progress is true.
            "countsFinal": self.run.status in RunStatus.TERMINAL,
            "progress": self.progress,
            "errors": [e.to_api() for e in errors[: self.MAX_ERRORS]],
            "errorsTruncated": dropped,
            "startedAt": iso(self.run.started_at),
            "finishedAt": iso(self.run.finished_at),
        }
        if self.run.status == RunStatus.NEEDS_REVIEW:
            body["pendingDeactivations"] = self.run.pending_deactivations
        return body


@dataclass(frozen=True)
class User:
    """A portal user: synced from a directory (AdSync) or managed by hand (Manual)."""

    org: str
    id: str
    username: str
    email: str | None
    display_name: str
    given_name: str | None = None
    surname: str | None = None
    status: str = UserStatus.ACTIVE
    status_reason: str | None = None
    source_type: str = SourceType.MANUAL
    phone: str | None = None  # E.164
    department: str | None = None
    job_title: str | None = None
    employee_id: str | None = None
    office_location: str | None = None
    custom_attributes: dict[str, str] = field(default_factory=dict, hash=False)
    subscription_id: str | None = None
    azure_object_id: str | None = None
    group_ids: frozenset[str] = frozenset()
    enrollment_email: str | None = None
    enrollment_email_lease_until: datetime | None = None
    enrollment_email_sent_at: datetime | None = None
    enrollment_email_error: str | None = None
    enrolled_at: datetime | None = None
    # The invitation's lifecycle (sync/invitation_lifecycle.py): when the first one was sent (reminders count from
    # it), how many reminders went out, when the next one is due, the last link's expiry, why the pending (or last)
    # invitation was queued, and when it was queued (the least interval between two invitations counts from it).
    invited_at: datetime | None = None
    reminders_sent: int = 0
    next_reminder_at: datetime | None = None
    invitation_expires_at: datetime | None = None
    invitation_reason: str | None = None
    invitation_queued_at: datetime | None = None
    last_run_id: str | None = None
    last_change: str | None = None
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)
    history: tuple[HistoryEntry, ...] = ()  # newest first; capped and pruned (decisions.with_history)
    etag: str | None = field(default=None, compare=False)

    def to_api(self, group_names: dict[str, str]) -> dict[str, Any]:
        """The API's User; ``group_names`` maps the ids of currently selected groups to their names."""
        groups = sorted(
            ({"id": gid, "displayName": group_names[gid]} for gid in self.group_ids if gid in group_names),
            key=lambda g: g["displayName"].lower(),
        )
        return {
            "id": self.id,
            "username": self.username,
            "email": self.email,
            "displayName": self.display_name,
            "givenName": self.given_name,
            "surname": self.surname,
            "phone": self.phone,
            "department": self.department,
            "jobTitle": self.job_title,
            "employeeId": self.employee_id,
            "officeLocation": self.office_location,
            "customAttributes": dict(self.custom_attributes),
            "status": self.status,
            "statusReason": self.status_reason,
            "sourceType": self.source_type,
            "subscriptionId": self.subscription_id,
            "azureObjectId": self.azure_object_id,
            "groups": groups,
            "enrollmentEmailSentAt": iso(self.enrollment_email_sent_at),
            "enrolledAt": iso(self.enrolled_at),
            "invitation": {
                "status": self.enrollment_email or "none",
                "sentAt": iso(self.enrollment_email_sent_at),
                "remindersSent": self.reminders_sent,
                "nextReminderAt": iso(self.next_reminder_at) if self.enrolled_at is None else None,
                "expiresAt": iso(self.invitation_expires_at),
                "lastError": self.enrollment_email_error,
            },
            "createdAt": iso(self.created_at),
            "updatedAt": iso(self.updated_at),
        }


@dataclass(frozen=True)
class SyncedGroup:
    """A row of the Groups grid."""

    org: str
    subscription_id: str
    id: str
    display_name: str
    user_count: int
    last_synced_at: datetime | None

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "displayName": self.display_name,
            "subscriptionId": self.subscription_id,
            "userCount": self.user_count,
            "lastSyncedAt": iso(self.last_synced_at),
        }


@dataclass(frozen=True, slots=True)
class MemberState:
    """The part of a stored user a group worker compares with the directory (read cheaply, for whole groups)."""

    id: str
    username: str
    email: str | None
    display_name: str
    given_name: str | None
    surname: str | None
    status: str
    status_reason: str | None
    enrollment_email: str | None
    last_run_id: str | None
    last_change: str | None
    phone: str | None = None
    department: str | None = None
    job_title: str | None = None
    employee_id: str | None = None
    office_location: str | None = None
    custom_attributes: dict[str, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True, slots=True)
class ScopeState:
    """What a run's finalizer needs of each synced user: status, last change, and membership of the run's groups.

    ``other_groups``: the row still holds memberships of groups outside the run's (groups since deselected)."""

    id: str
    status: str
    source_type: str
    enrollment_email: str | None
    last_run_id: str | None
    last_change: str | None
    group_ids: frozenset[str]
    other_groups: bool = False
    username: str = ""
    display_name: str = ""


@dataclass(frozen=True)
class DirectoryUser:
    """A user as Microsoft Graph returns it (only the properties we select)."""

    id: str
    display_name: str | None
    user_principal_name: str | None
    mail: str | None = None
    given_name: str | None = None
    surname: str | None = None
    account_enabled: bool | None = True
    on_premises_sam_account_name: str | None = None
    employee_id: str | None = None
    user_type: str | None = "Member"
    # Every other property Graph returned, flattened by attribute_mapping.flatten ({"employeeOrgData/division": …}).
    properties: dict[str, str] = field(default_factory=dict, hash=False)

    def value(self, source: str) -> str | None:
        """The raw value of a mapping's source (a Graph property, or ``parent/member`` of a complex one)."""
        core = {"id": self.id, "displayName": self.display_name, "userPrincipalName": self.user_principal_name,
                "mail": self.mail, "givenName": self.given_name, "surname": self.surname,
                "onPremisesSamAccountName": self.on_premises_sam_account_name, "employeeId": self.employee_id,
                "userType": self.user_type}
        return core[source] if source in core else self.properties.get(source)

    def attribute(self, name: str) -> str | None:
        """The value of a Graph property by its Graph name (the username attributes)."""
        value = {
            "userPrincipalName": self.user_principal_name,
            "mail": self.mail,
            "onPremisesSamAccountName": self.on_premises_sam_account_name,
            "employeeId": self.employee_id,
        }[name]
        return value.strip() if isinstance(value, str) and value.strip() else None


MEMBER_READ_HIDDEN = "Member.Read.Hidden"  # the application permission that lists hidden-membership groups' members


@dataclass(frozen=True)
class DirectoryGroup:
    """A group as Microsoft Graph returns it."""

    id: str
    display_name: str
    description: str | None = None
    mail: str | None = None
    visibility: str | None = None  # Public, Private, or HiddenMembership (members listed only to Member.Read.Hidden)

    @property
    def hidden_membership(self) -> bool:
        return (self.visibility or "").lower() == "hiddenmembership"

    def membership_readable(self, granted: Collection[str]) -> bool:
        """Can an app holding the application permissions ``granted`` list this group's members?"""
        return not self.hidden_membership or MEMBER_READ_HIDDEN in granted

    def to_api(self, granted: Collection[str] | None = None) -> dict[str, Any]:
        """As the portal shows it; with ``granted``, also whether a sync can read its members."""
        shown: dict[str, Any] = {"id": self.id, "displayName": self.display_name, "description": self.description,
                                 "mail": self.mail}
        if granted is not None:
            shown["membershipReadable"] = self.membership_readable(granted)
        return shown


@dataclass(frozen=True)
class UserPage:
    """One page of a group's transitive user members and the link to the next page."""

    users: list[DirectoryUser]
    next_link: str | None


@dataclass(frozen=True)
class GroupJob:
    """The Service Bus message for one group of one run (or a continuation of a large group)."""

    org: str
    subscription_id: str
    run_id: str
    group_id: str
    segment: int = 0
    next_link: str | None = None
    attempt: int = 0  # copies scheduled while a fresh consent propagates (distinct ids: duplicate detection)
    restarts: int = 0  # times the group's listing started again from its first page (an expired page token)

    @property
    def message_id(self) -> str:
        base = f"{self.run_id}:{self.group_id}:{self.segment}"
        return f"{base}:wait{self.attempt}" if self.attempt else base

    def to_json(self) -> str:
        return json.dumps(
            {"org": self.org, "subscriptionId": self.subscription_id, "runId": self.run_id,
             "groupId": self.group_id, "segment": self.segment, "nextLink": self.next_link, "attempt": self.attempt,
             "restarts": self.restarts},
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> "GroupJob":
        data = json.loads(text)
        return cls(org=str(data["org"]), subscription_id=str(data["subscriptionId"]), run_id=str(data["runId"]),
                   group_id=str(data["groupId"]), segment=int(data.get("segment", 0)), next_link=data.get("nextLink"),
                   attempt=int(data.get("attempt", 0)), restarts=int(data.get("restarts", 0)))


@dataclass(frozen=True)
class SignIn:
    """An admin's Microsoft sign-in whose id_token was verified: the tenant it proves and the directory roles held."""

    tenant_id: str
    object_id: str
    directory_roles: tuple[str, ...]  # role template ids (the id_token's wids)
    username: str | None = None  # preferred_username: the admin's sign-in name (UPN)
    display_name: str | None = None  # name


@dataclass(frozen=True)
class EnrollmentJob:
    """The Service Bus message asking the mailer to invite one newly synced user."""

    org: str
    user_id: str
    run_id: str | None = None
    attempt: int = 0  # retries after the relay refused for a while
    to: str = ""  # a new address's invitation (its digest, ``decisions.address_tag``): a message id of its own
    tag: str = ""  # a re-queue of an invitation whose first message is gone: a message id of its own

    @property
    def message_id(self) -> str:
        """Deterministic, so duplicate detection drops a first send retried after a lost answer; a new address, a
        retry or a re-queue differs (Service Bus drops any message whose id it saw within the window, scheduled ones
        too). At most 128 characters, as Service Bus allows: a longer one is hashed."""
        text = f"enroll:{self.org}:{self.user_id}"
        if self.to:
            text += f":{self.to}"
        if self.attempt:
            text += f":retry{self.attempt}"
        if self.tag:
            text += f":{self.tag}"
        if len(text) > 128:
            text = "enroll:" + hashlib.sha256(text.encode()).hexdigest()[:48]
        return text

    def to_json(self) -> str:
        data = {"org": self.org, "userId": self.user_id, "runId": self.run_id, "attempt": self.attempt}
        if self.to:
            data["to"] = self.to
        if self.tag:
            data["tag"] = self.tag
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> "EnrollmentJob":
        data = json.loads(text)
        return cls(org=str(data["org"]), user_id=str(data["userId"]), run_id=data.get("runId"),
                   attempt=int(data.get("attempt") or 0), to=str(data.get("to") or ""),
                   tag=str(data.get("tag") or ""))


class Trigger:
    MANUAL = "manual"
    NIGHTLY = "nightly"
    CHANGE_NOTIFICATION = "change_notification"


@dataclass(frozen=True)
class ChangeJob:
    """The Service Bus message asking for an incremental run of a subscription: apply what changed in the tenant."""

    org: str
    subscription_id: str
    trigger: str  # change_notification or nightly
    requested_at: datetime
    attempt: int = 0  # copies rescheduled while another run of the subscription was busy
    lifecycle: tuple[str, ...] = ()  # "<event>:<watch id>" of Graph lifecycle notifications to act on

    @property
    def message_id(self) -> str:
        return f"changes:{self.org}:{self.subscription_id}:{int(self.requested_at.timestamp() * 1000)}:{self.attempt}"

    def to_json(self) -> str:
        return json.dumps({"org": self.org, "subscriptionId": self.subscription_id, "trigger": self.trigger,
                           "requestedAt": self.requested_at.isoformat(), "attempt": self.attempt,
                           "lifecycle": list(self.lifecycle)}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> "ChangeJob":
        data = json.loads(text)
        requested = datetime.fromisoformat(str(data["requestedAt"]))
        if requested.tzinfo is None:
            raise ValueError("requestedAt needs a time zone")
        return cls(org=str(data["org"]), subscription_id=str(data["subscriptionId"]), trigger=str(data["trigger"]),
                   requested_at=requested, attempt=int(data.get("attempt") or 0),
                   lifecycle=tuple(str(e) for e in data.get("lifecycle") or ()))


@dataclass(frozen=True)
class Watch:
    """A Microsoft Graph subscription (change notifications) on the ``users`` or ``groups`` of a connected tenant.

    Only a hash of its ``clientState`` secret is kept: a notification proves itself by presenting the secret."""

    id: str  # Graph's subscription id
    org: str
    subscription_id: str
    tenant_id: str
    resource: str  # users or groups
    client_state_hash: str
    expires_at: datetime
    etag: str | None = field(default=None, compare=False)
    # A hash of the notification URL Graph delivers to (it carries the function key): when NOTIFICATION_URL changes
    # (a redeploy or a rotated key), the renewal timer moves the watch. None: recorded before URLs were (move it).
    url_hash: str | None = None


@dataclass(frozen=True)
class DeltaState:
    """Where the subscription's incremental sync continues: Graph delta links for users and groups, valid for the
    group selection they were taken with."""

    org: str
    subscription_id: str
    users_link: str
    groups_link: str
    group_ids: tuple[str, ...]
    taken_at: datetime  # when the links' state was read (a change job requested before it is covered)
    etag: str | None = field(default=None, compare=False)
    mapping_tag: str = ""  # the attribute mapping the links select for (AttributeMapping.tag)


@dataclass(frozen=True)
class DeltaLinks:
    """The delta links of a moment: taken before a Full Sync reads members, or returned by the last delta page."""

    users_link: str
    groups_link: str
    mapping_tag: str = ""  # the attribute mapping whose properties the users link selects (AttributeMapping.tag)


@dataclass(frozen=True)
class GroupChange:
    """What a group delta says about one group: its own removal, and its members added or removed since."""

    id: str
    removed: bool = False
    users_added: frozenset[str] = frozenset()
    users_removed: frozenset[str] = frozenset()
    groups_changed: frozenset[str] = frozenset()  # nested groups added or removed


@dataclass(frozen=True)
class DirectoryChanges:
    """Everything the tenant's delta reported since the subscription's links, with the links to continue from."""

    users_changed: frozenset[str]
    users_removed: frozenset[str]
    groups: dict[str, GroupChange]
    links: DeltaLinks
