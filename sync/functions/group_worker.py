"""Service Bus triggers of the group worker: one message per group (and per continuation of a large group)."""
from __future__ import annotations

import azure.functions as func

from .. import composition
from ..group_sync import handle_dead_lettered_group_job, handle_group_job
from ..logs import get_logger
from ..model import GroupJob
from .dead_letters import decoded

log = get_logger(__name__)
bp = func.Blueprint()


@bp.function_name("group_worker")
@bp.service_bus_queue_trigger(arg_name="msg", queue_name="%GROUP_SYNC_QUEUE%", connection="ServiceBusConnection")
async def group_worker(msg: func.ServiceBusMessage) -> None:
    """Sync one group segment; an exception makes Service Bus redeliver, and finally dead-letter."""
    job = GroupJob.from_json(msg.get_body())
    await handle_group_job(await composition.services(), job, redelivered=(msg.delivery_count or 1) > 1)


@bp.function_name("group_worker_dead_letters")
@bp.service_bus_queue_trigger(arg_name="msg", queue_name="%GROUP_SYNC_QUEUE%/$DeadLetterQueue",
                              connection="ServiceBusConnection")
async def group_worker_dead_letters(msg: func.ServiceBusMessage) -> None:
    """A group message that exhausted its deliveries: fail the group so the run ends instead of hanging."""
    job = decoded(msg, GroupJob.from_json, "group-sync")
    if job is not None:
        await handle_dead_lettered_group_job(await composition.services(), job, msg.dead_letter_reason)
