"""Near-real-time sync: Graph change notifications start incremental runs that apply the tenant's delta.

The sequence:
1. A Full Sync takes delta links to the tenant's current state before it reads any member (``runs.start``); when it
   ends without failure those links become the subscription's DeltaState, and Graph subscriptions (watches) on
   ``users`` and ``groups`` are created if NOTIFICATION_URL is set (``after_run``).
2. Graph posts a notification to the webhook; ``receive`` checks each one against the secret of the watch it names
   and queues one ChangeJob per subscription (never any Graph work in the webhook).
3. ``handle_change_job`` reads the delta since the stored links and applies it as a run (trigger
   ``change_notification``; the nightly timer queues the same job with trigger ``nightly``): changed users are read
   again by id, users whose memberships changed have their groups read (``member_of``), users removed from the
   directory lose their memberships; the run's finalizer then counts, guards and deprovisions as for a Full Sync.
   A nested group gaining or losing a group re-reads the selected groups above it in full (group jobs). A delta link
   Graph no longer knows, a changed selection, or more changes than INCREMENTAL_MAX_OBJECTS make it a Full Sync,
   and the run says why. Without Member.Read.Hidden, Graph hides the members of a hidden-membership group from the
   delta and leaves the group out of ``transitiveMemberOf``: an incremental run then keeps every stored membership
   of such a selected group as it is (never ends one, never deprovisions for it) and leaves the group to Full Syncs,
   which fail it (``hidden_membership``) until the permission is granted.
4. A timer renews watches before they expire, recreates lost ones and drops those of subscriptions that are gone
   (sync/watching.py, with the delta links' promotion after a run).
"""
from __future__ import annotations

import hashlib
import hmac
from dataclasses import replace
from datetime import timedelta
from typing import Any

from . import events, recovery, runs, subscriptions
from . import invitations as pending_invitations
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
    new_user,
    propagation_wait,
    recovered_record,
    reinvited,
    synced_user_id,
    throttled_wait,
    updated_user,
)
from .errors import (
    AuthorizationLost,
    Conflict,
    CredentialInvalid,
    DeltaExpired,
    InvalidInput,
    NotFound,
    PreconditionFailed,
    SyncError,
    Transient,
)
from .inputs import loads_json
from .links import Known, Linked, Linker, Taken
from .logs import get_logger
from .model import (
    MEMBER_READ_HIDDEN,
    Caller,
    ChangeJob,
    DeltaLinks,
    DeltaState,
    DirectoryChanges,
    DirectoryUser,
    EmailState,
    EnrollmentJob,
    GroupJob,
    GroupProgress,
    GroupState,
    Run,
    RunError,
    RunStatus,
    SegmentChanges,
    SourceType,
    Subscription,
    SubscriptionStatus,
    SyncedGroup,
    Trigger,
    User,
    UserChange,
    Watch,
)
from .ports import Created, Exists, Stale, Updated
from .run_end import finalize
from .watching import client_state_hash, ensure_watches

log = get_logger(__name__)

MAX_NOTIFICATIONS = 1000  # per POST; Graph batches far fewer
MAX_WATCH_IDS = 200  # distinct subscriptionIds per POST: each unknown one costs a table read
MAX_VALIDATION_TOKEN = 1024
BUSY_RETRY_S = 5.0
BUSY_RETRIES = 120  # ten minutes of a busy subscription, then the next notification or the nightly takes over
MAX_THROTTLED_WAITS = 20  # copies of a job (busy ones included) waiting out Graph's Retry-After; then redelivery
MAX_STALE_ROUNDS = 5
SYSTEM = "directory-changes"


# ---------------------------------------------------------------- the webhook


def validation_echo(token: str) -> str:
    """Graph's validation handshake: the token comes back as sent (text/plain), or the URL is refused."""
    if not token or len(token) > MAX_VALIDATION_TOKEN or any(ord(c) < 32 for c in token):
        raise InvalidInput("validationToken is not one Microsoft Graph sends", code="invalid_validation_token")
    return token


async def receive(svc: Services, body: bytes) -> dict[str, int]:
    """Notifications Graph posted: each must name a watch we hold and present its secret; anything else is ignored
    (no Graph call, nothing queued). One job per subscription, however many notifications name it."""
    try:
        data = loads_json(body)  # refuses a lone surrogate ("\ud800") and JSON nested 1,000 deep
        items = data["value"]
        if not isinstance(items, list):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise InvalidInput("the body is not a change notification collection", code="invalid_notification") from None
    if len(items) > MAX_NOTIFICATIONS:
        raise InvalidInput(f"at most {MAX_NOTIFICATIONS} notifications per request", code="invalid_notification")
    named = {item.get("subscriptionId") for item in items
             if isinstance(item, dict) and isinstance(item.get("subscriptionId"), str)}
    if len(named) > MAX_WATCH_IDS:
        raise InvalidInput(f"at most {MAX_WATCH_IDS} distinct subscriptionIds per request",
                           code="invalid_notification")
    watches: dict[str, Watch | None] = {}
    jobs: dict[tuple[str, str], ChangeJob] = {}
    ignored = 0
    now = svc.clock()
    for item in items:
        watch = await _proven_watch(svc, item, watches)
        if watch is None:
            ignored += 1
            continue
        lifecycle = item.get("lifecycleEvent")
        key = (watch.org, watch.subscription_id)
        job = jobs.get(key) or ChangeJob(watch.org, watch.subscription_id, Trigger.CHANGE_NOTIFICATION, now)
        if lifecycle in ("reauthorizationRequired", "subscriptionRemoved"):
            job = replace(job, lifecycle=tuple(sorted({*job.lifecycle, f"{lifecycle}:{watch.id}"})))
        jobs[key] = job
    if jobs:
        await svc.queue.send_change_jobs(list(jobs.values()), delay_s=svc.settings.change_debounce_s)
    if ignored:
        log.warning("change notifications ignored (unknown subscription or wrong clientState)",
                    extra={"ignored": ignored, "accepted": len(items) - ignored})
    return {"accepted": len(items) - ignored, "ignored": ignored, "queued": len(jobs)}


async def _proven_watch(svc: Services, item: Any, cache: dict[str, Watch | None]) -> Watch | None:
    if not isinstance(item, dict):
        return None
    watch_id, state = item.get("subscriptionId"), item.get("clientState")
    if not isinstance(watch_id, str) or not isinstance(state, str) or not watch_id or len(watch_id) > 64:
        return None
    if watch_id not in cache:
        cache[watch_id] = await svc.watches.get(watch_id) if svc.watches else None
    watch = cache[watch_id]
    if watch is None or not hmac.compare_digest(client_state_hash(state), watch.client_state_hash):
        return None
    tenant = item.get("tenantId")
    if tenant is not None and tenant != watch.tenant_id:
        return None
    return watch


async def _lifecycle(svc: Services, sub: Subscription, job: ChangeJob) -> None:
    """Graph asked to reauthorize (renew now) or removed a watch (subscribe again); the delta covers what was missed."""
    for event in job.lifecycle:
        name, _, watch_id = event.partition(":")
        watch = await svc.watches.get(watch_id)
        if watch is None or watch.subscription_id != sub.id:
            continue
        try:
            if name == "reauthorizationRequired":
                lifetime = timedelta(hours=svc.settings.watch_lifetime_hours)
                expires = await svc.changes.renew(watch.tenant_id, watch.id, svc.clock() + lifetime)
                await svc.watches.save(replace(watch, expires_at=expires))
            else:
                await svc.watches.delete(watch.id)
                await ensure_watches(svc, sub)
        except NotFound:
            await svc.watches.delete(watch.id)
            await ensure_watches(svc, sub)


# ---------------------------------------------------------------- incremental runs


async def handle_change_job(svc: Services, job: ChangeJob, *, again: bool = True, delivery: int = 1) -> None:
    """Apply what changed since the subscription's delta links, as a run.

    Graph's refusals are decided as for a group job: inside the window after a consent, an answer that may be the
    consent still propagating reschedules the job; outside it, consent is lost (the subscription is marked, nobody
    is deprovisioned); our own credential refused ends the job with one error log (redelivering cannot fix it); a
    long Retry-After reschedules the job instead of spending its deliveries. Raises on other transient failures
    so Service Bus redelivers. ``delivery`` is the message's delivery count: a later delivery of the message that
    started a run takes that run over (the earlier one died, or lost its lock)."""
    sub = await svc.subscriptions.get(job.org, job.subscription_id)
    if sub is None or sub.deleting or sub.status != SubscriptionStatus.AUTHORIZED or not sub.groups:
        return
    if svc.changes is None or svc.watches is None:
        return
    ctx = {"org": sub.org, "subscription": sub.id, "trigger": job.trigger, "attempt": job.attempt}
    try:
        await _incremental(svc, sub, job, again, delivery)
    except AuthorizationLost as exc:
        wait = _propagation_wait(svc, sub, job, exc)
        if wait is not None:
            await _retry_later(svc, job, wait, f"consent_propagating: {exc.message}", ctx)
            return
        await subscriptions.mark_consent_revoked(svc, sub.org, sub.id)
    except CredentialInvalid as exc:
        log.error("change job ended: the app's own Microsoft credential is refused; renew it (the next "
                  "notification or the nightly run applies the changes)", extra={**ctx, "error": exc.message[:300]})
    except Transient as exc:
        wait = throttled_wait(exc.retry_after)
        if wait is None or job.attempt >= MAX_THROTTLED_WAITS:
            raise
        await _retry_later(svc, job, wait, f"throttled: {exc.message}", ctx)


def _propagation_wait(svc: Services, sub: Subscription, job: ChangeJob, exc: AuthorizationLost) -> float | None:
    """How long to wait for a consent that may still be propagating; None: outside its window, consent is lost."""
    left = consent_propagation_left(sub.consented_at, svc.clock(), svc.settings.consent_propagation_grace_s)
    return propagation_wait(job.attempt, left) if exc.may_be_propagating and left > 0 else None


async def _retry_later(svc: Services, job: ChangeJob, delay: float, why: str, ctx: dict) -> None:
    """A copy of the job (its own message id) ``delay`` seconds later."""
    await svc.queue.send_change_jobs([replace(job, attempt=job.attempt + 1)], delay_s=delay)
    log.info("change job rescheduled", extra={**ctx, "delay_s": delay, "why": why[:100]})


async def _incremental(svc: Services, sub: Subscription, job: ChangeJob, again: bool, delivery: int = 1) -> None:
    """Read the delta, plan, and (with something to write) reserve the subscription and apply the plan as a run."""
    if job.lifecycle:
        try:
            await _lifecycle(svc, sub, job)
        except SyncError as exc:
            log.warning("a Graph subscription's lifecycle event could not be handled",
                        extra={"org": sub.org, "subscription": sub.id, "code": exc.code})
    state = await svc.watches.get_delta(sub.org, sub.id)
    own = await _own_run(svc, sub, job, delivery)
    if own is not None:
        await _take_over(svc, sub, job, own, state)
        return
    if sub.active_run_id and await recovery.settle_active_run(svc, sub.org, sub.id) == "ended":
        state = await svc.watches.get_delta(sub.org, sub.id)  # the run that ended moved the links on
    if state is not None and job.requested_at < state.taken_at:
        return  # a run that started after this notification already read what it announced
    notice = None
    if state is None:
        if job.trigger != Trigger.NIGHTLY:
            return  # no Full Sync has run yet: nothing to continue from (the admin's first sync reads everything)
        notice = RunError("full_sync_required", "no delta state yet: this nightly run is a Full Sync")
    elif set(state.group_ids) != set(sub.group_ids):
        notice = RunError("selection_changed", "the selected groups changed since the last sync: this run is a "
                                               "Full Sync")
    elif state.mapping_tag != sub.attribute_mapping.tag():
        # Every synced user may change, and the delta links select (track) other properties: read everyone again.
        notice = RunError("mapping_changed", "the attribute mapping changed since the last sync: this run is a "
                                             "Full Sync")
    if notice is not None:
        await _full_sync(svc, sub, job, notice)
        return
    now = svc.clock()
    # Reading and planning hold nothing (a notification about nothing synced must not make an admin's approval or
    # Full Sync meet 409); only a plan with something to write reserves the subscription.
    try:
        changes = await svc.changes.read_changes(sub.azure_tenant_id, DeltaLinks(state.users_link, state.groups_link),
                                                 svc.settings.incremental_max_objects)
    except DeltaExpired:
        await _full_sync(svc, sub, job, RunError("delta_expired", "Microsoft Graph no longer knew this subscription's "
                                                                  "delta link (older than 7 days, or reset): this run "
                                                                  "is a Full Sync"))
        return
    if changes is None:
        await _full_sync(svc, sub, job, RunError(
            "incremental_too_large", f"more than {svc.settings.incremental_max_objects} directory objects changed: "
                                     "this run is a Full Sync"))
        return
    plan = await _plan(svc, sub, changes)
    if plan.empty and job.trigger != Trigger.NIGHTLY:
        # Nothing in the synced scope changed: no run to show, only the links move on (unless a run moved them).
        try:
            await svc.watches.save_delta(replace(state, users_link=changes.links.users_link,
                                                 groups_link=changes.links.groups_link, taken_at=now))
        except PreconditionFailed:
            pass
        return
    if plan.too_many(svc.settings.incremental_max_objects):
        await _full_sync(svc, sub, job, RunError(
            "incremental_too_large", f"more than {svc.settings.incremental_max_objects} users are affected: this run "
                                     "is a Full Sync"))
        return
    caller = Caller(org=sub.org, subject=SYSTEM, role="Owner")
    run_id = runs.new_run_id(now)
    try:
        sub = await runs.reserve(svc, caller, sub.id, run_id)
    except Conflict as exc:
        if exc.code == "sync_in_progress":
            await _later(svc, job)
        return
    run = Run(org=sub.org, subscription_id=sub.id, id=run_id, trigger=job.trigger, status=RunStatus.RUNNING,
              group_ids=sub.group_ids, started_at=now, updated_at=now,
              delta_links=replace(changes.links, mapping_tag=state.mapping_tag),
              job_id=job.message_id, job_delivery=delivery, applying=True,
              job_group=next((g for g in sub.group_ids if g not in plan.resync), None))
    current = await svc.watches.get_delta(sub.org, sub.id)
    if current is None or current.etag != state.etag or set(sub.group_ids) != set(state.group_ids):
        # A run ended since the plan was read and left newer links (or the selection changed): decide again from
        # them — this notification may be covered by now.
        await runs.release_subscription(svc, run, remember=False)
        if again:
            await handle_change_job(svc, job, again=False)
        else:
            await _later(svc, job)
        return
    now = svc.clock()
    progress = [GroupProgress(group_id=g, state=GroupState.PENDING if g in plan.resync else GroupState.DONE,
                              updated_at=now, finished_at=None if g in plan.resync else now)
                for g in sub.group_ids]
    try:
        run = await svc.runs.add(run, progress)
    except BaseException:
        await runs.release_subscription(svc, run, remember=False)
        raise
    log.info("incremental run started", extra={"org": sub.org, "subscription": sub.id, "run": run.id,
                                               "trigger": job.trigger, "users": len(plan.users),
                                               "removed": len(plan.removed), "regroup": len(plan.resync)})
    await _carry_out(svc, sub, run, plan, sorted(plan.resync), delivery)


async def _carry_out(svc: Services, sub: Subscription, run: Run, plan: "_Plan", resync: list[str], delivery: int,
                     *, recovering: bool = False) -> None:
    """Apply the plan, hand the groups to read again to their workers, say the job is done, and end the run if
    nothing else works on it."""
    try:
        await _apply(svc, sub, run, plan, recovering=recovering)
        if resync:
            await svc.queue.send_group_jobs([GroupJob(sub.org, sub.id, run.id, g) for g in resync])
        await _applied(svc, run)
    except BaseException as exc:
        # The job's redelivery takes the run over (its writes are idempotent). When none comes (the last delivery,
        # or a failure the job settles itself: consent lost, our credential refused, a throttled job rescheduled as
        # a copy of its own) the run ends failed (nothing deprovisioned) and frees the subscription.
        if not _comes_back(svc, exc, delivery):
            await runs.fail_run(svc, run, RunError("incremental_interrupted", "applying the directory's changes "
                                                                              "failed; the next run applies them"))
        raise
    await finalize(svc, sub.org, sub.id, run.id)


def _comes_back(svc: Services, exc: BaseException, delivery: int) -> bool:
    """Will Service Bus deliver this very message again after ``exc`` (so that delivery takes the run over)?"""
    if delivery >= svc.settings.max_delivery_count or isinstance(exc, (AuthorizationLost, CredentialInvalid)):
        return False
    return not (isinstance(exc, Transient) and throttled_wait(exc.retry_after) is not None)


async def _applied(svc: Services, run: Run) -> None:
    """The change job has applied its plan: from now on, the run ends when its groups have."""

    async def done(current: Run) -> Run | None:
        return replace(current, applying=False, updated_at=svc.clock()) if current.applying else None

    await optimistic(lambda: svc.runs.get(run.org, run.subscription_id, run.id), done, svc.runs.save)


async def _own_run(svc: Services, sub: Subscription, job: ChangeJob, delivery: int) -> Run | None:
    """The subscription's active run, if an earlier delivery of this very message started it and did not end it:
    that delivery died (or lost its lock), so this one takes the run over (recorded, so only one does)."""
    if not sub.active_run_id:
        return None
    run = await svc.runs.get(sub.org, sub.id, sub.active_run_id)
    if run is None or run.job_id != job.message_id:
        return None

    async def take(current: Run) -> Run | None:
        if current.status not in RunStatus.ACTIVE or current.job_delivery >= delivery:
            return None
        return replace(current, job_delivery=delivery, updated_at=svc.clock())

    return await optimistic(lambda: svc.runs.get(sub.org, sub.id, run.id), take, svc.runs.save)


async def _take_over(svc: Services, sub: Subscription, job: ChangeJob, run: Run, state: DeltaState | None) -> None:
    """Carry on the run an earlier delivery of this message started: apply the plan again from the same links (the
    writes are idempotent; what that delivery wrote is listed from the users' histories, its invitations queued
    again), send the groups still unfinished to their workers again (same message ids), and end the run."""
    ctx = {"org": sub.org, "subscription": sub.id, "run": run.id, "delivery": run.job_delivery}
    log.warning("incremental run taken over by a redelivery of its change job", extra=ctx)
    view = await svc.runs.view(sub.org, sub.id, run.id)
    unfinished = sorted(g.group_id for g in view.groups if not g.finished) if view else []
    if not run.applying:
        await _carry_out(svc, sub, run, _Plan(), unfinished, run.job_delivery, recovering=True)
        return
    plan = None
    if state is not None and set(state.group_ids) == set(sub.group_ids):
        try:
            changes = await svc.changes.read_changes(sub.azure_tenant_id,
                                                     DeltaLinks(state.users_link, state.groups_link),
                                                     svc.settings.incremental_max_objects)
        except DeltaExpired:
            changes = None
        plan = await _plan(svc, sub, changes) if changes is not None else None
    if plan is None or plan.too_many(svc.settings.incremental_max_objects):
        # Nothing to continue from: the run ends failed and this job decides again (a Full Sync, as a first one would).
        await runs.fail_run(svc, run, RunError("incremental_interrupted", "applying the directory's changes was "
                                                                          "interrupted; the next run applies them"))
        fresh = await svc.subscriptions.get(sub.org, sub.id)
        if fresh is not None:
            await _incremental(svc, fresh, job, False, 0)
        return
    # Groups the run hands to workers are those it started with; a group newer changes touch is the next run's (the
    # run's links are the first delivery's, so the next run reads those changes again).
    plan.resync &= set(unfinished)
    await _carry_out(svc, sub, run, plan, unfinished, run.job_delivery, recovering=True)


async def handle_dead_lettered_change_job(svc: Services, job: ChangeJob, reason: str | None) -> None:
    """A change job that gave up after its last delivery (or expired): a failed run says so and alerts the admins,
    as a group job that gives up fails its run, instead of the changes going unapplied without a trace.

    A run this job started and left applying ends failed (nothing is deprovisioned), so the subscription is free at
    once; a run it started that went on to its group workers ends as they do. A job that started no run gets a
    failed run of its own, whose id follows from the job, so a redelivered dead letter finds the run it already
    failed. The next change notification or the nightly run applies the changes."""
    sub = await svc.subscriptions.get(job.org, job.subscription_id)
    if sub is None or sub.deleting:
        return
    error = RunError("changes_not_applied", f"the directory's changes announced at {job.requested_at.isoformat()} "
                                            f"could not be applied ({reason or 'repeated failures'}); the next change "
                                            "notification or the nightly run applies them")
    for run_id in (sub.active_run_id, sub.last_run_id):
        own = await svc.runs.get(sub.org, sub.id, run_id) if run_id else None
        if own is not None and own.job_id == job.message_id:  # this job's run: told already, or ending as it should
            if own.applying and own.status in RunStatus.ACTIVE:
                await runs.fail_run(svc, own, RunError("incremental_interrupted", "applying the directory's changes "
                                                       "failed on every delivery; the next run applies them"))
            return
    run_id = _given_up_run_id(job)
    run = await svc.runs.get(sub.org, sub.id, run_id)
    if run is None:
        run = await svc.runs.add(Run(org=sub.org, subscription_id=sub.id, id=run_id, trigger=job.trigger,
                                     status=RunStatus.RUNNING, group_ids=sub.group_ids, started_at=job.requested_at,
                                     updated_at=svc.clock()), [])
    await runs.fail_run(svc, run, error, release=False)
    # The portal's last sync becomes this failure unless a newer run has ended since (run ids sort newest first).
    await runs.release_subscription(svc, run, remember=sub.last_run_id is None or run_id < sub.last_run_id)
    log.warning("change job gave up: its run failed", extra={"org": sub.org, "subscription": sub.id, "run": run_id,
                                                              "reason": reason})


def _given_up_run_id(job: ChangeJob) -> str:
    """A run id as runs.new_run_id makes them (newest first), fixed by the job: its request time and message id."""
    inverted = 10**13 - int(job.requested_at.timestamp() * 1000)
    return f"{inverted:013d}-{hashlib.sha256(job.message_id.encode()).hexdigest()[:8]}"


async def _later(svc: Services, job: ChangeJob) -> None:
    if job.attempt >= BUSY_RETRIES:
        log.info("change job dropped: the subscription stayed busy (the nightly run reconciles)",
                 extra={"org": job.org, "subscription": job.subscription_id})
        return
    await svc.queue.send_change_jobs([replace(job, attempt=job.attempt + 1)], delay_s=BUSY_RETRY_S)


async def _full_sync(svc: Services, sub: Subscription, job: ChangeJob, notice: RunError) -> None:
    caller = Caller(org=sub.org, subject=SYSTEM, role="Owner")
    try:
        await runs.start(svc, caller, sub.id, trigger=job.trigger, notes=(notice,))
    except Conflict as exc:
        if exc.code == "sync_in_progress":
            await _later(svc, job)
        else:
            log.info("no Full Sync after a change", extra={"org": sub.org, "subscription": sub.id, "reason": exc.code})


class _Plan:
    """What an incremental run writes: users to write (with their directory data and selected groups), users removed
    from the directory, and selected groups to read again in full."""

    def __init__(self) -> None:
        self.users: dict[str, tuple[DirectoryUser, frozenset[str] | None]] = {}  # None: memberships unchanged
        self.removed: set[str] = set()
        self.resync: set[str] = set()
        self.overflow = False  # more users affected than an incremental run takes: a Full Sync instead
        self.unlisted: frozenset[str] = frozenset()  # selected groups Graph hides from member_of: memberships kept

    @property
    def empty(self) -> bool:
        return not (self.users or self.removed or self.resync)

    def too_many(self, limit: int) -> bool:
        return self.overflow or len(self.users) + len(self.removed) > limit


async def _plan(svc: Services, sub: Subscription, changes: DirectoryChanges) -> _Plan:
    tenant = sub.azure_tenant_id
    selected = set(sub.group_ids)
    plan = _Plan()
    regroup: set[str] = set()  # users whose selected groups must be read
    for gid, change in changes.groups.items():
        if gid in selected:
            if change.removed or change.groups_changed:
                plan.resync.add(gid)
            regroup |= change.users_added | change.users_removed
            continue
        if not (change.users_added or change.users_removed or change.groups_changed):
            continue
        try:
            above = await svc.changes.member_of(tenant, gid, kind="groups") & selected
        except NotFound:
            continue  # deleted: its parents' own member changes name it
        if not above:
            continue
        if change.groups_changed:
            plan.resync |= above
        else:
            regroup |= change.users_added | change.users_removed
    index = await svc.users.links(sub.org, sub.id)  # linked users kept their own id
    synced_ids = {index.get(oid) or synced_user_id(sub.org, sub.id, oid): oid
                  for oid in changes.users_changed | changes.users_removed}
    stored = await svc.users.get_many(sub.org, list(synced_ids))
    stored_oids = {synced_ids[uid] for uid in stored}
    plan.removed = set(changes.users_removed & stored_oids)
    candidates = (regroup | (changes.users_changed & stored_oids)) - plan.removed
    if len(candidates) > svc.settings.incremental_max_objects:
        plan.overflow = True  # known without reading them: too_many() turns the run into a Full Sync
        return plan
    found = await svc.changes.get_users(tenant, sorted(candidates), select=sub.attribute_mapping.graph_select())
    plan.removed |= (candidates - set(found)) & (stored_oids | regroup)
    if regroup:
        plan.unlisted = await _unlisted_groups(svc, sub)
    for oid, du in found.items():
        groups = await svc.changes.member_of(tenant, oid) & selected if oid in regroup else None
        plan.users[oid] = (du, frozenset(groups) if groups is not None else None)
    return plan


async def _unlisted_groups(svc: Services, sub: Subscription) -> frozenset[str]:
    """Selected groups whose membership Graph hides from the app (HiddenMembership, and the tenant does not grant
    Member.Read.Hidden): ``transitiveMemberOf`` leaves them out, so a user's absence from them says nothing."""
    tenant = sub.azure_tenant_id
    granted = await svc.directory.granted_permissions(tenant)
    if MEMBER_READ_HIDDEN in granted:
        return frozenset()
    groups = await svc.directory.get_groups(tenant, list(sub.group_ids), interactive=False)
    return frozenset(g.id for g in groups.values() if not g.membership_readable(granted))


async def _apply(svc: Services, sub: Subscription, run: Run, plan: _Plan, *, recovering: bool = False) -> None:
    """Write the plan's users through the same decisions as a Full Sync; the finalizer deprovisions the ones left in
    no selected group (guarded). ``recovering``: an earlier delivery of the job applied (part of) this plan for the
    same run; what it wrote is listed as it would have listed it, and its invitations are queued again."""
    org = sub.org
    errors: list[RunError] = []
    skipped: dict[str, int] = {}
    linker = Linker(svc, sub)
    index = await linker.index()
    ids = {oid: index.get(oid) or synced_user_id(org, sub.id, oid) for oid in [*plan.users, *plan.removed]}
    stored = await svc.users.get_many(org, list(ids.values()))
    creates: list[tuple[User, Desired]] = []
    updates: list[tuple[User, str]] = []
    leave: list[str] = []
    changed_groups: set[str] = set()
    invitations: list[EnrollmentJob] = []
    records: list[UserChange] = []  # the run's change list: what this job wrote (the finalizer adds deactivations)
    recovered: list[User] = []
    stamp = Stamp.of(run.id, run.trigger, svc.clock(), svc.settings.history_retention_days)
    for oid in plan.removed:
        existing = stored.get(ids[oid])
        if existing is not None and existing.group_ids:
            leave.append(existing.id)
            changed_groups |= existing.group_ids
    for oid, (du, groups) in plan.users.items():
        existing = stored.get(ids[oid])
        if groups is None:
            if existing is None:
                continue  # a directory user the sync does not hold (and whose groups did not change)
            groups = existing.group_ids & set(sub.group_ids)
        elif existing is not None:  # what Graph could not tell (hidden membership) stays as stored
            groups = groups | (existing.group_ids & plan.unlisted)
        if not groups:  # in no selected group any more: the finalizer deprovisions, whatever the user looks like
            if existing is not None and existing.group_ids:
                leave.append(existing.id)
                changed_groups |= existing.group_ids
            continue
        desired = desired_user(du, sub, svc.settings.default_phone_region)
        if isinstance(desired, Skip):
            skipped[desired.code] = skipped.get(desired.code, 0) + 1
            if len(errors) < 50:
                errors.append(RunError(desired.code, desired.message, user_id=ids[oid]))
            continue
        if desired.phone_refused and len(errors) < 50:
            errors.append(RunError("invalid_phone", f"{desired.display_name} ({oid}) has a "
                                   f"{sub.attribute_mapping.source('phone')} that is not a valid phone number: "
                                   "synced without phone", user_id=ids[oid]))
        if existing is None:
            first = sorted(groups)[0]
            creates.append((replace(new_user(org, sub, desired, first, stamp), group_ids=frozenset(groups)), desired))
            changed_groups |= groups
            continue
        if existing.source_type != SourceType.AD_SYNC or existing.subscription_id != sub.id:
            skipped["managed_manually"] = skipped.get("managed_manually", 0) + 1
            continue
        if change_of(existing, desired) == "unchanged" and existing.group_ids == groups:
            if recovering and existing.last_run_id == run.id:
                _recovered(existing, run, records, invitations)
            # Written already: by an attempt that may have died before it recorded the event (the log dedupes).
            recovered.append(existing)
            continue
        changed_groups |= groups ^ existing.group_ids
        updates.append((_written(existing, desired, groups, stamp), existing.username))
    if creates and linker.on:
        creates = await _link(linker, creates, stored, updates, records, errors, skipped, stamp)
    if creates:
        await pending_invitations.expect(svc, [u for u, _ in creates])
        for (user, desired), outcome in zip(creates, await svc.users.create([u for u, _ in creates])):
            if isinstance(outcome, Created):
                records.append(change_record(None, outcome.user, Change.CREATED, sorted(user.group_ids)[0]))
                if outcome.user.enrollment_email == EmailState.QUEUED:
                    invitations.append(EnrollmentJob(org, user.id, run.id))
            elif isinstance(outcome, Exists):  # written meanwhile (a redelivered job): decided like any stored user
                stored[outcome.user.id] = outcome.user
                updates.append((_written(outcome.user, desired, user.group_ids, stamp), outcome.user.username))
            elif (holder := await svc.users.get(org, outcome.owner_id)) is not None and \
                    holder.subscription_id == sub.id and holder.azure_object_id == user.azure_object_id:
                stored[holder.id] = holder  # linked meanwhile by a group worker (it kept its own id): a stored user
                updates.append((_written(holder, desired, user.group_ids, stamp), holder.username))
            else:
                errors.append(RunError("username_conflict", f"{user.display_name} ({user.azure_object_id}) maps to "
                                                            f"username '{user.username}', which another user has",
                                       user_id=user.id))
    for user in await _update(svc, org, updates, errors):
        if user.last_change != Change.UNCHANGED:
            records.append(change_record(stored.get(user.id), user, user.last_change, sorted(user.group_ids)[0]))
        before = stored.get(user.id)
        if before is not None and reinvited(before, user):  # a corrected address of a user not enrolled yet
            invitations.append(EnrollmentJob(org, user.id, run.id, to=address_tag(user.email)))
    await events.users_written(svc, recovered)
    if leave:
        await svc.users.remove_memberships(org, leave, ())
    if invitations:
        await svc.queue.send_enrollment_jobs(invitations)
    await _recount_groups(svc, sub, changed_groups)
    if errors or skipped or records:
        await _report(svc, run, plan, errors, skipped, records)


def _recovered(user: User, run: Run, records: list[UserChange], invitations: list[EnrollmentJob]) -> None:
    """A user an earlier delivery of the job wrote for this run: its change, read from the user's history, is listed
    (as that delivery would have listed it); an invitation it queued is queued again (same message id: duplicate
    detection drops it if that delivery sent it; the mailer's claim keeps it to one e-mail)."""
    entry = next((e for e in user.history if e.run_id == run.id), None)
    if entry is None or entry.change == Change.UNCHANGED:
        return
    records.append(recovered_record(user, entry))
    if entry.change == Change.CREATED and user.enrollment_email == EmailState.QUEUED:
        invitations.append(EnrollmentJob(user.org, user.id, run.id))


async def _link(linker: Linker, creates: list[tuple[User, Desired]], stored: dict[str, User],
                updates: list[tuple[User, str]], records: list[UserChange], errors: list[RunError],
                skipped: dict[str, int], stamp: Stamp) -> list[tuple[User, Desired]]:
    """Link the users to create who are existing Manual users (``sync.links``); the rest, to create."""
    by_oid = {d.azure_object_id: (u, d) for u, d in creates}
    outcomes = await linker.resolve({oid: d for oid, (_, d) in by_oid.items()},
                                    {oid: u.group_ids for oid, (u, _) in by_oid.items()}, stamp)
    rest: list[tuple[User, Desired]] = []
    known: dict[str, tuple[User, Desired]] = {}
    for oid, (user, desired) in by_oid.items():
        outcome = outcomes.get(oid)
        if outcome is None:
            rest.append((user, desired))
        elif isinstance(outcome, Linked):
            records.append(outcome.record)
        elif isinstance(outcome, Known):  # linked meanwhile (a redelivered job): decided like any stored user
            known[outcome.user_id] = (user, desired)
        elif isinstance(outcome, Taken):
            errors.append(RunError("username_conflict", f"{user.display_name} ({oid}) maps to username "
                                                        f"'{user.username}', which another user has", user_id=user.id))
        else:
            skipped[outcome.code] = skipped.get(outcome.code, 0) + 1
            errors.append(RunError(outcome.code, outcome.message))
    fresh = await linker.svc.users.get_many(linker.sub.org, list(known)) if known else {}
    for uid, (user, desired) in known.items():
        if uid in fresh:
            stored[uid] = fresh[uid]
            updates.append((_written(fresh[uid], desired, user.group_ids, stamp), fresh[uid].username))
    return rest


def _written(existing: User, desired: Desired, groups: frozenset[str] | set[str], stamp: Stamp) -> User:
    first = sorted(groups)[0]
    return replace(updated_user(existing, desired, first, groups, stamp), group_ids=frozenset(groups))


async def _update(svc: Services, org: str, updates: list[tuple[User, str]], errors: list[RunError]) -> list[User]:
    """Write the updates (a row changed meanwhile gets its fresh etag and is written again); the users written."""
    written: list[User] = []
    for _ in range(MAX_STALE_ROUNDS):
        if not updates:
            return written
        outcomes = await svc.users.update(updates)
        stale = [(u, old) for (u, old), o in zip(updates, outcomes) if isinstance(o, Stale)]
        for (u, _), o in zip(updates, outcomes):
            if isinstance(o, Updated):
                written.append(o.user)
            elif not isinstance(o, Stale):
                errors.append(RunError("username_conflict", f"{u.display_name} ({u.azure_object_id}) maps to username "
                                                            f"'{u.username}', which another user has", user_id=u.id))
        if not stale:
            return written
        fresh = await svc.users.get_many(org, [u.id for u, _ in stale])
        updates = [(replace(u, etag=fresh[u.id].etag), fresh[u.id].username) for u, _ in stale if u.id in fresh]
    raise PreconditionFailed("users kept changing under the incremental run; the job is retried")


async def _recount_groups(svc: Services, sub: Subscription, group_ids: set[str]) -> None:
    """The Groups grid's counts of the groups whose members changed."""
    names = {g.id: g.display_name for g in sub.groups}
    for gid in sorted(group_ids & set(names)):
        count = 0
        async for _ in svc.users.group_members(sub.org, sub.id, gid):
            count += 1
        await svc.groups.save(SyncedGroup(sub.org, sub.id, gid, names[gid], count, svc.clock()))


async def _report(svc: Services, run: Run, plan: _Plan, errors: list[RunError], skipped: dict[str, int],
                  records: list[UserChange]) -> None:
    """What the job wrote itself goes where a group's would: its skips and conflicts on the run, its counts and change
    list with the progress row of a group it did not hand to a worker (a worker replaces its own group's)."""
    async def add(current: Run) -> Run | None:
        new = tuple(e for e in errors[:50] if e not in current.errors)  # a redelivery's are there already
        return replace(current, errors=current.errors + new) if new else None

    if errors:
        await optimistic(lambda: svc.runs.get(run.org, run.subscription_id, run.id), add, svc.runs.save)
    done = run.job_group
    if done is None or not (skipped or records):
        return
    listed = SegmentChanges(done, 0, {0: tuple(records)}) if records else None

    async def count(p: GroupProgress) -> GroupProgress | None:
        # Set, not added: the job's report replaces an earlier delivery's (its change list too, same keys).
        return replace(p, counts=replace(p.counts, skipped=sum(skipped.values()), skippedReasons=dict(skipped)))

    await optimistic(lambda: svc.runs.get_group(run.org, run.subscription_id, run.id, done), count,
                     lambda p: svc.runs.save_group(run.org, run.subscription_id, run.id, p, listed))
