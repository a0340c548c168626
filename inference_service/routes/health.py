"""Liveness, readiness and what is being served."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from inference_service.dependencies import RuntimeDep
from shared import __version__ as shared_version

router = APIRouter(tags=["health"])


@router.get("/health/live", summary="The process is up")
def live() -> dict[str, str]:
    return {"status": "live"}


@router.get("/health/ready", summary="A model is loaded and checked (503 until then)",
            responses={503: {"description": "not ready; the body says why"}})
def ready(runtime: RuntimeDep) -> JSONResponse:
    plog = runtime.prediction_log.stats() if runtime.prediction_log is not None else {"enabled": False}
    m = runtime.model  # once: a hot reload may swap it meanwhile
    if m is None or runtime.integrity_error:
        return JSONResponse({"status": "not_ready", "reason": runtime.public_error, "attempts": runtime.attempts,
                             "prediction_log": plog, "reload": runtime.reload.as_dict(m.version if m else None)},
                            status_code=503, headers={"Retry-After": "5"})
    return JSONResponse({"status": "ready", "model_name": m.name, "model_version": m.version, "alias": m.alias,
                         "alias_confirmed": m.alias_confirmed, "scorer": _scorer(m), "prediction_log": plog, "reload": runtime.reload.as_dict(m.version)})


@router.get("/model", summary="The served model version, its lineage and the hot-reload state",
            responses={503: {"description": "no model loaded yet; a refused candidate's certificate report"}})
def model(runtime: RuntimeDep) -> Any:
    model = runtime.model  # once: a hot reload may swap it meanwhile
    if model is None:
        return JSONResponse({"status": "not_ready", "reason": runtime.public_error, "rejected": runtime.rejected,
                             "reload": runtime.reload.as_dict(None)}, status_code=503, headers={"Retry-After": "5"})
    return {
        "model_name": model.name, "model_version": model.version, "alias": model.alias,
        "alias_confirmed": model.alias_confirmed, "scorer": model.scorer.status if model.scorer else None,
        "run_id": model.run_id,
        "features": model.features, "classes": [str(c) for c in model.classes],
        "spec": {"name": runtime.spec.spec.name, "hash": runtime.spec.hash, "feature_hash": runtime.spec.spec.feature_hash},
        "lineage": model.lineage(), "shared_version": shared_version, "load_seconds": round(model.load_seconds, 3),
        "certificate": model.verdict, "environment_overridden": model.env_overridden,
        "reload": runtime.reload.as_dict(model.version),
        "online_features": _online(runtime, model),
    }


def _online(runtime: Any, model: Any) -> dict[str, Any]:
    """How /predict computes features: the verified numpy path (its status) or the pandas path (why)."""
    online = runtime.online_for(model)
    if online is not None:
        return dict(online.status)
    if not runtime.settings.online_fast_path:
        return {"mode": "pandas", "reason": "disabled (FTI_ONLINE_FAST_PATH=false)"}
    refused = getattr(runtime, "_online_refused", None)
    if refused is not None and refused[1] == model.version:
        return {"mode": "pandas", "reason": f"refused for feature version {refused[0]}: it differed from the "
                                            "pandas path at load (see the log)"}
    return {"mode": "pandas", "reason": "not verified yet"}


def _scorer(model: Any) -> str:
    return model.scorer.status.get("mode", "pipeline") if model.scorer is not None else "pipeline"
