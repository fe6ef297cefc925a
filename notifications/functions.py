"""Service Bus triggers of the mailer function."""
from __future__ import annotations

import azure.functions as func

from sync import composition
from sync.model import EnrollmentJob

from .mailer import handle_dead_lettered, send_invitation

bp = func.Blueprint()


@bp.function_name("mailer")
@bp.service_bus_queue_trigger(arg_name="msg", queue_name="%ENROLLMENT_QUEUE%", connection="ServiceBusConnection")
async def mailer(msg: func.ServiceBusMessage) -> None:
    """Send one enrollment e-mail; transient failures raise so Service Bus redelivers."""
    await send_invitation(await composition.services(), EnrollmentJob.from_json(msg.get_body()))


@bp.function_name("mailer_dead_letters")
@bp.service_bus_queue_trigger(arg_name="msg", queue_name="%ENROLLMENT_QUEUE%/$DeadLetterQueue",
                              connection="ServiceBusConnection")
async def mailer_dead_letters(msg: func.ServiceBusMessage) -> None:
    """An invitation that exhausted its deliveries is recorded as failed on the user."""
    await handle_dead_lettered(await composition.services(), EnrollmentJob.from_json(msg.get_body()), msg.dead_letter_reason)
