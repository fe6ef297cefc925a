"""Health and the OpenAPI document."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import azure.functions as func

from .. import __version__
from .http import json_response

bp = func.Blueprint()
OPENAPI = Path(__file__).resolve().parents[2] / "openapi.json"


@lru_cache(maxsize=1)
def openapi_document() -> dict:
    return json.loads(OPENAPI.read_text(encoding="utf-8"))


@bp.function_name("health")
@bp.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def health(req: func.HttpRequest) -> func.HttpResponse:
    """Liveness: answers without settings or connections."""
    return json_response(200, {"status": "ok", "version": __version__})


@bp.function_name("openapi")
@bp.route(route="openapi.json", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def openapi(req: func.HttpRequest) -> func.HttpResponse:
    """The API's description, anonymous so Swagger UI and client generators can load it (it holds no data)."""
    return json_response(200, openapi_document())
