"""HTTP functions of the portal's webhooks and the events feed, and the webhook delivery worker."""
from __future__ import annotations

import azure.functions as func

from .. import composition, events, webhooks
from ..event_model import WebhookJob
from ..logs import get_logger
from .http import Reply, handle, json_body, query, route

log = get_logger(__name__)
bp = func.Blueprint()


@bp.function_name("create_webhook")
@bp.route(route="webhooks", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def create_webhook(req: func.HttpRequest) -> func.HttpResponse:
    async def act(svc, caller):
        created = await webhooks.create(svc, caller.org, json_body(req))
        return Reply(201, created, {"Location": f"/api/webhooks/{created['id']}", "Cache-Control": "no-store"})
    return await handle(req, act)


@bp.function_name("list_webhooks")
@bp.route(route="webhooks", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
async def list_webhooks(req: func.HttpRequest) -> func.HttpResponse:
    async def act(svc, caller):
        return await webhooks.listed(svc, caller.org)
    return await handle(req, act)


@bp.function_name("delete_webhook")
@bp.route(route="webhooks/{webhookId}", methods=["DELETE"], auth_level=func.AuthLevel.FUNCTION)
async def delete_webhook(req: func.HttpRequest) -> func.HttpResponse:
    async def act(svc, caller):
        await webhooks.delete(svc, caller.org, route(req, "webhookId"))
        return Reply(204)
    return await handle(req, act)


@bp.function_name("rotate_webhook_secret")
@bp.route(route="webhooks/{webhookId}/rotate-secret", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def rotate_webhook_secret(req: func.HttpRequest) -> func.HttpResponse:
    async def act(svc, caller):
        json_body(req)
        return Reply(200, await webhooks.rotate_secret(svc, caller.org, route(req, "webhookId")),
                     {"Cache-Control": "no-store"})
    return await handle(req, act)


@bp.function_name("enable_webhook")
@bp.route(route="webhooks/{webhookId}/enable", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def enable_webhook(req: func.HttpRequest) -> func.HttpResponse:
    async def act(svc, caller):
        json_body(req)
        return await webhooks.enable(svc, caller.org, route(req, "webhookId"))
    return await handle(req, act)


@bp.function_name("list_events")
@bp.route(route="events", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
async def list_events(req: func.HttpRequest) -> func.HttpResponse:
    async def act(svc, caller):
        return await events.feed(svc, caller.org, query(req))
    return await handle(req, act, query_params=("after", "limit"))


@bp.function_name("webhook_worker")
@bp.service_bus_queue_trigger(arg_name="msg", queue_name="%WEBHOOK_QUEUE%", connection="ServiceBusConnection")
async def webhook_worker(msg: func.ServiceBusMessage) -> None:
    """Deliver a webhook's pending events in order; failures wait out their retry schedule (a delayed message)."""
    job = WebhookJob.from_json(msg.get_body())
    outcome = await webhooks.deliver(await composition.services(), job)
    log.info("webhook delivery", extra={"org": job.org, "webhook": job.webhook_id, "outcome": outcome})
