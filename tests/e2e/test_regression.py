"""Acceptance (bring your own data, regression): scikit-learn's bundled diabetes set -- a numeric target,
nothing downloaded -- goes from a CSV to served values by spec alone. ``fti spec init`` infers the
regression, the three stages run, ``/predict`` and ``/invocations`` answer exactly as the registered
regressor on the stored feature rows (on the fast path, proven at load), batch scoring and lineage agree,
``fti reproduce`` says IDENTICAL, and the gate compares RMSE."""

from __future__ import annotations

import json
import random
import sqlite3

import httpx
import numpy as np
import pytest

from shared.registry_contract import Tag
from shared.spec import load_spec
from tests.helpers import (
    Server,
    assert_served_equals_registered,
    bundled_sklearn_csv,
    fti_env,
    logged_lineage,
    raw_json_records,
    run_fti,
    wait_fast_path,
)

pytestmark = [pytest.mark.e2e]


def test_a_numeric_target_goes_from_csv_to_served_values_by_spec_alone(tmp_path):
    csv, label = bundled_sklearn_csv("diabetes", tmp_path / "raw")
    env = fti_env(tmp_path / "data", OMP_NUM_THREADS="1")
    spec_path = tmp_path / "spec.yaml"
    res = run_fti(["spec", "init", "--source", str(csv), "--label", label, "--out", str(spec_path)], env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "a regression (--task classification" in res.stderr
    res = run_fti(["spec", "check", "--spec", str(spec_path)], env)
    assert res.returncode == 0 and f"label {label!r}: 442 values from 25 to 346" in res.stdout, res.stdout + res.stderr
    for args in (["features", "run"], ["train"]):
        res = run_fti([*args, "--spec", str(spec_path)], env)
        assert res.returncode == 0, res.stderr[-3000:]
    assert "PROMOTED" in res.stdout and "rmse" in res.stdout
    spec = load_spec(spec_path).spec
    assert spec.model.task == "regression" and spec.model.primary_metric == "rmse"

    with sqlite3.connect(tmp_path / "data" / "mlflow.db") as conn:
        metrics = dict(conn.execute("select key, value from latest_metrics").fetchall())
        tags = dict(conn.execute("select key, value from model_version_tags").fetchall())
    assert metrics["rmse"] > 0 and metrics["mae"] > 0 and 0 < metrics["r2"] < 1  # a real, imperfect fit
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'data' / 'mlflow.db'}")
    plots = {a.path for a in client.list_artifacts(tags[Tag.RUN_ID], "plots")}
    assert {"plots/predicted_vs_actual.png", "plots/residuals.png", "plots/feature_importance.png"} <= plots

    records = random.Random(2).sample(raw_json_records(csv, spec_path), 40)
    server = Server(spec_path, env, tmp_path / "server.log")
    try:
        server.wait_ready()
        wait_fast_path(server.url)
        r = httpx.post(f"{server.url}/predict", json={"records": records}, timeout=60)
        assert r.status_code == 200, r.text
        preds = r.json()["predictions"]
        features = spec.model_features
        rows = [[rec[c] for c in features] for rec in records]  # the raw columns are the model inputs here
        inv = httpx.post(f"{server.url}/invocations", json={"dataframe_split": {"columns": features, "data": rows}},
                         timeout=60)
        assert inv.status_code == 200, inv.text
        pid = preds[0]["prediction_id"]
        lineage = logged_lineage(server.url, pid)
    finally:
        server.stop()
    pipeline = assert_served_equals_registered(tmp_path / "data", spec, records, preds)
    assert not hasattr(pipeline, "predict_proba")
    assert inv.json()["predictions"] == [p["prediction"] for p in preds]  # MLflow's shape: a flat list of values
    assert lineage["recomputed"] is True and lineage["recomputation"]["prediction"] == preds[0]["prediction"]

    res = run_fti(["predict-batch", "--spec", str(spec_path), "--json"], env)
    assert res.returncode == 0, res.stderr[-3000:]
    with sqlite3.connect(tmp_path / "data" / "features.db") as conn:
        batch = {rid: (pred, json.loads(out)) for rid, pred, out in
                 conn.execute("select record_id, prediction, outputs from fti_batch_predictions")}
    assert len(batch) == 442
    for rec, p in zip(records, preds, strict=True):
        pred, out = batch[str(rec[spec.record_id])]
        assert out == {"prediction": p["prediction"]} and float(pred) == p["prediction"]

    res = run_fti(["reproduce", f"{spec.model.name}/1", "--json"], env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    report = json.loads(res.stdout)
    assert report["verdict"] == "IDENTICAL", report["differences"]
    assert report["metrics"]["reproduced"]["rmse"] == metrics["rmse"]

    res = run_fti(["train", "--spec", str(spec_path)], env)  # the same again: not worse, promoted on RMSE
    assert res.returncode == 0, res.stderr[-3000:]
    with sqlite3.connect(tmp_path / "data" / "mlflow.db") as conn:
        v2 = dict(conn.execute("select key, value from model_version_tags where version = 2").fetchall())
    assert "candidate rmse" in v2[Tag.GATE_REASON] and v2[Tag.GATE_PROMOTED] == "true", v2[Tag.GATE_REASON]
    assert np.isfinite(metrics["rmse"])
