"""Request-scoped access to the runtime and the loaded model."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from inference_service.model_loader import LoadedModel
from inference_service.runtime import Runtime


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


class NotReady(HTTPException):
    def __init__(self, reason: str | None):
        super().__init__(503, detail=f"no model is loaded: {reason or 'loading'}", headers={"Retry-After": "5"})


def get_model(runtime: RuntimeDep) -> LoadedModel:
    """The served model, read ONCE per request: a hot reload that swaps ``runtime.model`` meanwhile does
    not change the model that scores, labels (``X-Model-Version``, ``model_version``) and logs this request."""
    model = runtime.model
    if model is None:
        raise NotReady(runtime.last_error)
    return model


ModelDep = Annotated[LoadedModel, Depends(get_model)]
