"""The retraining loop: monitor -> policy -> feature version -> data-quality gate -> train -> gate -> alias.

The one place that runs several stages in a row, so it lives in ``fti`` (the layer allowed to import
every service). Each stage keeps its own checks: the feature job publishes a version atomically,
training registers, round-trips and gates the candidate against the champion on the same most recent
labeled holdout (the spec's time split) with the policy's non-inferiority margin, and serving moves
to a promoted version only after it verified it (hot reload: digest, allow-list, parity certificate).

One retraining at a time: a lock row in ``fti_retrain_decisions`` (a fixed primary key per model:
a second inserter fails) held while it runs, taken over when older than :data:`STALE_LOCK`.
Every outcome is a decision row: its trigger, the report ids it read, both scores, the verdict.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from shared import feature_table as ft
from shared import monitor_table as mt
from shared.spec import LoadedSpec

log = logging.getLogger(__name__)
STALE_LOCK = timedelta(hours=6)
ATTEMPTS = ("retrained", "refused", "failed")


class RetrainError(RuntimeError):
    """The loop cannot run (no retraining policy in the spec, no champion)."""


@dataclass
class Cycle:
    reports: list[dict[str, Any]]
    new_reports: int
    decision: dict[str, Any] | None = None
    skipped_versions: dict[str, str] = field(default_factory=dict)


def _lock_id(model: str) -> str:
    return "lock-" + hashlib.sha256(model.encode()).hexdigest()[:27]


def _take_lock(engine: Engine, dataset: str, model: str) -> bool:
    t = mt.retrain_decisions
    lock = _lock_id(model)
    with engine.begin() as conn:
        row = conn.execute(select(t.c.created_at).where(t.c.decision_id == lock)).first()
        if row is not None and ft.utcnow() - row.created_at > STALE_LOCK:
            log.warning("taking over a retraining lock of %s from %s (stale)", model, row.created_at)
            conn.execute(delete(t).where(t.c.decision_id == lock))
    try:
        with engine.begin() as conn:
            conn.execute(t.insert().values(decision_id=lock, dataset=dataset, model_name=model,
                                           created_at=ft.utcnow(), action="running", trigger={}, report_ids=[],
                                           verdict="a retraining is running", details={}))
        return True
    except IntegrityError:
        return False


def _release_lock(engine: Engine, model: str) -> None:
    with engine.begin() as conn:
        conn.execute(delete(mt.retrain_decisions).where(mt.retrain_decisions.c.decision_id == _lock_id(model)))


def champion_reports(engine: Engine, model: str, version: str, min_share: float = 0.0) -> list[dict[str, Any]]:
    """The champion's complete windows, oldest first, with the policy's drift verdict per window."""
    from monitoring_service.monitor import is_drift

    rows = [r for r in mt.list_reports(engine, model, limit=10_000) if r["model_version"] == version]
    out = []
    for r in sorted(rows, key=lambda r: (r["window_end"], r["report_id"])):
        report = json.loads(r["report"])
        if not report["window"]["complete"]:
            continue
        out.append({"report_id": r["report_id"], "window_end": r["window_end"], "drift": is_drift(report, min_share),
                    "labeled_rows": r["labeled_rows"], "created_at": r["created_at"]})
    # a window reported again once its labels arrived: keep its latest report
    latest: dict[Any, dict[str, Any]] = {}
    for r in out:
        latest[r["window_end"]] = r
    return sorted(latest.values(), key=lambda r: r["window_end"])


def _parse(ts: Any) -> Any:
    return ft.naive_utc(ts) if ts else None


def cycle(loaded: LoadedSpec, *, out_dir: Path | None = None, retrain: bool = True,
          negative_control: bool = False, include_partial: bool = False) -> Cycle:
    """One monitor pass and, with ``retrain``, one policy decision (and the retraining it calls for)."""
    from mlflow import MlflowClient

    from feature_pipeline.config import Settings as FeatureSettings
    from monitoring_service import policy as pol
    from monitoring_service import quality
    from monitoring_service.config import Settings as MonitorSettings
    from monitoring_service.monitor import run_pass
    from shared.db import make_engine
    from shared.registry_contract import Tag

    spec = loaded.spec
    settings = MonitorSettings()
    client = MlflowClient(settings.tracking_uri, settings.registry_uri)
    engine = make_engine(settings.feature_store_url)
    try:
        result = run_pass(engine, spec, client, out_dir=out_dir or settings.reports_path,
                          tracking_uri=settings.tracking_uri, include_partial=include_partial)
        out = Cycle(result.reports, result.new, skipped_versions=result.skipped_versions)
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
        attempts = [d for d in past if d["action"] in ATTEMPTS]
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
            if verdict.action == "cooldown":  # a trigger that was held back is worth a record
                mt.save_decision(engine, {**base, "created_at": ft.utcnow(), "action": "cooldown",
                                          "verdict": verdict.reason, "details": {"policy": policy.model_dump()}})
            out.decision = {"action": verdict.action, "verdict": verdict.reason, "report_ids": verdict.report_ids}
            return out
        if not _take_lock(engine, spec.name, name):
            out.decision = {"action": "busy", "verdict": "another retraining of this model is running"}
            return out
        try:
            out.decision = _retrain(loaded, engine, base, verdict.reason, policy, negative_control,
                                    FeatureSettings(), quality)
        finally:
            _release_lock(engine, name)
        return out
    finally:
        engine.dispose()


def _retrain(loaded: LoadedSpec, engine: Engine, base: dict[str, Any], reason: str, policy: Any,
             negative_control: bool, feature_settings: Any, quality: Any) -> dict[str, Any]:
    from feature_pipeline.pipeline import run as features_run
    from training_pipeline.config import Settings as TrainSettings
    from training_pipeline.pipeline import run as train_run

    details: dict[str, Any] = {"policy": policy.model_dump(), "trigger_reason": reason}
    try:
        fv = features_run(loaded, feature_settings)
        details["feature_version"] = {"version": fv.info.version, "created": fv.published.created,
                                      "checksum": fv.info.checksum, "row_count": fv.info.row_count}
        log.info("retraining: feature version %d (%s)", fv.info.version, "new" if fv.published.created else
                 "unchanged")
        q = quality.check(engine, loaded.spec, fv.info.version, policy)
        details["data_quality"] = q
        if not q["passed"]:
            verdict = "data-quality gate failed: " + "; ".join(q["problems"])
            row = {**base, "created_at": ft.utcnow(), "action": "refused", "verdict": verdict, "details": details}
            row["decision_id"] = mt.save_decision(engine, row)
            return row
        tr = train_run(loaded, TrainSettings(), feature_version=fv.info.version, promote="auto",
                       negative_control=negative_control, gate_margin=policy.margin)
        g = tr.decision
        details["gate"] = g.as_dict()
        details["negative_control"] = negative_control
        row = {**base, "created_at": ft.utcnow(), "action": "retrained" if g.promoted else "refused",
               "candidate_version": tr.version, "champion_score": g.champion_score, "candidate_score": g.candidate_score,
               "verdict": g.reason, "details": details}
    except Exception as exc:  # noqa: BLE001 - recorded, then raised for the caller to report
        row = {**base, "created_at": ft.utcnow(), "action": "failed", "verdict": f"{type(exc).__name__}: {exc}"[:2000],
               "details": details}
        mt.save_decision(engine, row)
        raise
    row["decision_id"] = mt.save_decision(engine, row)
    return row


__all__ = ["Cycle", "RetrainError", "champion_reports", "cycle"]
