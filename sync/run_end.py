"""The run's fan-in: when every group has finished, recount, deprovision (a dry run: list whom a real run would),
end the run exactly once and free the subscription for the next one.

The bottom of the sync's flow: the group worker and the run use cases call into it; it calls neither.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from . import alerts, events
from .alert_model import owed_alert
from .composition import Services
from .concurrency import optimistic
from .decisions import (
    Change,
    Stamp,
    deprovisioned,
    guard_trips,
    in_scope,
    removal_record,
    should_deprovision,
)
from .logs import get_logger
from .model import (
    ChangeKind,
    Counts,
    EmailState,
    GroupState,
    Run,
    RunError,
    RunStatus,
    RunView,
    SourceType,
    UserChange,
    UserStatus,
)
from .ports import Stale, Updated
from .run_lock import release_subscription
from .watching import after_run

log = get_logger(__name__)

MAX_STALE_ROUNDS = 6
ALL_SEGMENTS = 99_999  # load_seen(before_segment=…): every segment of a group


async def finalize(svc: Services, org: str, sub_id: str, run_id: str, *, approved_by: str | None = None) -> None:
    """When every group has finished: recount, deprovision (unless a group failed or the guard trips), end the run.

    Safe to call any number of times from any worker: it does nothing until all groups are finished, its writes
    are idempotent, and the run's terminal transition is conditional on the run's ETag. Within one process the
    calls for a run take turns: when the last two groups finish together, the second finds the run ended by the
    first instead of reading every user of the subscription again (across processes that can still happen).
    """
    async with svc.finalizing.hold((org, sub_id, run_id)):
        await _finalize(svc, org, sub_id, run_id, approved_by=approved_by)


async def _finalize(svc: Services, org: str, sub_id: str, run_id: str, *, approved_by: str | None) -> None:
    view = await svc.runs.view(org, sub_id, run_id)
    if view is None or not settled(view):
        return
    run = view.run
    if run.status in RunStatus.TERMINAL and not (approved_by and run.status == RunStatus.NEEDS_REVIEW):
        await _release_if_still_held(svc, run)
        if run.alert_due:  # the call that ended the run died before its alert was recorded
            await alerts.run_ended(svc, org, sub_id, run_id)
        await events.run_completed(svc, run)  # recorded once: a call that died before it recorded nothing
        return
    if run.dry_run:
        await _finalize_preview(svc, view)
        return
    settings = svc.settings
    group_ids = set(run.group_ids)
    failed = [g for g in view.groups if g.state == GroupState.FAILED]
    counts = Counts()
    active = 0
    candidates: list[str] = []
    holding_others: list[str] = []  # rows still holding memberships of groups since deselected
    removed_before: list[UserChange] = []  # deprovisioned by an earlier call for this run (its answer was lost)
    async for user in svc.users.subscription_scope(org, sub_id, group_ids):
        if user.other_groups:
            holding_others.append(user.id)
        if user.last_run_id == run.id and user.last_change:
            counts = counts.bump(user.last_change)
            if user.last_change == Change.CREATED and user.enrollment_email in (EmailState.QUEUED, EmailState.SENDING, EmailState.SENT, EmailState.FAILED):
                counts = counts.bump("emailsQueued")
            if user.last_change == Change.DEACTIVATED and not in_scope(user, group_ids):
                removed_before.append(removal_record(user.id, user.username, user.display_name))
        elif in_scope(user, group_ids):
            counts = counts.bump("unchanged")
        if user.status == UserStatus.ACTIVE:
            active += 1
        if should_deprovision(user, group_ids):
            candidates.append(user.id)
    for g in view.groups:
        counts = counts + Counts(skipped=g.counts.skipped, skippedReasons=g.counts.skippedReasons)
    # An approval replaces the note that deprovisioning was held back.
    errors = tuple(e for e in run.errors if not (approved_by and e.code == "deprovisioning_held"))
    pending = 0
    if failed:
        status = RunStatus.FAILED
        if candidates:
            errors += (RunError("deprovisioning_skipped",
                                f"{len(failed)} group(s) failed, so {len(candidates)} user(s) no longer seen were left as they are"),)
    elif candidates and not approved_by and guard_trips(len(candidates), active, settings.deprovision_guard_percent,
                                                         settings.deprovision_guard_min_users):
        status = RunStatus.NEEDS_REVIEW
        pending = len(candidates)
        errors += (RunError("deprovisioning_held",
                            f"{pending} of {active} active users would be deactivated (more than "
                            f"{settings.deprovision_guard_percent:g}%); approve the run to apply it"),)
    else:
        status = RunStatus.SUCCEEDED
        removed = await _deprovision(svc, org, run, candidates, group_ids)
        counts = counts.bump("deactivated", len(removed))
        if removed or removed_before:
            await svc.runs.save_final_changes(org, sub_id, run_id, removed_before + removed)
    if holding_others:
        # Deselected groups leave the rows (a row holds at most 252 properties, so stale ones must not pile up);
        # deprovisioned users already lost theirs.
        stale = set(holding_others).difference(candidates) if status == RunStatus.SUCCEEDED else set(holding_others)
        await svc.users.remove_memberships(org, stale, group_ids)
    if approved_by:
        log.info("held-back deprovisioning approved", extra={"org": org, "subscription": sub_id, "run": run_id,
                                                             "by": approved_by})
    finished = await _end_run(svc, run, status, counts, errors, pending, approved=bool(approved_by))
    if finished:
        await after_run(svc, run, status)  # before the release: the next run continues from its links
        await release_subscription(svc, run)
        await _tidy_groups_grid(svc, org, sub_id)
        ended = await svc.runs.get(org, sub_id, run_id)
        if ended is not None:
            await events.run_completed(svc, ended)
        log.info("run finished", extra={"org": org, "subscription": sub_id, "run": run_id, "status": status,
                                        "counts": counts.to_api()})
        if owed_alert(status):
            await alerts.run_ended(svc, org, sub_id, run_id)
    else:
        await _release_if_still_held(svc, run)


def settled(view: RunView) -> bool:
    """Has everything that works on the run finished (every group, and an incremental run's change job applying its
    plan)? Only then may it end."""
    return not view.run.applying and all(g.finished for g in view.groups)


@dataclass
class _Tally:
    """A dry run's changes as its workers listed them, each user once."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ChangeKind.ALL, 0))
    users: set[str] = field(default_factory=set)
    emails: int = 0
    active_delta: int = 0  # how many more users would be active after the workers' changes

    def add(self, c: UserChange) -> None:
        self.users.add(c.user_id)
        self.counts[c.change] = self.counts.get(c.change, 0) + 1
        self.emails += c.email_queued
        status = c.fields.get("status")
        if c.change == ChangeKind.LINKED:  # a Manual user joins the synced users: active (or not) from now on
            self.active_delta += bool(status and status[1] == UserStatus.ACTIVE)
        elif status and status[0] != status[1]:
            self.active_delta += (status[1] == UserStatus.ACTIVE) - (status[0] == UserStatus.ACTIVE)


async def _tally_preview(svc: Services, run: Run) -> _Tally:
    """Count the workers' proposed changes. Workers of one process never list a user twice (they share a ledger);
    workers of different processes may: the later line is dropped from the stored list here."""
    tally = _Tally()
    async for row_id, listed in svc.runs.change_rows(run.org, run.subscription_id, run.id):
        kept = []
        for c in listed:
            if c.group_id is not None and c.user_id in tally.users:
                continue
            kept.append(c)
            if c.group_id is not None:  # the run end's own lines are computed again below
                tally.add(c)
        if len(kept) < len(listed):
            await svc.runs.replace_change_row(run.org, run.subscription_id, run.id, row_id, kept)
    return tally


async def _finalize_preview(svc: Services, view: RunView) -> None:
    """A dry run's end: its counts are what a real run's recount would give, its deactivations are listed (the
    stored users that no group saw), the guard is only reported (``would_need_review``), and nothing but the
    run's own rows is written."""
    run, settings = view.run, svc.settings
    org, sub_id = run.org, run.subscription_id
    failed = [g for g in view.groups if g.state == GroupState.FAILED]
    tally = await _tally_preview(svc, run)
    seen: set[str] = set()
    for g in run.group_ids:
        seen |= await svc.runs.load_seen(org, sub_id, run.id, g, ALL_SEGMENTS)
    active = 0
    removals: list[UserChange] = []
    async for user in svc.users.subscription_scope(org, sub_id, run.group_ids):
        if user.status == UserStatus.ACTIVE:
            active += 1
            if user.source_type == SourceType.AD_SYNC and user.id not in seen:
                removals.append(removal_record(user.id, user.username, user.display_name))
    active += tally.active_delta
    errors = run.errors
    if failed:
        status = RunStatus.FAILED
        if removals:
            errors += (RunError("deprovisioning_skipped",
                                f"{len(failed)} group(s) failed, so the {len(removals)} user(s) no group listed "
                                "are not counted as deactivations"),)
        removals = []
    else:
        status = RunStatus.PREVIEWED
        if removals:
            await svc.runs.save_final_changes(org, sub_id, run.id, removals)
        if removals and guard_trips(len(removals), active, settings.deprovision_guard_percent,
                                    settings.deprovision_guard_min_users):
            errors += (RunError("would_need_review",
                                f"{len(removals)} of {active} active users would be deactivated (more than "
                                f"{settings.deprovision_guard_percent:g}%): a real run would wait for approval "
                                "(needs_review) before deactivating them"),)
    counts = Counts(created=tally.counts[Change.CREATED], updated=tally.counts[Change.UPDATED],
                    reactivated=tally.counts[Change.REACTIVATED],
                    deactivated=tally.counts[Change.DEACTIVATED] + len(removals),
                    unchanged=len(seen - tally.users), emailsQueued=tally.emails,
                    linked=tally.counts[ChangeKind.LINKED])
    for g in view.groups:
        counts = counts + Counts(skipped=g.counts.skipped, skippedReasons=g.counts.skippedReasons)
    if await _end_run(svc, run, status, counts, errors, 0, approved=False):
        await release_subscription(svc, run, remember=False)
        log.info("dry run finished", extra={"org": org, "subscription": sub_id, "run": run.id, "status": status,
                                            "counts": counts.to_api()})
    else:
        await _release_if_still_held(svc, run)


async def _release_if_still_held(svc: Services, run: Run) -> None:
    """The run is over, but the subscription may still hold it as active: its end was written by a call whose answer
    was lost (the retry met a 412) or by a worker that crashed before releasing. Release it now (only if still this
    run's: a newer run must never be overwritten)."""
    sub = await svc.subscriptions.get(run.org, run.subscription_id)
    if sub is not None and sub.active_run_id == run.id:
        await release_subscription(svc, run)
        if not run.dry_run:
            await _tidy_groups_grid(svc, run.org, run.subscription_id)


async def _deprovision(svc: Services, org: str, run: Run, candidates: list[str], group_ids: set[str]) -> list[UserChange]:
    """Deactivate users who left every selected group (never delete); the changes this call made."""
    applied: list[UserChange] = []
    pending = candidates
    for _ in range(MAX_STALE_ROUNDS):
        if not pending:
            break
        stored = await svc.users.get_many(org, pending)
        batch = [u for u in stored.values() if should_deprovision(u, group_ids)]
        if not batch:
            break
        stamp = Stamp.of(run.id, run.trigger, svc.clock(), svc.settings.history_retention_days)
        outcomes = await svc.users.update([(deprovisioned(u, stamp), u.username) for u in batch])
        applied += [removal_record(u.id, u.username, u.display_name)
                    for u, o in zip(batch, outcomes) if isinstance(o, Updated)]
        pending = [o.user_id for o in outcomes if isinstance(o, Stale)]
    return applied


async def _end_run(svc: Services, run: Run, status: str, counts: Counts, errors: tuple, pending: int,
                   *, approved: bool) -> bool:
    """The run's one terminal transition; False if another worker already made it."""

    async def end(current: Run) -> Run | None:
        if current.status in RunStatus.TERMINAL and not (approved and current.status == RunStatus.NEEDS_REVIEW):
            return None
        now = svc.clock()
        return replace(current, status=status, final_counts=counts, errors=errors, pending_deactivations=pending,
                       finished_at=now, updated_at=now, alert_due=None if current.dry_run else owed_alert(status))

    return await optimistic(lambda: svc.runs.get(run.org, run.subscription_id, run.id), end, svc.runs.save) is not None


async def _tidy_groups_grid(svc: Services, org: str, sub_id: str) -> None:
    """Drop Groups-grid rows of groups that are no longer selected."""
    sub = await svc.subscriptions.get(org, sub_id)
    if sub is None:
        return
    selected = set(sub.group_ids)
    stale = [g.id for g in await svc.groups.list(org) if g.subscription_id == sub_id and g.id not in selected]
    if stale:
        await svc.groups.delete(org, sub_id, stale)
