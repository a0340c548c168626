"""``POST /predict``: raw records in, one prediction per record out, in order."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from inference_service import body as body_codec
from inference_service.dependencies import ModelDep, RuntimeDep
from inference_service.errors import error_response
from inference_service.model_loader import LoadedModel
from inference_service.online import score
from inference_service.runtime import Runtime
from inference_service.schemas import ErrorResponse, PredictResponse
from shared.feature_table import FeatureStoreError
from shared.raw import RawDataError

log = logging.getLogger(__name__)

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "invalid JSON or invalid records (every problem listed)"},
    413: {"description": "body larger than FTI_MAX_BODY_BYTES"},
    415: {"model": ErrorResponse, "description": "Content-Type is not application/json"},
    503: {"model": ErrorResponse, "description": "no model loaded yet, or the feature store is unreachable"},
}


def _predict(runtime: Runtime, model: LoadedModel, records: list[Any]) -> dict[str, Any]:
    spec = runtime.spec.spec
    scored = score(records, spec, runtime.engine, model)
    classes = model.classes
    labels = [str(c) for c in classes]
    ids = scored.records[spec.record_id].tolist()
    out = []
    for i, row in enumerate(scored.proba):
        best = int(row.argmax())
        out.append({"prediction_id": uuid.uuid4().hex, "record_id": ids[i], "prediction": classes[best],
                    "probabilities": dict(zip(labels, row.tolist(), strict=True))})
    return {"model_name": model.name, "model_version": model.version, "feature_version": scored.feature_version,
            "trained_on_feature_version": model.trained_feature_version, "predictions": out}


def openapi_body(request_schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": request_schema}}}}


def build_router(request_schema: dict[str, Any]) -> APIRouter:
    r = APIRouter(tags=["predict"])

    @r.post("/predict", response_model=PredictResponse, responses=_ERRORS, openapi_extra=openapi_body(request_schema),
            summary="Score raw records (the fields the feature pipeline reads)")
    async def predict(request: Request, runtime: RuntimeDep, model: ModelDep) -> JSONResponse:
        try:
            body_codec.check_content_type(request.headers.get("content-type"))
            payload = body_codec.decode(await request.body())
        except body_codec.BodyError as exc:
            return error_response(exc.status, exc.code, str(exc))
        if not isinstance(payload, dict) or set(payload) != {"records"}:
            return error_response(400, "bad_request", 'the body must be a JSON object {"records": [...]}')
        records = payload["records"]
        limit = runtime.settings.max_batch_rows
        if not isinstance(records, list) or not records:
            return error_response(400, "bad_request", '"records" must be a non-empty array of objects')
        if len(records) > limit:
            return error_response(413, "too_many_records", f"{len(records)} records; the limit is {limit} "
                                  "(FTI_MAX_BATCH_ROWS)")
        try:
            result = await run_in_threadpool(_predict, runtime, model, records)
        except RawDataError as exc:
            return error_response(400, "invalid_records", f"{len(exc.problems)} problem(s) in the records",
                                  [p.as_dict() for p in exc.problems])
        except FeatureStoreError as exc:
            log.error("feature store unavailable: %s", exc)
            return error_response(503, "feature_store_unavailable", "history features cannot be read right now",
                                  headers={"Retry-After": "5"})
        return JSONResponse(result)

    return r
