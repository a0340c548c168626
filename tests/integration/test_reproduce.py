"""``fti reproduce`` through the real CLI on a real local MLflow store (SQLite in ``tmp_path``).

One module-scoped project: a small claims source, one feature version, and the same spec trained
twice by ``fti train`` in two processes with different ``PYTHONHASHSEED``. The tests then ask
``fti reproduce`` about version 1: unchanged it must say IDENTICAL (exit 0); with one thing changed
(seed, a hyperparameter, a source row, a derived feature) it must say DIFFERENT (exit 1) and name it;
with nothing left to retrain from it must fail with exit 3.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.helpers import fti_env, run_fti, write_claims_spec

pytestmark = pytest.mark.integration

N_POLICYHOLDERS = 300
CLI_TIMEOUT = 240


@dataclass
class Trained:
    root: Path
    spec: Path
    csv: Path
    name: str
    env: dict[str, str]
    tracking_uri: str

    def cli(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return run_fti(list(args), env or self.env, timeout=CLI_TIMEOUT)

    def variant(self, filename: str, edit: Any) -> Path:
        """A copy of the spec, edited by ``edit(dict)``, next to the original (same source folder)."""
        data = yaml.safe_load(self.spec.read_text())
        edit(data)
        path = self.spec.parent / filename
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path


def _explain(res: subprocess.CompletedProcess[str]) -> str:
    return f"exit {res.returncode}\n--- stdout ---\n{res.stdout[-5000:]}\n--- stderr ---\n{res.stderr[-5000:]}"


def _report(res: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    try:
        return json.loads(res.stdout)
    except ValueError:
        raise AssertionError(f"`fti reproduce --json` did not print JSON:\n{_explain(res)}") from None


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    from feature_pipeline.config import Settings
    from feature_pipeline.pipeline import run
    from shared.spec import load_spec

    root = tmp_path_factory.mktemp("reproduce")
    name = f"claims-{uuid.uuid4().hex[:12]}"
    spec = write_claims_spec(root / "spec", n_policyholders=N_POLICYHOLDERS, overrides={"model.name": name})
    data_dir = root / "data"
    # Small data: OpenMP threads only add contention (HistGradientBoosting).
    env = fti_env(data_dir, OMP_NUM_THREADS="1")
    # Precondition: one feature version in the SQLite store -- built by the Spark engine where the spark extra is
    # installed (CI installs every extra), so reproduce is shown to rebuild and accept a Spark-built version;
    # else in-process (saves a CLI start-up).
    if importlib.util.find_spec("pyspark") is not None:
        res = run_fti(["features", "run", "--spec", str(spec), "--engine", "spark", "--buckets", "3"],
                      {**env, "FTI_SPARK_MASTER": "local[2]"}, timeout=CLI_TIMEOUT)
        assert res.returncode == 0, _explain(res)
        assert "bucket 3/3" in res.stderr and "spark local[2]" in res.stderr, _explain(res)  # progress per bucket
    else:
        run(load_spec(spec), Settings(data_dir=data_dir, database_url=f"sqlite:///{data_dir / 'features.db'}"))
    for hash_seed, extra in (("1", []), ("2", ["--promote", "never"])):
        res = run_fti(["train", "--spec", str(spec), *extra], {**env, "PYTHONHASHSEED": hash_seed},
                      timeout=CLI_TIMEOUT)
        assert res.returncode == 0, _explain(res)
    return Trained(root, spec, spec.parent / "raw" / "claims.csv", name, env,
                   f"sqlite:///{data_dir / 'mlflow.db'}")


@pytest.fixture
def client(trained: Trained, monkeypatch: pytest.MonkeyPatch) -> Any:
    import mlflow

    # Environment only (no mlflow.set_*_uri globals that would leak into later tests).
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained.tracking_uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", trained.tracking_uri)
    return mlflow.MlflowClient(tracking_uri=trained.tracking_uri, registry_uri=trained.tracking_uri)


# --------------------------------------------------------------------------- identical


def test_two_trainings_in_separate_processes_are_identical_and_reproduce_says_so(trained: Trained,
                                                                                 client: Any) -> None:
    import mlflow

    from shared import feature_table as ft
    from shared.db import make_engine
    from shared.spec import load_spec
    from training_pipeline.data import prepare

    v1, v2 = client.get_model_version(trained.name, "1"), client.get_model_version(trained.name, "2")
    r1, r2 = client.get_run(v1.run_id), client.get_run(v2.run_id)
    assert r1.data.params == r2.data.params
    assert r1.data.metrics == r2.data.metrics  # exact floats
    for tag in ("fti.feature_checksum", "fti.spec_hash", "fti.seed", "fti.source_sha256"):
        assert v1.tags[tag] == v2.tags[tag], tag

    # Bit-identical predictions of the two registered models on the full evaluation set.
    spec = load_spec(trained.spec).spec
    engine = make_engine(f"sqlite:///{trained.root / 'data' / 'features.db'}")
    try:
        info = ft.get_version(engine, spec.name, 1)
        data = prepare(ft.read_version(engine, spec, 1), spec, info)
    finally:
        engine.dispose()
    p1 = mlflow.sklearn.load_model(f"models:/{trained.name}/1").predict_proba(data.X_test)
    p2 = mlflow.sklearn.load_model(f"models:/{trained.name}/2").predict_proba(data.X_test)
    assert len(data.X_test) > 200 and np.array_equal(p1, p2)

    res = trained.cli("reproduce", f"{trained.name}/1")
    assert res.returncode == 0, _explain(res)
    assert ": IDENTICAL" in res.stdout.splitlines()[0], _explain(res)
    if importlib.util.find_spec("pyspark") is not None:  # the version reproduce rebuilt was built by Spark
        assert (info.details or {})["engine"] == {"name": "spark", "buckets": 3, "master": "local[2]"}
    assert f"predictions on {len(data.X_test)} evaluation rows: bit-identical" in res.stdout, _explain(res)
    assert "certificate records: bit-identical" in res.stdout
    assert "differences:" not in res.stdout
    # Reproducing registers nothing.
    assert sorted(str(mv.version) for mv in client.search_model_versions(f"name='{trained.name}'")) == ["1", "2"]


# --------------------------------------------------------------------------- one change each -> DIFFERENT


def _set_seed(d: dict[str, Any]) -> None:
    d["model"]["seed"] = 7


def _set_max_iter(d: dict[str, Any]) -> None:
    d["model"]["estimator"]["params"]["max_iter"] = 61


def _drop_claim_hour(d: dict[str, Any]) -> None:
    d["features"]["derived"] = [f for f in d["features"]["derived"] if f["name"] != "claim_hour"]


@pytest.mark.parametrize(("variant", "edit", "named"), [
    ("seed", _set_seed, ["spec: model.seed 42 -> 7", "params: seed 42 -> 7"]),
    ("hyperparameter", _set_max_iter, ["spec: model.estimator.params.max_iter 60 -> 61",
                                       "params: estimator.max_iter 60 -> 61", "predictions: ", "metrics: "]),
    ("derived feature", _drop_claim_hour, ["spec: features.derived[claim_hour] removed", "params: n_features 22 -> 21",
                                          "features: rebuilding", "predictions: "]),
])
def test_one_change_in_the_spec_is_named(trained: Trained, variant: str, edit: Any, named: list[str]) -> None:
    spec = trained.variant(f"claims-{variant.replace(' ', '-')}.yaml", edit)
    res = trained.cli("reproduce", f"{trained.name}/1", "--spec", str(spec))
    assert res.returncode == 1, _explain(res)
    assert ": DIFFERENT" in res.stdout.splitlines()[0], _explain(res)
    differences = res.stdout.split("differences:", 1)[1].split("notes:", 1)[0]
    for text in named:
        assert text in differences, f"{text!r} not named for the {variant} change:\n{_explain(res)}"
    assert "source changed" not in differences


def test_a_source_row_edited_in_place_is_named(trained: Trained) -> None:
    frame = pd.read_csv(trained.csv, dtype=str, keep_default_na=False)
    row = 11
    record_id = frame.loc[row, "claim_id"]
    backup = trained.root / "claims.csv.bak"
    shutil.copy2(trained.csv, backup)
    try:
        # Same ingested_at: the edit rewrites history, and the as-of rebuild includes the row.
        frame.loc[row, "claim_amount"] = f"{float(frame.loc[row, 'claim_amount']) + 1000:.2f}"
        frame.to_csv(trained.csv, index=False)
        res = trained.cli("reproduce", f"{trained.name}/1", "--json")
    finally:
        shutil.copy2(backup, trained.csv)
    assert res.returncode == 1, _explain(res)
    report = _report(res)
    assert report["verdict"] == "DIFFERENT"
    differences = "\n".join(report["differences"])
    assert "source changed: sha256" in differences, differences
    assert f"1 row(s) changed in their raw values ({record_id}: " in differences, differences
    assert "claim_amount" in differences
    rebuild = report["features"]["rebuild"]
    assert rebuild["source_changed"] is True and rebuild["equal"] is False
    assert [e["record_id"] for e in rebuild["rows_diff"]["changed_raw"]] == [record_id]
    # Its later claims' history features changed too, and are told apart from the edited row.
    assert all("prior_claim" in k for e in rebuild["rows_diff"]["changed_computed"] for k in e["fields"])
    # The stored version still verifies: the model itself still reproduces bit for bit from it.
    assert report["features"]["stored"]["verified"] is True
    assert report["predictions"]["evaluation"]["identical"] is True
    assert any("rewritten in place" in n for n in report["notes"]), report["notes"]


# --------------------------------------------------------------------------- exit 3


def test_unreproducible_requests_fail_with_exit_3(trained: Trained, client: Any) -> None:
    from fti.reproduce import ReproduceError, _model_version

    # Unknown versions and models: in-process (a CLI start-up costs ~10 s; the exit-3 mapping of
    # ReproduceError is exercised through the CLI below).
    with pytest.raises(ReproduceError, match=r"has no version 99 \(registered versions: 1, 2\)"):
        _model_version(client, trained.name, "99", None)
    with pytest.raises(ReproduceError, match="no registered model named 'nope-"):
        _model_version(client, f"nope-{trained.name}", "1", None)

    # Feature version gone (an empty store) and the source gone: nothing to retrain from.
    moved = trained.csv.with_suffix(".gone")
    trained.csv.rename(moved)
    try:
        empty_store = f"sqlite:///{trained.root / 'empty.db'}"
        res = trained.cli("reproduce", f"{trained.name}/1", env={**trained.env, "FTI_DATABASE_URL": empty_store})
    finally:
        moved.rename(trained.csv)
    assert res.returncode == 3, _explain(res)
    assert "fti: error: no data to retrain" in res.stderr and "Traceback" not in res.stderr, _explain(res)
    assert "source file not found" in res.stderr
