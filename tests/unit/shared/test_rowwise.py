"""Batch invariance: a record's probabilities are the pipeline's answer for that record alone, in any batch.

For each estimator family: ``shared.rowwise.predict_proba`` equals scikit-learn applied to one
row at a time, bit for bit, for 200 records scored in shuffled batches of 1 to 200; the families
in ``BATCH_INVARIANT`` are checked to be batch-invariant in scikit-learn itself (so calling them on
the whole batch is safe), and the BLAS-backed ones are shown to be batch-dependent there.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    ExtraTreesClassifier,
    GradientBoostingClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.tree import DecisionTreeClassifier

from shared import rowwise
from shared.transformers import ModelInputCaster

N_NUM = 16
NUMERIC = [f"x{i}" for i in range(N_NUM)]


def _data(n: int, seed: int, classes: int = 2) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    scales = 10.0 ** np.random.default_rng(0).integers(-3, 4, size=N_NUM)  # the same columns in every draw
    X = pd.DataFrame({c: rng.normal(size=n) * scales[i] for i, c in enumerate(NUMERIC)})
    X.loc[rng.random(n) < 0.1, "x3"] = np.nan
    X["kind"] = rng.choice(list("abcdef"), size=n).astype(object)
    score = 0.3 * X["x0"] / X["x0"].std() + 0.2 * X["x5"] / X["x5"].std() + 0.3 * (X["kind"] == "a") \
        + rng.normal(size=n)
    y = np.digitize(score, np.quantile(score, np.linspace(0, 1, classes + 1)[1:-1]))
    return X, y


def _pipeline(est: object) -> Pipeline:
    return Pipeline([
        ("cast", ModelInputCaster(numeric=NUMERIC, categorical=["kind"])),
        ("preprocess", ColumnTransformer([
            ("numeric", Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]),
             NUMERIC),
            ("categorical", OneHotEncoder(handle_unknown="ignore", sparse_output=False), ["kind"])])),
        ("model", est),
    ]).set_output(transform="pandas")


FAMILIES = {
    "logistic": lambda: LogisticRegression(max_iter=300),
    "sgd-log": lambda: SGDClassifier(loss="log_loss", random_state=0),
    "mlp": lambda: MLPClassifier(hidden_layer_sizes=(8,), max_iter=60, random_state=0),
    "gaussian-nb": lambda: GaussianNB(),
    "knn": lambda: KNeighborsClassifier(n_neighbors=7),
    "hist-gb": lambda: HistGradientBoostingClassifier(max_iter=20, random_state=0),
    "random-forest": lambda: RandomForestClassifier(n_estimators=15, random_state=0),
    "extra-trees": lambda: ExtraTreesClassifier(n_estimators=15, random_state=0),
    "gradient-boosting": lambda: GradientBoostingClassifier(n_estimators=15, random_state=0),
    "decision-tree": lambda: DecisionTreeClassifier(random_state=0),
}


@pytest.fixture(scope="module", params=[2, 3], ids=["binary", "3-class"])
def data(request: pytest.FixtureRequest) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame]:
    X, y = _data(500, seed=1, classes=request.param)
    records, _ = _data(200, seed=2, classes=request.param)
    return X, y, records


# The fast tier keeps the batch-dependent families (where rowwise does the work) and fti's default;
# the tree ensembles and the rest run in the full suite (marked slow: ~2-6 s each).
FAST_FAMILIES = {"logistic", "sgd-log", "mlp", "gaussian-nb", "hist-gb"}


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("family", [f if f in FAST_FAMILIES else pytest.param(f, marks=pytest.mark.slow)
                                    for f in sorted(FAMILIES)])
def test_every_record_gets_its_alone_answer_in_any_batch(family: str, data: tuple) -> None:
    X, y, records = data
    pipe = _pipeline(FAMILIES[family]()).fit(X, y)
    alone = np.vstack([pipe.predict_proba(records.iloc[[i]]) for i in range(len(records))])
    assert np.array_equal(rowwise.predict_proba(pipe, records), alone)
    rng = np.random.default_rng(7)
    order = rng.permutation(len(records))
    start = 0
    for size in (1, 2, 3, 17, 64, 113):  # shuffled batches of 1..200 rows covering every record
        idx = order[start:start + size]
        start += size
        got = rowwise.predict_proba(pipe, records.iloc[idx])
        assert np.array_equal(got, alone[idx]), (family, size)
    assert start == len(records)
    batch = np.asarray(pipe.predict_proba(records), dtype=np.float64)
    if rowwise.is_batch_invariant(pipe):
        assert np.array_equal(batch, alone), f"{family} is listed as batch-invariant but is not"


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_blas_backed_scikit_learn_is_batch_dependent_which_is_why_this_exists() -> None:
    X, y = _data(500, seed=1)
    records, _ = _data(300, seed=2)
    pipe = _pipeline(LogisticRegression(max_iter=300)).fit(X, y)
    alone = np.vstack([pipe.predict_proba(records.iloc[[i]]) for i in range(len(records))])
    batch = pipe.predict_proba(records)
    assert not np.array_equal(batch, alone)  # scikit-learn moves the last bit inside a batch
    assert float(np.max(np.abs(batch - alone))) <= 1e-15
    assert not rowwise.is_batch_invariant(pipe)


def test_a_parallel_forest_is_not_trusted_as_batch_invariant() -> None:
    X, y = _data(200, seed=1)
    assert rowwise.is_batch_invariant(_pipeline(RandomForestClassifier(n_estimators=3)).fit(X, y))
    assert not rowwise.is_batch_invariant(_pipeline(RandomForestClassifier(n_estimators=3, n_jobs=2)).fit(X, y))
