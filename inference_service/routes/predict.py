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

import json
import logging
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from fastapi import APIRouter, Request
from fastapi.responses import Response

from inference_service import body as body_codec
from inference_service.errors import error_response
from inference_service.json_out import encode_last_list
from inference_service.model_loader import LoadedModel
from inference_service.observability import MAX_LOGGED_IDS, Observability, note
from inference_service.online import Scored, score
from inference_service.runtime import Runtime
from inference_service.schemas import ErrorResponse, PredictResponse
from shared.certificate import raw_records, raw_records_from_arrays
from shared.feature_table import FeatureStoreError, utcnow
from shared.prediction_table import canonical_json, new_prediction_id, outputs
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
    if runtime.prediction_log is not None:  # rows are built and written in the log's thread
        now = utcnow()
        runtime.prediction_log.submit_lazy(len(out), LogChunk(runtime, model, scored, out, request_id, now))
    result: dict[str, Any] = {"model_name": model.name, "model_version": model.version,
                              "feature_version": scored.feature_version,
                              "trained_on_feature_version": model.trained_feature_version}
    if model.decision is not None:
        result["decision"] = model.decision.public()
    return {**result, "predictions": out, "_proba": scored.proba}


def _predict_encoded(runtime: Runtime, model: LoadedModel, records: list[Any], request_id: str
                     ) -> tuple[dict[str, Any], bytes]:
    """:func:`_predict` and its response body, in the same thread."""
    result = _predict(runtime, model, records, request_id)
    body = encode_last_list(_DUMPS, {k: v for k, v in result.items() if k != "_proba"}, "predictions",
                            item_separator=",", key_separator=":").encode()
    return result, body


def log_rows(runtime: Runtime, model: LoadedModel, scored: Scored, predictions: list[dict[str, Any]],
             request_id: str, now: datetime) -> list[dict[str, Any]]:
    """One ``fti_predictions`` row per prediction; ``inputs`` is the normalised record, replayable as is."""
    spec = runtime.spec.spec
    if scored.arrays is not None:  # the numpy online path: no frame here either
        inputs = raw_records_from_arrays(scored.arrays, spec)
        entities = list(scored.arrays[spec.entity_key])
        times = _naive_utc_micros(scored.arrays[spec.event_time]) if spec.event_time else [None] * len(predictions)
    else:
        inputs = raw_records(scored.records, spec)
        entities = scored.records[spec.entity_key].tolist()
        times = _naive_utc_column(scored.records[spec.event_time]) if spec.event_time else [None] * len(predictions)
    return _rows(runtime, model, scored, predictions, request_id, now, inputs, entities, times)


def _rows(runtime: Runtime, model: LoadedModel, scored: Scored, predictions: list[dict[str, Any]], request_id: str,
          now: datetime, inputs: list[dict[str, Any]], entities: list[Any], times: list[Any]) -> list[dict[str, Any]]:
    spec = runtime.spec.spec
    threshold = model.decision.threshold if model.decision is not None else None
    return [{"prediction_id": p["prediction_id"], "request_id": request_id, "created_at": now,
             "dataset": spec.name, "model_name": model.name, "model_version": model.version,
             "feature_version": scored.feature_version, "record_id": str(p["record_id"]),
             "entity_key": str(entities[i]), "event_time": times[i], "inputs": canonical_json(inputs[i]),
             "outputs": canonical_json(outputs(p["prediction"], p.get("probabilities"), threshold))}
            for i, p in enumerate(predictions)]


class LogChunk:
    """One request's log rows, built in the log's thread: alone (``chunk()``), or with the other chunks of
    a batch at once (:meth:`build_many`, which the writer prefers)."""

    __slots__ = ("model", "now", "predictions", "request_id", "runtime", "scored")

    def __init__(self, runtime: Runtime, model: LoadedModel, scored: Scored, predictions: list[dict[str, Any]],
                 request_id: str, now: datetime):
        self.runtime, self.model, self.scored = runtime, model, scored
        self.predictions, self.request_id, self.now = predictions, request_id, now

    def __call__(self) -> list[dict[str, Any]]:
        return log_rows(self.runtime, self.model, self.scored, self.predictions, self.request_id, self.now)

    @staticmethod
    def build_many(chunks: list[LogChunk]) -> list[dict[str, Any]]:
        """Every chunk's rows, in order, the same as each chunk's own: the numpy-path chunks' columns are
        joined and rendered once. Why: a request of one record costs ~45 us of fixed per-call work to
        render alone, and a 0.2 s batch of 450 such requests held the GIL for 20 ms in one go, which was
        serving's p99 with the log on."""
        groups: dict[Any, list[int]] = {}
        for i, c in enumerate(chunks):
            arrays = c.scored.arrays
            if arrays is None:
                continue
            key = (id(c.runtime.spec.spec), tuple((k, v.dtype.str) for k, v in arrays.items()))
            groups.setdefault(key, []).append(i)
        built: list[list[dict[str, Any]] | None] = [None] * len(chunks)
        for members in groups.values():
            if len(members) < 2:
                continue
            group = [chunks[i] for i in members]
            spec = group[0].runtime.spec.spec
            names = list(group[0].scored.arrays or {})
            joined = {k: np.concatenate([(c.scored.arrays or {})[k] for c in group]) for k in names}
            inputs = raw_records_from_arrays(joined, spec)
            entities = list(joined[spec.entity_key])
            times = _naive_utc_micros(joined[spec.event_time]) if spec.event_time else [None] * len(entities)
            at = 0
            for i, c in zip(members, group, strict=True):
                n = len(c.predictions)
                built[i] = _rows(c.runtime, c.model, c.scored, c.predictions, c.request_id, c.now,
                                 inputs[at:at + n], entities[at:at + n], times[at:at + n])
                at += n
        out: list[dict[str, Any]] = []
        for i, c in enumerate(chunks):
            rows = built[i]
            out.extend(rows if rows is not None else c())
        return out


def _naive_utc_column(series: pd.Series) -> list[datetime | None]:
    """UTC timestamps -> naive ``datetime`` (microseconds), ``None`` for NaT; like ``naive_utc`` per value."""
    naive = series.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(dtype="datetime64[us]")
    return naive.astype(object).tolist()  # datetime64[us] -> datetime.datetime, NaT -> None


def _naive_utc_micros(micros: Any) -> list[datetime | None]:
    """Epoch microseconds (``NAT_MICROS`` missing) -> naive UTC ``datetime``, as ``_naive_utc_column``."""
    return np.asarray(micros, dtype=np.int64).view("datetime64[us]").astype(object).tolist()


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
            result, body = _predict_encoded(runtime, model, records, request_id)  # ~1 ms: a hop costs more
        else:  # scoring and the response's JSON (milliseconds for 1,000 records) both off the event loop
            result, body = await runtime.cpu_slot.in_worker(_predict_encoded, runtime, model, records, request_id)
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
