"""Timer trigger: the enrollment reminders due (sync/invitation_lifecycle.py)."""
from __future__ import annotations

import azure.functions as func

from .. import composition, invitation_lifecycle
from ..logs import get_logger

log = get_logger(__name__)
bp = func.Blueprint()


@bp.function_name("enrollment_reminders")
@bp.timer_trigger(arg_name="timer", schedule="%ENROLLMENT_REMINDERS_SCHEDULE%", run_on_startup=False, use_monitor=True)
async def enrollment_reminders(timer: func.TimerRequest) -> None:
    """Queue the reminder due of each user the reminder index names (reads the users due, not the org)."""
    summary = await invitation_lifecycle.send_due_reminders(await composition.services())
    log.info("reminder timer fired", extra={"past_due": timer.past_due, **summary.to_log()})
