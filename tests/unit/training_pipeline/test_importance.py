"""The permutation importance computed on the preprocessed matrix equals the raw-feature one, bit for
bit, on the pipeline ``fti train`` builds (numeric and one-hot features, missing values, rare
categories), and costs a fraction of it."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shared.spec import load_spec
from training_pipeline.evaluate import metric_value
from training_pipeline.importance import column_groups, permutation_importance, raw_permutation_reference
from training_pipeline.model import build_pipeline

REPO = Path(__file__).resolve().parents[3]


def _frame(spec, n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    cols = {}
    for f in spec.model_features:
        if spec.feature_kind(f) == "numeric":
            v = rng.normal(size=n) * 10
            v[rng.random(n) < 0.1] = np.nan
            cols[f] = v
        else:
            v = rng.choice(["a", "b", "c", "rare"], p=[0.5, 0.3, 0.19, 0.01], size=n).astype(object)
            v[rng.random(n) < 0.05] = None
            cols[f] = v
    X = pd.DataFrame(cols)
    numeric = [f for f in spec.model_features if spec.feature_kind(f) == "numeric"]
    signal = np.nan_to_num(X[numeric[0]].to_numpy()) + (X[spec.model_features[-1]] == "a").to_numpy() * 5
    y = (signal + rng.normal(size=n) * 5 > 3).astype(np.int64)
    return X, y


def _score(est, X_, y_) -> float:
    return metric_value("average_precision", est.classes_, y_, est.predict_proba(X_))


@pytest.mark.parametrize("spec_file", ["specs/claims.yaml", "tests/data/churn/spec.yaml"])
def test_equal_to_permuting_the_raw_features(spec_file: str) -> None:
    path = REPO / spec_file
    if not path.exists():
        pytest.skip(f"{spec_file} not in this checkout")
    spec = load_spec(path).spec
    X, y = _frame(spec, 600, seed=3)
    pipe = build_pipeline(spec).fit(X, y)
    assert column_groups(pipe, list(X.columns)) is not None
    t0 = time.process_time()
    fast = permutation_importance(pipe, X, y, _score, n_repeats=2, seed=11)
    t_fast = time.process_time() - t0
    t0 = time.process_time()
    reference = raw_permutation_reference(pipe, X, y, _score, n_repeats=2, seed=11)
    t_ref = time.process_time() - t0
    assert fast.method == "preprocessed-matrix"
    assert np.array_equal(fast.mean, reference), np.abs(fast.mean - reference).max()
    print(f"\nimportance CPU: preprocessed matrix {t_fast:.2f}s, raw features {t_ref:.2f}s")


def test_another_pipeline_shape_falls_back_to_scikit_learn() -> None:
    from sklearn.linear_model import LogisticRegression

    X = pd.DataFrame({"a": np.arange(50.0), "b": np.arange(50.0) % 7})
    y = (X["a"] > 25).astype(int).to_numpy()
    model = LogisticRegression().fit(X, y)
    assert column_groups(model, ["a", "b"]) is None
    imp = permutation_importance(model, X, y, _score, n_repeats=2, seed=0)
    assert imp.method == "sklearn" and imp.mean.shape == (2,)
