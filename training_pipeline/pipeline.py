"""``fti train``: feature version -> fitted pipeline -> MLflow run, registered version, gate."""

from __future__ import annotations

import json
import logging
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shared import certificate as certmod
from shared import feature_table as ft
from shared import fingerprint
from shared.db import make_engine
from shared.provenance import code_commit, package_versions, shared_version
from shared.spec import LoadedSpec
from training_pipeline import register as reg
from training_pipeline.config import Settings
from training_pipeline.data import load
from training_pipeline.evaluate import compute_metrics, figures
from training_pipeline.model import build_pipeline

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    model_name: str
    version: str
    run_id: str
    feature_version: int
    metrics: dict[str, float]
    decision: reg.GateDecision
    tags: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def lineage_tags(loaded: LoadedSpec, info: ft.VersionInfo, seed: int) -> dict[str, str]:
    tags = {
        "fti.dataset": info.dataset,
        "fti.feature_version": str(info.version),
        "fti.feature_checksum": info.checksum,
        "fti.feature_as_of": ft.iso_utc(info.as_of),
        "fti.source_sha256": info.source_sha256,
        "fti.spec_hash": loaded.hash,
        "fti.feature_spec_hash": loaded.spec.feature_hash,
        "fti.model_features": ",".join(loaded.spec.model_features),
        "fti.code_commit": code_commit(),
        "fti.shared_version": shared_version(),
        "fti.seed": str(seed),
        "fti.estimator": loaded.spec.model.estimator.class_path,
    }
    for name, version in package_versions().items():
        tags[f"fti.lib.{name}"] = version
    env = fingerprint.capture(loaded.spec.model.estimator.class_path)
    tags["fti.env.python"] = env["python"]
    tags["fti.env.lock_sha256"] = env["lock_sha256"]
    for name, version in env["enforced"].items():
        tags[f"fti.env.{name}"] = version
    if env["image"]:
        tags["fti.env.image"] = env["image"]
    return tags


def _flat_params(loaded: LoadedSpec, n_train: int, n_test: int) -> dict[str, Any]:
    m = loaded.spec.model
    params: dict[str, Any] = {
        "estimator": m.estimator.class_path, "seed": m.seed, "split_method": m.split.method,
        "test_size": m.split.test_size, "primary_metric": m.primary_metric, "n_features": len(loaded.spec.model_features),
        "n_train": n_train, "n_eval": n_test,
    }
    for k, v in sorted(m.estimator.params.items()):
        params[f"estimator.{k}"] = v
    return params


def run(loaded: LoadedSpec, settings: Settings, *, feature_version: int | None = None,
        promote: str = "auto") -> TrainResult:
    import mlflow

    spec = loaded.spec
    t0 = time.perf_counter()
    seed = spec.model.seed
    random.seed(seed)
    np.random.seed(seed)

    engine = make_engine(settings.feature_store_url)
    try:
        data = load(engine, spec, feature_version)
    finally:
        engine.dispose()
    info = data.version
    log.info("[1/5] read feature version %d of %r: %d train / %d evaluation rows", info.version, spec.name,
             len(data.X_train), len(data.X_test))

    pipe = build_pipeline(spec)
    t1 = time.perf_counter()
    pipe.fit(data.X_train, data.y_train)
    proba = pipe.predict_proba(data.X_test)
    metrics = compute_metrics(pipe.classes_, data.y_test, proba)
    primary = spec.model.primary_metric
    log.info("[2/5] fitted %s in %.1fs: %s %.4f", spec.model.estimator.class_path.rsplit(".", 1)[-1],
             time.perf_counter() - t1, primary, metrics[primary])

    reg.configure(settings)
    experiment = settings.experiment or f"fti-{spec.name}"
    exp_id = reg.ensure_experiment(settings, experiment)
    tags = lineage_tags(loaded, info, seed)
    with mlflow.start_run(experiment_id=exp_id, run_name=f"{spec.name}-fv{info.version}") as active:
        run_id = active.info.run_id
        mlflow.set_tags(tags)
        mlflow.log_params(_flat_params(loaded, len(data.X_train), len(data.X_test)))
        mlflow.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)})
        for path, fig in figures(pipe, data.X_test, data.y_test, proba, seed=seed,
                                 primary_metric=primary).items():
            mlflow.log_figure(fig, path)
        reg.log_file(loaded.path, "spec")
        reg.log_json(info.as_dict(), "lineage/feature_version.json")
        log.info("[3/5] logged params, metrics, plots and lineage to run %s", run_id)

        certificate = certmod.build(data.test, spec, pipe, info, seed=seed)
        environment = fingerprint.capture(spec.model.estimator.class_path)
        with tempfile.TemporaryDirectory() as tmp:
            paths = []
            for name, obj in ((certmod.CERTIFICATE_FILE, certificate), ("environment.json", environment)):
                path = Path(tmp) / name
                path.write_text(json.dumps(obj, indent=1, sort_keys=True))
                paths.append(str(path))
            model_info = reg.log_model(pipe, spec, data.X_train.head(50), extra_files=paths)
        mv = reg.register(model_info.model_uri, spec.model.name, {**tags, "fti.run_id": run_id})
        reg.round_trip_check(spec.model.name, mv.version, data.X_test, proba)
        reg.set_version_tags(spec.model.name, mv.version, {"fti.validated": "true"})
        log.info("[4/5] registered %s version %s (registry round trip: identical predictions)",
                 spec.model.name, mv.version)

        decision = reg.gate(spec.model.name, settings.alias, metric=primary, candidate_score=metrics[primary],
                            X=data.X_test, y=data.y_test, policy=promote)
        gate_tags = {"fti.gate.promoted": str(decision.promoted).lower(), "fti.gate.reason": decision.reason,
                     "fti.gate.champion_version": str(decision.champion_version or "")}
        mlflow.set_tags(gate_tags)
        if decision.champion_score is not None:
            mlflow.log_metric(f"gate_champion_{primary}", decision.champion_score)
        reg.log_json(decision.as_dict(), "gate/decision.json")
        reg.set_version_tags(spec.model.name, mv.version, gate_tags)
        if decision.promoted:
            reg.set_alias(spec.model.name, settings.alias, mv.version)
        log.info("[5/5] gate: %s -> %s", decision.reason,
                 f"'{settings.alias}' now points at version {mv.version}" if decision.promoted
                 else f"'{settings.alias}' unchanged")
    return TrainResult(spec.model.name, str(mv.version), run_id, info.version, metrics, decision, tags,
                       time.perf_counter() - t0)
