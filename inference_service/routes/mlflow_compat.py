"""``mlflow models serve``'s REST surface: ``POST /invocations``, ``GET /ping``, ``/health``, ``/version``.

A client written against MLflow's scoring server works against fti unchanged
and gets the same predictions (``{"predictions": [[p0, p1], ...]}``: the
registered pyfunc returns ``predict_proba``). Inputs are the model's signature
columns; parsing and validation live in :mod:`inference_service.invocations`,
scoring in :mod:`inference_service.scoring` (the verified fast path).

Errors keep MLflow's shape, ``{"error_code", "message"}``, plus ``problems``
(every bad column and row) and never a ``stack_trace``.

Small requests are scored on the event loop: for a few rows the work is a
fraction of a millisecond and a thread hand-off would cost about as much.
Larger ones go to the thread pool so they cannot stall other requests.
"""

from __future__ import annotations

import json
import logging
from importlib import metadata
from typing import Any

from fastapi import APIRouter, Request, Response

from inference_service import body as body_codec
from inference_service import invocations as inv
from inference_service import scoring
from inference_service.json_out import encode_last_list
from inference_service.observability import Observability, note
from inference_service.runtime import Runtime

log = logging.getLogger(__name__)

MLFLOW_PATHS = frozenset({"/invocations", "/ping", "/health", "/version"})
INLINE_MAX_ROWS = 128  # ~2 ms of scoring at most on the event loop; a thread hand-off under load costs more
_DUMPS = json.JSONEncoder().encode  # MLflow's separators and float repr: byte-identical bodies


def _error_body(error_code: str, message: str, problems: list[dict[str, Any]] | None = None) -> bytes:
    body: dict[str, Any] = {"error_code": error_code, "message": message}
    if problems:
        body["problems"] = problems
    return _DUMPS(body).encode()


def mlflow_error(status: int, error_code: str, message: str, problems: list[dict[str, Any]] | None = None,
                 headers: dict[str, str] | None = None) -> Response:
    return Response(_error_body(error_code, message, problems), status_code=status, media_type="application/json",
                    headers=headers)


def _not_ready(runtime: Runtime) -> Response:
    return mlflow_error(503, "TEMPORARILY_UNAVAILABLE", f"no model is loaded: {runtime.public_error or 'loading'}",
                        headers={"Retry-After": "5"})


def _mlflow_version() -> str:
    for dist in ("mlflow-skinny", "mlflow"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "unknown"


def _schema(signature: inv.Signature, max_rows: int) -> dict[str, Any]:
    """OpenAPI for the request: an anyOf of MLflow's four JSON layouts over the signature's columns."""
    value = {"anyOf": [{"type": "number"}, {"type": "string"}, {"type": "boolean"}, {"type": "null"}]}
    record = {"type": "object", "additionalProperties": False, "required": signature.names,
              "properties": {c.name: ({"type": ["number", "null"]} if c.numeric else {"type": ["string", "null"]})
                             for c in signature.columns}}
    records = {"type": "array", "minItems": 1, "maxItems": max_rows, "items": record}
    columns = {"type": "object", "additionalProperties": False, "required": signature.names,
               "properties": {c.name: {"type": "array", "minItems": 1, "maxItems": max_rows, "items": value}
                              for c in signature.columns}}
    split = {"type": "object", "required": ["columns", "data"], "additionalProperties": False,
             "properties": {"columns": {"type": "array", "items": {"type": "string"}},
                            "data": {"type": "array", "minItems": 1, "maxItems": max_rows,
                                     "items": {"type": "array", "items": value}},
                            "index": {"type": "array"}}}
    params = {"type": ["object", "null"], "maxProperties": 0}

    def one(key: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {"type": "object", "required": [key], "additionalProperties": False,
                "properties": {key: schema, "params": params}}

    return {"anyOf": [one("dataframe_split", split), one("dataframe_records", records),
                      one("inputs", {"anyOf": [columns, records]}), one("instances", {"anyOf": [records, columns]})]}


INLINE_MAX_BYTES = 64 * 1024


def _decode(mime: str, raw: bytes, signature: inv.Signature, max_rows: int) -> tuple[int, dict[str, Any]]:
    if mime == "application/json":
        columns, n = inv.json_columns(inv.decode_json(raw, max_rows))
    elif mime == "text/csv":
        columns, n = inv.csv_columns(raw, signature)
    else:
        columns, n = inv.parquet_columns(raw, max_rows)
    return n, inv.validate(columns, n, signature, max_rows=max_rows)


async def score_invocation(runtime: Runtime, content_type: str | None, raw: bytes, request_id: str,
                           signature: inv.Signature, obs: Observability, max_rows: int
                           ) -> tuple[int, bytes, dict[str, str], dict[str, Any]]:
    """One ``/invocations`` request: (status, JSON body, headers, access-log fields)."""
    model = runtime.model  # once: a hot reload may swap it meanwhile
    if model is None:
        r = _not_ready(runtime)
        return r.status_code, bytes(r.body), {"Retry-After": "5"}, {}
    headers = {"X-Model-Name": model.name, "X-Model-Version": model.version}
    try:
        mime = inv.check_content_type(content_type)
        # Parquet always goes to a thread: a few KB of it can decompress to far more work than its size says
        if len(raw) <= INLINE_MAX_BYTES and mime != "application/vnd.apache.parquet":
            n, canonical = _decode(mime, raw, signature, max_rows)
        else:  # off the event loop: a large body never holds up the probes
            n, canonical = await runtime.cpu_slot.in_worker(_decode, mime, raw, signature, max_rows)
    except inv.InvocationError as exc:
        return exc.status, _error_body(exc.error_code, str(exc), exc.problems), headers, \
            {"error": exc.error_code, "model_name": model.name}
    try:
        if n <= INLINE_MAX_ROWS:
            proba, body = _score_encoded(model, canonical, n)
        else:  # scoring and the response's JSON both off the event loop
            proba, body = await runtime.cpu_slot.in_worker(_score_encoded, model, canonical, n)
    except ValueError as exc:  # e.g. values that overflow to infinity once scaled (LogisticRegression)
        log.warning("model refused the input (request %s): %s", request_id, str(exc)[:300])
        return 400, _error_body("INVALID_PARAMETER_VALUE", "the model cannot score these rows: "
                                f"{str(exc).splitlines()[0][:200]}"), headers, \
            {"error": "model_refused_input", "model_name": model.name}
    obs.scored("/invocations", model.version, proba, model.positive_index)
    return 200, body, headers, {"model_name": model.name, "rows": n}


def _score_encoded(model: Any, canonical: dict[str, Any], n: int) -> tuple[Any, bytes]:
    proba = scoring.predict_columns(model, canonical, n)
    # as MLflow's pyfunc: a classifier's predict_proba rows, a regressor's predict values (a flat list)
    values = proba[:, 0].tolist() if model.is_regressor else proba.tolist()
    body = encode_last_list(_DUMPS, {"predictions": values}, "predictions", item_separator=", ",
                            key_separator=": ")
    return proba, body.encode()


class FastLane:
    """``POST /invocations`` straight from the ASGI middleware, past FastAPI's routing and dependency
    machinery (~0.2 ms of a ~1 ms request). Same function, same body-size limit, same errors as the
    route, which stays registered for the OpenAPI document and for other methods."""

    def __init__(self, runtime_getter: Any, signature: inv.Signature, obs: Observability, *, max_rows: int,
                 max_body_bytes: int):
        self.runtime = runtime_getter
        self.signature = signature
        self.obs = obs
        self.max_rows = max_rows
        self.max_body = max_body_bytes

    def handles(self, scope: dict[str, Any]) -> bool:
        return scope["path"] == "/invocations" and scope["method"] == "POST"

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any, state: dict[str, Any]) -> None:
        content_type, raw, too_large = await body_codec.read_limited(scope, receive, self.max_body)
        if too_large:
            await self._send(send, 413, _error_body("BAD_REQUEST", "Content Too Large"), {})
            return
        if raw is None:  # the client left
            return
        try:
            status, body, headers, fields = await score_invocation(
                self.runtime(), content_type, raw, state["request_id"], self.signature, self.obs,
                self.max_rows)
        except Exception:  # noqa: BLE001 - as the app's handler: generic 500, details in the log
            log.exception("unexpected error on POST /invocations (request %s)", state["request_id"])
            status, headers, fields = 500, {}, {"error": "INTERNAL_ERROR"}
            body = _error_body("INTERNAL_ERROR", "an unexpected error occurred; see the server log (request "
                                                 f"{state['request_id']})")
        state["log"].update(fields)
        await self._send(send, status, body, headers)

    @staticmethod
    async def _send(send: Any, status: int, body: bytes, headers: dict[str, str]) -> None:
        raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})


def build_router(signature: inv.Signature, obs: Observability, *, max_rows: int) -> APIRouter:
    r = APIRouter(tags=["mlflow-compatible"])
    mlflow_version = _mlflow_version()
    errors: dict[int | str, dict[str, Any]] = {
        400: {"description": "malformed body or data that does not fit the signature: "
                             "`{error_code, message, problems}`"},
        413: {"description": "body larger than FTI_MAX_BODY_BYTES or more rows than FTI_MAX_INVOCATION_ROWS"},
        415: {"description": "Content-Type other than application/json, text/csv, application/vnd.apache.parquet"},
        503: {"description": "no model loaded yet (`Retry-After`)"},
    }

    @r.post("/invocations", response_class=Response, responses=errors, summary="Score model-input rows "
            "(MLflow scoring-server formats: dataframe_split, dataframe_records, inputs, instances; JSON, CSV, "
            "Parquet)", openapi_extra={"requestBody": {"required": True, "content": {
                "application/json": {"schema": _schema(signature, max_rows)},
                "text/csv": {"schema": {"type": "string"}},
                "application/vnd.apache.parquet": {"schema": {"type": "string", "format": "binary"}}}}})
    async def invocations(request: Request) -> Response:
        """Reached only when the fast lane is off (see :class:`FastLane`); same code either way."""
        status, body, headers, fields = await score_invocation(
            request.app.state.runtime, request.headers.get("content-type"), await request.body(),
            request.state.request_id, signature, obs, max_rows)
        note(request, **fields)
        return Response(body, status_code=status, media_type="application/json", headers=headers)

    def _health(request: Request) -> Response:
        runtime: Runtime = request.app.state.runtime
        if runtime.model is None:
            return _not_ready(runtime)
        return Response("\n", media_type="application/json")

    r.add_api_route("/ping", _health, methods=["GET"], summary="200 once a model is loaded (MLflow's /ping)",
                    responses={503: errors[503]}, response_class=Response)
    r.add_api_route("/health", _health, methods=["GET"], summary="Same as /ping (MLflow's /health)",
                    responses={503: errors[503]}, response_class=Response)

    @r.get("/version", response_class=Response, summary="The MLflow scoring-protocol version (as MLflow's "
           "/version); the served model in X-Model-Name / X-Model-Version")
    def version(request: Request) -> Response:
        runtime: Runtime = request.app.state.runtime
        model = runtime.model
        headers = {"X-FTI-Version": request.app.version}
        if model is not None:
            headers.update({"X-Model-Name": model.name, "X-Model-Version": model.version})
        return Response(mlflow_version, media_type="application/json", headers=headers)

    return r
