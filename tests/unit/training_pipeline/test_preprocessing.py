"""``model.preprocessing``: what each setting builds, what ``auto`` resolves to for each estimator, and the
matrix -- every option fitted on real data, then the serving fast path proven bit-identical to the
pipeline at load (``scoring.prepare``, the check the service runs) or refused with a reason."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import skops.io
import yaml
from pydantic import ValidationError
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, RobustScaler, StandardScaler

from inference_service import scoring
from shared import rowwise
from shared.features import compute_batch
from shared.model_file import artifact_digest, load_model_dir
from shared.raw import normalize_frame
from shared.spec import DatasetSpec, load_spec
from tests.helpers import CHURN_SPEC, skops_model_dir
from training_pipeline.data import labels
from training_pipeline.model import build_pipeline

HGB = {"class": "sklearn.ensemble.HistGradientBoostingClassifier", "params": {"max_iter": 20}}
FOREST = {"class": "sklearn.ensemble.RandomForestClassifier", "params": {"n_estimators": 10, "max_depth": 5}}
GBM = {"class": "sklearn.ensemble.GradientBoostingClassifier", "params": {"n_estimators": 10}}


def _spec(*, version: int = 1, estimator: dict | None = None, prep: dict | None = None) -> DatasetSpec:
    raw = copy.deepcopy(yaml.safe_load(CHURN_SPEC.read_text()))
    raw["spec_version"] = version
    if estimator is not None:
        raw["model"]["estimator"] = estimator
    if prep is not None:
        raw["model"]["preprocessing"] = prep
    return DatasetSpec.model_validate(raw)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    spec = load_spec(CHURN_SPEC).spec
    raw, problems, _ = normalize_frame(pd.read_csv(CHURN_SPEC.parent / "customers.csv", dtype=str,
                                                   keep_default_na=False), spec)
    assert not problems
    return compute_batch(raw, spec)


def _blocks(pipe: Pipeline) -> dict[str, Any]:
    return {name: trans for name, trans, _ in pipe.named_steps["preprocess"].transformers}


def test_spec_version_1_defaults_are_the_original_fixed_pipeline():
    blocks = _blocks(build_pipeline(_spec(estimator=HGB)))  # even before trees: what v1 models were
    assert list(blocks) == ["numeric", "categorical"]
    numeric, categorical = blocks["numeric"], blocks["categorical"]
    assert [n for n, _ in numeric.steps] == ["impute", "scale"]
    assert numeric.steps[0][1].get_params() == SimpleImputer(strategy="median", keep_empty_features=True).get_params()
    assert numeric.steps[1][1].get_params() == StandardScaler().get_params()
    assert categorical.get_params() == OneHotEncoder(handle_unknown="ignore", sparse_output=False,
                                                     min_frequency=5).get_params()


@pytest.mark.parametrize(("estimator", "numeric", "encoder"), [
    (None, ["impute", "scale"], "onehot"),  # LogisticRegression: no NaN, scale-sensitive
    (HGB, ["as_is"], "native"),  # NaN handled, trees, its own categorical splits
    (FOREST, ["as_is"], "ordinal"),  # NaN handled (sklearn >= 1.4), trees
    (GBM, ["impute"], "ordinal"),  # trees, but no NaN support
], ids=["logreg", "hgb", "forest", "gbm"])
def test_spec_version_2_auto_suits_the_estimator(estimator, numeric, encoder):
    pipe = build_pipeline(_spec(version=2, estimator=estimator))
    blocks = _blocks(pipe)
    assert [n for n, _ in blocks["numeric"].steps] == numeric
    enc = blocks["categorical"]
    if encoder == "onehot":
        assert isinstance(enc, OneHotEncoder) and enc.min_frequency == 5
    else:
        assert isinstance(enc, OrdinalEncoder)
        assert (enc.unknown_value != enc.unknown_value) == (encoder == "native")  # native: unseen -> NaN
    if encoder == "native":
        cats = pipe.named_steps["model"].categorical_features
        assert cats == [f"categorical__{c}" for c in ("contract", "payment_method", "reason")]


def test_per_column_settings_make_their_own_blocks_in_feature_order():
    pipe = build_pipeline(_spec(version=2, prep={
        "numeric": {"impute": "mean", "scale": "robust"},
        "columns": {"tenure_months": {"impute": "constant", "fill_value": 0, "scale": "none"},
                    "reason": {"encode": "onehot", "min_frequency": 2}}}))
    transformers = pipe.named_steps["preprocess"].transformers
    assert [(n, c) for n, _, c in transformers][:2] == [
        ("numeric", ["tenure_months"]),
        ("numeric_2", ["monthly_charges", "data_usage_gb", "paperless_billing", "satisfaction_score", "charges_per_gb",
                       "log_monthly_charges", "satisfaction_missing", "prior_contacts_30d",
                       "days_since_last_contact"])]
    first = transformers[0][1].steps
    assert [n for n, _ in first] == ["impute"] and first[0][1].fill_value == 0
    assert isinstance(transformers[1][1].steps[1][1], RobustScaler)
    assert {n: type(t).__name__ for n, t, _ in transformers[2:]} == {"categorical": "OneHotEncoder",
                                                                     "categorical_2": "OneHotEncoder"}
    assert transformers[3][1].min_frequency == 2 and transformers[3][2] == ["reason"]


@pytest.mark.parametrize(("prep", "estimator", "message"), [
    ({"numeric": {"impute": "constant"}}, None, "impute 'constant' needs fill_value"),
    ({"numeric": {"fill_value": 1}}, None, "fill_value applies to impute 'constant' only"),
    ({"categorical": {"encode": "native"}}, None, "encode 'native' needs a HistGradientBoosting estimator"),
    ({"columns": {"contract": {"scale": "robust"}}}, None, "scale does not apply to a categorical feature"),
    ({"columns": {"tenure_months": {"encode": "ordinal"}}}, None, "encode does not apply to a numeric feature"),
    ({"columns": {"agent_code": {"encode": "ordinal"}}}, None, "'agent_code' is not a model feature"),
    ({"numeric": {"impute": "constant", "fill_value": 0}, "columns": {"tenure_months": {"impute": "constant"}}},
     None, "columns.tenure_months: impute 'constant' needs fill_value"),
])
def test_settings_that_cannot_apply_are_refused_at_spec_load(prep, estimator, message):
    with pytest.raises(ValidationError, match=message):
        _spec(version=2, estimator=estimator, prep=prep)


def test_no_imputation_before_an_estimator_that_refuses_nan_is_an_error_naming_the_fix():
    with pytest.raises(ValueError, match=r"impute 'none' leaves missing values in .*LogisticRegression does not "
                                         r"accept missing values: choose an imputation"):
        build_pipeline(_spec(version=2, prep={"numeric": {"impute": "none"}}))


def test_unset_preprocessing_keeps_the_spec_hash():
    assert _spec().content_hash == load_spec(CHURN_SPEC).hash
    assert _spec(prep={}).content_hash != load_spec(CHURN_SPEC).hash  # written out: content


MATRIX = [  # (id, estimator, preprocessing)
    ("median-standard-onehot", None, {"numeric": {"impute": "median", "scale": "standard"},
                                      "categorical": {"encode": "onehot"}}),
    ("mean-robust-ordinal", None, {"numeric": {"impute": "mean", "scale": "robust"},
                                   "categorical": {"encode": "ordinal"}}),
    ("most_frequent-none-onehot1", None, {"numeric": {"impute": "most_frequent", "scale": "none"},
                                          "categorical": {"encode": "onehot", "min_frequency": 1}}),
    ("constant-standard-ordinal5", None, {"numeric": {"impute": "constant", "fill_value": -1, "scale": "standard"},
                                          "categorical": {"encode": "ordinal", "min_frequency": 5}}),
    ("none-none-native", HGB, {"numeric": {"impute": "none", "scale": "none"}, "categorical": {"encode": "native"}}),
    ("none-robust-onehot-hgb", HGB, {"numeric": {"impute": "none", "scale": "robust"},
                                     "categorical": {"encode": "onehot"}}),
    ("auto-forest", FOREST, None),
    ("per-column-mix", HGB, {"numeric": {"impute": "median"},
                             "columns": {"tenure_months": {"impute": "none", "scale": "standard"},
                                         "contract": {"encode": "onehot"}, "reason": {"encode": "ordinal"}}}),
]


@pytest.mark.parametrize(("estimator", "prep"), [(e, p) for _, e, p in MATRIX], ids=[m[0] for m in MATRIX])
def test_each_option_is_served_by_a_fast_path_proven_equal_at_load(frame, tmp_path, estimator, prep):
    spec = _spec(version=2, estimator=estimator, prep=prep)
    X = frame[spec.model_features]
    pipe = build_pipeline(spec).fit(X, labels(frame, spec))
    scorer = scoring.prepare(pipe, spec.model_features, None)
    assert scorer.status["mode"] == "fast" and scorer.status["passed"] is True, scorer.status
    # and on the training rows themselves, beyond the generated sample the check used
    got = scorer.predict_frame(X.reset_index(drop=True))
    assert np.array_equal(got, rowwise.predict_proba(pipe, X))
    # every stage loads it through fti's exact allow-list: each option's types are on it
    folder = skops_model_dir(tmp_path / "model", skops.io.dumps(pipe))
    loaded = load_model_dir(folder, expected_digest=artifact_digest(folder), memory_limit_mb=0)
    assert np.array_equal(rowwise.predict_proba(loaded, X), rowwise.predict_proba(pipe, X))


def test_a_step_the_fast_path_does_not_know_is_refused_and_the_pipeline_serves(frame):
    spec = _spec(version=2, prep={"categorical": {"encode": "ordinal"}})
    pipe = build_pipeline(spec)
    ordinal = pipe.named_steps["preprocess"].transformers[1][1]
    ordinal.set_params(handle_unknown="error", unknown_value=None)  # unknown categories raise: nothing to look up
    pipe.fit(frame[spec.model_features], labels(frame, spec))
    scorer = scoring.prepare(pipe, spec.model_features, None)
    assert scorer.fast is None and "not compiled: OrdinalEncoder(handle_unknown='error')" in scorer.status["reason"]


def test_the_built_pipeline_is_documented(tmp_path: Path):
    doc = (Path(__file__).resolve().parents[3] / "docs" / "spec.md").read_text()
    for phrase in ("model.preprocessing", "spec_version: 2", "`native`", "RobustScaler", "OrdinalEncoder"):
        assert phrase in doc, phrase
