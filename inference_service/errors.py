"""One error shape for every 4xx/5xx the service itself produces.

``{"error": {"code": str, "message": str, "problems": [...]}}`` -- never a stack
trace, never the raw input beyond a short excerpt.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

log = logging.getLogger(__name__)


def error_response(status: int, code: str, message: str, problems: list[dict[str, Any]] | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": {"code": code, "message": message}}
    if problems is not None:
        body["error"]["problems"] = problems
    return JSONResponse(body, status_code=status, headers=headers)


def _mlflow_path(request: Request) -> bool:
    from inference_service.routes.mlflow_compat import MLFLOW_PATHS

    return request.url.path in MLFLOW_PATHS


def install(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Any:
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(exc.status_code, "error")
        if _mlflow_path(request):  # MLflow's error shape on MLflow's endpoints
            from inference_service.routes.mlflow_compat import mlflow_error

            mlflow_code = {404: "ENDPOINT_NOT_FOUND", 413: "BAD_REQUEST"}.get(exc.status_code, "BAD_REQUEST")
            return mlflow_error(exc.status_code, mlflow_code, str(exc.detail), headers=getattr(exc, "headers", None))
        return error_response(exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [{"code": e.get("type"), "column": ".".join(map(str, e.get("loc", ()))), "message": e.get("msg")}
                    for e in exc.errors()]
        return error_response(400, "invalid_request", "the request does not match the schema", problems)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect) -> Any:
        # The client left mid-request: nothing to answer and nothing wrong with the service.
        log.info("client disconnected during %s %s (request %s)", request.method, request.url.path,
                 getattr(request.state, "request_id", None))
        return error_response(400, "client_disconnected", "the client disconnected before the request was read")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Any:
        request_id = getattr(request.state, "request_id", None)
        log.exception("unexpected error on %s %s (request %s)", request.method, request.url.path, request_id)
        message = f"an unexpected error occurred; see the server log (request {request_id})"
        if _mlflow_path(request):
            from inference_service.routes.mlflow_compat import mlflow_error

            return mlflow_error(500, "INTERNAL_ERROR", message)
        return error_response(500, "internal_error", message)
