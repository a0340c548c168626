"""``POST /predict``: raw records in, one prediction per record out, in order.

Every prediction is also handed to the prediction log (``fti_predictions``)
before the response is returned; building the rows (canonical JSON of the
normalised inputs and of the outputs) and the database write happen in the
log's background thread, never on this path. The response carries ``X-Request-ID``
(also stored with each logged row), ``X-Model-Name`` and ``X-Model-Version``.

The model is taken once per request (``ModelDep``) and passed down explicitly:
never read ``runtime.model`` below that point, or a hot reload in the middle of
a request could score with one version and label or log it as another.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Any

import pandas as pd
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from inference_service import body as body_codec
from inference_service.dependencies import ModelDep, RuntimeDep
from inference_service.errors import error_response
from inference_service.model_loader import LoadedModel
from inference_service.observability import Observability, note
from inference_service.online import Scored, score
from inference_service.runtime import Runtime
from inference_service.schemas import ErrorResponse, PredictResponse
from shared.certificate import raw_records
from shared.feature_table import FeatureStoreError, utcnow
from shared.prediction_table import canonical_json
from shared.raw import RawDataError

log = logging.getLogger(__name__)

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "invalid JSON or invalid records (every problem listed)"},
    413: {"description": "body larger than FTI_MAX_BODY_BYTES"},
    415: {"model": ErrorResponse, "description": "Content-Type is not application/json"},
    503: {"model": ErrorResponse, "description": "no model loaded yet, or the feature store is unreachable"},
}


def _predict(runtime: Runtime, model: LoadedModel, records: list[Any], request_id: str) -> dict[str, Any]:
    spec = runtime.spec.spec
    scored = score(records, spec, runtime.engine, model, runtime.online_for(model))
    classes = model.classes
    labels = [str(c) for c in classes]
    ids = scored.column(spec.record_id)
    out = []
    for i, row in enumerate(scored.proba):
        best = int(row.argmax())
        out.append({"prediction_id": uuid.uuid4().hex, "record_id": ids[i], "prediction": classes[best],
                    "probabilities": dict(zip(labels, row.tolist(), strict=True))})
    if runtime.prediction_log is not None:  # rows are built and written in the log's thread
        now = utcnow()
        runtime.prediction_log.submit_lazy(len(out), lambda: log_rows(runtime, model, scored, out, request_id, now))
    return {"model_name": model.name, "model_version": model.version, "feature_version": scored.feature_version,
            "trained_on_feature_version": model.trained_feature_version, "predictions": out, "_proba": scored.proba}


def log_rows(runtime: Runtime, model: LoadedModel, scored: Scored, predictions: list[dict[str, Any]],
             request_id: str, now: datetime) -> list[dict[str, Any]]:
    """One ``fti_predictions`` row per prediction; ``inputs`` is the normalised record, replayable as is."""
    spec = runtime.spec.spec
    inputs = raw_records(scored.records, spec)
    entities = scored.records[spec.entity_key].tolist()
    times = _naive_utc_column(scored.records[spec.event_time]) if spec.event_time else [None] * len(predictions)
    return [{"prediction_id": p["prediction_id"], "request_id": request_id, "created_at": now,
             "dataset": spec.name, "model_name": model.name, "model_version": model.version,
             "feature_version": scored.feature_version, "record_id": str(p["record_id"]),
             "entity_key": str(entities[i]), "event_time": times[i], "inputs": canonical_json(inputs[i]),
             "outputs": canonical_json({"prediction": p["prediction"], "probabilities": p["probabilities"]})}
            for i, p in enumerate(predictions)]


def _naive_utc_column(series: pd.Series) -> list[datetime | None]:
    """UTC timestamps -> naive ``datetime`` (microseconds), ``None`` for NaT; like ``naive_utc`` per value."""
    naive = series.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(dtype="datetime64[us]")
    return naive.astype(object).tolist()  # datetime64[us] -> datetime.datetime, NaT -> None


def openapi_body(request_schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": request_schema}}}}


def build_router(request_schema: dict[str, Any], obs: Observability) -> APIRouter:
    r = APIRouter(tags=["predict"])

    @r.post("/predict", response_model=PredictResponse, responses=_ERRORS, openapi_extra=openapi_body(request_schema),
            summary="Score raw records (the fields the feature pipeline reads)")
    async def predict(request: Request, runtime: RuntimeDep, model: ModelDep) -> JSONResponse:
        request_id = request.state.request_id  # set by ObserveRequests, also on the response
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
            result = await run_in_threadpool(_predict, runtime, model, records, request_id)
        except RawDataError as exc:
            return error_response(400, "invalid_records", f"{len(exc.problems)} problem(s) in the records",
                                  [p.as_dict() for p in exc.problems])
        except ValueError as exc:  # the model refused the computed features (e.g. overflow once scaled)
            log.warning("model refused the input (request %s): %s", request_id, str(exc)[:300])
            return error_response(400, "model_refused_input", "the model cannot score these records: "
                                  f"{str(exc).splitlines()[0][:200]}")
        except FeatureStoreError as exc:
            log.error("feature store unavailable (request %s): %s", request_id, exc)
            return error_response(503, "feature_store_unavailable", "history features cannot be read right now",
                                  headers={"Retry-After": "5"})
        obs.scored("/predict", model.version, result.pop("_proba"))
        note(request, model_name=model.name, rows=len(records), feature_version=result["feature_version"],
             prediction_ids=[p["prediction_id"] for p in result["predictions"]])
        return JSONResponse(result, headers={"X-Model-Name": model.name, "X-Model-Version": model.version})

    return r
