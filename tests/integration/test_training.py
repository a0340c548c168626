"""``fti train`` through the real CLI against a real ``mlflow server`` subprocess.

Feature store: SQLite in ``tmp_path``. Each test registers its own model name
(``claims-<uuid>``) so tests never see each other's versions or aliases.
Results are read back with ``mlflow.MlflowClient`` and ``models:/`` URIs.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import subprocess
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers import fti_env, run_fti, write_claims_spec

pytestmark = pytest.mark.integration

N_POLICYHOLDERS = 300
CLI_TIMEOUT = 240
ALIAS = "champion"
PLOTS = ["plots/roc_curve.png", "plots/pr_curve.png", "plots/confusion_matrix.png", "plots/calibration.png",
         "plots/feature_importance.png"]
WORSE_PARAMS = {"max_iter": 1, "max_depth": 1, "learning_rate": 0.01, "early_stopping": False}


# --------------------------------------------------------------------------- helpers


class Project:
    """One test's spec, source, SQLite feature store and MLflow settings."""

    def __init__(self, tmp_path: Path, server_url: str) -> None:
        self.tmp_path = tmp_path
        self.server_url = server_url
        self.model_name = f"claims-{uuid.uuid4().hex[:12]}"
        self.store_url = f"sqlite:///{tmp_path / 'store' / 'features.db'}"
        self.spec = write_claims_spec(tmp_path / "spec", n_policyholders=N_POLICYHOLDERS,
                                      overrides={"model.name": self.model_name})
        self.csv = self.spec.parent / "raw" / "claims.csv"
        self.env = fti_env(tmp_path / "data", FTI_DATABASE_URL=self.store_url,
                           FTI_EXPERIMENT=f"fti-it-{self.model_name}",
                           MLFLOW_TRACKING_URI=server_url, MLFLOW_REGISTRY_URI=server_url,
                           # Small data: OpenMP threads only add contention (HistGradientBoosting).
                           OMP_NUM_THREADS="1")

    def variant_spec(self, folder: str, params: dict[str, Any]) -> Path:
        """Same dataset and model name, other estimator params (reads the same feature store)."""
        return write_claims_spec(self.tmp_path / folder, generate=False,
                                 overrides={"model.name": self.model_name, "model.estimator.params": params})

    def cli(self, args: list[str]) -> subprocess.CompletedProcess[str]:
        return run_fti(args, self.env, timeout=CLI_TIMEOUT)

    def publish_features(self) -> dict[str, Any]:
        """Precondition: one feature version, published in-process by the real pipeline."""
        from feature_pipeline.config import Settings
        from feature_pipeline.pipeline import run
        from shared.spec import load_spec

        with warnings.catch_warnings():
            # A precondition, not the subject: the pipeline's own deprecations are checked by
            # test_feature_pipeline.test_pipeline_emits_no_deprecation_warnings.
            warnings.simplefilter("ignore", DeprecationWarning)
            result = run(load_spec(self.spec), Settings(database_url=self.store_url,
                                                        data_dir=self.tmp_path / "data"))
        return result.info.as_dict()

    def train(self, *extra: str, spec: Path | None = None) -> tuple[subprocess.CompletedProcess[str], dict[str, str]]:
        res = self.cli(["train", "--spec", str(spec or self.spec), *extra])
        assert res.returncode == 0, _explain(res)
        return res, _train_line(res.stdout)


def _explain(res: subprocess.CompletedProcess[str]) -> str:
    return f"exit {res.returncode}\n--- stdout ---\n{res.stdout[-4000:]}\n--- stderr ---\n{res.stderr[-6000:]}"


_TRAIN_LINE = re.compile(r"model (?P<name>\S+) version (?P<version>\d+) \(run (?P<run_id>\w+), feature version "
                         r"(?P<fv>\d+)\): (?P<metric>\w+) (?P<score>[\d.]+); (?P<state>PROMOTED|not promoted)")


def _train_line(stdout: str) -> dict[str, str]:
    m = _TRAIN_LINE.search(stdout)
    assert m, f"unexpected `fti train` output: {stdout!r}"
    return m.groupdict()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _artifact_paths(client: Any, run_id: str, path: str | None = None) -> set[str]:
    out: set[str] = set()
    for f in client.list_artifacts(run_id, path):
        out |= _artifact_paths(client, run_id, f.path) if f.is_dir else {f.path}
    return out


def _decision(client: Any, run_id: str, dst: Path) -> dict[str, Any]:
    dst.mkdir(parents=True, exist_ok=True)
    return json.loads(Path(client.download_artifacts(run_id, "gate/decision.json", str(dst))).read_text())


@pytest.fixture
def project(tmp_path: Path, mlflow_env: Any) -> Project:
    return Project(tmp_path, mlflow_env.url)


@pytest.fixture
def client(mlflow_env: Any) -> Any:
    import mlflow

    return mlflow.MlflowClient(tracking_uri=mlflow_env.url, registry_uri=mlflow_env.url)


# --------------------------------------------------------------------------- tests


def test_train_registers_a_validated_champion_with_lineage(project: Project, client: Any) -> None:
    import mlflow
    import sklearn

    import shared
    from shared import feature_table as ft
    from shared.db import make_engine
    from shared.spec import load_spec

    res = project.cli(["features", "run", "--spec", str(project.spec)])
    assert res.returncode == 0, _explain(res)
    res, line = project.train()
    assert line["state"] == "PROMOTED" and line["name"] == project.model_name and line["fv"] == "1"

    loaded = load_spec(project.spec)
    spec = loaded.spec
    engine = make_engine(project.store_url)
    try:
        fv = ft.get_version(engine, spec.name, 1)
        frame = ft.read_version(engine, spec, 1)
    finally:
        engine.dispose()

    # Registry: one version, the champion alias on it.
    name = project.model_name
    champion = client.get_model_version_by_alias(name, ALIAS)
    assert champion.version == line["version"] == "1"
    assert champion.run_id == line["run_id"]
    assert [mv.version for mv in client.search_model_versions(f"name='{name}'")] == ["1"]

    tags = champion.tags
    expected_tags = {
        "fti.feature_version": "1",
        "fti.feature_checksum": fv.checksum,
        "fti.source_sha256": _sha256(project.csv),
        "fti.spec_hash": loaded.hash,
        "fti.feature_spec_hash": spec.feature_hash,
        "fti.shared_version": shared.__version__,
        "fti.seed": str(spec.model.seed),
        "fti.lib.scikit-learn": sklearn.__version__,
        "fti.validated": "true",
        "fti.gate.promoted": "true",
        "fti.run_id": line["run_id"],
    }
    assert {k: tags.get(k) for k in expected_tags} == expected_tags
    assert tags.get("fti.code_commit") and tags["fti.code_commit"] != "unknown"
    assert fv.source_sha256 == _sha256(project.csv)

    # The run: params, metrics, artifacts.
    run = client.get_run(line["run_id"])
    params = run.data.params
    assert params["estimator"] == "sklearn.ensemble.HistGradientBoostingClassifier"
    assert params["seed"] == str(spec.model.seed)
    assert params["estimator.max_iter"] == "60"
    assert params["estimator.learning_rate"] == str(spec.model.estimator.params["learning_rate"])
    metrics = run.data.metrics
    for key in ("roc_auc", "average_precision"):
        assert 0.0 < metrics[key] <= 1.0, (key, metrics[key])
    assert math.isfinite(metrics["log_loss"]) and metrics["log_loss"] > 0
    assert metrics[line["metric"]] == pytest.approx(float(line["score"]), abs=1e-4)
    assert metrics["roc_auc"] > 0.6, "the model should learn something from the seeded signal"
    artifacts = _artifact_paths(client, line["run_id"])
    missing = {*PLOTS, "spec/claims.yaml", "gate/decision.json"} - artifacts
    assert not missing, f"missing artifacts {sorted(missing)}; run has {sorted(artifacts)}"
    # The Datasets tab: both splits of the feature version, its checksum as the digest.
    inputs_by_split = {next(t.value for t in d.tags if t.key == "fti.split"): d
                       for d in run.inputs.dataset_inputs}
    assert set(inputs_by_split) == {"training", "evaluation"}
    checksum = run.data.tags["fti.feature_checksum"]
    for d in inputs_by_split.values():
        assert d.dataset.digest == checksum[:32]
        assert {t.key: t.value for t in d.tags}["fti.feature_checksum"] == checksum
        split = next(t.value for t in d.tags if t.key == "fti.split")
        assert d.dataset.name.endswith(f"feature-version-{run.data.tags['fti.feature_version']}-{split}")
    decision = _decision(client, line["run_id"], project.tmp_path / "dl")
    assert decision["promoted"] is True and decision["champion_version"] is None

    # The registered model: its signature comes from the spec.
    uri = f"models:/{name}/{champion.version}"
    info = mlflow.models.get_model_info(uri)
    inputs = info.signature.inputs.inputs
    assert [c.name for c in inputs] == spec.model_features
    for col in inputs:
        declared = spec.columns.get(col.name)
        nullable = declared is None or declared.nullable
        assert col.required is (not nullable), (col.name, col.required, nullable)
        kind = "double" if spec.feature_kind(col.name) == "numeric" else "string"
        assert col.type.name == kind, (col.name, col.type)
    assert any(not c.required for c in inputs) and any(c.required for c in inputs)

    # ...and predicts probabilities on stored feature rows.
    model = mlflow.pyfunc.load_model(uri)
    X = frame[spec.model_features]
    proba = np.asarray(model.predict(X))
    assert proba.shape == (len(frame), 2)
    assert np.all((proba >= 0) & (proba <= 1))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-9)


def test_gate_keeps_a_better_champion_and_promotes_an_equal_one(project: Project, client: Any) -> None:
    project.publish_features()
    name = project.model_name

    _, first = project.train()
    assert first["state"] == "PROMOTED" and first["version"] == "1"

    # A deliberately weak model on the same feature version: registered, not promoted.
    worse_spec = project.variant_spec("worse", WORSE_PARAMS)
    res, worse = project.train(spec=worse_spec)
    assert worse["version"] == "2" and worse["fv"] == "1"
    assert worse["state"] == "not promoted" and "not promoted" in res.stdout
    assert client.get_model_version_by_alias(name, ALIAS).version == "1"
    mv = client.get_model_version(name, "2")
    assert mv.tags["fti.gate.promoted"] == "false"
    assert mv.tags["fti.gate.champion_version"] == "1"
    assert mv.tags["fti.validated"] == "true"
    decision = _decision(client, worse["run_id"], project.tmp_path / "dl-worse")
    assert decision["promoted"] is False
    assert decision["champion_version"] == "1"
    assert decision["metric"] == "average_precision"
    assert decision["champion_score"] > decision["candidate_score"]
    assert decision["candidate_score"] == pytest.approx(float(worse["score"]), abs=1e-4)
    assert client.get_run(worse["run_id"]).data.params["estimator.max_iter"] == "1"

    # The original params again: at least as good as the champion -> promoted.
    _, again = project.train()
    assert again["version"] == "3" and again["state"] == "PROMOTED"
    assert client.get_model_version_by_alias(name, ALIAS).version == "3"
    assert client.get_model_version(name, "3").tags["fti.gate.promoted"] == "true"
    decision = _decision(client, again["run_id"], project.tmp_path / "dl-again")
    assert decision["promoted"] is True and decision["champion_version"] == "1"
    assert decision["candidate_score"] >= decision["champion_score"]

    # --promote never: registered and validated, the alias stays where it is.
    res, never = project.train("--promote", "never")
    assert never["version"] == "4" and never["state"] == "not promoted"
    assert client.get_model_version_by_alias(name, ALIAS).version == "3"
    mv = client.get_model_version(name, "4")
    assert mv.tags["fti.gate.promoted"] == "false"
    assert mv.tags["fti.validated"] == "true"
    assert "never" in mv.tags["fti.gate.reason"]


def test_missing_feature_version_fails_with_its_number(project: Project, client: Any) -> None:
    project.publish_features()
    res = project.cli(["train", "--spec", str(project.spec), "--feature-version", "99"])
    assert res.returncode == 3, _explain(res)
    assert "fti: error:" in res.stderr and "Traceback" not in res.stderr, _explain(res)
    assert re.search(r"\bversion 99\b", res.stderr), _explain(res)
    # Nothing was registered under the model name.
    assert client.search_model_versions(f"name='{project.model_name}'") == []
