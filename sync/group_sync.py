"""The group worker: sync one group's members (or, in a dry run, decide and write nothing), then fan in.

Every step is safe to repeat: user ids are derived from the Azure object id, rows are created with
"insert" (never blind overwrite) and updated conditionally on their ETag, memberships are separate
properties merged per group, and a run's terminal transition is ETag-guarded (``run_end``).

Each change a segment makes is recorded once, by the worker whose write the store accepted, and stored with the
segment's progress in one transaction (one row per Graph page). A redelivered or rescheduled segment may find its
own earlier writes already made: it reads them back from the users' history (which the same write carried), so the
change list it records is the one the first delivery would have.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace
from typing import AsyncIterator, Callable

from . import events, invitations, subscriptions
from .composition import Services
from .concurrency import optimistic
from .decisions import (
    Change,
    Desired,
    Skip,
    Stamp,
    address_tag,
    change_of,
    change_record,
    consent_propagation_left,
    desired_user,
    fingerprint,
    history_entry_of,
    new_user,
    propagation_wait,
    recovered_record,
    reinvited,
    synced_user_id,
    throttled_wait,
    updated_user,
    username_claim,
)
from .errors import (
    AuthorizationLost,
    CredentialInvalid,
    InvalidInput,
    NotFound,
    PageTokenExpired,
    PermissionMissing,
    PreconditionFailed,
    Transient,
)
from .links import Known, Linked, Linker, Taken
from .logs import get_logger
from .model import (
    MEMBER_READ_HIDDEN,
    Counts,
    DirectoryUser,
    EmailState,
    EnrollmentJob,
    GroupJob,
    GroupProgress,
    GroupState,
    MemberState,
    Run,
    RunError,
    RunStatus,
    SegmentChanges,
    SourceType,
    Subscription,
    SubscriptionStatus,
    SyncedGroup,
    User,
    UserChange,
    UserPage,
    UserStatus,
)
from .ports import Created, Exists, Stale, Updated, UsernameTaken
from .preview import RunLedger
from .run_end import finalize

log = get_logger(__name__)

MAX_ERRORS_PER_GROUP = 50
MAX_STALE_ROUNDS = 6
MAX_SCHEDULED_WAITS = 20  # scheduled copies of one segment waiting out throttling; then redelivery as usual
MAX_LISTING_RESTARTS = 3


async def handle_group_job(svc: Services, job: GroupJob, *, redelivered: bool = False) -> None:
    """Sync one segment of one group of a run. Raises on transient failure so Service Bus redelivers."""
    ctx = {"org": job.org, "subscription": job.subscription_id, "run": job.run_id, "group": job.group_id,
           "segment": job.segment}
    run = await svc.runs.get(job.org, job.subscription_id, job.run_id)
    progress = await svc.runs.get_group(job.org, job.subscription_id, job.run_id, job.group_id)
    if run is None or progress is None:
        log.warning("group job for an unknown run or group: dropped", extra=ctx)
        return
    if progress.finished or run.status in RunStatus.TERMINAL:
        await finalize(svc, job.org, job.subscription_id, job.run_id)
        return
    if job.segment < progress.segment:
        log.info("superseded segment redelivered: dropped", extra=ctx)
        return
    sub = await svc.subscriptions.get(job.org, job.subscription_id)
    if sub is None or sub.deleting:
        await fail_group(svc, job, "subscription_deleted", "the subscription was deleted during the run")
        return
    if sub.status != SubscriptionStatus.AUTHORIZED:
        await fail_group(svc, job, "consent_revoked", "the directory no longer grants access (admin consent revoked)")
        return
    await _mark_running(svc, run)
    segment = _Segment(svc, sub, run, job, progress, redelivered)
    try:
        await segment.execute()
    except AuthorizationLost as exc:
        left = consent_propagation_left(sub.consented_at, svc.clock(), svc.settings.consent_propagation_grace_s)
        if exc.may_be_propagating and left > 0:
            # A fresh consent still replicating: try this segment again later, as a scheduled copy, rather than by
            # redelivery (which would spend the message's deliveries in seconds). The window bounds the waiting,
            # not a count of copies: only once it has passed does the same answer mean consent lost.
            await _retry_later(svc, job, propagation_wait(job.attempt, left), f"consent_propagating: {exc.message}",
                               ctx)
            return
        await subscriptions.mark_consent_revoked(svc, job.org, job.subscription_id, run_id=job.run_id)
        await fail_group(svc, job, "consent_revoked", "Microsoft Graph refused access: the tenant's admin consent was revoked",
                         changes=segment.recorded())
    except CredentialInvalid as exc:
        await fail_group(svc, job, "credential_invalid", exc.message, changes=segment.recorded())
    except PermissionMissing as exc:
        await fail_group(svc, job, exc.code, exc.message, changes=segment.recorded())
    except NotFound:
        await fail_group(svc, job, "group_not_found", f"group {job.group_id} no longer exists in the directory",
                         changes=segment.recorded())
    except InvalidInput as exc:
        await fail_group(svc, job, exc.code, exc.message, changes=segment.recorded())
    except Transient as exc:
        wait = throttled_wait(exc.retry_after)
        if wait is not None and job.attempt < MAX_SCHEDULED_WAITS:
            # Graph asked for a long pause: honour it with a scheduled copy of this segment (its own message id),
            # instead of sleeping in the function or spending a delivery on an immediate redelivery.
            await _retry_later(svc, job, wait, f"throttled: {exc.message}", ctx)
            return
        await _note_error(svc, job, f"{type(exc).__name__}: {exc.message[:300]}")
        raise
    except Exception as exc:
        # Transient or unexpected: note why on the group, then let Service Bus redeliver (and in the end dead-letter).
        await _note_error(svc, job, f"{type(exc).__name__}: {getattr(exc, 'message', str(exc))[:300]}")
        raise
    log.info("group segment synced", extra=ctx)


async def _retry_later(svc: Services, job: GroupJob, delay: float, why: str, ctx: dict) -> None:
    """Note why on the group and schedule a copy of this segment (its own message id) ``delay`` seconds later."""
    await _note_error(svc, job, f"{why}; retrying in {delay:.0f} s")
    await svc.queue.send_group_jobs([replace(job, attempt=job.attempt + 1)], delay_s=delay)
    log.info("group segment rescheduled", extra={**ctx, "delay_s": delay, "why": why[:100]})


async def handle_dead_lettered_group_job(svc: Services, job: GroupJob, reason: str | None) -> None:
    """A group message gave up after its last delivery: the group fails, so the run ends instead of hanging."""
    progress = await svc.runs.get_group(job.org, job.subscription_id, job.run_id, job.group_id)
    why = (progress.last_error if progress else None) or reason or "unknown error"
    await fail_group(svc, job, "group_sync_failed",
                     f"group {job.group_id} could not be synced after repeated attempts: {why}")


async def _mark_running(svc: Services, run: Run) -> None:
    if run.status != RunStatus.QUEUED:
        return
    try:
        await svc.runs.save(replace(run, status=RunStatus.RUNNING, updated_at=svc.clock()))
    except PreconditionFailed:  # another group got there first, or the request recorded its messages as sent

        async def running(current: Run) -> Run | None:
            return replace(current, status=RunStatus.RUNNING, updated_at=svc.clock()) \
                if current.status == RunStatus.QUEUED else None

        await optimistic(lambda: svc.runs.get(run.org, run.subscription_id, run.id), running, svc.runs.save)


@dataclass(frozen=True, slots=True)
class _Known:
    """A group member as the snapshot keeps it: small, since a group can have 100,000 members."""

    fingerprint: bytes
    created_by_this_run: bool  # may be an earlier attempt's creation it never reported: read it in full
    invitation_queued: bool  # queued by this run (re-queued if this delivery is a redelivery)
    invitation_stuck: bool = False  # an earlier run's invitation still claimed ("sending"): its sender may have died
    changed_by_this_run: bool = False  # updated by this run: maybe by an earlier delivery of this segment

    @classmethod
    def of(cls, member: MemberState, run_id: str) -> "_Known":
        this_run = member.last_run_id == run_id
        return cls(fingerprint(member), this_run and member.last_change == Change.CREATED,
                   this_run and member.enrollment_email == EmailState.QUEUED,
                   not this_run and member.enrollment_email == EmailState.SENDING,
                   this_run and member.last_change in (Change.UPDATED, Change.REACTIVATED, Change.DEACTIVATED,
                                                       Change.LINKED))


@dataclass
class _Segment:
    """One message's worth of a group: a bounded number of Graph pages, then done or a continuation."""

    svc: Services
    sub: Subscription
    run: Run
    job: GroupJob
    progress: GroupProgress
    redelivered: bool
    counts: Counts = field(default_factory=Counts)
    errors: list[RunError] = field(default_factory=list)
    dropped: int = 0
    seen: set[str] = field(default_factory=set)
    snapshot: dict[str, "_Known"] = field(default_factory=dict)
    invitations: list[EnrollmentJob] = field(default_factory=list)
    refused_mail: set[str] = field(default_factory=set)
    pages_read: int = 0
    changes: dict[int, list[UserChange]] = field(default_factory=dict)  # by page of this segment
    page_no: int = 0
    earlier: set[str] = field(default_factory=set)  # users the group's earlier segments saw (recorded there)
    ledger: RunLedger | None = None  # a dry run's stand-in for the store (sync/preview.py)
    recovered: list[User] = field(default_factory=list)  # written by a lost attempt: their events recorded again
    linker: Linker | None = None  # linked users (they kept their own id) and the Manual users that may be linked
    ids: dict[str, str] = field(default_factory=dict)  # object id → user id of the linked users (the link index)

    @property
    def org(self) -> str:
        return self.job.org

    @property
    def dry(self) -> bool:
        return self.run.dry_run

    @property
    def recovering(self) -> bool:
        """An earlier delivery of this segment may have written (a redelivery, or a scheduled copy)."""
        return self.redelivered or self.job.attempt > 0

    def stamp(self) -> Stamp:
        return Stamp.of(self.run.id, self.run.trigger, self.svc.clock(), self.svc.settings.history_retention_days)

    def note(self, change: UserChange) -> None:
        self.changes.setdefault(self.page_no, []).append(change)

    def recorded(self) -> SegmentChanges:
        """The changes this segment recorded so far, as stored with its progress."""
        return SegmentChanges(self.job.group_id, self.job.segment,
                              {page: tuple(listed) for page, listed in self.changes.items()})

    async def execute(self) -> None:
        svc, job = self.svc, self.job
        if job.segment == 0:  # once a listing (its later segments continue it; finish() checks an empty one again)
            await self.refuse_unreadable_membership(trust_selection=True)
        self.linker = Linker(svc, self.sub)
        self.ids = await self.linker.index()  # one query; the same dict the linker keeps up to date
        self.snapshot = {m.id: _Known.of(m, self.run.id)
                         async for m in svc.users.group_members(job.org, job.subscription_id, job.group_id)}
        if job.segment > 0:  # (read here rather than at the end: the same rows, and a restart needs them)
            self.earlier = await svc.runs.load_seen(job.org, job.subscription_id, job.run_id, job.group_id, job.segment)

        started = time.monotonic()
        source = svc.directory.group_user_pages(self.sub.azure_tenant_id, job.group_id, job.next_link,
                                                select=self.sub.attribute_mapping.graph_select()).__aiter__()
        ahead: asyncio.Future | None = asyncio.ensure_future(_next_or_none(source))
        try:
            await self._pages(source, ahead, started)
        except PageTokenExpired:
            await self.start_over()
        except AuthorizationLost:
            # Graph may refuse a hidden group's member list (403) rather than list nobody: the group lacks the
            # permission, the consent is not lost. Reading the group tells (a consent really lost refuses that too).
            await self.refuse_if_hidden()
            raise

    async def _pages(self, source: AsyncIterator[UserPage], ahead: asyncio.Future | None, started: float) -> None:
        svc = self.svc
        pages = 0
        try:
            while ahead is not None:
                page = await ahead
                ahead = None
                if page is None:
                    break
                pages += 1
                self.pages_read += 1
                self.page_no = pages - 1
                # Fetch the next page while this one is written, unless this segment ends with this page: then the
                # follow-up message reads it (a page fetched here would be read twice). A segment cut by its time
                # budget (minutes, rare) drops the page it read ahead; the follow-up reads it again.
                last_of_segment = pages >= svc.settings.max_pages_per_message
                if page.next_link and not last_of_segment:
                    ahead = asyncio.ensure_future(_next_or_none(source))
                await self.apply(page.users)
                over_budget = time.monotonic() - started > svc.settings.segment_time_budget_s
                if page.next_link and (last_of_segment or over_budget):
                    await self.continue_later(page.next_link)
                    return
        finally:
            if ahead is not None and not ahead.done():
                ahead.cancel()
                await asyncio.gather(ahead, return_exceptions=True)
        await self.finish()

    async def apply(self, users: list[DirectoryUser]) -> None:
        """Write what changed for one page of directory users."""
        wanted: dict[str, Desired] = {}
        absent: list[str] = []  # not (yet) members of this group
        reread: list[str] = []  # stored users that need a full read to decide
        flags: list[str] = []  # unchanged users that only join this group
        for du in users:
            desired = desired_user(du, self.sub, self.svc.settings.default_phone_region)
            uid = self.ids.get(du.id) or synced_user_id(self.org, self.sub.id, du.id)
            if isinstance(desired, Skip):
                if uid in self.snapshot:  # keep the existing row and its membership; only report
                    self.seen.add(uid)
                self.skip(desired.code, desired.message, user_id=uid if uid in self.snapshot else None)
                continue
            if uid in wanted:
                continue
            if desired.email_refused:
                self.refused_mail.add(uid)
                self.report("invalid_mail", f"{desired.display_name} ({du.id}) has a mail that is not exactly one "
                            "e-mail address: synced without e-mail, no invitation", user_id=uid)
            if desired.phone_refused:
                self.report("invalid_phone", f"{desired.display_name} ({du.id}) has a {self.sub.attribute_mapping.source('phone')} "
                            "that is not a valid phone number: synced without phone", user_id=uid)
            wanted[uid] = desired
            known = self.snapshot.get(uid)
            if known is None and du.id in self.ids:  # a linked row, not (yet) of this group
                if self.svc.recent.known(self.run.id, uid) == fingerprint(desired):
                    self.unchanged(uid, flags, in_group=False, invitation_queued=False)  # linked by this process
                else:
                    reread.append(uid)
            elif known is None:
                absent.append(uid)
            elif known.fingerprint == fingerprint(desired) and (uid in self.earlier or not (
                    known.created_by_this_run or (known.changed_by_this_run and self.recovering))):
                self.unchanged(uid, flags, in_group=True, invitation_queued=known.invitation_queued)
                if known.invitation_stuck:  # the mailer takes the claim over once its lease ran out
                    # A message id of its own (this run's): the first one's may still be in the duplicate-detection
                    # window, where Service Bus would accept this re-queue and drop it.
                    self.invitations.append(EnrollmentJob(self.org, uid, self.run.id, tag=f"requeue:{self.run.id}"))
            else:
                reread.append(uid)
        if self.dry:
            if absent and self.linker is not None and self.linker.on:
                absent = await self.preview_links(absent, wanted, flags)
            await self.preview(absent, reread, wanted, flags)
            return
        if absent and self.linker is not None and self.linker.on:
            absent = await self.link(absent, wanted, reread, flags)
        updates: list[tuple[User, Desired]] = []
        await self.create_or_join(absent, wanted, updates, flags, reread)
        if reread:
            stored = await self.svc.users.get_many(self.org, reread)
            gone = [uid for uid in reread if uid not in stored]
            for uid in reread:
                if uid in stored:
                    self.decide(stored[uid], wanted[uid], updates, flags)
            if gone:  # deleted meanwhile (the subscription is being released): create anew, never resurrect blindly
                await self.create(gone, wanted, updates, flags)
        await self.update(updates, wanted, flags)
        if self.recovered:  # the lost attempt may have died before it recorded their events (the log dedupes)
            await events.users_written(self.svc, self.recovered)
            self.recovered = []
        if flags:
            await self.svc.users.add_membership(self.org, flags, self.job.group_id, self.run.group_ids)
            self.seen.update(flags)

    async def link(self, absent: list[str], wanted: dict[str, Desired], reread: list[str],
                   flags: list[str]) -> list[str]:
        """Link the users new to this group who are existing Manual users (``sync.links``); the rest, to create."""
        assert self.linker is not None
        by_oid = {wanted[uid].azure_object_id: uid for uid in absent}
        group = frozenset({self.job.group_id})
        outcomes = await self.linker.resolve({oid: wanted[uid] for oid, uid in by_oid.items()},
                                             dict.fromkeys(by_oid, group), self.stamp())
        rest: list[str] = []
        for oid, uid in by_oid.items():
            outcome = outcomes.get(oid)
            if outcome is None:
                rest.append(uid)
                continue
            desired = wanted.pop(uid)
            if isinstance(outcome, Linked):
                self.svc.recent.remember(self.run.id, outcome.user.id, fingerprint(outcome.user))
                self.seen.add(outcome.user.id)
                self.counts = self.counts.bump(Change.LINKED)
                self.note(outcome.record)
            elif isinstance(outcome, Known):  # linked by another worker or an earlier delivery: a stored user
                wanted[outcome.user_id] = desired
                if self.svc.recent.known(self.run.id, outcome.user_id) == fingerprint(desired):
                    self.unchanged(outcome.user_id, flags, in_group=False, invitation_queued=False)
                else:
                    reread.append(outcome.user_id)
            elif isinstance(outcome, Taken):
                self.conflict(outcome.user, outcome.outcome)
            else:
                self.skip(outcome.code, outcome.message)
        return rest

    async def preview_links(self, absent: list[str], wanted: dict[str, Desired], flags: list[str]) -> list[str]:
        """A dry run's ``link``: the links it would make, written nowhere (the run's ledger says who takes which
        username, and which group records the link); the rest go on to ``preview``."""
        assert self.linker is not None
        if self.ledger is None:
            self.ledger = await self.svc.previews.of(self.run.id, lambda: self.svc.users.username_claims(self.org))
        ledger, group = self.ledger, self.job.group_id
        by_oid = {wanted[uid].azure_object_id: uid for uid in absent if uid not in ledger.existing}
        outcomes = await self.linker.preview({oid: wanted[uid] for oid, uid in by_oid.items()},
                                             dict.fromkeys(by_oid, frozenset({group})), self.stamp())
        rest = [uid for uid in absent if uid in ledger.existing]
        for oid, uid in by_oid.items():
            outcome = outcomes.get(oid)
            if outcome is None:
                rest.append(uid)
                continue
            if isinstance(outcome, Skip):
                self.skip(outcome.code, outcome.message)
                continue
            user = outcome.user
            renamed = outcome.record.fields.get("username")
            holder = ledger.claim(user.id, user.username, renamed[0]) if renamed else None
            if holder is not None:
                self.conflict(user, UsernameTaken(*holder))
            elif not ledger.take(user.id, group):  # another group of this run records (would make) the link
                self.unchanged(user.id, flags, in_group=False, invitation_queued=False)
            else:
                self.seen.add(user.id)
                self.counts = self.counts.bump(Change.LINKED)
                self.note(outcome.record)
        return rest

    async def create_or_join(self, absent: list[str], wanted: dict[str, Desired], updates: list, flags: list[str],
                             reread: list[str]) -> None:
        """Create users new to this group, unless another worker of this process already wrote or is writing them."""
        if not absent:
            return
        recent = self.svc.recent
        mine, known, waiting = recent.reserve(self.run.id, absent)
        joining: list[str] = []  # users another worker of this run wrote as wanted: only their membership is new
        for uid, stored in known.items():
            self.join_or_reread(uid, stored, wanted, joining, reread)
        # Their membership merges touch rows that exist and rows the creates below do not: send them meanwhile.
        merging = asyncio.ensure_future(self.join(joining))
        try:
            await self.create(mine, wanted, updates, flags)
        finally:
            for uid in mine:  # anything not settled by an outcome: waiters find out for themselves
                recent.settle(self.run.id, uid, None)
            await merging
        if waiting:
            retry: list[str] = []
            for uid, stored in zip(waiting, await asyncio.gather(*waiting.values())):
                if stored is None:
                    retry.append(uid)
                else:
                    self.join_or_reread(uid, stored, wanted, flags, reread)
            await self.create(retry, wanted, updates, flags)

    async def join(self, uids: list[str]) -> None:
        if uids:
            await self.svc.users.add_membership(self.org, uids, self.job.group_id, self.run.group_ids)
            self.seen.update(uids)

    def join_or_reread(self, uid: str, stored: bytes, wanted: dict[str, Desired], flags: list[str],
                       reread: list[str]) -> None:
        if stored == fingerprint(wanted[uid]):
            self.unchanged(uid, flags, in_group=False, invitation_queued=False)
        else:
            reread.append(uid)

    async def preview(self, absent: list[str], reread: list[str], wanted: dict[str, Desired], flags: list[str]) -> None:
        """A dry run's page: the decisions ``apply`` would write, with the run's ledger standing in for the store (who
        exists, which usernames are taken, which group records a change), and nothing written."""
        if not absent and not reread:  # every member as the store has it (a preview of an unchanged directory)
            self.seen.update(flags)
            return
        if self.ledger is None:  # read once per run and process, when first needed
            self.ledger = await self.svc.previews.of(self.run.id, lambda: self.svc.users.username_claims(self.org))
        ledger, group, stamp = self.ledger, self.job.group_id, self.stamp()
        stored_ids = [uid for uid in absent if uid in ledger.existing] + reread
        for uid in absent:
            if uid not in ledger.existing:
                self.preview_new(uid, wanted[uid], stamp, flags)
        stored = await self.svc.users.get_many(self.org, stored_ids) if stored_ids else {}
        for uid in stored_ids:
            if uid not in stored:  # deleted meanwhile: it would be created anew
                self.preview_new(uid, wanted[uid], stamp, flags)
                continue
            existing, desired = stored[uid], wanted[uid]
            if existing.source_type != SourceType.AD_SYNC or existing.subscription_id != self.sub.id:
                self.skip("managed_manually", f"{existing.username} is now managed in the portal and is not "
                          "overwritten", user_id=existing.id)
                continue
            in_group = group in existing.group_ids
            if change_of(existing, desired) == Change.UNCHANGED:
                self.unchanged(uid, flags, in_group=in_group, invitation_queued=False)
                continue
            user = updated_user(existing, desired, group, self.run.group_ids, stamp)
            holder = (ledger.claim(uid, user.username, existing.username)
                      if username_claim(user.username) != username_claim(existing.username) else None)
            if holder is not None:  # as ``update`` meets it: reported, and the user keeps (or joins) the group
                self.conflict(user, UsernameTaken(*holder))
                if in_group:
                    self.seen.add(uid)
                else:
                    flags.append(uid)
            elif not ledger.take(uid, group):  # another group of this run records (would write) the change
                self.unchanged(uid, flags, in_group=in_group, invitation_queued=False)
            else:
                self.seen.add(uid)
                self.counts = self.counts.bump(user.last_change)
                self.note(change_record(existing, user, user.last_change, group))
        self.seen.update(flags)

    def preview_new(self, uid: str, desired: Desired, stamp: Stamp, flags: list[str]) -> None:
        """A dry run meets a user with no row: it would be created, unless its username is taken, or another group of
        the run creates it (then this group would only add its membership)."""
        assert self.ledger is not None
        user = new_user(self.org, self.sub, desired, self.job.group_id, stamp)
        holder = self.ledger.claim(uid, user.username)
        if holder is not None:
            self.conflict(user, UsernameTaken(*holder))
        elif not self.ledger.take(uid, self.job.group_id):
            self.unchanged(uid, flags, in_group=False, invitation_queued=False)
        else:
            self.created(user)

    async def create(self, uids: list[str], wanted: dict[str, Desired], updates: list, flags: list[str]) -> None:
        """Insert users with their username claims; one that exists already is decided like any stored user."""
        if not uids:
            return
        stamp = self.stamp()
        creates = [new_user(self.org, self.sub, wanted[uid], self.job.group_id, stamp) for uid in uids]
        await invitations.expect(self.svc, creates)
        taken: list[tuple[User, UsernameTaken]] = []
        for user, outcome in zip(creates, await self.svc.users.create(creates)):
            if isinstance(outcome, Created):
                self.svc.recent.settle(self.run.id, user.id, fingerprint(user))
                self.created(outcome.user)
            elif isinstance(outcome, Exists):
                self.svc.recent.settle(self.run.id, user.id, fingerprint(outcome.user))
                self.decide(outcome.user, wanted[user.id], updates, flags)
            else:
                taken.append((user, outcome))
        if not taken:
            return
        # The username's holder may be this very directory object, linked meanwhile by another worker (it kept its
        # own id): the claim is what serializes a link and a creation; then it is a stored user like any other.
        holders = await self.svc.users.get_many(self.org, [o.owner_id for _, o in taken])
        for user, outcome in taken:
            holder = holders.get(outcome.owner_id)
            if holder is not None and holder.subscription_id == self.sub.id and \
                    holder.azure_object_id == user.azure_object_id and holder.source_type == SourceType.AD_SYNC:
                self.ids[user.azure_object_id or ""] = holder.id
                wanted[holder.id] = wanted[user.id]
                self.decide(holder, wanted[holder.id], updates, flags)
            else:
                self.conflict(user, outcome)

    def unchanged(self, uid: str, flags: list[str], *, in_group: bool, invitation_queued: bool) -> None:
        self.counts = self.counts.bump("unchanged")
        if in_group:
            self.seen.add(uid)
        else:
            flags.append(uid)
        if invitation_queued and self.redelivered:
            # A crash between creating users and queueing their invitations: queue again (the mailer dedupes). The
            # first send's id on purpose: had that send been accepted, its message is still there (duplicate
            # detection drops this copy) or was taken (the claim moved the user off "queued").
            self.invitations.append(EnrollmentJob(self.org, uid, self.run.id))

    def decide(self, existing: User, desired: Desired, updates: list, flags: list[str]) -> None:
        """Sort a stored user into: unchanged (maybe only joining this group), or to update."""
        if self.created_by_a_lost_attempt(existing, desired):
            self.recovered.append(existing)
            self.created(existing)  # report it as that attempt would have
            return
        if existing.source_type != SourceType.AD_SYNC or existing.subscription_id != self.sub.id:
            self.skip("managed_manually", f"{existing.username} is now managed in the portal and is not overwritten",
                      user_id=existing.id)
            return
        if change_of(existing, desired) == Change.UNCHANGED:
            if self.changed_by_a_lost_attempt(existing):
                return
            queued = existing.enrollment_email == EmailState.QUEUED and existing.last_run_id == self.run.id
            self.unchanged(existing.id, flags, in_group=self.job.group_id in existing.group_ids,
                           invitation_queued=queued)
        else:
            updates.append((existing, desired))

    def changed_by_a_lost_attempt(self, user: User) -> bool:
        """Did an earlier delivery of this segment update ``user`` and die (or lose its answer) before recording it?
        Then the user's history holds that delivery's entry: report and record the change as it would have."""
        if not self.recovering or user.id in self.seen or user.id in self.earlier or user.last_run_id != self.run.id:
            return False
        entry = history_entry_of(user, self.run.id, self.job.group_id)
        if entry is None or entry.change == Change.CREATED:
            return False
        self.seen.add(user.id)
        self.recovered.append(user)
        self.counts = self.counts.bump(entry.change)
        self.note(recovered_record(user, entry))
        return True

    async def update(self, updates: list[tuple[User, Desired]], wanted: dict[str, Desired], flags: list[str]) -> None:
        rounds = 0
        while updates:
            rounds += 1
            stamp = self.stamp()
            changes = [(updated_user(u, d, self.job.group_id, self.run.group_ids, stamp), u.username)
                       for u, d in updates]
            outcomes = await self.svc.users.update(changes)
            stale: list[str] = []
            for (user, old_name), (existing, _), outcome in zip(changes, updates, outcomes):
                if isinstance(outcome, Updated):
                    self.seen.add(user.id)
                    self.svc.recent.remember(self.run.id, user.id, fingerprint(user))
                    self.counts = self.counts.bump(user.last_change)
                    self.note(change_record(existing, user, user.last_change, self.job.group_id))
                    if reinvited(existing, user):  # a corrected address of a user not enrolled yet
                        self.invitations.append(EnrollmentJob(self.org, user.id, self.run.id,
                                                              to=address_tag(user.email)))
                elif isinstance(outcome, Stale):
                    stale.append(outcome.user_id)
                else:
                    self.conflict(user, outcome)
                    if self.job.group_id not in existing.group_ids:
                        flags.append(existing.id)
                    else:
                        self.seen.add(existing.id)
            updates = []
            if stale:
                if rounds >= MAX_STALE_ROUNDS:
                    raise PreconditionFailed("users kept changing under the worker; retrying the message")
                fresh = await self.svc.users.get_many(self.org, stale)
                for uid in stale:
                    if uid in fresh:
                        self.decide(fresh[uid], wanted[uid], updates, flags)

    def created(self, user: User) -> None:
        self.seen.add(user.id)
        self.counts = self.counts.bump("created")
        self.note(change_record(None, user, Change.CREATED, self.job.group_id))
        if user.enrollment_email == EmailState.QUEUED:
            self.counts = self.counts.bump("emailsQueued")
            self.invitations.append(EnrollmentJob(self.org, user.id, self.run.id))
        elif (user.enrollment_email is None and self.sub.send_enrollment_email and user.status == UserStatus.ACTIVE
              and user.id not in self.refused_mail):  # a refused mail was reported as invalid_mail already
            self.skip("no_email_address", f"{user.username} has no e-mail address; no invitation sent", user_id=user.id)

    def created_by_a_lost_attempt(self, user: User, desired: Desired) -> bool:
        """Did an earlier attempt of this segment create ``user`` and then die (or lose its answer) before recording it?

        Such a row names this run as its creator and this group in its history (other groups of the run merge their
        own membership in when they meet the user), and the progress row holds no report of it: only one attempt's
        report is ever merged, so reporting it again counts it once."""
        if user.id in self.seen or user.id in self.earlier or user.last_run_id != self.run.id \
                or user.last_change != Change.CREATED or change_of(user, desired) != Change.UNCHANGED:
            return False
        entry = history_entry_of(user, self.run.id, self.job.group_id)
        if user.history:
            return entry is not None and entry.change == Change.CREATED
        return user.group_ids == frozenset({self.job.group_id})  # a row written before histories existed

    def conflict(self, user: User, outcome: UsernameTaken) -> None:
        self.skip("username_conflict",
                  f"{user.display_name} ({user.azure_object_id}) maps to username '{user.username}', "
                  f"which user {outcome.owner_username} ({outcome.owner_id}) already has",
                  user_id=user.id)

    def skip(self, code: str, message: str, user_id: str | None = None) -> None:
        self.counts = self.counts.skip(code)
        self.report(code, message, user_id)

    def report(self, code: str, message: str, user_id: str | None = None) -> None:
        """An error on the run's report (the user may still be synced)."""
        if len(self.errors) < MAX_ERRORS_PER_GROUP:
            self.errors.append(RunError(code, message, group_id=self.job.group_id, user_id=user_id))
        else:
            self.dropped += 1

    async def flush_invitations(self) -> None:
        if self.dry:  # a dry run sends nothing; its counts say what it would have queued
            self.invitations = []
            return
        if self.invitations:
            await self.svc.queue.send_enrollment_jobs(self.invitations)
            self.invitations = []

    async def refuse_unreadable_membership(self, *, trust_selection: bool = False) -> None:
        """Fail the group (``hidden_membership``) when Graph will not list its members to us: its membership is hidden
        and the tenant does not grant Member.Read.Hidden. Graph then lists nobody (or answers 403), and an empty list
        would end every membership of the group; with the permission, an empty list is an empty group.

        ``trust_selection``: a group that was not hidden when selected is not read again (no Graph request before
        each listing); if it has become hidden since, its listing is empty or refused, and both are checked again.
        """
        if MEMBER_READ_HIDDEN in await self.svc.directory.granted_permissions(self.sub.azure_tenant_id):
            return
        selected = next((g for g in self.sub.groups if g.id == self.job.group_id), None)
        if trust_selection and selected is not None and selected.hidden_membership is False:
            return
        await self.refuse_if_hidden()

    async def refuse_if_hidden(self) -> None:
        """Raise PermissionMissing (``hidden_membership``) if the group's membership is hidden (its visibility)."""
        job = self.job
        found = await self.svc.directory.get_groups(self.sub.azure_tenant_id, [job.group_id], interactive=False)
        group = found.get(job.group_id)
        if group is not None and group.hidden_membership:
            raise PermissionMissing(f"group {group.display_name or job.group_id} hides its membership (visibility "
                                    f"HiddenMembership) and Microsoft Graph lists its members only to an app granted "
                                    f"{MEMBER_READ_HIDDEN}: grant that application permission and consent again, or "
                                    "deselect the group", code="hidden_membership")

    async def start_over(self) -> None:
        """Graph refused the page token: read the group again from its first page, in a new segment.

        What this and earlier segments saw is kept (they were members when read; the union only ever keeps a member
        one run longer), the writes already made are idempotent, and after MAX_LISTING_RESTARTS the group fails.
        """
        job = self.job
        if job.restarts >= MAX_LISTING_RESTARTS:
            raise InvalidInput(f"Microsoft Graph's page tokens for group {job.group_id} expired {job.restarts + 1} times "
                               "before its listing could finish", code="page_token_expired")
        log.warning("page token expired; the group's listing starts again", extra={
            "org": job.org, "subscription": job.subscription_id, "run": job.run_id, "group": job.group_id,
            "segment": job.segment, "restarts": job.restarts + 1})
        await self.continue_later(None, restarts=job.restarts + 1)

    async def continue_later(self, next_link: str | None, *, restarts: int | None = None) -> None:
        """Hand the rest of a large group to a follow-up message so no execution runs too long."""
        job, svc = self.job, self.svc
        await self.flush_invitations()
        await svc.runs.save_seen(job.org, job.subscription_id, job.run_id, job.group_id, job.segment, self.seen)
        follow = replace(job, segment=job.segment + 1, next_link=next_link, attempt=0,
                         restarts=job.restarts if restarts is None else restarts)
        await svc.queue.send_group_jobs([follow])

        def advance(p: GroupProgress) -> GroupProgress | None:
            if p.finished or p.segment > job.segment:
                return None
            return replace(p, state=GroupState.RUNNING, segment=follow.segment, counts=p.counts + self.counts,
                           pages=p.pages + self.pages_read,
                           errors=(p.errors + tuple(self.errors))[:MAX_ERRORS_PER_GROUP],
                           errors_dropped=p.errors_dropped + self.dropped + max(0, len(p.errors) + len(self.errors) - MAX_ERRORS_PER_GROUP),
                           updated_at=svc.clock())

        await update_progress(svc, job, advance, self.recorded())

    async def finish(self) -> None:
        """Last page done: drop memberships that ended, record the group, and fan in."""
        job, svc = self.job, self.svc
        await self.flush_invitations()
        seen = self.seen | self.earlier
        if not seen:  # the permission (or the visibility) may have changed since this group's listing started
            await self.refuse_unreadable_membership()
        now = svc.clock()
        if self.dry:  # the run's end compares what every group saw with the stored users
            await svc.runs.save_seen(job.org, job.subscription_id, job.run_id, job.group_id, job.segment, self.seen)
        else:
            left = [uid for uid in self.snapshot if uid not in seen]
            if left:  # the membership property is removed, not set false: a row must not keep what it no longer is
                await svc.users.remove_memberships(job.org, left, set(self.run.group_ids) - {job.group_id})
            names = {g.id: g.display_name for g in self.sub.groups}
            await svc.groups.save(SyncedGroup(job.org, job.subscription_id, job.group_id,
                                              names.get(job.group_id, job.group_id), len(seen), now))

        def complete(p: GroupProgress) -> GroupProgress | None:
            if p.finished or p.segment > job.segment:
                return None
            return replace(p, state=GroupState.DONE, counts=p.counts + self.counts, pages=p.pages + self.pages_read,
                           errors=(p.errors + tuple(self.errors))[:MAX_ERRORS_PER_GROUP],
                           errors_dropped=p.errors_dropped + self.dropped + max(0, len(p.errors) + len(self.errors) - MAX_ERRORS_PER_GROUP),
                           user_count=len(seen), last_error=None, updated_at=now, finished_at=now)

        await update_progress(svc, job, complete, self.recorded())
        await finalize(svc, job.org, job.subscription_id, job.run_id)


async def update_progress(svc: Services, job: GroupJob, change: Callable[[GroupProgress], GroupProgress | None],
                          changes: SegmentChanges | None = None) -> None:
    """Apply ``change`` to the group's progress row with optimistic concurrency; None means nothing to do. The
    segment's user ``changes`` are written with it (and not at all when there is nothing to do)."""

    async def read() -> GroupProgress | None:
        return await svc.runs.get_group(job.org, job.subscription_id, job.run_id, job.group_id)

    async def apply(current: GroupProgress) -> GroupProgress | None:
        return change(current)

    async def write(new: GroupProgress) -> GroupProgress:
        return await svc.runs.save_group(job.org, job.subscription_id, job.run_id, new, changes or None)

    await optimistic(read, apply, write)


async def fail_group(svc: Services, job: GroupJob, code: str, message: str,
                     changes: SegmentChanges | None = None) -> None:
    """Mark a group failed (the run will fail and deprovision nobody) and fan in; ``changes``: what the failing
    segment had already written."""
    now = svc.clock()

    def failed(p: GroupProgress) -> GroupProgress | None:
        if p.finished:
            return None
        return replace(p, state=GroupState.FAILED, errors=p.errors + (RunError(code, message, group_id=job.group_id),),
                       updated_at=now, finished_at=now)

    await update_progress(svc, job, failed, changes)
    log.warning("group failed", extra={"org": job.org, "subscription": job.subscription_id, "run": job.run_id,
                                       "group": job.group_id, "code": code})
    await finalize(svc, job.org, job.subscription_id, job.run_id)


async def _note_error(svc: Services, job: GroupJob, text: str) -> None:
    def note(p: GroupProgress) -> GroupProgress | None:
        return None if p.finished else replace(p, last_error=text, updated_at=svc.clock())

    try:
        await update_progress(svc, job, note)
    except Exception:  # best effort: the original error is what matters and is re-raised by the caller
        log.warning("could not record a group's error", exc_info=True)


async def _next_or_none(pages):
    """The next item of an async iterator, or None at its end (a StopAsyncIteration cannot cross a Future)."""
    try:
        return await pages.__anext__()
    except StopAsyncIteration:
        return None
