"""MLflow logging, registration, the registry round-trip check and the promotion gate.

Order matters, so that a half-done run never leaves the alias on a bad model:
log -> register (wait READY) -> load back and compare predictions -> tag
``fti.validated`` -> gate against the current champion -> move the alias last.
"""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from shared import decision as decisions
from shared import rowwise
from shared.registry_contract import Tag
from shared.spec import DatasetSpec
from training_pipeline.config import Settings
from training_pipeline.evaluate import better_or_equal

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GateDecision:
    promoted: bool
    reason: str
    metric: str
    candidate_score: float
    champion_version: str | None = None
    champion_score: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def configure(settings: Settings) -> None:
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.registry_uri)


def ensure_experiment(settings: Settings, name: str) -> str:
    import mlflow

    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return str(exp.experiment_id)
    location = None
    if not settings.tracking_uri.startswith(("http://", "https://", "databricks")):
        # A local tracking database would otherwise put artifacts in ./mlruns of whatever cwd.
        root = settings.local_artifact_root / name
        root.mkdir(parents=True, exist_ok=True)
        location = root.as_uri()
    return str(mlflow.create_experiment(name, artifact_location=location))


def pip_requirements() -> list[str]:
    """Pinned to the running environment; avoids MLflow's slow requirement inference."""
    names = ["mlflow", "scikit-learn", "numpy", "scipy", "pandas", "skops", "fti"]
    out = []
    for n in names:
        try:
            out.append(f"{n}=={metadata.version(n)}")
        except metadata.PackageNotFoundError:
            continue
    return out


def signature_for(spec: DatasetSpec, n_classes: int, *, regression: bool = False) -> Any:
    """Model signature from the spec, not from an example: a column is required only when the
    spec says it can never be missing (an example without nulls proves nothing)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema, TensorSpec

    cols: list[ColSpec | TensorSpec] = []
    for name in spec.model_features:
        col = spec.columns.get(name)
        kind = "double" if spec.feature_kind(name) == "numeric" else "string"
        required = col is not None and not col.nullable
        cols.append(ColSpec(kind, name, required=required))
    shape = (-1,) if regression else (-1, n_classes)
    return ModelSignature(inputs=Schema(cols), outputs=Schema([TensorSpec(np.dtype("float64"), shape)]))


def log_model(pipe: Any, spec: DatasetSpec, X_example: pd.DataFrame, extra_files: list[str] | None = None) -> Any:
    import mlflow
    import skops.io

    regression = spec.model.task == "regression"  # MLflow's pyfunc then answers predict(): one value per row
    signature = signature_for(spec, 1 if regression else len(pipe.classes_), regression=regression)
    trusted = skops.io.get_untrusted_types(data=skops.io.dumps(pipe))
    return mlflow.sklearn.log_model(
        pipe, name="model", signature=signature, input_example=X_example.head(5),
        pyfunc_predict_fn="predict" if regression else "predict_proba", serialization_format="skops",
        skops_trusted_types=trusted,
        pip_requirements=pip_requirements(), extra_files=extra_files)


def log_feature_inputs(spec: DatasetSpec, data: Any) -> None:
    """The run's Datasets tab: the training and evaluation splits of the feature version, named after it,
    with the version's checksum as MLflow's digest (one name per split: MLflow keeps one input per name and
    digest) (its first 32 hex digits: MLflow's column is short;
    the whole checksum is in the input's tags and the run's ``fti.feature_checksum``)."""
    import mlflow
    from mlflow.data.pandas_dataset import from_pandas

    info = data.version
    tags = {"fti.dataset": spec.name, "fti.feature_version": str(info.version),
            "fti.feature_checksum": info.checksum, "fti.feature_as_of": str(info.as_of)}
    for context, X, y in (("training", data.X_train, data.y_train), ("evaluation", data.X_test, data.y_test)):
        frame = X.assign(**{spec.label: y})
        with warnings.catch_warnings():  # MLflow's schema hint about integer columns: the spec owns dtypes
            warnings.filterwarnings("ignore", category=UserWarning, module="mlflow.types.utils")
            ds = from_pandas(frame, targets=spec.label, name=f"{spec.name}-feature-version-{info.version}-{context}",
                             digest=info.checksum[:32])
        mlflow.log_input(ds, context=context, tags={**tags, "fti.split": context})


def register(model_uri: str, name: str, tags: dict[str, str]) -> Any:
    """A new version of ``name`` from a logged model, as ``mlflow.register_model`` makes it -- except that
    the registered model is created only when it does not exist: ``register_model`` always tries to
    create it first, and on every retrain the database behind the registry logged a duplicate-key
    ERROR for that attempt."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        try:
            client.create_registered_model(name)
        except MlflowException as race:  # another training job created it meanwhile
            if race.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
    model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
    return client.create_model_version(name, source=model_uri, run_id=None, tags=tags, await_creation_for=300,
                                       model_id=model_id)


def download(name: str, version: str, dst: str) -> Any:
    import mlflow.artifacts

    return mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=dst)


def round_trip_check(name: str, version: str, X: pd.DataFrame, expected: np.ndarray) -> str:
    """Load the registered version back through the loader every stage uses and require bit-identical
    probabilities; returns the digest of its files (``fti.artifact_sha256``), which every later load checks."""
    from shared.model_file import ModelFileRefused, artifact_digest, load_model_dir

    with tempfile.TemporaryDirectory(prefix="fti-roundtrip-") as tmp:
        model_dir = download(name, version, tmp)
        digest = artifact_digest(model_dir)
        try:  # this process wrote the file: the allow-list applies, the memory rehearsal is not needed
            reloaded = load_model_dir(model_dir, expected_digest=digest, memory_limit_mb=0)
        except ModelFileRefused as exc:
            raise RuntimeError(f"registered model {name}/{version} would be refused by every fti loader: {exc}; "
                               "choose an estimator from docs/security.md's list") from None
    got = rowwise.predict_proba(reloaded, X)
    if not np.array_equal(got, expected):
        diff = float(np.nanmax(np.abs(got - expected)))
        raise RuntimeError(f"registered model {name}/{version} predicts differently after the registry "
                           f"round trip (max |diff| {diff:g}); it was not promoted")
    return digest


def load_registered(name: str, version: str, tags: dict[str, str], memory_limit_mb: int) -> Any:
    """A registered version's pipeline, with the digest and allow-list checks (the gate's champion)."""
    return load_registered_with_decision(name, version, tags, memory_limit_mb)[0]


def load_registered_with_decision(name: str, version: str, tags: dict[str, str], memory_limit_mb: int
                                  ) -> tuple[Any, decisions.Decision | None]:
    """:func:`load_registered` and the decision rule stored beside it (None: argmax)."""
    from shared.model_file import load_model_dir, prepare_rehearsal

    prepare_rehearsal(memory_limit_mb)  # the helper's imports overlap the download
    with tempfile.TemporaryDirectory(prefix="fti-champion-") as tmp:
        model_dir = download(name, version, tmp)
        pipeline = load_model_dir(model_dir, expected_digest=tags.get(Tag.ARTIFACT_SHA256),
                                  memory_limit_mb=memory_limit_mb)
        return pipeline, decisions.read(Path(model_dir))  # read after the digest check covered it


def champion_score(metric: str, old: Any, rule: decisions.Decision | None, X: pd.DataFrame, y: np.ndarray,
                   positive_class: Any, decision_policy: dict[str, Any] | None) -> float:
    """The champion's ``metric`` on the candidate's evaluation data, deciding as the champion serves:
    with its own threshold, or argmax if it was trained without a decision policy."""
    from shared.labels import positive_index
    from training_pipeline.evaluate import compute_metrics

    proba = rowwise.predict_proba(old, X)
    if decision_policy is None:
        return compute_metrics(getattr(old, "classes_", None), y, proba, positive_class)[metric]
    if len(old.classes_) != 2:
        raise ValueError(f"the champion has {len(old.classes_)} classes; a decision policy needs a binary label")
    k = positive_index(old.classes_, positive_class)
    decided = decisions.apply(proba, k, rule.threshold if rule is not None else None)
    return decisions.outcome_metrics(decision_policy, np.asarray(y) == old.classes_[k], decided == k)[metric]


def champion(name: str, alias: str) -> Any | None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc.error_code) or "not found" in str(exc).lower():
            return None
        raise


def gate(name: str, alias: str, *, metric: str, candidate_score: float, X: pd.DataFrame, y: np.ndarray,
         policy: str, memory_limit_mb: int = 2048, positive_class: Any = None,
         decision_policy: dict[str, Any] | None = None, margin: float = 0.0) -> GateDecision:
    """Compare with the current champion on the candidate's evaluation data (with a decision policy: on
    the policy's metric, each model deciding with its own rule)."""
    current = champion(name, alias)
    if policy == "never":
        return GateDecision(False, "promotion disabled (--promote never)", metric, candidate_score,
                            current.version if current else None)
    if current is None:
        return GateDecision(True, f"no '{alias}' yet: the first version becomes {alias}", metric,
                            candidate_score)
    from shared.model_file import ModelFileRefused

    try:
        old, rule = load_registered_with_decision(name, str(current.version), dict(current.tags or {}),
                                                  memory_limit_mb)
    except ModelFileRefused as exc:
        if policy == "always":
            return GateDecision(True, f"--promote always; champion v{current.version} is refused ({exc})", metric,
                                candidate_score, current.version)
        return GateDecision(False, f"champion v{current.version} cannot be loaded safely ({exc}); pass --promote "
                                   "always to replace it", metric, candidate_score, current.version)
    wanted = list(getattr(old, "feature_names_in_", []))
    missing = [c for c in wanted if c not in X.columns]
    if missing:
        if policy == "always":
            return GateDecision(True, f"--promote always; champion v{current.version} needs columns the "
                                      f"evaluation data lacks ({missing[:5]})", metric, candidate_score,
                                current.version)
        return GateDecision(False, f"champion v{current.version} cannot score this evaluation data (it needs "
                                   f"{missing[:5]}); pass --promote always to replace it", metric,
                            candidate_score, current.version)
    try:
        old_score = champion_score(metric, old, rule, X[wanted] if wanted else X, y, positive_class,
                                   decision_policy)
    except ValueError as exc:  # e.g. the champion was trained on other classes than the candidate's label
        if policy == "always":
            return GateDecision(True, f"--promote always; champion v{current.version} cannot be scored on this "
                                      f"evaluation data ({exc})", metric, candidate_score, current.version)
        return GateDecision(False, f"champion v{current.version} cannot be scored on this evaluation data ({exc}); "
                                   "pass --promote always to replace it", metric, candidate_score, current.version)
    ok = better_or_equal(metric, candidate_score, old_score, margin)
    if policy == "always":
        return GateDecision(True, f"--promote always (candidate {candidate_score:.6f} vs champion "
                                  f"{old_score:.6f})", metric, candidate_score, current.version, old_score)
    verdict = "at least as good as" if ok else "worse than"
    allowed = f" (non-inferiority margin {margin:g})" if margin else ""
    return GateDecision(ok, f"candidate {metric} {candidate_score:.6f} is {verdict} champion "
                            f"v{current.version} {old_score:.6f}{allowed} on the same evaluation data", metric,
                        candidate_score, current.version, old_score)


def set_alias(name: str, alias: str, version: str) -> None:
    from mlflow import MlflowClient

    MlflowClient().set_registered_model_alias(name, alias, version)


def set_version_tags(name: str, version: str, tags: dict[str, str]) -> None:
    from mlflow import MlflowClient

    client = MlflowClient()
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, v)


def log_json(obj: Any, path: str) -> None:
    import mlflow

    mlflow.log_text(json.dumps(obj, indent=2, sort_keys=True, default=str), path)


def log_file(path: Path, artifact_path: str) -> None:
    import mlflow

    mlflow.log_artifact(str(path), artifact_path)
