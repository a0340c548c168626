"""``fti train``: feature version -> fitted pipeline -> MLflow run, registered version, gate.

:func:`fit_evaluate` (seed, fit, evaluate) and :func:`log_and_register` are shared with
``fti reproduce`` (:mod:`fti.reproduce`), which retrains a registered version.
"""

from __future__ import annotations

import json
import logging
import random
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from shared import certificate as certmod
from shared import decision as decisions
from shared import feature_table as ft
from shared import fingerprint, rowwise
from shared import profile as profiles
from shared.db import make_engine
from shared.labels import check_binary, positive_index
from shared.provenance import code_commit, shared_version
from shared.registry_contract import ENV_TAG_PREFIX, LIB_TAG_PREFIX, Artifact, Tag
from shared.spec import DatasetSpec, LoadedSpec
from training_pipeline import register as reg
from training_pipeline.config import Settings
from training_pipeline.data import Dataset, load
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


def lineage_tags(loaded: LoadedSpec, info: ft.VersionInfo, seed: int,
                 env: dict[str, Any] | None = None) -> dict[str, str]:
    """Tags for the run and the model version; ``env`` is the fingerprint the model is stored with."""
    env = env if env is not None else fingerprint.capture(loaded.spec.model.estimator.class_path)
    tags: dict[str, str] = {
        Tag.DATASET: info.dataset,
        Tag.FEATURE_VERSION: str(info.version),
        Tag.FEATURE_CHECKSUM: info.checksum,
        Tag.FEATURE_AS_OF: ft.iso_utc(info.as_of),
        Tag.SOURCE_SHA256: info.source_sha256,
        Tag.SPEC_HASH: loaded.hash,
        Tag.FEATURE_SPEC_HASH: loaded.spec.feature_hash,
        Tag.MODEL_FEATURES: ",".join(loaded.spec.model_features),
        Tag.CODE_COMMIT: code_commit(),
        Tag.SHARED_VERSION: shared_version(),
        Tag.SEED: str(seed),
        Tag.ESTIMATOR: loaded.spec.model.estimator.class_path,
    }
    for name in fingerprint.ENFORCED:
        tags[LIB_TAG_PREFIX + name] = env["enforced"][name]
    tags[Tag.ENV_PYTHON] = env["python"]
    tags[Tag.ENV_LOCK_SHA256] = env["lock_sha256"]
    for name, version in env["enforced"].items():
        tags[ENV_TAG_PREFIX + name] = version
    if env["image"]:
        tags[Tag.ENV_IMAGE] = env["image"]
    return tags


def flat_params(loaded: LoadedSpec, n_train: int, n_test: int, n_unlabeled: int = 0) -> dict[str, Any]:
    """The run's MLflow params (``fti reproduce`` recomputes and compares them).

    ``n_unlabeled_skipped`` only when rows were skipped: runs from before unlabeled rows were allowed
    have no such param and must still reproduce IDENTICAL."""
    m = loaded.spec.model
    params: dict[str, Any] = {
        "estimator": m.estimator.class_path, "seed": m.seed, "split_method": m.split.method,
        "test_size": m.split.test_size, "primary_metric": m.primary_metric, "n_features": len(loaded.spec.model_features),
        "n_train": n_train, "n_eval": n_test,
    }
    if n_unlabeled:
        params["n_unlabeled_skipped"] = n_unlabeled
    if m.decision is not None:  # only when set: runs from before the decision policy still reproduce
        for k, v in sorted(m.decision.policy().items()):
            params[f"decision.{k}"] = v
    for k, v in sorted(m.estimator.params.items()):
        params[f"estimator.{k}"] = v
    return params


@dataclass
class Fitted:
    """A fitted pipeline and its evaluation on the split it was given."""

    pipeline: Any
    proba: np.ndarray
    metrics: dict[str, float]
    seconds: float = 0.0
    decision: decisions.Decision | None = None  # model.decision's rule, chosen on the evaluation split


def fit_evaluate(spec: DatasetSpec, data: Dataset) -> Fitted:
    """Seed, build the spec's pipeline, fit on the training split, score the evaluation split.

    The one code path for ``fti train`` and ``fti reproduce``: same spec + same rows
    in the same environment give bit-identical predictions.
    """
    t0 = time.perf_counter()
    random.seed(spec.model.seed)
    np.random.seed(spec.model.seed)
    pipe = build_pipeline(spec)
    pipe.fit(data.X_train, data.y_train)
    proba = rowwise.predict_proba(pipe, data.X_test)  # each row as if scored alone (a regressor: one column)
    classes = getattr(pipe, "classes_", None)
    if classes is not None:
        check_binary(classes, spec.model.positive_class)
    metrics, decision = evaluate(spec, classes, data.y_test, proba)
    if spec.model.repeats > 1:
        metrics.update(repeat_metrics(spec, data, metrics))
    return Fitted(pipe, proba, metrics, time.perf_counter() - t0, decision)


def evaluate(spec: DatasetSpec, classes: np.ndarray | None, y_true: np.ndarray, proba: np.ndarray
             ) -> tuple[dict[str, float], decisions.Decision | None]:
    """The run's metrics on the evaluation split; with ``model.decision``, the chosen rule and its
    ``decision.*`` metrics (``decision.threshold`` among them, so ``fti reproduce`` compares it)."""
    metrics = compute_metrics(classes, y_true, proba, spec.model.positive_class)
    if spec.model.decision is None or classes is None:
        return metrics, None
    decision = decisions.fit(spec.model.decision.policy(), classes, positive_index(classes, spec.model.positive_class),
                             y_true, proba)
    return {**metrics, **decision.evaluation}, decision


def repeat_metrics(spec: DatasetSpec, data: Dataset, first: dict[str, float]) -> dict[str, float]:
    """``model.repeats``: refit with seeds ``seed+1 ...`` on the same split; each metric's mean and sd
    over all the fits (the first is the registered one). Part of :func:`fit_evaluate`, so ``fti
    reproduce`` recomputes and compares them exactly like every other metric."""
    runs = [first]
    for i in range(1, spec.model.repeats):
        seeded = spec.model_copy(update={"model": spec.model.model_copy(update={"seed": spec.model.seed + i})})
        random.seed(seeded.model.seed)
        np.random.seed(seeded.model.seed)
        pipe = build_pipeline(seeded).fit(data.X_train, data.y_train)
        runs.append(evaluate(spec, getattr(pipe, "classes_", None), data.y_test,
                             rowwise.predict_proba(pipe, data.X_test))[0])
        log.info("repeat %d/%d (seed %d): %s %.4f", i + 1, spec.model.repeats, seeded.model.seed,
                 spec.model.primary_metric, runs[-1][spec.model.primary_metric])
    out: dict[str, float] = {}
    for name in first:
        values = np.array([r[name] for r in runs], dtype=float)
        if name != "n_eval" and np.all(np.isfinite(values)):
            out[f"repeats.{name}.mean"] = float(values.mean())
            out[f"repeats.{name}.sd"] = float(values.std(ddof=1))
    return out


def reference_profile(spec: DatasetSpec, data: Dataset, pipe: Any, proba: np.ndarray) -> dict[str, Any]:
    """What the monitor compares served records with (:mod:`shared.profile`): the training split's model
    inputs, the evaluation outputs and the training labels, as bins and counts (no rows)."""
    classes = getattr(pipe, "classes_", None)
    k = positive_index(classes, spec.model.positive_class) if classes is not None and len(classes) == 2 else None
    numeric = {f for f in spec.model_features if spec.feature_kind(f) == "numeric"}
    return profiles.build(data.X_train, spec.model_features, numeric, outputs=proba, positive_index=k,
                          labels=data.y_train, task=spec.model.task, model_name=spec.model.name,
                          feature_version=data.version.version)


def per_class_report(spec: DatasetSpec, classes: np.ndarray, y_true: np.ndarray, proba: np.ndarray,
                     decision: decisions.Decision | None) -> dict[str, Any]:
    """Precision, recall, F1 and support of every class on the evaluation split, of the served decision
    (the rule's when there is one, else argmax). An artifact, not metrics: runs logged before it existed
    still reproduce with the same set of metrics."""
    from sklearn.metrics import classification_report

    k = positive_index(classes, spec.model.positive_class) if len(classes) == 2 else -1
    decided = classes[decisions.apply(proba, k, decision.threshold if decision else None)]
    report = classification_report(y_true, decided, labels=list(classes), target_names=[str(c) for c in classes],
                                   output_dict=True, zero_division=0)
    return {"decided_by": "threshold" if decision else "argmax", "classes": report}


class AlreadyTrained(Exception):
    """``--skip-if-trained``: a validated version from the same spec and feature content exists."""

    def __init__(self, name: str, version: str, feature_version: int):
        super().__init__(f"model {name} version {version} was already trained from this spec and feature "
                         f"version {feature_version} (same spec hash and feature checksum): skipped")
        self.name, self.version, self.feature_version = name, version, feature_version


def find_trained(loaded: LoadedSpec, info: ft.VersionInfo) -> str | None:
    """A validated registered version trained from exactly this spec and feature content, if any."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    name = loaded.spec.model.name
    try:
        versions = MlflowClient().search_model_versions(f"name='{name}'")
    except MlflowException:
        return None
    for mv in sorted(versions, key=lambda v: int(v.version)):
        tags = mv.tags or {}
        if (tags.get(Tag.VALIDATED) == "true" and tags.get(Tag.SPEC_HASH) == loaded.hash
                and tags.get(Tag.FEATURE_CHECKSUM) == info.checksum):
            return str(mv.version)
    return None


def run(loaded: LoadedSpec, settings: Settings, *, feature_version: int | None = None,
        promote: str = "auto", skip_if_trained: bool = False, negative_control: bool = False,
        gate_margin: float = 0.0) -> TrainResult:
    """``negative_control``: fit on the training labels shuffled (seeded), evaluate on the true ones -- a
    model that learned nothing, which the gate must refuse (what the retraining loop is tested with).
    ``gate_margin``: the non-inferiority margin of the gate (the retraining policy's)."""
    spec = loaded.spec
    t0 = time.perf_counter()
    engine = make_engine(settings.feature_store_url)
    try:
        data = load(engine, spec, feature_version)
    finally:
        engine.dispose()
    info = data.version
    if skip_if_trained:
        reg.configure(settings)
        existing = find_trained(loaded, info)
        if existing is not None:
            raise AlreadyTrained(spec.model.name, existing, info.version)
    log.info("[1/5] read feature version %d of %r: %d train / %d evaluation rows%s", info.version, spec.name,
             len(data.X_train), len(data.X_test),
             f" ({data.unlabeled} rows without a label yet skipped)" if data.unlabeled else "")
    extra_tags: dict[str, str] = {}
    if negative_control:
        shuffled = np.random.default_rng(spec.model.seed).permutation(data.y_train)
        data = replace(data, y_train=shuffled)
        extra_tags[Tag.NEGATIVE_CONTROL] = "true"
        log.warning("negative control: the training labels are shuffled; this model learned nothing")

    fitted = fit_evaluate(spec, data)
    primary = spec.model.primary_metric
    spread = f" (over {spec.model.repeats} seeds: {fitted.metrics[f'repeats.{primary}.mean']:.4f} +/- " \
        f"{fitted.metrics[f'repeats.{primary}.sd']:.4f})" if f"repeats.{primary}.mean" in fitted.metrics else ""
    log.info("[2/5] fitted %s in %.1fs: %s %.4f%s", spec.model.estimator.class_path.rsplit(".", 1)[-1],
             fitted.seconds, primary, fitted.metrics[primary], spread)
    return log_and_register(loaded, settings, data, fitted, promote=promote, started=t0, extra_tags=extra_tags,
                            gate_margin=gate_margin)


def log_and_register(loaded: LoadedSpec, settings: Settings, data: Dataset, fitted: Fitted, *, promote: str,
                     extra_tags: dict[str, str] | None = None, started: float | None = None,
                     gate_margin: float = 0.0) -> TrainResult:
    """Log the run (params, metrics, plots, spec, lineage), register, round-trip check, gate, alias."""
    import mlflow

    t0 = started if started is not None else time.perf_counter()
    spec = loaded.spec
    info = data.version
    seed = spec.model.seed
    pipe, proba, metrics = fitted.pipeline, fitted.proba, fitted.metrics
    primary = spec.model.primary_metric

    reg.configure(settings)
    experiment = settings.experiment or f"fti-{spec.name}"
    exp_id = reg.ensure_experiment(settings, experiment)
    environment = fingerprint.capture(spec.model.estimator.class_path)
    tags = {**lineage_tags(loaded, info, seed, environment), **(extra_tags or {})}
    with mlflow.start_run(experiment_id=exp_id, run_name=f"{spec.name}-fv{info.version}") as active:
        run_id = active.info.run_id
        mlflow.set_tags(tags)
        mlflow.log_params(flat_params(loaded, len(data.X_train), len(data.X_test), data.unlabeled))
        mlflow.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)})
        reg.log_feature_inputs(spec, data)
        for path, fig in figures(pipe, data.X_test, data.y_test, proba, seed=seed, primary_metric=primary,
                                 positive_class=spec.model.positive_class,
                                 threshold=fitted.decision.threshold if fitted.decision else None).items():
            mlflow.log_figure(fig, path)
        if getattr(pipe, "classes_", None) is not None:
            reg.log_json(per_class_report(spec, pipe.classes_, data.y_test, proba, fitted.decision),
                         Artifact.PER_CLASS_REPORT)
        reg.log_file(loaded.path, "spec")
        reg.log_json(info.as_dict(), Artifact.FEATURE_VERSION)
        log.info("[3/5] logged params, metrics, plots and lineage to run %s%s", run_id,
                 f" ({settings.mlflow_ui_url.rstrip('/')}/#/experiments/{exp_id}/runs/{run_id})"
                 if settings.mlflow_ui_url else "")

        certificate = certmod.build(data.test, spec, pipe, info, seed=seed,
                                     pool=pd.concat([data.train, data.test], ignore_index=True))
        with tempfile.TemporaryDirectory() as tmp:
            paths: list[str] = []
            files: list[tuple[str, Any]] = [(certmod.CERTIFICATE_FILE, certificate), (Artifact.ENVIRONMENT, environment)]
            if fitted.decision is not None:  # beside the model: covered by its artifact digest
                files.append((decisions.DECISION_FILE, fitted.decision.as_dict()))
            files.append((Artifact.REFERENCE_PROFILE, reference_profile(spec, data, pipe, proba)))
            for name, obj in files:
                file = Path(tmp) / name
                file.write_text(json.dumps(obj, indent=1, sort_keys=True))
                paths.append(str(file))
            model_info = reg.log_model(pipe, spec, data.X_train.head(50), extra_files=paths)
        mv = reg.register(model_info.model_uri, spec.model.name, {**tags, Tag.RUN_ID: run_id})
        digest = reg.round_trip_check(spec.model.name, mv.version, data.X_test, proba)
        version_tags: dict[str, str] = {Tag.ARTIFACT_SHA256: digest, Tag.VALIDATED: "true"}
        if len(getattr(pipe, "classes_", [])) == 2:
            version_tags[Tag.POSITIVE_CLASS] = str(pipe.classes_[positive_index(pipe.classes_,
                                                                                spec.model.positive_class)])
        if fitted.decision is not None:
            version_tags[Tag.DECISION_THRESHOLD] = repr(fitted.decision.threshold)
        reg.set_version_tags(spec.model.name, mv.version, version_tags)
        log.info("[4/5] registered %s version %s (registry round trip: identical predictions)",
                 spec.model.name, mv.version)

        gate_metric = primary if spec.model.decision is None else \
            decisions.GATE_METRIC[spec.model.decision.objective][0]  # the policy's own measure of success
        decision = reg.gate(spec.model.name, settings.model_alias, metric=gate_metric,
                            candidate_score=metrics[gate_metric], X=data.X_test, y=data.y_test, policy=promote,
                            memory_limit_mb=settings.model_load_memory_mb,
                            positive_class=spec.model.positive_class,
                            decision_policy=spec.model.decision.policy() if spec.model.decision else None,
                            margin=gate_margin)
        gate_tags: dict[str, str] = {Tag.GATE_PROMOTED: str(decision.promoted).lower(), Tag.GATE_REASON: decision.reason,
                     Tag.GATE_CHAMPION_VERSION: str(decision.champion_version or "")}
        if gate_margin:
            gate_tags[Tag.GATE_MARGIN] = repr(gate_margin)
        mlflow.set_tags(gate_tags)
        if decision.champion_score is not None:
            mlflow.log_metric(f"gate_champion_{gate_metric}", decision.champion_score)
        reg.log_json(decision.as_dict(), Artifact.GATE_DECISION)
        reg.set_version_tags(spec.model.name, mv.version, gate_tags)
        if decision.promoted:
            reg.set_alias(spec.model.name, settings.model_alias, mv.version)
        log.info("[5/5] gate: %s -> %s", decision.reason,
                 f"'{settings.model_alias}' now points at version {mv.version}" if decision.promoted
                 else f"'{settings.model_alias}' unchanged")
    return TrainResult(spec.model.name, str(mv.version), run_id, info.version, metrics, decision, tags,
                       time.perf_counter() - t0)
