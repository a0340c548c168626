"""Acceptance: a dataset fti's code knows nothing about -- a spec and a CSV under tests/ --
goes through the feature job, training and serving with no code change.

The churn set differs from the demo on purpose: integer keys, naive timestamps,
string labels ("yes"/"no"), a string column that is not a model input, a
LogisticRegression, a stratified split.
"""

from __future__ import annotations

import json
import random

import httpx
import numpy as np
import pytest

from shared import feature_table as ft
from shared.db import make_engine
from shared.spec import load_spec
from tests.helpers import CHURN_SPEC, Server, fti_env, raw_json_records, run_fti

pytestmark = [pytest.mark.e2e]


def test_churn_dataset_through_all_three_stages(tmp_path):
    import mlflow

    env = fti_env(tmp_path / "data")
    spec = load_spec(CHURN_SPEC).spec

    res = run_fti(["features", "run", "--spec", str(CHURN_SPEC)], env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "feature version 1 of 'churn': created" in res.stdout
    res = run_fti(["features", "show", "--spec", str(CHURN_SPEC), "--verify"], env)
    manifest = json.loads(res.stdout)
    assert manifest["verified"] is True and manifest["row_count"] > 1000

    res = run_fti(["train", "--spec", str(CHURN_SPEC)], env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "model churn-logreg version 1" in res.stdout and "PROMOTED" in res.stdout

    server = Server(CHURN_SPEC, env, tmp_path / "server.log")
    try:
        ready = server.wait_ready()
        assert ready["model_name"] == "churn-logreg"
        records = raw_json_records(CHURN_SPEC.parent / "customers.csv", CHURN_SPEC)
        chosen = random.Random(5).sample(records, 80)
        r = httpx.post(f"{server.url}/predict", json={"records": chosen}, timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
    finally:
        server.stop()

    preds = body["predictions"]
    assert {p["prediction"] for p in preds} <= {"yes", "no"}
    assert all(set(p["probabilities"]) == {"no", "yes"} for p in preds)

    # Same answers as the registered pipeline on the stored feature rows.
    engine = make_engine(f"sqlite:///{tmp_path / 'data' / 'features.db'}")
    frame = ft.read_version(engine, spec, 1).set_index(spec.record_id, drop=False)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'data' / 'mlflow.db'}")
    pipeline = mlflow.sklearn.load_model("models:/churn-logreg/1")
    ids = [str(rec[spec.record_id]) for rec in chosen]
    assert [p["record_id"] for p in preds] == ids
    X = frame.loc[ids, spec.model_features]
    # each record as scikit-learn scores it alone (a LogisticRegression rounds rows inside a batch differently)
    expected = np.vstack([pipeline.predict_proba(X.iloc[[i]]) for i in range(len(X))])
    got = np.array([[p["probabilities"][c] for c in pipeline.classes_] for p in preds])
    assert np.array_equal(got, expected)
    assert "agent_code" not in spec.model_features  # a string column stays out of the model
