"""HTTP functions of the Users grid, the Groups grid and enrollment completion."""
from __future__ import annotations

import azure.functions as func

from .. import invitation_lifecycle, users
from .http import Reply, handle, json_body, query, route

bp = func.Blueprint()


@bp.function_name("list_users")
@bp.route(route="users", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
async def list_users(req: func.HttpRequest) -> func.HttpResponse:
    async def act(svc, caller):
        return await users.page(svc, caller, query(req))
    return await handle(req, act, query_params=("status", "sourceType", "search", "enrollment", "pageSize",
                                                        "continuationToken"))


@bp.function_name("create_user")
@bp.route(route="users", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def create_user(req: func.HttpRequest) -> func.HttpResponse:
    async def act(svc, caller):
        user = await users.create_manual(svc, caller, json_body(req))
        return Reply(201, user.to_api({}), {"Location": f"/api/users/{user.id}"})
    return await handle(req, act)


@bp.function_name("get_user")
@bp.route(route="users/{userId}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
async def get_user(req: func.HttpRequest) -> func.HttpResponse:
    async def act(svc, caller):
        user = await users.get(svc, caller, route(req, "userId"))
        return user.to_api(await users.group_names(svc, caller.org))
    return await handle(req, act)


@bp.function_name("get_user_history")
@bp.route(route="users/{userId}/history", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
async def get_user_history(req: func.HttpRequest) -> func.HttpResponse:
    async def act(svc, caller):
        return await users.history(svc, caller, route(req, "userId"))
    return await handle(req, act)


@bp.function_name("deactivate_user")
@bp.route(route="users/{userId}/deactivate", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def deactivate_user(req: func.HttpRequest) -> func.HttpResponse:
    async def act(svc, caller):
        json_body(req)
        user = await users.set_active(svc, caller, route(req, "userId"), active=False)
        return user.to_api(await users.group_names(svc, caller.org))
    return await handle(req, act)


@bp.function_name("activate_user")
@bp.route(route="users/{userId}/activate", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def activate_user(req: func.HttpRequest) -> func.HttpResponse:
    async def act(svc, caller):
        json_body(req)
        user = await users.set_active(svc, caller, route(req, "userId"), active=True)
        return user.to_api(await users.group_names(svc, caller.org))
    return await handle(req, act)


@bp.function_name("list_groups")
@bp.route(route="groups", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
async def list_groups(req: func.HttpRequest) -> func.HttpResponse:
    async def act(svc, caller):
        return {"groups": [g.to_api() for g in await users.synced_groups(svc, caller)]}
    return await handle(req, act)


@bp.function_name("complete_enrollment")
@bp.route(route="enrollment/complete", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def complete_enrollment(req: func.HttpRequest) -> func.HttpResponse:
    async def act(svc, caller):
        user = await users.complete_enrollment(svc, caller, json_body(req))
        return user.to_api(await users.group_names(svc, caller.org))
    return await handle(req, act)


@bp.function_name("resend_invitation")
@bp.route(route="users/{userId}/invitation", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def resend_invitation(req: func.HttpRequest) -> func.HttpResponse:
    async def act(svc, caller):
        json_body(req)
        user = await invitation_lifecycle.resend(svc, caller, route(req, "userId"))
        return Reply(202, user.to_api(await users.group_names(svc, caller.org)))
    return await handle(req, act)


@bp.function_name("reissue_enrollment")
@bp.route(route="enrollment/reissue", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def reissue_enrollment(req: func.HttpRequest) -> func.HttpResponse:
    async def act(svc, caller):
        user = await invitation_lifecycle.reissue(svc, caller, json_body(req))
        return Reply(202, {"invitation": user.to_api({})["invitation"]})
    return await handle(req, act)
