"""One pass of the monitor: every complete window of the prediction log not reported yet.

For each model version that served, its reference profile is read from the registry (the model
directory is downloaded and its digest checked against ``fti.artifact_sha256``, as every fti
loader does; nothing in it is executed -- the profile is JSON). Each window's logged records are
turned back into model inputs (:mod:`monitoring_service.log_reader`), compared with the profile
(:mod:`monitoring_service.drift`), joined with the labels that have arrived
(:mod:`monitoring_service.performance`), and written as a report: a row of ``fti_drift_reports``
(its id is the sha256 of the canonical JSON, so a second pass over the same log adds nothing), a
JSON file and a self-contained HTML file.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.engine import Engine

from monitoring_service import drift
from monitoring_service import log_reader as lr
from monitoring_service import performance as perf
from monitoring_service.report_html import render
from shared import feature_table as ft
from shared import monitor_table as mt
from shared.registry_contract import Artifact, Tag
from shared.spec import DatasetSpec

log = logging.getLogger(__name__)
REPORT_FORMAT = 1


class MonitorError(RuntimeError):
    """Something the user fixes (a registry or model version that cannot be read)."""


@dataclass
class Reference:
    version: str
    profile: dict[str, Any]
    tags: dict[str, str]

    @property
    def positive_label(self) -> str | None:
        return self.tags.get(Tag.POSITIVE_CLASS)


def fetch_reference(client: Any, name: str, version: str, tracking_uri: str | None = None) -> Reference:
    """A model version's reference profile, from its verified model directory."""
    import mlflow.artifacts

    from shared.model_file import artifact_digest

    mv = client.get_model_version(name, version)
    tags = dict(mv.tags or {})
    with tempfile.TemporaryDirectory(prefix="fti-monitor-") as tmp:
        uri = client.get_model_version_download_uri(name, version)
        model_dir = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp,
                                                               tracking_uri=tracking_uri))
        expected = tags.get(Tag.ARTIFACT_SHA256)
        if expected and artifact_digest(model_dir) != expected:
            raise MonitorError(f"{name} version {version}: its files do not match {Tag.ARTIFACT_SHA256}; the "
                               "registry copy was changed after training -- retrain it")
        path = model_dir / Artifact.EXTRA_FILES / Artifact.REFERENCE_PROFILE
        if not path.is_file():
            raise MonitorError(f"{name} version {version} has no reference profile (trained before fti "
                               "monitored); retrain it to monitor it")
        return Reference(str(version), json.loads(path.read_text()), tags)


@dataclass
class PassResult:
    reports: list[dict[str, Any]] = field(default_factory=list)  # summaries, oldest window first
    new: int = 0
    skipped_versions: dict[str, str] = field(default_factory=dict)  # version -> why not monitored
    seconds: float = 0.0


def _columns(frame: Any, profile: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, column in profile["features"].items():
        if name not in frame.columns:
            continue
        s = frame[name]
        out[name] = s.to_numpy(dtype=np.float64, na_value=np.nan) if column["kind"] == "numeric" \
            else s.astype(object).where(s.notna(), None).tolist()
    return out


def window_report(engine: Engine, spec: DatasetSpec, ref: Reference, window: lr.Window,
                  thresholds: drift.Thresholds, events: lr.VersionEvents | None = None) -> dict[str, Any]:
    """The report of one window (deterministic in the window's rows, the profile and the labels)."""
    regression = spec.model.task == "regression"
    frame = lr.model_inputs(engine, spec, window, events)
    scores, preds, proba = lr.scores_and_predictions(window, ref.positive_label, regression)
    history = frozenset(h.name for h in spec.features.history)
    result = drift.evaluate(ref.profile, _columns(frame, ref.profile), scores, thresholds, history=history)
    record_ids = [str(r[3]) for r in window.rows]
    labels, label_version = perf.labels_for(engine, spec, record_ids)
    at = perf.join(record_ids, labels)
    class_labels = None if regression else list(json.loads(window.rows[0][6]).get("probabilities", {}))
    performance = perf.realized(spec, [labels[record_ids[i]] for i in at], [preds[i] for i in at],
                                None if proba is None else proba[at], class_labels, ref.positive_label)
    performance["labels_from_feature_version"] = label_version
    return {"format": REPORT_FORMAT, "dataset": spec.name,
            "model": {"name": window.model_name, "version": window.model_version},
            "window": {"kind": window.kind, "label": window.label, "start": ft.iso_utc(window.start),
                       "end": ft.iso_utc(window.end), "rows": window.n, "complete": window.complete,
                       "feature_versions": sorted({r[2] for r in window.rows if r[2] is not None})},
            "drift": result, "performance": performance}


def is_drift(report: dict[str, Any], min_share: float) -> bool | None:
    d = report["drift"]
    if d.get("status") != "ok":
        return None
    return bool(d["drift_share"] > min_share or d.get("prediction", {}).get("drifted", False))


def summary(report: dict[str, Any], rid: str, min_share: float = 0.0) -> dict[str, Any]:
    d = report["drift"]
    return {"report_id": rid, "model_version": report["model"]["version"], "window": report["window"]["label"],
            "start": report["window"]["start"], "end": report["window"]["end"], "rows": report["window"]["rows"],
            "status": d.get("status"), "drift": is_drift(report, min_share), "drifted": d.get("drifted", []),
            "drift_share": d.get("drift_share"),
            "prediction_drift": d.get("prediction", {}).get("drifted"),
            "labeled_rows": report["performance"]["labeled_rows"]}


def run_pass(engine: Engine, spec: DatasetSpec, client: Any, *, out_dir: Path | None = None,
             include_partial: bool = False, versions: list[str] | None = None,
             tracking_uri: str | None = None) -> PassResult:
    """Report every window of ``spec``'s model in the prediction log (JSON + HTML under ``out_dir``)."""
    t0 = time.perf_counter()
    m = spec.monitoring
    thresholds = drift.Thresholds(alpha=m.alpha, min_psi=m.min_psi, min_rows=m.min_rows)
    name = spec.model.name
    if ft.schema_revision(engine) != ft.SCHEMA_HEAD:
        ft.upgrade(engine)  # the drift tables (0004): the monitor writes them
    result = PassResult()
    events = lr.VersionEvents(engine, spec)
    for version in versions or lr.model_versions(engine, name):
        try:
            ref = fetch_reference(client, name, version, tracking_uri)
        except MonitorError as exc:
            result.skipped_versions[version] = str(exc)
            log.warning("%s", exc)
            continue
        for window in lr.windows(engine, name, version, rows=m.window_rows, period=m.window_period,
                                 include_partial=include_partial):
            report = window_report(engine, spec, ref, window, thresholds, events)
            text = drift.canonical_json(report)
            rid = mt.report_id(text)
            s = summary(report, rid, m.min_drift_share)
            row = {"report_id": rid, "dataset": spec.name, "model_name": name, "model_version": version,
                   "window_kind": window.kind, "window_start": window.start, "window_end": window.end,
                   "rows": window.n, "status": s["status"], "drift_share": s["drift_share"],
                   "drifted": s["drifted"], "prediction_drift": s["prediction_drift"],
                   "labeled_rows": s["labeled_rows"],
                   "performance": json.loads(drift.canonical_json(report["performance"])),
                   "report": text, "created_at": ft.utcnow()}
            if mt.save_report(engine, row):
                result.new += 1
            if out_dir is not None:
                folder = out_dir / name / str(version)
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"{rid}.json").write_text(text)
                (folder / f"{rid}.html").write_text(render(report, ref.profile, rid))
            log.info("%s v%s %s: %d rows, %s%s", name, version, window.label, window.n, s["status"],
                     f", drifted: {', '.join(s['drifted']) or 'none'}" if s["status"] == "ok" else "")
            result.reports.append(s)
    result.seconds = time.perf_counter() - t0
    return result


__all__ = ["MonitorError", "is_drift", "PassResult", "Reference", "fetch_reference", "run_pass", "summary", "window_report"]
