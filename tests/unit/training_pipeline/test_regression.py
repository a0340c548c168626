"""``model.task: regression``: what the spec accepts and refuses, the metrics, and every listed regressor
family through fti's model-file allow-list and the serving fast path's proof at load (in-process, small
data; the full loop over HTTP is tests/e2e/test_regression.py)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skops.io
from pydantic import ValidationError
from sklearn import metrics as skm

from inference_service import scoring
from shared import rowwise
from shared.model_file import artifact_digest, load_model_dir
from shared.spec import DatasetSpec
from tests.helpers import skops_model_dir
from training_pipeline.evaluate import LOWER_IS_BETTER, compute_metrics
from training_pipeline.model import build_pipeline

SPEC = {
    "name": "cost", "source": {"format": "csv", "path": "x.csv"}, "record_id": "id", "entity_key": "id",
    "label": "cost",
    "columns": {"id": {"type": "int", "nullable": False}, "age": {"type": "int"}, "bmi": {"type": "float"},
                "region": {"type": "category"}, "cost": {"type": "float", "nullable": False}},
    "model": {"name": "cost-model", "task": "regression", "split": {"method": "random"},
              "estimator": {"class": "sklearn.ensemble.HistGradientBoostingRegressor", "params": {"max_iter": 20}}},
}

REGRESSORS = {
    "sklearn.ensemble.HistGradientBoostingRegressor": {"max_iter": 20},
    "sklearn.ensemble.RandomForestRegressor": {"n_estimators": 8, "max_depth": 4},
    "sklearn.ensemble.ExtraTreesRegressor": {"n_estimators": 8, "max_depth": 4},
    "sklearn.ensemble.GradientBoostingRegressor": {"n_estimators": 10},
    "sklearn.tree.DecisionTreeRegressor": {"max_depth": 4},
    "sklearn.linear_model.LinearRegression": {},
    "sklearn.linear_model.Ridge": {"alpha": 1.0},
    "sklearn.linear_model.Lasso": {"alpha": 0.1},
    "sklearn.linear_model.ElasticNet": {"alpha": 0.1},
}


def _spec(version: int = 2, **model: object) -> DatasetSpec:
    raw = copy.deepcopy(SPEC)
    raw["spec_version"] = version
    raw["model"].update(model)
    return DatasetSpec.model_validate(raw)


def _frame(n: int = 300) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(4)
    X = pd.DataFrame({"age": rng.integers(18, 80, n).astype(np.float64), "bmi": rng.normal(27, 4, n),
                      "region": rng.choice(["north", "south", "east", None], n).astype(object)})
    X.loc[rng.random(n) < 0.1, "bmi"] = np.nan
    y = 50 + 2.0 * X["age"].to_numpy() + 3 * np.nan_to_num(X["bmi"].to_numpy(), nan=27) + rng.normal(0, 10, n)
    return X, y


def test_a_regression_spec_defaults_to_rmse_and_refuses_what_needs_classes():
    assert _spec().model.primary_metric == "rmse"
    for model, message in (({"primary_metric": "roc_auc"}, "'roc_auc' does not apply to task 'regression'"),
                           ({"positive_class": "1"}, "positive_class applies to classification"),
                           ({"decision": {"objective": "f_beta"}}, "decision applies to classification"),
                           ({"split": {"method": "stratified"}}, "'stratified' needs classes")):
        with pytest.raises(ValidationError, match=message):
            _spec(**model)
    raw = copy.deepcopy(SPEC)
    raw["model"].pop("task")
    raw["model"]["split"] = {"method": "random"}
    raw["model"]["estimator"]["class"] = "sklearn.ensemble.HistGradientBoostingClassifier"
    with pytest.raises(ValidationError, match="label 'cost' is a float: .*set model.task: regression"):
        DatasetSpec.model_validate(raw)
    with pytest.raises(ValidationError, match="'rmse' does not apply to task 'classification'"):
        DatasetSpec.model_validate({**raw, "columns": {**raw["columns"], "cost": {"type": "int"}},
                                    "model": {**raw["model"], "primary_metric": "rmse"}})


def test_the_estimator_must_match_the_task_and_the_error_says_which():
    with pytest.raises(ValueError, match="is not a regressor: model.task is 'regression'"):
        build_pipeline(_spec(estimator={"class": "sklearn.ensemble.HistGradientBoostingClassifier"}))
    raw = copy.deepcopy(SPEC)
    raw["model"].pop("task")
    raw["columns"]["cost"] = {"type": "int", "nullable": False}
    with pytest.raises(ValueError, match="not a classifier with predict_proba; for a numeric target set model.task"):
        build_pipeline(DatasetSpec.model_validate(raw))


def test_regression_metrics_are_sklearns_and_the_gate_knows_their_direction():
    y = np.array([3.0, 5.0, 2.5, 7.0])
    p = np.array([[2.5], [5.0], [3.0], [8.0]])
    m = compute_metrics(None, y, p)
    assert m["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(y, p[:, 0])))
    assert m["mae"] == skm.mean_absolute_error(y, p[:, 0]) and m["r2"] == skm.r2_score(y, p[:, 0])
    assert {"rmse", "mae"} <= LOWER_IS_BETTER and "r2" not in LOWER_IS_BETTER


@pytest.mark.parametrize("family", sorted(REGRESSORS))
def test_every_listed_regressor_loads_through_the_allow_list_and_is_served_on_a_proven_fast_path(tmp_path: Path,
                                                                                                family):
    spec = _spec(estimator={"class": family, "params": REGRESSORS[family]})
    X, y = _frame()
    pipe = build_pipeline(spec).fit(X, y)
    assert rowwise.is_regressor(pipe) and rowwise.outputs(pipe, X).shape == (len(X), 1)
    folder = skops_model_dir(tmp_path / "model", skops.io.dumps(pipe))
    loaded = load_model_dir(folder, expected_digest=artifact_digest(folder), memory_limit_mb=0)
    expected = rowwise.predict_proba(pipe, X)
    assert np.array_equal(rowwise.predict_proba(loaded, X), expected)
    scorer = scoring.prepare(loaded, list(X.columns), None)
    assert scorer.status["mode"] == "fast" and scorer.status["passed"] is True, scorer.status
    assert np.array_equal(scorer.predict_frame(X), expected)
