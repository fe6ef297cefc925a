"""Near-real-time sync: Graph's notification webhook, the incremental-run worker, and the watch renewal timer."""
from __future__ import annotations

import time

import azure.functions as func

from .. import changes, composition, watching
from ..errors import InvalidInput, PayloadTooLarge, SettingsError, SyncError
from ..logs import get_logger
from ..model import ChangeJob
from .dead_letters import decoded
from .http import error_response, json_response, log_request, misconfigured_response, query

log = get_logger(__name__)
bp = func.Blueprint()
MAX_NOTIFICATION_BYTES = 1024 * 1024


@bp.function_name("graph_notifications")
@bp.route(route="directory/notifications", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def graph_notifications(req: func.HttpRequest) -> func.HttpResponse:
    """Microsoft Graph calls this: its validation handshake (echo ``validationToken`` as text/plain within 10 s), and
    change and lifecycle notifications (202 once queued; each must present its watch's clientState). Graph cannot
    send our portal token: in Azure the function key rides in the notification URL's ``code``."""
    started = time.perf_counter()
    params = query(req)
    try:
        unknown = sorted(set(params) - {"validationToken"})
        if unknown:
            raise InvalidInput(f"unknown query parameter(s): {', '.join(unknown)[:200]}", code="unknown_parameter")
        if "validationToken" in params:
            echo = changes.validation_echo(params["validationToken"])
            log_request(req, 200, started)
            return func.HttpResponse(echo, status_code=200, mimetype="text/plain", charset="utf-8",
                                     headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})
        body = req.get_body() or b""
        if len(body) > MAX_NOTIFICATION_BYTES:
            raise PayloadTooLarge(f"the body is larger than {MAX_NOTIFICATION_BYTES // 1024} KiB")
        result = await changes.receive(await composition.services(), body)
    except SyncError as exc:
        log_request(req, exc.status, started, code=exc.code)
        return error_response(exc)
    except SettingsError as exc:  # Graph retries a 5xx delivery for about 4 hours
        log_request(req, exc.status, started, code="misconfigured")
        return misconfigured_response(exc)
    except Exception:
        log.exception("change notifications could not be queued")
        log_request(req, 500, started)
        return json_response(500, {"code": "internal_error", "message": "the notifications could not be queued"})
    log_request(req, 202, started)
    return json_response(202, result)


@bp.function_name("change_worker")
@bp.service_bus_queue_trigger(arg_name="msg", queue_name="%CHANGE_QUEUE%", connection="ServiceBusConnection")
async def change_worker(msg: func.ServiceBusMessage) -> None:
    """An incremental run of one subscription; an exception makes Service Bus redeliver (the delta is read again)."""
    await changes.handle_change_job(await composition.services(), ChangeJob.from_json(msg.get_body()),
                                    delivery=msg.delivery_count or 1)


@bp.function_name("change_worker_dead_letters")
@bp.service_bus_queue_trigger(arg_name="msg", queue_name="%CHANGE_QUEUE%/$DeadLetterQueue",
                              connection="ServiceBusConnection")
async def change_worker_dead_letters(msg: func.ServiceBusMessage) -> None:
    """A change job that exhausted its deliveries or expired: fail its run visibly instead of dropping the changes
    (or holding the subscription with a run it left applying)."""
    job = decoded(msg, ChangeJob.from_json, "directory-changes")
    if job is not None:
        await changes.handle_dead_lettered_change_job(await composition.services(), job, msg.dead_letter_reason)


@bp.function_name("watch_renewal")
@bp.timer_trigger(arg_name="timer", schedule="%WATCH_RENEWAL_SCHEDULE%", run_on_startup=False, use_monitor=True)
async def watch_renewal(timer: func.TimerRequest) -> None:
    """Renew Graph subscriptions before they expire, recreate lost ones, drop those of gone subscriptions."""
    summary = await watching.renew_watches(await composition.services())
    log.info("graph subscriptions renewed", extra={"past_due": timer.past_due, **summary})
