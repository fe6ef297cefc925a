"""Timer trigger: the nightly Full Sync of every subscription that wants it."""
from __future__ import annotations

import azure.functions as func

from .. import composition, runs
from ..logs import get_logger

log = get_logger(__name__)
bp = func.Blueprint()


@bp.function_name("nightly_sync")
@bp.timer_trigger(arg_name="timer", schedule="%NIGHTLY_SYNC_SCHEDULE%", run_on_startup=False, use_monitor=True)
async def nightly_sync(timer: func.TimerRequest) -> None:
    """Runs once per firing; a past-due firing (the host was down) still runs once, not once per missed day."""
    summary = await runs.nightly(await composition.services())
    log.info("nightly sync fired", extra={"past_due": timer.past_due, **summary})
