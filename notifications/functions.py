"""Service Bus triggers of the mailer function."""
from __future__ import annotations

import azure.functions as func

from sync import composition
from sync.alert_model import AlertJob
from sync.functions.dead_letters import decoded
from sync.model import EnrollmentJob

from .alert_mailer import handle_dead_lettered_alert, send_alert
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
    job = decoded(msg, EnrollmentJob.from_json, "enrollment-email")
    if job is not None:
        await handle_dead_lettered(await composition.services(), job, msg.dead_letter_reason)


@bp.function_name("alert_mailer")
@bp.service_bus_queue_trigger(arg_name="msg", queue_name="%ALERT_QUEUE%", connection="ServiceBusConnection")
async def alert_mailer(msg: func.ServiceBusMessage) -> None:
    """Send one admin alert; transient failures raise so Service Bus redelivers."""
    await send_alert(await composition.services(), AlertJob.from_json(msg.get_body()))


@bp.function_name("alert_mailer_dead_letters")
@bp.service_bus_queue_trigger(arg_name="msg", queue_name="%ALERT_QUEUE%/$DeadLetterQueue",
                              connection="ServiceBusConnection")
async def alert_mailer_dead_letters(msg: func.ServiceBusMessage) -> None:
    """An alert that exhausted its deliveries is recorded as failed on its row."""
    job = decoded(msg, AlertJob.from_json, "admin-alerts")
    if job is not None:
        await handle_dead_lettered_alert(await composition.services(), job, msg.dead_letter_reason)
