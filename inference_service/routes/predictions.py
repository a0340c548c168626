"""``GET /predictions/{prediction_id}``: a logged prediction, its lineage chain and its recomputation."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool

from inference_service import lineage
from inference_service.dependencies import RuntimeDep
from inference_service.errors import error_response
from inference_service.schemas import ErrorResponse
from shared.feature_table import FeatureStoreError

log = logging.getLogger(__name__)

router = APIRouter(tags=["predictions"])
_ID = re.compile(r"^[0-9a-f]{32}$")


@router.get("/predictions/{prediction_id}", summary="A logged prediction, its lineage and its recomputation",
            responses={404: {"model": ErrorResponse, "description": "no logged prediction has this id"},
                       503: {"model": ErrorResponse, "description": "the prediction log cannot be read"}})
async def get_prediction(prediction_id: str, runtime: RuntimeDep,
                         recompute: bool = Query(True, description="load the model version that answered and "
                                                 "recompute the prediction from the logged inputs")) -> Any:
    """The logged record (inputs exactly as normalised, outputs), then the chain: model version (and where the
    alias points now) -> training run -> feature version trained on (as-of, checksum) -> source hash -> spec
    hash -> code commit -> environment. With ``recompute`` (default), ``recomputed`` says whether that model
    version, given the logged inputs and history from the logged feature version, gives exactly the logged
    probabilities again."""
    if not _ID.match(prediction_id):
        return error_response(404, "prediction_not_found", "no logged prediction has this id "
                              "(prediction ids are 32 lowercase hex characters)")
    try:
        return await run_in_threadpool(
            lineage.build, prediction_id, engine=runtime.engine, loader=runtime.loader, spec=runtime.spec,
            alias=runtime.settings.model_alias, served=runtime.model, do_recompute=recompute)
    except lineage.PredictionNotFound as exc:
        return error_response(404, "prediction_not_found", str(exc))
    except FeatureStoreError as exc:
        log.error("prediction log unavailable: %s", exc)
        return error_response(503, "prediction_log_unavailable", str(exc), headers={"Retry-After": "5"})
