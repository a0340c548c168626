"""The monitor's loop step: one pass over the prediction log, then one retraining-policy decision.

A decision to retrain becomes a ``requested`` row in ``fti_retrain_decisions`` (with a lock row: one
retraining of a model in flight); the feature and training pipelines take it from there
(``feature_pipeline.retrain_step``, ``training_pipeline.retrain_step``) -- in their own containers as
workers, or in one process through ``fti monitor run --retrain`` (``fti.retrain``). The monitor never
starts another stage itself: the database is the hand-over, because it is the one component every
stage already reaches (no Docker socket, no queue to run).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from shared import feature_table as ft
from shared import monitor_table as mt
from shared.spec import LoadedSpec

log = logging.getLogger(__name__)


class RetrainError(RuntimeError):
    """The loop cannot run (no retraining policy in the spec, no champion)."""


@dataclass
class Cycle:
    reports: list[dict[str, Any]]
    new_reports: int
    decision: dict[str, Any] | None = None
    skipped_versions: dict[str, str] = field(default_factory=dict)
    unchanged: int = 0  # windows reported before with the same labels, not computed again


def champion_reports(engine: Engine, model: str, version: str, min_share: float = 0.0) -> list[dict[str, Any]]:
    """The champion's complete windows, oldest first, with the policy's drift verdict per window."""
    from monitoring_service.monitor import is_drift

    rows = [r for r in mt.list_reports(engine, model, limit=100_000) if r["model_version"] == version]
    latest: dict[Any, dict[str, Any]] = {}  # a window reported again once its labels arrived: its latest report
    for r in sorted(rows, key=lambda r: (r["window_end"], r["created_at"], r["report_id"])):
        report = json.loads(r["report"])
        if report["window"]["complete"]:
            latest[r["window_end"]] = {"report_id": r["report_id"], "window_end": r["window_end"],
                                       "drift": is_drift(report, min_share), "labeled_rows": r["labeled_rows"]}
    return sorted(latest.values(), key=lambda r: r["window_end"])


def _parse(ts: Any) -> Any:
    return ft.naive_utc(ts) if ts else None


def watch(loaded: LoadedSpec, *, out_dir: Path | None = None, retrain: bool = True,
          negative_control: bool = False, include_partial: bool = False, settings: Any = None,
          recompute: bool = False) -> Cycle:
    """One monitor pass and, with ``retrain``, one policy decision (a ``requested`` retraining, or why not).
    ``negative_control``: the requested retraining fits on shuffled labels -- a fire drill of the gate."""
    from mlflow import MlflowClient

    from monitoring_service import policy as pol
    from monitoring_service.config import Settings as MonitorSettings
    from monitoring_service.monitor import run_pass
    from shared.db import make_engine
    from shared.registry_contract import Tag

    spec = loaded.spec
    settings = settings or MonitorSettings()
    client = MlflowClient(settings.tracking_uri, settings.registry_uri)
    engine = make_engine(settings.feature_store_url)
    try:
        result = run_pass(engine, spec, client, out_dir=out_dir or settings.reports_path,
                          tracking_uri=settings.tracking_uri, include_partial=include_partial, recompute=recompute,
                          jobs=settings.jobs)
        out = Cycle(result.reports, result.new, skipped_versions=result.skipped_versions, unchanged=result.unchanged)
        policy = spec.monitoring.retrain
        if not retrain:
            return out
        if policy is None:
            raise RetrainError(f"{loaded.path} has no monitoring.retrain section: nothing decides when to retrain "
                               "(docs/monitoring.md)")
        name = spec.model.name
        try:
            champ = client.get_model_version_by_alias(name, settings.model_alias)
        except Exception as exc:  # noqa: BLE001 - MLflow raises one type for "missing" and "unreachable"
            raise RetrainError(f"no {name}@{settings.model_alias} to watch: run `fti train` first ({exc})") from None
        reports = champion_reports(engine, name, str(champ.version), spec.monitoring.min_drift_share)
        past = mt.list_decisions(engine, name, limit=1000)
        attempts = [d for d in past if d["action"] in mt.FINAL]
        last = max((_parse(d["trigger"].get("window_end")) for d in attempts), default=None)
        promoted = max((_parse(d["trigger"].get("window_end")) for d in attempts if d["action"] == "retrained"),
                       default=None)
        new_labels = sum(r["labeled_rows"] for r in reports if last is None or r["window_end"] > last)
        cut = _parse((champ.tags or {}).get(Tag.FEATURE_AS_OF))
        verdict = pol.decide(policy, reports, last_trigger_end=last, last_promoted_end=promoted,
                             new_labels=new_labels, champion_cut=cut)
        base = {"dataset": spec.name, "model_name": name, "trigger": verdict.trigger, "report_ids": verdict.report_ids,
                "champion_version": str(champ.version), "candidate_version": None, "champion_score": None,
                "candidate_score": None}
        if not verdict.fire:
            held = [d for d in past if d["action"] == "cooldown"][:1]
            if verdict.action == "cooldown" and not (held and held[0]["report_ids"] == verdict.report_ids):
                mt.save_decision(engine, {**base, "created_at": ft.utcnow(), "action": "cooldown",
                                          "verdict": verdict.reason, "details": {"policy": policy.model_dump()}})
            out.decision = {"action": verdict.action, "verdict": verdict.reason, "report_ids": verdict.report_ids}
            return out
        details = {"policy": policy.model_dump(), "trigger_reason": verdict.reason,
                   "negative_control": negative_control}
        did = mt.request(engine, {**base, "verdict": verdict.reason, "details": details})
        if did is None:
            out.decision = {"action": "busy", "verdict": "a retraining of this model is in flight"}
            return out
        log.info("retraining requested (%s): %s", did, verdict.reason)
        out.decision = mt.get_decision(engine, did)
        return out
    finally:
        engine.dispose()


__all__ = ["Cycle", "RetrainError", "champion_reports", "watch"]
