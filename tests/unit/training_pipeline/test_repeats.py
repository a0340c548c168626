"""``model.repeats``: the spread of every metric over several seeds, recorded with the run and reproduced."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from shared.spec import DatasetSpec, load_spec
from tests.helpers import CHURN_SPEC, fti_env

REPO = Path(__file__).resolve().parents[3]


def test_repeats_default_keeps_the_spec_hash():
    raw = yaml.safe_load(CHURN_SPEC.read_text())
    assert DatasetSpec.model_validate(raw).content_hash == load_spec(CHURN_SPEC).hash
    raw["model"]["repeats"] = 1
    assert DatasetSpec.model_validate(raw).content_hash == load_spec(CHURN_SPEC).hash
    raw["model"]["repeats"] = 3
    assert DatasetSpec.model_validate(raw).content_hash != load_spec(CHURN_SPEC).hash


@pytest.mark.slow  # ~40 s: features, a 3-seed training and its reproduction on the embedded stores
def test_three_seeds_log_mean_and_sd_and_reproduce_identical(tmp_path):
    folder = tmp_path / "churn"
    shutil.copytree(CHURN_SPEC.parent, folder)
    raw = yaml.safe_load((folder / "spec.yaml").read_text())
    raw["model"]["repeats"] = 3
    raw["model"]["estimator"] = {"class": "sklearn.ensemble.RandomForestClassifier",
                                 "params": {"n_estimators": 20, "max_depth": 6}}  # seeds change it
    (folder / "spec.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    spec = str(folder / "spec.yaml")
    env = fti_env(tmp_path / "data", OMP_NUM_THREADS="1")

    def fti(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", "import sys; from fti.cli import main; sys.exit(main())",
                               *args], env=env, capture_output=True, text=True, timeout=300, cwd=REPO)

    for args in (["features", "run", "--spec", spec], ["train", "--spec", spec]):
        res = fti(*args)
        assert res.returncode == 0, res.stderr[-3000:]
    assert "(over 3 seeds: " in res.stderr and "repeat 3/3 (seed 9)" in res.stderr
    with sqlite3.connect(tmp_path / "data" / "mlflow.db") as conn:
        metrics = dict(conn.execute("select key, value from latest_metrics").fetchall())
    assert metrics["repeats.roc_auc.sd"] > 0
    assert min(abs(metrics["repeats.roc_auc.mean"] - metrics["roc_auc"]), 1) < 0.1
    assert "repeats.n_eval.mean" not in metrics
    res = fti("reproduce", "churn-logreg/1", "--spec", spec)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "IDENTICAL" in res.stdout
