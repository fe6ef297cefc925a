"""HTTP functions of the Directory Sync page: subscriptions, consent, groups, Full Sync and its runs."""
from __future__ import annotations

import time
from typing import Any

import azure.functions as func

from .. import composition, consent, invitation_lifecycle, runs, subscriptions
from ..alert_model import notify_status
from ..logs import get_logger
from ..model import Subscription, iso
from .http import Reply, form_body, handle, json_body, json_response, log_request, query, route

log = get_logger(__name__)
bp = func.Blueprint()
SUBS = "directory/subscriptions"
ONE = SUBS + "/{subscriptionId}"


async def present(svc: composition.Services, sub: Subscription) -> dict[str, Any]:
    """The API's Subscription."""
    last = await runs.last_run(svc, sub)
    return {
        "id": sub.id,
        "name": sub.name,
        "status": sub.status,
        "azureTenantId": sub.azure_tenant_id,
        "usernameAttribute": sub.username_attribute,
        "deactivateBlockedUsers": sub.deactivate_blocked_users,
        "sendEnrollmentEmail": sub.send_enrollment_email,
        "enrollmentReminders": list(sub.enrollment_reminders),
        "nightlySync": sub.nightly_sync,
        "linkExistingUsers": sub.link_existing_users,
        "notifyEmails": list(sub.notify_emails),
        "notifyEmailStatus": notify_status(sub),
        "attributeMapping": sub.attribute_mapping.to_api(),
        "groups": [g.to_api() for g in sub.groups],
        "lastRun": last.to_api() if last else None,
        "createdAt": iso(sub.created_at),
    }


@bp.function_name("create_subscription")
@bp.route(route=SUBS, methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def create_subscription(req: func.HttpRequest) -> func.HttpResponse:
    async def act(svc, caller):
        sub = await subscriptions.create(svc, caller, json_body(req))
        return Reply(201, await present(svc, sub), {"Location": f"/api/{SUBS}/{sub.id}"})
    return await handle(req, act)


@bp.function_name("list_subscriptions")
@bp.route(route=SUBS, methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
async def list_subscriptions(req: func.HttpRequest) -> func.HttpResponse:
    async def act(svc, caller):
        return {"subscriptions": [await present(svc, s) for s in await subscriptions.list_all(svc, caller)]}
    return await handle(req, act)


@bp.function_name("get_subscription")
@bp.route(route=ONE, methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
async def get_subscription(req: func.HttpRequest) -> func.HttpResponse:
    async def act(svc, caller):
        return await present(svc, await subscriptions.get(svc, caller, route(req, "subscriptionId")))
    return await handle(req, act)


@bp.function_name("update_subscription")
@bp.route(route=ONE, methods=["PATCH"], auth_level=func.AuthLevel.FUNCTION)
async def update_subscription(req: func.HttpRequest) -> func.HttpResponse:
    async def act(svc, caller):
        sub = await subscriptions.update(svc, caller, route(req, "subscriptionId"), json_body(req))
        return await present(svc, sub)
    return await handle(req, act)


@bp.function_name("delete_subscription")
@bp.route(route=ONE, methods=["DELETE"], auth_level=func.AuthLevel.FUNCTION)
async def delete_subscription(req: func.HttpRequest) -> func.HttpResponse:
    async def act(svc, caller):
        await subscriptions.delete(svc, caller, route(req, "subscriptionId"))
        return Reply(204)
    return await handle(req, act)


@bp.function_name("authorize_subscription")
@bp.route(route=ONE + "/authorize", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def authorize_subscription(req: func.HttpRequest) -> func.HttpResponse:
    async def act(svc, caller):
        json_body(req)  # accepted but unused; still refused when malformed or too large
        return {"authorizeUrl": await consent.authorize_url(svc, caller, route(req, "subscriptionId"))}
    return await handle(req, act)


@bp.function_name("get_pending_consent")
@bp.route(route=ONE + "/consent", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
async def get_pending_consent(req: func.HttpRequest) -> func.HttpResponse:
    """What confirming the consent code would connect (only for the portal user who called authorize)."""
    async def act(svc, caller):
        return await consent.pending_consent(svc, caller, route(req, "subscriptionId"), query(req).get("consentCode"))
    return await handle(req, act, query_params=("consentCode",))


@bp.function_name("confirm_consent")
@bp.route(route=ONE + "/consent/confirm", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def confirm_consent(req: func.HttpRequest) -> func.HttpResponse:
    """The portal user who called authorize connects the tenant whose admin consented: the subscription is authorized."""
    async def act(svc, caller):
        sub = await consent.confirm_consent(svc, caller, route(req, "subscriptionId"), json_body(req))
        return await present(svc, sub)
    return await handle(req, act)


@bp.function_name("consent_callback")
@bp.route(route="directory/consent", methods=["GET", "POST"], auth_level=func.AuthLevel.ANONYMOUS)
async def consent_callback(req: func.HttpRequest) -> func.HttpResponse:
    """Microsoft's redirects: admin consent (GET) goes on to the admin's sign-in; the signed sign-in (POST, form_post)
    holds the consent for the portal user's confirm (``consent=pending&consentCode``). Redirects only to the portal or to Microsoft's sign-in at AUTHORITY_HOST, never elsewhere."""
    started = time.perf_counter()
    try:
        svc = await composition.services()
        if req.method == "POST":
            location = await consent.complete_sign_in(svc, form_body(req))
        else:
            location = await consent.complete_consent(svc, query(req))
    except Exception:
        log.exception("consent callback failed")
        log_request(req, 500, started)
        return json_response(500, {"code": "internal_error", "message": "the consent could not be recorded; try again"})
    log_request(req, 302, started)
    return func.HttpResponse(status_code=302, headers={"Location": location, "Cache-Control": "no-store"})


@bp.function_name("search_directory_groups")
@bp.route(route=ONE + "/directory-groups", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
async def search_directory_groups(req: func.HttpRequest) -> func.HttpResponse:
    async def act(svc, caller):
        params = query(req)
        groups = await subscriptions.search_groups(svc, caller, route(req, "subscriptionId"), params.get("search"))
        return {"groups": groups}
    return await handle(req, act, query_params=("search",))


@bp.function_name("select_groups")
@bp.route(route=ONE + "/groups", methods=["PUT"], auth_level=func.AuthLevel.FUNCTION)
async def select_groups(req: func.HttpRequest) -> func.HttpResponse:
    async def act(svc, caller):
        sub = await subscriptions.select_groups(svc, caller, route(req, "subscriptionId"), json_body(req))
        return {"groups": [g.to_api() for g in sub.groups]}
    return await handle(req, act)


@bp.function_name("list_selected_groups")
@bp.route(route=ONE + "/groups", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
async def list_selected_groups(req: func.HttpRequest) -> func.HttpResponse:
    async def act(svc, caller):
        sub = await subscriptions.get(svc, caller, route(req, "subscriptionId"))
        return {"groups": [g.to_api() for g in sub.groups]}
    return await handle(req, act)


@bp.function_name("start_full_sync")
@bp.route(route=ONE + "/sync", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def start_full_sync(req: func.HttpRequest) -> func.HttpResponse:
    async def act(svc, caller):
        run = await runs.start_requested(svc, caller, route(req, "subscriptionId"), json_body(req))
        location = f"/api/{SUBS}/{run.subscription_id}/runs/{run.id}"
        return Reply(202, {"runId": run.id, "status": run.status}, {"Location": location})
    return await handle(req, act)


@bp.function_name("list_runs")
@bp.route(route=ONE + "/runs", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
async def list_runs(req: func.HttpRequest) -> func.HttpResponse:
    async def act(svc, caller):
        return {"runs": [v.to_api() for v in await runs.recent(svc, caller, route(req, "subscriptionId"))]}
    return await handle(req, act)


@bp.function_name("get_run")
@bp.route(route=ONE + "/runs/{runId}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
async def get_run(req: func.HttpRequest) -> func.HttpResponse:
    async def act(svc, caller):
        return (await runs.get(svc, caller, route(req, "subscriptionId"), route(req, "runId"))).to_api()
    return await handle(req, act)


@bp.function_name("list_run_changes")
@bp.route(route=ONE + "/runs/{runId}/changes", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
async def list_run_changes(req: func.HttpRequest) -> func.HttpResponse:
    async def act(svc, caller):
        return await runs.changes(svc, caller, route(req, "subscriptionId"), route(req, "runId"), query(req))
    return await handle(req, act, query_params=("pageSize", "continuationToken", "change"))


@bp.function_name("approve_run")
@bp.route(route=ONE + "/runs/{runId}/approve", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def approve_run(req: func.HttpRequest) -> func.HttpResponse:
    async def act(svc, caller):
        json_body(req)
        return (await runs.approve(svc, caller, route(req, "subscriptionId"), route(req, "runId"))).to_api()
    return await handle(req, act)


@bp.function_name("resend_invitations")
@bp.route(route=ONE + "/invitations", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def resend_invitations(req: func.HttpRequest) -> func.HttpResponse:
    async def act(svc, caller):
        counts = await invitation_lifecycle.resend_not_enrolled(svc, caller, route(req, "subscriptionId"), json_body(req))
        return Reply(202, counts)
    return await handle(req, act)
