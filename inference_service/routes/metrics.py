"""``GET /metrics``: Prometheus text exposition of this app's registry."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from inference_service.observability import Observability


def build_router(obs: Observability) -> APIRouter:
    r = APIRouter(tags=["observability"])

    @r.get("/metrics", response_class=Response, summary="Prometheus metrics: requests and latency per endpoint "
           "and model version, prediction scores, model loads and reloads, prediction-log state")
    def metrics() -> Response:
        return Response(generate_latest(obs.registry), media_type=CONTENT_TYPE_LATEST)

    return r
