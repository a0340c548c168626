"""The feature pipeline's part of a requested retraining: a new feature version, then the data-quality gate.

Claims the oldest ``requested`` retraining of its dataset (``fti_retrain_decisions``), publishes a
feature version of the source as it stands now (the job's usual atomic publish), checks it
(:mod:`feature_pipeline.quality`) and hands over: ``features_ready`` for the training pipeline, or
``refused`` with every problem named. Run in-process by ``fti monitor run --retrain`` or as a worker
(``fti features worker``) in the feature pipeline's own container.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.engine import Engine

from feature_pipeline import quality
from feature_pipeline.config import Settings
from shared import feature_table as ft
from shared import monitor_table as mt
from shared.spec import LoadedSpec, RetrainSpec

log = logging.getLogger(__name__)


def run_requested(loaded: LoadedSpec, settings: Settings, engine: Engine, decision_id: str | None = None
                  ) -> dict[str, Any] | None:
    """Handle one requested retraining (``decision_id``, or the oldest); None if there was none to claim."""
    from feature_pipeline.pipeline import run

    spec = loaded.spec
    row = mt.get_decision(engine, decision_id) if decision_id else mt.pending(engine, spec.name, "requested")
    if row is None or not mt.claim(engine, row["decision_id"], "requested", "building"):
        return None
    did = row["decision_id"]
    details = dict(row["details"] or {})
    try:
        policy = RetrainSpec.model_validate(details.get("policy") or {})
        fv = run(loaded, settings)
        details["feature_version"] = {"version": fv.info.version, "created": fv.published.created,
                                      "checksum": fv.info.checksum, "row_count": fv.info.row_count}
        q = quality.check(engine, spec, fv.info.version, policy)
        details["data_quality"] = q
        if q["passed"]:
            mt.update(engine, did, action="features_ready", details=details)
            log.info("retraining %s: feature version %d passed the data-quality gate", did, fv.info.version)
        else:
            mt.update(engine, did, action="refused", details=details, created_at=ft.utcnow(),
                      verdict="data-quality gate failed: " + "; ".join(q["problems"]))
            log.warning("retraining %s refused: %s", did, "; ".join(q["problems"]))
    except Exception as exc:  # noqa: BLE001 - recorded for the policy and the user; the worker keeps going
        mt.update(engine, did, action="failed", details=details, verdict=f"{type(exc).__name__}: {exc}"[:2000])
        log.exception("retraining %s failed in the feature pipeline", did)
    return mt.get_decision(engine, did)


__all__ = ["run_requested"]
