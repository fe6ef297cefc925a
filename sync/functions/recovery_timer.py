"""Timer trigger: carry on what crashed processes left (stranded runs, invitations no run will send)."""
from __future__ import annotations

import azure.functions as func

from .. import composition, recovery
from ..logs import get_logger

log = get_logger(__name__)
bp = func.Blueprint()


@bp.function_name("recovery_sweep")
@bp.timer_trigger(arg_name="timer", schedule="%RECOVERY_SCHEDULE%", run_on_startup=False, use_monitor=True)
async def recovery_sweep(timer: func.TimerRequest) -> None:
    """Send or end runs nobody carries on; re-queue invitations left queued or sending past their lease."""
    summary = await recovery.sweep(await composition.services())
    log.info("recovery sweep fired", extra={"past_due": timer.past_due, **summary})
