"""HTTP routes of Triton's model configuration and statistics extensions, on the app's service
(`request.app.state.service`):

    GET /v2/models/{name}/config    the model configuration (model_config.py); 503 until loaded
    GET /v2/models/{name}/stats     cumulative inference statistics (statistics.py)
    GET /v2/models/stats            the same, for every model served (one)
    (the first two also as /v2/models/{name}/versions/1/...)

`create_app` includes this router before its own `/v2/models/{name}` route, which would
otherwise take `/v2/models/stats` for a model named "stats".
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from .model_config import MODEL_VERSION, model_config, unknown_model

router = APIRouter()


def _json(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(doc, separators=(",", ":")), status, headers, media_type="application/json")


def _stats(service: Any) -> dict[str, Any]:
    return {"model_stats": [service.metrics.stats.to_dict(service.config.name, MODEL_VERSION)]}


@router.get("/v2/models/stats")
async def every_model_stats(request: Request) -> Response:
    return _json(_stats(request.app.state.service))


@router.get("/v2/models/{name}/stats")
@router.get("/v2/models/{name}/versions/{version}/stats")
async def model_stats(name: str, request: Request, version: str | None = None) -> Response:
    service = request.app.state.service
    if why := unknown_model(service.config, name, version):
        return _json({"error": why}, 404)
    return _json(_stats(service))


@router.get("/v2/models/{name}/config")
@router.get("/v2/models/{name}/versions/{version}/config")
async def model_configuration(name: str, request: Request, version: str | None = None) -> Response:
    service = request.app.state.service
    if why := unknown_model(service.config, name, version):
        return _json({"error": why}, 404)
    if not service.ready:
        reason = service.failure or "the committee is still loading or warming up"
        return _json({"error": f"model {name!r} is not ready: {reason}"}, 503, {"Retry-After": "1"})
    return _json(model_config(service))
