"""Acceptance: a record gets the same bits alone and inside any batch, on every fti path, for every family.

For each estimator family (HistGradientBoosting, LogisticRegression, a random forest, an MLP, naive
Bayes, k-nearest neighbours) trained on the churn set by spec alone: 200 records are scored over real
HTTP one at a time and in shuffled batches of 1 to 500, on ``/predict`` (raw records) and
``/invocations`` (model inputs), and by ``fti predict-batch`` into its table. Every answer must equal
scikit-learn applied to that record alone, bit for bit. Every logged prediction then recomputes
(``recomputed: true``), and a logged prediction whose output or input was edited does not.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy import select, text

from shared import batch_table as bt
from shared import feature_table as ft
from shared.db import make_engine
from shared.spec import load_spec
from tests.helpers import CHURN_SPEC, Server, fti_env, raw_json_records, run_fti

pytestmark = [pytest.mark.e2e]

FAMILIES = {
    "hist-gradient-boosting": ("sklearn.ensemble.HistGradientBoostingClassifier", {"max_iter": 40}),
    "logistic-regression": ("sklearn.linear_model.LogisticRegression", {"C": 1.0, "max_iter": 500}),
    "random-forest": ("sklearn.ensemble.RandomForestClassifier", {"n_estimators": 30, "min_samples_leaf": 3}),
    "mlp": ("sklearn.neural_network.MLPClassifier", {"hidden_layer_sizes": [16], "max_iter": 300}),
    "gaussian-nb": ("sklearn.naive_bayes.GaussianNB", {}),
    "k-neighbors": ("sklearn.neighbors.KNeighborsClassifier", {"n_neighbors": 15}),
}
SIZES = (1, 2, 3, 5, 8, 13, 21, 34, 55, 58)  # shuffled batches covering the 200 records once


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One feature version of the churn set, shared by every family's model."""
    root = tmp_path_factory.mktemp("invariance")
    env = fti_env(root / "data", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    res = run_fti(["features", "run", "--spec", str(CHURN_SPEC)], env)
    assert res.returncode == 0, res.stderr[-3000:]
    return {"root": root, "env": env}


def _family_spec(root: Path, family: str) -> Path:
    cls, params = FAMILIES[family]
    text_ = CHURN_SPEC.read_text()
    text_ = text_.replace("name: churn-logreg", f"name: churn-{family}")
    text_ = text_.replace("    class: sklearn.linear_model.LogisticRegression\n    params: {C: 1.0, max_iter: 500}",
                          f"    class: {cls}\n    params: {json.dumps(params)}")
    assert f"churn-{family}" in text_ and cls in text_
    folder = root / f"spec-{family}"
    folder.mkdir()
    (folder / "customers.csv").write_bytes((CHURN_SPEC.parent / "customers.csv").read_bytes())
    path = folder / "spec.yaml"
    path.write_text(text_)
    return path


def _proba(p: dict, classes: list[str]) -> list[float]:
    return [p["probabilities"][c] for c in classes]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_alone_and_in_any_batch_on_every_path(store: dict, family: str) -> None:
    import mlflow

    root, env = store["root"], store["env"]
    spec_path = _family_spec(root, family)
    loaded = load_spec(spec_path)
    spec = loaded.spec
    res = run_fti(["train", "--spec", str(spec_path), "--promote", "always"], env)
    assert res.returncode == 0, res.stderr[-3000:]

    engine = make_engine(f"sqlite:///{root / 'data' / 'features.db'}")
    info = ft.get_version(engine, spec.name)
    stored = ft.read_version(engine, spec, info.version).set_index(spec.record_id, drop=False)
    stored.index = stored.index.astype(str)
    mlflow.set_tracking_uri(f"sqlite:///{root / 'data' / 'mlflow.db'}")
    pipeline = mlflow.sklearn.load_model(f"models:/{spec.model.name}@champion")
    classes = [str(c) for c in pipeline.classes_]

    records = raw_json_records(spec_path.parent / "customers.csv", spec_path)
    by_id = {str(r[spec.record_id]): r for r in records}
    rng = random.Random(13)
    chosen = rng.sample(sorted(by_id), 200)
    others = [rid for rid in sorted(by_id) if rid not in set(chosen)]
    X = stored.loc[chosen, spec.model_features]
    alone = np.vstack([pipeline.predict_proba(X.iloc[[i]]) for i in range(len(X))])  # the reference
    want = {rid: alone[i].tolist() for i, rid in enumerate(chosen)}

    server = Server(spec_path, env, root / f"server-{family}.log")
    served_ids: list[str] = []
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=60) as client:
            # /predict: each record alone, then shuffled batches of 1..58, then all 200 inside 500.
            def predict(ids: list[str]) -> dict[str, list[float]]:
                r = client.post("/predict", json={"records": [by_id[i] for i in ids]})
                assert r.status_code == 200, r.text
                preds = r.json()["predictions"]
                served_ids.extend(p["prediction_id"] for p in preds)
                return {str(p["record_id"]): _proba(p, classes) for p in preds}

            got_alone = {}
            for rid in chosen:
                got_alone.update(predict([rid]))
            assert got_alone == want, family
            order = list(chosen)
            rng.shuffle(order)
            start = 0
            for size in SIZES:
                part = order[start:start + size]
                start += size
                assert predict(part) == {rid: want[rid] for rid in part}, (family, size)
            assert start == len(chosen)
            big = chosen + rng.sample(others, 300)
            rng.shuffle(big)
            got_big = predict(big)
            assert {rid: got_big[rid] for rid in chosen} == want, family

            # /invocations: the same records' model inputs, alone and in batches.
            def invoke(ids: list[str]) -> list[list[float]]:
                rows = stored.loc[ids, spec.model_features]
                data = [[None if isinstance(v, float) and np.isnan(v) else v for v in r]
                        for r in rows.itertuples(index=False)]
                r = client.post("/invocations", json={"dataframe_split": {"columns": list(rows.columns),
                                                                          "data": data}})
                assert r.status_code == 200, r.text
                return r.json()["predictions"]

            for rid in chosen[:100]:
                assert invoke([rid]) == [want[rid]], (family, rid)
            start = 0
            for size in SIZES:
                part = order[start:start + size]
                start += size
                assert invoke(part) == [want[rid] for rid in part], (family, size)
            got = invoke(big)
            assert [got[k] for k, rid in enumerate(big) if rid in want] == [want[rid] for rid in big if rid in want]
    finally:
        server.stop()

    # fti predict-batch: the whole version into its table.
    res = run_fti(["predict-batch", "--spec", str(spec_path), "--json"], env)
    assert res.returncode == 0, res.stderr[-3000:]
    batch = json.loads(res.stdout)
    with engine.connect() as conn:
        rows = conn.execute(select(bt.batch_predictions.c.record_id, bt.batch_predictions.c.outputs).where(
            bt.batch_predictions.c.batch_id == batch["batch_id"])).all()
    outputs = {str(r.record_id): json.loads(r.outputs) for r in rows}
    assert len(outputs) == info.row_count
    for rid in chosen:
        out = outputs[rid]
        probs = out["probabilities"] if isinstance(out, dict) and "probabilities" in out else out
        assert [probs[c] for c in classes] == want[rid], (family, rid)

    _every_logged_prediction_recomputes(spec_path, env, engine, served_ids, family)


def spec_path_record_id(spec_path: Path) -> str:
    return load_spec(spec_path).spec.record_id


def _every_logged_prediction_recomputes(spec_path: Path, env: dict, engine, ids: list[str], family: str) -> None:
    deadline = time.monotonic() + 30
    with engine.connect() as conn:
        while True:
            n = conn.execute(text("SELECT COUNT(*) FROM fti_predictions WHERE model_name = :m"),
                             {"m": f"churn-{family}"}).scalar_one()
            if n >= len(ids) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert n == len(ids)
    server = Server(spec_path, env, spec_path.parent / "lineage-server.log")
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=120) as client:
            sample = ids if family == "logistic-regression" else random.Random(1).sample(ids, 60)
            for pid in sample:
                out = client.get(f"/predictions/{pid}").json()
                assert out["recomputed"] is True, (family, pid, out.get("recomputation"))
            # Negative: an edited output, then an edited input, no longer recompute.
            victim, other = sample[0], sample[1]
            with engine.begin() as conn:
                row = conn.execute(text("SELECT outputs FROM fti_predictions WHERE prediction_id = :p"),
                                   {"p": victim}).scalar_one()
                outputs = json.loads(row)
                first = sorted(outputs["probabilities"])[0]
                outputs["probabilities"][first] = float(np.nextafter(outputs["probabilities"][first], 2.0))
                conn.execute(text("UPDATE fti_predictions SET outputs = :o WHERE prediction_id = :p"),
                             {"o": json.dumps(outputs), "p": victim})
                # the edited input: another record's inputs, one whose logged answer differs (so the edit
                # must move the recomputed answer, whatever the estimator)
                logged = {r.prediction_id: r for r in conn.execute(text(
                    "SELECT prediction_id, inputs, outputs FROM fti_predictions WHERE prediction_id IN ("
                    + ",".join(f"'{p}'" for p in sample) + ")")).all()}
                donor = next(p for p in sample[2:] if json.loads(logged[p].outputs)["probabilities"]
                             != json.loads(logged[other].outputs)["probabilities"])
                inputs = json.loads(logged[donor].inputs)
                inputs[spec_path_record_id(spec_path)] = json.loads(logged[other].inputs)[spec_path_record_id(spec_path)]
                conn.execute(text("UPDATE fti_predictions SET inputs = :i WHERE prediction_id = :p"),
                             {"i": json.dumps(inputs), "p": other})
            for pid in (victim, other):
                out = client.get(f"/predictions/{pid}").json()
                assert out["recomputed"] is False, (family, pid)
    finally:
        server.stop()
