"""Use cases of Full Sync: start a run (manual or nightly), read runs, approve a held-back deprovisioning."""
from __future__ import annotations

import secrets
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from . import alerts, recovery, retention, subscriptions
from .composition import Services
from .errors import Conflict, Gone, InvalidInput, NotFound, Transient
from .inputs import page_size
from .logs import get_logger
from .model import (
    Caller,
    ChangeJob,
    ChangeKind,
    DeltaLinks,
    GroupJob,
    GroupProgress,
    Run,
    RunError,
    RunStatus,
    RunView,
    Subscription,
    SubscriptionStatus,
    Trigger,
)
from .run_end import finalize
from .run_lock import RESERVATION_GRACE, fail_run, refuse_if_busy, release_subscription  # noqa: F401 (used here and re-exported)

log = get_logger(__name__)

RECENT_RUNS = 50
MAX_CHANGES_PAGE = 500
DEFAULT_CHANGES_PAGE = 50


def new_run_id(now: datetime) -> str:
    """Run ids sort newest first (Table Storage lists keys in ascending order) and are unguessable."""
    inverted = 10**13 - int(now.timestamp() * 1000)
    return f"{inverted:013d}-{secrets.token_hex(4)}"


async def start_requested(svc: Services, caller: Caller, sub_id: str, body: dict) -> Run:
    """``POST …/sync``: a Full Sync, or with ``{"dryRun": true}`` a preview of one. Any other field is refused (a
    misspelt option must never start a real sync), and so is a ``dryRun`` that is not a boolean."""
    unknown = sorted(set(body) - {"dryRun"})
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(unknown)[:200]}; a Full Sync takes only dryRun",
                           code="unknown_field")
    dry_run = body.get("dryRun", False)
    if not isinstance(dry_run, bool):
        raise InvalidInput("dryRun must be true or false", code="invalid_field")
    return await start(svc, caller, sub_id, dry_run=dry_run)


async def reserve(svc: Services, caller: Caller, sub_id: str, run_id: str) -> Subscription:
    """Make ``run_id`` the subscription's active run; Conflict if it cannot sync now. Exactly one caller wins."""

    async def take(sub: Subscription) -> Subscription:
        if sub.status == SubscriptionStatus.CONSENT_REVOKED:
            raise Conflict("the directory's admin consent was revoked; authorize again before syncing",
                           code="not_authorized")
        if sub.status != SubscriptionStatus.AUTHORIZED:
            raise Conflict("authorize this directory (admin consent) before syncing", code="not_authorized")
        if not sub.groups:
            raise Conflict("select at least one group to sync", code="no_groups_selected")
        await refuse_if_busy(svc, sub, "start another sync")
        return replace(sub, active_run_id=run_id, updated_at=svc.clock())

    # A run that nobody will carry on (its request died before sending its messages, or all its work is done but it
    # never ended) is sent or ended first, so this request is not refused for it.
    await recovery.settle_active_run(svc, caller.org, sub_id)
    return await subscriptions.modify(svc, caller, sub_id, take)


async def start(svc: Services, caller: Caller, sub_id: str, trigger: str = "manual",
                notes: tuple[RunError, ...] = (), *, dry_run: bool = False) -> Run:
    """Queue a Full Sync (or a dry run of one): one Service Bus message per selected group. Exactly one concurrent
    caller wins: a dry run holds the subscription like a run, so a run and a dry run never overlap.

    Before any member is read, links to the tenant's current state are taken (Graph delta, ``$deltatoken=latest``):
    once the run has ended, incremental runs continue from them, so a change made while it reads is applied
    again later rather than missed. Without them (Graph refused) the run is a Full Sync all the same. A dry run
    takes none: it applies nothing, so the next incremental run must continue from the links before it."""
    now = svc.clock()
    run_id = new_run_id(now)
    sub = await reserve(svc, caller, sub_id, run_id)
    run = Run(org=sub.org, subscription_id=sub.id, id=run_id, trigger=trigger, status=RunStatus.QUEUED,
              group_ids=sub.group_ids, started_at=now, updated_at=now, errors=notes, dry_run=dry_run,
              delta_links=None if dry_run else await _delta_baseline(svc, sub), jobs_sent=False)
    try:
        run = await svc.runs.add(run, [GroupProgress(group_id=g, updated_at=now) for g in sub.group_ids])
    except Transient:
        await _abandon_start(svc, run)
        raise
    try:
        await svc.queue.send_group_jobs([GroupJob(sub.org, sub.id, run_id, g) for g in sub.group_ids])
    except Transient:
        await fail_run(svc, run, RunError("queue_unavailable", "the sync could not be queued; try again"))
        raise
    try:
        await recovery.mark_jobs_sent(svc, run)
    except Exception:  # the sync is queued; the next look sends its messages again (duplicates are dropped)
        log.warning("could not record that a run's messages were sent", exc_info=True,
                    extra={"org": sub.org, "subscription": sub.id, "run": run_id})
    log.info("full sync queued", extra={"org": sub.org, "subscription": sub.id, "run": run_id,
                                        "trigger": trigger, "groups": len(sub.group_ids), "dry_run": dry_run})
    await _recover_alerts(svc, sub)
    return run


async def _delta_baseline(svc: Services, sub: Subscription) -> DeltaLinks | None:
    if svc.changes is None or not sub.azure_tenant_id:
        return None
    try:
        mapping = sub.attribute_mapping  # the tag goes with the links: what they select is what they track
        links = await svc.changes.delta_links(sub.azure_tenant_id, select=mapping.graph_select())
        return replace(links, mapping_tag=mapping.tag())
    except Exception as exc:  # the Full Sync does not need them; the next one takes them again
        log.warning("could not take delta links before a Full Sync", extra={
            "org": sub.org, "subscription": sub.id, "error_type": type(exc).__name__,
            "code": getattr(exc, "code", None)})
        return None
async def _recover_alerts(svc: Services, sub: Subscription) -> None:
    """Tell what earlier runs left untold (best effort: the sync is queued and must be answered as such)."""
    try:
        await alerts.recover(svc, sub)
    except Exception:
        log.warning("untold admin alerts could not be re-queued now", exc_info=True,
                    extra={"org": sub.org, "subscription": sub.id})


async def _abandon_start(svc: Services, run: Run) -> None:
    """Writing the run failed, though its rows may have landed (a lost answer): fail it if it exists and free the
    subscription, so the caller's retry starts a sync instead of meeting a run that stays queued with no messages."""
    try:
        if await svc.runs.get(run.org, run.subscription_id, run.id) is None:
            await release_subscription(svc, run, remember=False)
        else:
            await fail_run(svc, run, RunError("storage_unavailable", "the sync could not be started; try again"))
    except Exception:  # storage is still failing: the reservation expires on its own (RESERVATION_GRACE)
        log.warning("could not undo a sync that failed to start", exc_info=True,
                    extra={"org": run.org, "subscription": run.subscription_id, "run": run.id})


async def get(svc: Services, caller: Caller, sub_id: str, run_id: str) -> RunView:
    await subscriptions.get(svc, caller, sub_id)
    view = await svc.runs.view(caller.org, sub_id, run_id) if _plausible_run_id(run_id) else None
    if view is None:
        raise NotFound("no such run", code="run_not_found")
    return view


async def changes(svc: Services, caller: Caller, sub_id: str, run_id: str, params: dict[str, str]) -> dict[str, Any]:
    """``GET …/runs/{runId}/changes``: a page of the run's per-user changes, proposed (dry run) or applied. Listed
    as the run's groups recorded them; complete once the run has ended; kept for the history retention days."""
    view = await get(svc, caller, sub_id, run_id)
    size = page_size(params.get("pageSize"), default=DEFAULT_CHANGES_PAGE, maximum=MAX_CHANGES_PAGE)
    change = params.get("change") or None
    if change is not None and change not in ChangeKind.ALL:
        raise InvalidInput(f"change must be one of {', '.join(ChangeKind.ALL)}", code="invalid_change")
    token = params.get("continuationToken") or None
    if token is not None and len(token) > 2048:
        raise InvalidInput("continuationToken is not one this API returned", code="invalid_continuation_token")
    if view.run.started_at < svc.clock() - timedelta(days=svc.settings.history_retention_days):
        raise Gone(f"the changes of runs older than {svc.settings.history_retention_days} days are not kept",
                   code="changes_expired")
    listed, following = await svc.runs.changes_page(caller.org, sub_id, run_id, change, size, token)
    return {"runId": view.run.id, "dryRun": view.run.dry_run, "status": view.run.status,
            "changes": [c.to_api() for c in listed], "continuationToken": following}


async def recent(svc: Services, caller: Caller, sub_id: str) -> list[RunView]:
    await subscriptions.get(svc, caller, sub_id)
    return await svc.runs.recent(caller.org, sub_id, RECENT_RUNS)


async def last_run(svc: Services, sub: Subscription) -> RunView | None:
    """The subscription's running or latest real run, for its summary (a dry run is never the last sync)."""
    if sub.active_run_id:
        active = await svc.runs.view(sub.org, sub.id, sub.active_run_id)
        if active is not None and not active.run.dry_run:
            return active
    return await svc.runs.view(sub.org, sub.id, sub.last_run_id) if sub.last_run_id else None


async def approve(svc: Services, caller: Caller, sub_id: str, run_id: str) -> RunView:
    """Apply the deactivations that the safety guard held back on a ``needs_review`` run."""
    sub = await subscriptions.get(svc, caller, sub_id)
    view = await get(svc, caller, sub_id, run_id)
    if view.run.status != RunStatus.NEEDS_REVIEW:
        raise Conflict(f"the run is {view.run.status}; only a run awaiting review can be approved",
                       code="run_not_awaiting_review")
    if sub.active_run_id:
        raise Conflict("a newer sync is in progress; review its result instead", code="sync_in_progress")
    if sub.last_run_id != run_id:
        raise Conflict("a newer sync has run since; approve or review that one", code="run_superseded")
    await finalize(svc, caller.org, sub_id, run_id, approved_by=caller.subject)
    return await get(svc, caller, sub_id, run_id)


async def nightly(svc: Services) -> dict[str, int]:
    """Start a nightly Full Sync for every eligible subscription (one failure does not stop the others), then drop
    what is older than the history retention."""
    started = skipped = failed = 0
    for sub in await svc.subscriptions.nightly_candidates():
        if sub.deleting or not sub.groups or not sub.nightly_sync or sub.status != SubscriptionStatus.AUTHORIZED:
            continue
        caller = Caller(org=sub.org, subject="nightly-sync", role="Owner")
        try:
            state = await svc.watches.get_delta(sub.org, sub.id) if svc.watches is not None else None
            if state is not None and set(state.group_ids) == set(sub.group_ids):
                # Incremental: the change job reads only what changed since the last run (no member pages).
                await svc.queue.send_change_jobs([ChangeJob(sub.org, sub.id, Trigger.NIGHTLY, svc.clock())])
                started += 1
                log.info("nightly incremental sync queued", extra={"org": sub.org, "subscription": sub.id})
                continue
            run = await start(svc, caller, sub.id, trigger="nightly")
            started += 1
            log.info("nightly sync started", extra={"org": sub.org, "subscription": sub.id, "run": run.id})
        except Conflict as exc:
            skipped += 1
            log.info("nightly sync skipped", extra={"org": sub.org, "subscription": sub.id, "reason": exc.code})
        except Exception:  # isolation: one broken subscription must not stop the others; nothing is acknowledged
            failed += 1
            log.exception("nightly sync could not start", extra={"org": sub.org, "subscription": sub.id})
    summary = {"started": started, "skipped": skipped, "failed": failed}
    try:
        summary.update(await retention.apply(svc))
    except Exception:  # the syncs are started; the expired entries wait for the next night
        log.exception("nightly retention failed")
    return summary


def _plausible_run_id(run_id: str) -> bool:
    return bool(run_id) and len(run_id) <= 64 and all(c.isalnum() or c == "-" for c in run_id)

