"""Acceptance (issue: bring your own data, decision policy): a threshold chosen at training for a stated
objective is stored with the model, applied identically by ``/predict`` and ``fti predict-batch``,
visible in lineage, and reproduced exactly by ``fti reproduce``; the gate compares the policy's metric.
The model is a ``spec_version: 2`` HistGradientBoosting with native categories, served on the fast path."""

from __future__ import annotations

import json
import random
import shutil
import sqlite3

import httpx
import numpy as np
import pytest
import yaml

from shared.registry_contract import Tag
from shared.spec import load_spec
from tests.helpers import (
    CHURN_SPEC,
    Server,
    assert_served_equals_registered,
    fti_env,
    logged_lineage,
    raw_json_records,
    run_fti,
    wait_fast_path,
)

pytestmark = [pytest.mark.e2e]


def test_the_chosen_threshold_decides_online_and_in_batch_and_reproduces(tmp_path):
    folder = tmp_path / "churn"
    shutil.copytree(CHURN_SPEC.parent, folder)
    spec_path = folder / "spec.yaml"
    raw = yaml.safe_load(spec_path.read_text())
    raw["model"]["decision"] = {"objective": "f_beta", "beta": 2.0}  # a missed churner costs more than a call
    # spec_version 2: preprocessing suits the estimator -- no imputation or scaling, native categories
    raw["spec_version"] = 2
    raw["model"]["estimator"] = {"class": "sklearn.ensemble.HistGradientBoostingClassifier",
                                 "params": {"max_iter": 60, "learning_rate": 0.1}}
    spec_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    spec = load_spec(spec_path).spec
    env = fti_env(tmp_path / "data", OMP_NUM_THREADS="1")
    for args in (["features", "run"], ["train"]):
        res = run_fti([*args, "--spec", str(spec_path)], env)
        assert res.returncode == 0, res.stderr[-3000:]
    assert "PROMOTED" in res.stdout and "decision rule: positive when the score is >= " in res.stdout

    with sqlite3.connect(tmp_path / "data" / "mlflow.db") as conn:
        metrics = dict(conn.execute("select key, value from latest_metrics").fetchall())
        tags = dict(conn.execute("select key, value from model_version_tags").fetchall())
        params = dict(conn.execute("select key, value from params").fetchall())
    threshold = metrics["decision.threshold"]
    assert 0 < threshold < 0.5  # beta 2 asks for recall: below argmax's 0.5
    assert tags[Tag.DECISION_THRESHOLD] == repr(threshold)
    assert params["decision.objective"] == "f_beta" and float(params["decision.beta"]) == 2.0
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'data' / 'mlflow.db'}")
    run_id = tags[Tag.RUN_ID]
    assert "plots/decision_threshold.png" in {a.path for a in client.list_artifacts(run_id, "plots")}

    records = random.Random(5).sample(raw_json_records(folder / "customers.csv", spec_path), 150)
    server = Server(spec_path, env, tmp_path / "server.log")
    try:
        server.wait_ready()
        scorer = wait_fast_path(server.url)
        r = httpx.post(f"{server.url}/predict", json={"records": records}, timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        pid = body["predictions"][0]["prediction_id"]
        lineage = logged_lineage(server.url, pid)
    finally:
        server.stop()
    assert scorer["passed"] is True and scorer["trees_compiled"] is False  # native categories: the estimator scores
    assert body["decision"] == {"objective": "f_beta", "threshold": threshold, "positive_class": "yes"}
    preds = body["predictions"]
    assert_served_equals_registered(tmp_path / "data", spec, records, preds)
    for p in preds:
        assert p["score"] == p["probabilities"]["yes"]
        assert p["prediction"] == ("yes" if p["score"] >= threshold else "no")
    assert any(p["prediction"] == "yes" and p["score"] < 0.5 for p in preds), "the rule changed no answer"

    assert lineage["recomputed"] is True and lineage["recomputation"]["same_decision_rule"] is True
    assert lineage["recomputation"]["decision"]["threshold"] == threshold
    assert lineage["model"]["decision_threshold"] == repr(threshold)
    assert json.loads(lineage["prediction"]["outputs"] if isinstance(lineage["prediction"]["outputs"], str)
                      else json.dumps(lineage["prediction"]["outputs"]))["threshold"] == threshold

    res = run_fti(["predict-batch", "--spec", str(spec_path), "--json"], env)
    assert res.returncode == 0, res.stderr[-3000:]
    with sqlite3.connect(tmp_path / "data" / "features.db") as conn:
        batch = {rid: (pred, json.loads(out)) for rid, pred, out in
                 conn.execute("select record_id, prediction, outputs from fti_batch_predictions")}
    for rec, p in zip(records, preds, strict=True):
        pred, out = batch[str(rec[spec.record_id])]
        assert pred == p["prediction"] and out["prediction"] == p["prediction"]
        assert out["probabilities"] == p["probabilities"] and out["threshold"] == threshold

    res = run_fti(["reproduce", f"{spec.model.name}/1", "--json"], env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    report = json.loads(res.stdout)
    assert report["verdict"] == "IDENTICAL", report["differences"]
    assert report["metrics"]["reproduced"]["decision.threshold"] == threshold

    # A second version is gated on the policy's metric (F-beta at each model's own threshold).
    res = run_fti(["train", "--spec", str(spec_path)], env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "decision.f_beta" in res.stderr
    with sqlite3.connect(tmp_path / "data" / "mlflow.db") as conn:
        v2 = dict(conn.execute("select key, value from model_version_tags where version = 2").fetchall())
    assert "decision.f_beta" in v2[Tag.GATE_REASON] and v2[Tag.GATE_CHAMPION_VERSION] == "1"
    assert np.isfinite(metrics["decision.f_beta"]) and metrics["decision.f_beta"] > 0
