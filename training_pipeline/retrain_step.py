"""The training pipeline's part of a requested retraining: train on the checked version, gate, alias.

Claims a ``features_ready`` retraining (``fti_retrain_decisions``), trains on the feature version the
feature pipeline published and checked, through the usual gate -- against the champion on the same
most recent labeled holdout (the spec's split of that version), with the policy's non-inferiority
margin -- and records both scores and the verdict: ``retrained`` (the alias moved; serving reloads
after verifying it) or ``refused``. Run in-process by ``fti monitor run --retrain`` or as a worker
(``fti train worker``) in the training pipeline's own container.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.engine import Engine

from shared import feature_table as ft
from shared import monitor_table as mt
from shared.spec import LoadedSpec, RetrainSpec
from training_pipeline.config import Settings

log = logging.getLogger(__name__)


def run_requested(loaded: LoadedSpec, settings: Settings, engine: Engine, decision_id: str | None = None
                  ) -> dict[str, Any] | None:
    from training_pipeline.pipeline import run

    spec = loaded.spec
    row = mt.get_decision(engine, decision_id) if decision_id else mt.pending(engine, spec.name, "features_ready")
    if row is None or not mt.claim(engine, row["decision_id"], "features_ready", "training"):
        return None
    did = row["decision_id"]
    details = dict(row["details"] or {})
    try:
        policy = RetrainSpec.model_validate(details.get("policy") or {})
        negative = bool(details.get("negative_control"))
        tr = run(loaded, settings, feature_version=int(details["feature_version"]["version"]), promote="auto",
                 negative_control=negative, gate_margin=policy.margin)
        g = tr.decision
        details["gate"] = g.as_dict()
        mt.update(engine, did, action="retrained" if g.promoted else "refused", candidate_version=tr.version,
                  champion_version=g.champion_version, champion_score=g.champion_score,
                  candidate_score=g.candidate_score, verdict=g.reason, details=details, created_at=ft.utcnow())
        log.info("retraining %s: %s", did, g.reason)
    except Exception as exc:  # noqa: BLE001
        mt.update(engine, did, action="failed", details=details, verdict=f"{type(exc).__name__}: {exc}"[:2000])
        log.exception("retraining %s failed in the training pipeline", did)
    return mt.get_decision(engine, did)


__all__ = ["run_requested"]
