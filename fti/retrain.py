"""The retraining loop: monitor -> policy -> feature version -> data-quality gate -> train -> gate -> alias.

The monitor decides (:mod:`monitoring_service.policy`) and records a ``requested`` retraining in
``fti_retrain_decisions``; the feature pipeline builds and checks a version
(:mod:`feature_pipeline.retrain_step`), the training pipeline trains and gates it
(:mod:`training_pipeline.retrain_step`). They hand over through that one row, so each can run in its
own container (``fti features worker``, ``fti train worker``, the monitor service) with no process
starting another; ``fti monitor run --retrain`` runs the three steps here, in one process, for the
embedded default. This module is the one place that calls several stages, so it lives in ``fti``.

Each stage keeps its own checks: the feature job publishes atomically, training registers,
round-trips and gates the candidate against the champion on the same most recent labeled holdout
(the spec's time split) with the policy's non-inferiority margin, and serving moves to a promoted
version only after verifying it (hot reload: digest, allow-list, parity certificate). One retraining
of a model at a time (a lock row beside the request). Every outcome is a row: its trigger, the
report ids it read, both scores, the verdict.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from shared import monitor_table as mt
from shared.spec import LoadedSpec

log = logging.getLogger(__name__)


def cycle(loaded: LoadedSpec, *, out_dir: Path | None = None, retrain: bool = True,
          negative_control: bool = False, include_partial: bool = False, recompute: bool = False,
          settings: Any = None) -> Any:
    """The monitor's step (:func:`monitoring_service.loop.watch`) and, when it requested a retraining,
    both pipelines' steps here, in this process (the embedded default)."""
    from monitoring_service.config import Settings as MonitorSettings
    from monitoring_service.loop import watch
    from shared.db import make_engine

    out = watch(loaded, out_dir=out_dir, retrain=retrain, negative_control=negative_control,
                include_partial=include_partial, recompute=recompute, settings=settings)
    if out.decision is not None and out.decision.get("action") == "requested":
        engine = make_engine(MonitorSettings().feature_store_url)
        try:
            out.decision = run_steps(loaded, engine, out.decision["decision_id"])
        finally:
            engine.dispose()
    return out


def run_steps(loaded: LoadedSpec, engine: Engine, decision_id: str) -> dict[str, Any] | None:
    """Both pipelines' steps of one requested retraining, here (the embedded default)."""
    from feature_pipeline import retrain_step as features_step
    from feature_pipeline.config import Settings as FeatureSettings
    from training_pipeline import retrain_step as training_step
    from training_pipeline.config import Settings as TrainSettings

    features_step.run_requested(loaded, FeatureSettings(), engine, decision_id)
    training_step.run_requested(loaded, TrainSettings(), engine, decision_id)
    row = mt.get_decision(engine, decision_id)
    if row is not None and row["action"] == "failed":
        from monitoring_service.loop import RetrainError

        raise RetrainError(f"retraining {decision_id} failed: {row['verdict']}")
    return row


__all__ = ["cycle", "run_steps"]
