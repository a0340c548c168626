"""Acceptance (bring your own data): datasets that ship inside scikit-learn -- nothing downloaded, nothing
in fti knows them -- go from a CSV to served predictions by spec alone: ``fti spec init`` drafts the spec,
``fti spec check`` accepts it, the three stages run, and ``/predict`` answers exactly as the registered
pipeline does on the stored feature rows. Binary with a chosen positive class, and multi-class."""

from __future__ import annotations

import random
import sqlite3

import httpx
import pandas as pd
import pytest
import yaml

from shared.registry_contract import Tag
from shared.spec import load_spec
from tests.helpers import (
    Server,
    assert_served_equals_registered,
    bundled_sklearn_csv,
    fti_env,
    raw_json_records,
    run_fti,
)

pytestmark = [pytest.mark.e2e]


@pytest.mark.parametrize("name", ["breast_cancer", "wine"])
def test_a_bundled_dataset_goes_from_csv_to_served_predictions_by_spec_alone(tmp_path, name):
    csv, label = bundled_sklearn_csv(name, tmp_path / "raw")
    env = fti_env(tmp_path / "data", OMP_NUM_THREADS="1")
    res = run_fti(["spec", "init", "--source", str(csv), "--label", label, "--out", str(tmp_path / "spec.yaml")], env)
    assert res.returncode == 0, res.stderr[-3000:]
    spec_path = tmp_path / "spec.yaml"
    if name == "breast_cancer":  # the user's one edit: the event of interest is the malignant tumour
        assert "set model.positive_class" in res.stderr
        raw = yaml.safe_load(spec_path.read_text())
        raw["model"]["positive_class"] = "malignant"
        spec_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    res = run_fti(["spec", "check", "--spec", str(spec_path)], env)
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    assert not (tmp_path / "data").exists()
    for args in (["features", "run"], ["train"]):
        res = run_fti([*args, "--spec", str(spec_path)], env)
        assert res.returncode == 0, res.stderr[-3000:]
    assert "PROMOTED" in res.stdout

    spec = load_spec(spec_path).spec
    records = random.Random(1).sample(raw_json_records(csv, spec_path), 30)
    server = Server(spec_path, env, tmp_path / "server.log")
    try:
        server.wait_ready()
        r = httpx.post(f"{server.url}/predict", json={"records": records}, timeout=60)
        assert r.status_code == 200, r.text
        preds = r.json()["predictions"]
    finally:
        server.stop()

    pipeline = assert_served_equals_registered(tmp_path / "data", spec, records, preds)
    classes = set(pd.read_csv(csv)[label])
    assert {p["prediction"] for p in preds} <= classes and len(pipeline.classes_) == len(classes)
    with sqlite3.connect(tmp_path / "data" / "mlflow.db") as conn:
        tags = dict(conn.execute("select key, value from model_version_tags").fetchall())
    assert tags.get(Tag.POSITIVE_CLASS) == ("malignant" if name == "breast_cancer" else None)
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'data' / 'mlflow.db'}")
    per_class = mlflow.artifacts.load_dict(f"runs:/{tags[Tag.RUN_ID]}/evaluation/per_class.json")
    assert set(per_class["classes"]) >= classes | {"macro avg", "weighted avg"}  # every class, and the averages
    assert all(0 <= per_class["classes"][c]["recall"] <= 1 for c in classes)
