"""``POST /predict``: raw records in, one prediction per record out, in order.

Every prediction is also handed to the prediction log (``fti_predictions``)
before the response is returned: the request's body and the response's body, as
bytes (:class:`inference_service.log_rows.RequestChunk`). Building the rows
(canonical JSON of the normalised inputs and of the outputs) and the database
write happen in the log's writer process (or thread), never on this path. The response carries ``X-Request-ID``
(also stored with each logged row), ``X-Model-Name`` and ``X-Model-Version``.

The model is taken once per request (``ModelDep``) and passed down explicitly:
never read ``runtime.model`` below that point, or a hot reload in the middle of
a request could score with one version and label or log it as another.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from inference_service import body as body_codec
from inference_service.errors import error_response
from inference_service.json_out import encode_last_list
from inference_service.model_loader import LoadedModel
from inference_service.observability import MAX_LOGGED_IDS, Observability, note
from inference_service.online import score
from inference_service.runtime import Runtime
from inference_service.schemas import ErrorResponse, PredictResponse
from shared.feature_table import FeatureStoreError, utcnow
from shared.prediction_table import new_prediction_id
from shared.raw import RawDataError

log = logging.getLogger(__name__)
INLINE_MAX_RECORDS = 128  # as /invocations: on the numpy online path ~5 ms at most on the event loop; a thread
# hand-off under load costs more (measured: 100-record batches 61 -> see docs/benchmarks.md); larger: a worker thread

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
    out: list[dict[str, Any]] = []
    if model.is_regressor:  # the one output column is the predicted value
        for i, value in enumerate(scored.proba[:, 0].tolist()):
            out.append({"prediction_id": new_prediction_id(), "record_id": ids[i], "prediction": value})
    decided = model.decide(scored.proba).tolist() if not model.is_regressor else []
    k = model.positive_index if model.decision is not None else None
    for i, row in enumerate(scored.proba if not model.is_regressor else []):
        item = {"prediction_id": new_prediction_id(), "record_id": ids[i], "prediction": classes[decided[i]]}
        if k is not None:
            item["score"] = float(row[k])
        item["probabilities"] = dict(zip(labels, row.tolist(), strict=True))
        out.append(item)
    result: dict[str, Any] = {"model_name": model.name, "model_version": model.version,
                              "feature_version": scored.feature_version,
                              "trained_on_feature_version": model.trained_feature_version}
    if model.decision is not None:
        result["decision"] = model.decision.public()
    return {**result, "predictions": out, "_proba": scored.proba}


def _predict_encoded(runtime: Runtime, model: LoadedModel, records: list[Any], request_id: str, raw: bytes
                     ) -> tuple[dict[str, Any], bytes]:
    """:func:`_predict` and its response body, in the same thread; both bodies go to the prediction log,
    which builds the rows from them later (in its own process)."""
    result = _predict(runtime, model, records, request_id)
    body = encode_last_list(_DUMPS, {k: v for k, v in result.items() if k != "_proba"}, "predictions",
                            item_separator=",", key_separator=":").encode()
    if runtime.prediction_log is not None:
        threshold = model.decision.threshold if model.decision is not None else None
        runtime.prediction_log.log_request(len(result["predictions"]), raw, body, request_id, utcnow(), threshold)
    return result, body


def openapi_body(request_schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": request_schema}}}}


_DUMPS = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode  # as JSONResponse


def _error(status: int, code: str, message: str, problems: list[dict[str, Any]] | None = None,
           headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str], dict[str, Any]]:
    r = error_response(status, code, message, problems, headers)
    return status, bytes(r.body), dict(headers or {}), {"error": code}


async def score_predict(runtime: Runtime, content_type: str | None, raw: bytes, request_id: str,
                        obs: Observability) -> tuple[int, bytes, dict[str, str], dict[str, Any]]:
    """One ``/predict`` request: (status, JSON body, headers, access-log fields).

    Called by the route and by :class:`PredictLane` alike, so both answer byte for byte the same."""
    model = runtime.model  # once: a hot reload may swap it meanwhile
    if model is None:
        return _error(503, "error", f"no model is loaded: {runtime.public_error or 'loading'}",
                      headers={"Retry-After": "5"})
    if runtime.integrity_error:
        return _error(503, "feature_store_changed", runtime.public_error or "", headers={"Retry-After": "5"})
    limit = runtime.settings.max_batch_rows
    try:
        body_codec.check_content_type(content_type)
        if len(raw) <= body_codec.STREAM_MIN_BYTES:
            payload = body_codec.decode(raw)
        else:  # off the event loop, a record at a time, stopping at the first record past the limit
            payload = await runtime.cpu_slot.in_worker(body_codec.decode, raw, limit)
    except body_codec.BodyError as exc:
        return _error(exc.status, exc.code, str(exc))
    if not isinstance(payload, dict) or set(payload) != {"records"}:
        return _error(400, "bad_request", 'the body must be a JSON object {"records": [...]}')
    records = payload["records"]
    if not isinstance(records, list) or not records:
        return _error(400, "bad_request", '"records" must be a non-empty array of objects')
    if len(records) > limit:
        return _error(413, "too_many_records", f"{len(records)} records; the limit is {limit} (FTI_MAX_BATCH_ROWS)")
    try:
        if len(records) <= INLINE_MAX_RECORDS and runtime.online_for(model) is not None:
            result, body = _predict_encoded(runtime, model, records, request_id, raw)  # ~1 ms: a hop costs more
        else:  # scoring and the response's JSON (milliseconds for 1,000 records) both off the event loop
            result, body = await runtime.cpu_slot.in_worker(_predict_encoded, runtime, model, records, request_id,
                                                            raw)
    except RawDataError as exc:
        return _error(400, "invalid_records", f"{len(exc.problems)} problem(s) in the records",
                      [p.as_dict() for p in exc.problems])
    except ValueError as exc:  # the model refused the computed features (e.g. overflow once scaled)
        log.warning("model refused the input (request %s): %s", request_id, str(exc)[:300])
        return _error(400, "model_refused_input", "the model cannot score these records: "
                      f"{str(exc).splitlines()[0][:200]}")
    except FeatureStoreError as exc:
        log.error("feature store unavailable (request %s): %s", request_id, exc)
        return _error(503, "feature_store_unavailable", "history features cannot be read right now",
                      headers={"Retry-After": "5"})
    obs.scored("/predict", model.version, result["_proba"], model.positive_index)
    ids = [p["prediction_id"] for p in result["predictions"]]
    fields: dict[str, Any] = {"model_name": model.name, "rows": len(records),
                              "feature_version": result["feature_version"],
                              "prediction_ids": ids[:MAX_LOGGED_IDS]}
    if len(ids) > MAX_LOGGED_IDS:
        fields["prediction_ids_truncated"] = True
    return 200, body, {"X-Model-Name": model.name, "X-Model-Version": model.version}, fields


class PredictLane:
    """``POST /predict`` straight from the ASGI middleware, past FastAPI's routing, dependency injection
    and thread pool; same function (:func:`score_predict`), body limit and errors as the route, which
    stays registered for the OpenAPI document."""

    def __init__(self, runtime_getter: Any, obs: Observability, *, max_body_bytes: int):
        self.runtime = runtime_getter
        self.obs = obs
        self.max_body = max_body_bytes

    def handles(self, scope: dict[str, Any]) -> bool:
        return scope["path"] == "/predict" and scope["method"] == "POST"

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any, state: dict[str, Any]) -> None:
        content_type, raw, too_large = await body_codec.read_limited(scope, receive, self.max_body)
        if too_large:
            await _send(send, *_error(413, "payload_too_large", "Content Too Large")[:3])
            return
        if raw is None:  # the client left
            return
        try:
            status, body, headers, fields = await score_predict(self.runtime(), content_type, raw,
                                                                state["request_id"], self.obs)
        except Exception:  # noqa: BLE001 - as the app's handler: generic 500, details in the log
            log.exception("unexpected error on POST /predict (request %s)", state["request_id"])
            status, body, headers, fields = _error(500, "internal_error", "an unexpected error occurred; see the "
                                                   f"server log (request {state['request_id']})")
        state["log"].update(fields)
        await _send(send, status, body, headers)


async def _send(send: Any, status: int, body: bytes, headers: dict[str, str]) -> None:
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def build_router(request_schema: dict[str, Any], obs: Observability) -> APIRouter:
    r = APIRouter(tags=["predict"])

    @r.post("/predict", response_model=PredictResponse, responses=_ERRORS, openapi_extra=openapi_body(request_schema),
            summary="Score raw records (the fields the feature pipeline reads)")
    async def predict(request: Request) -> Response:
        """Reached only when the lane is off (see :class:`PredictLane`); same code either way."""
        status, body, headers, fields = await score_predict(
            request.app.state.runtime, request.headers.get("content-type"), await request.body(),
            request.state.request_id, obs)
        note(request, **fields)
        return Response(body, status_code=status, media_type="application/json", headers=headers)

    return r
