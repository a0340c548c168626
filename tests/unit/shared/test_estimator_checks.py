"""scikit-learn's estimator checks plus feature_engine-style DataFrame checks for shared's transformers."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from sklearn.base import BaseEstimator, clone
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import Pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks

from shared.transformers import MISSING_CATEGORY, DerivedFeatures, ModelInputCaster, PointInTimeHistory

# --------------------------------------------------------------------------- sklearn's own checks

_DTYPES = ("DataFrame in, DataFrame out: the output columns carry the transformer's own canonical "
           "dtypes (float64 features, object categories), not the input array's dtype")
_HISTORY_ROWS = ("by design: a row's history features are computed from the other rows of X, so "
                 "reordering or subsetting the rows changes the values")


def _expected_failed_checks(estimator: BaseEstimator) -> dict[str, str]:
    failures = {"check_transformer_preserve_dtypes": _DTYPES}
    if isinstance(estimator, PointInTimeHistory):
        failures["check_methods_sample_order_invariance"] = _HISTORY_ROWS
        failures["check_methods_subset_invariance"] = _HISTORY_ROWS
    return failures


@parametrize_with_checks([DerivedFeatures(), PointInTimeHistory(), ModelInputCaster()],
                         expected_failed_checks=_expected_failed_checks)
def test_sklearn_compatible_transformer(estimator: BaseEstimator, check: Callable[[BaseEstimator], None]) -> None:
    check(estimator)


# --------------------------------------------------------------------------- DataFrame checks

def _frame() -> pd.DataFrame:
    index = pd.RangeIndex(10, 18)  # a non-default index must survive
    ts = pd.Series(pd.to_datetime([
        "2024-01-01T00:00:00Z", "2024-01-01T10:30:00Z", "2024-01-03T23:59:59Z", "2024-01-03T23:59:59Z",
        "2024-02-29T12:00:00Z", "2024-03-31T06:00:00Z", "2024-04-01T00:00:00Z", "2024-06-15T18:45:00Z",
    ], utc=True), index=index).astype("datetime64[us, UTC]")
    return pd.DataFrame({
        "who": pd.Series(["a", "b", "a", "a", "b", "c", "a", "b"], dtype=object, index=index),
        "t": ts,
        "amount": [100.0, 2.5, np.nan, 40.0, 0.0, 7.25, -3.0, 1e6],
        "premium": [50.0, 0.0, 10.0, np.nan, 4.0, 2.0, 1.0, 3.0],
        "kind": pd.Series(["x", None, "y", " ", "x", "z", np.nan, "y"], dtype=object, index=index),
        "flag": [1.0, 0.0, np.nan, 1.0, 0.0, 1.0, np.nan, 0.0],
    }, index=index)


DERIVATIONS = [
    {"name": "ratio", "op": "ratio", "inputs": ["amount", "premium"]},
    {"name": "diff", "op": "diff", "inputs": ["amount", "premium"]},
    {"name": "prod", "op": "product", "inputs": ["amount", "premium"]},
    {"name": "log_amount", "op": "log1p", "inputs": ["amount"]},
    {"name": "flag_missing", "op": "is_missing", "inputs": ["flag"]},
    {"name": "hour", "op": "hour", "inputs": ["t"]},
    {"name": "dow", "op": "day_of_week", "inputs": ["t"]},
    {"name": "month", "op": "month", "inputs": ["t"]},
    {"name": "ratio_log", "op": "log1p", "inputs": ["ratio"]},  # uses an earlier derived feature
]
AGGREGATIONS = [
    {"name": "n", "op": "count"},
    {"name": "n_7d", "op": "count", "window_days": 7},
    {"name": "s", "op": "sum", "input": "amount"},
    {"name": "m", "op": "mean", "input": "amount"},
    {"name": "hi", "op": "max", "input": "amount"},
    {"name": "lo_30d", "op": "min", "input": "amount", "window_days": 30},
    {"name": "since", "op": "days_since_last"},
]

CASES: dict[str, Callable[[], BaseEstimator]] = {
    "derived": lambda: DerivedFeatures(copy.deepcopy(DERIVATIONS)),
    "history": lambda: PointInTimeHistory("who", "t", copy.deepcopy(AGGREGATIONS)),
    "caster": lambda: ModelInputCaster(numeric=["amount", "premium", "flag"], categorical=["kind", "who"]),
    "caster_default_numeric": lambda: ModelInputCaster(categorical=["kind", "who", "t"]),
}


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest) -> tuple[str, BaseEstimator]:
    return request.param, CASES[request.param]()


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a, b, check_exact=True)


def test_transform_before_fit_raises_not_fitted(case: tuple[str, BaseEstimator]) -> None:
    _, est = case
    with pytest.raises(NotFittedError):
        est.transform(_frame())
    with pytest.raises(NotFittedError):
        est.get_feature_names_out()


def test_fit_returns_self_and_learns_feature_names(case: tuple[str, BaseEstimator]) -> None:
    _, est = case
    X = _frame()
    assert est.fit(X) is est
    assert list(est.feature_names_in_) == list(X.columns)
    assert est.n_features_in_ == X.shape[1]


def test_output_is_a_dataframe_with_the_input_index(case: tuple[str, BaseEstimator]) -> None:
    _, est = case
    X = _frame()
    out = est.fit_transform(X)
    assert isinstance(out, pd.DataFrame)
    pd.testing.assert_index_equal(out.index, X.index)


def test_shuffled_input_columns_give_the_same_output(case: tuple[str, BaseEstimator]) -> None:
    _, est = case
    X = _frame()
    expected = est.fit(X).transform(X)
    rng = np.random.default_rng(0)
    for _ in range(3):
        shuffled = X[list(rng.permutation(X.columns))]
        _same(est.transform(shuffled), expected)


def test_missing_input_column_at_transform_raises(case: tuple[str, BaseEstimator]) -> None:
    _, est = case
    X = _frame()
    est.fit(X)
    with pytest.raises((ValueError, KeyError)):
        est.transform(X.drop(columns="amount"))


def test_feature_names_out_equal_output_columns(case: tuple[str, BaseEstimator]) -> None:
    _, est = case
    out = est.fit_transform(_frame())
    names = est.get_feature_names_out()
    assert isinstance(names, np.ndarray) and names.dtype == object
    assert list(names) == list(out.columns)


def test_input_frame_is_not_modified(case: tuple[str, BaseEstimator]) -> None:
    _, est = case
    X = _frame()
    before = X.copy(deep=True)
    est.fit(X)
    est.transform(X)
    est.fit_transform(X)
    _same(X, before)
    assert list(X.dtypes) == list(before.dtypes)


def test_clone_and_skops_round_trip_give_identical_output(case: tuple[str, BaseEstimator]) -> None:
    _, est = case
    X = _frame()
    expected = est.fit_transform(X)

    _same(clone(est).fit_transform(X), expected)

    data = sio.dumps(est)
    loaded = sio.loads(data, trusted=sio.get_untrusted_types(data=data))
    assert type(loaded) is type(est)
    assert loaded.get_params() == est.get_params()
    _same(loaded.transform(X), expected)
    assert list(loaded.get_feature_names_out()) == list(est.get_feature_names_out())


def test_set_output_pipeline_equals_fit_transform(case: tuple[str, BaseEstimator]) -> None:
    _, est = case
    X = _frame()
    expected = clone(est).fit_transform(X)
    pipe = Pipeline([("step", clone(est))]).set_output(transform="pandas")
    _same(pipe.fit_transform(X), expected)
    _same(pipe.transform(X), expected)


def test_full_model_input_pipeline_equals_the_steps_chained() -> None:
    X = _frame()
    derived = DerivedFeatures(copy.deepcopy(DERIVATIONS))
    history = PointInTimeHistory("who", "t", copy.deepcopy(AGGREGATIONS))
    features = [d["name"] for d in DERIVATIONS] + [a["name"] for a in AGGREGATIONS]
    caster = ModelInputCaster(numeric=["amount", "premium", *features], categorical=["kind"])
    pipe = Pipeline([("derived", clone(derived)), ("history", clone(history)), ("cast", clone(caster))])
    pipe.set_output(transform="pandas")
    expected = caster.fit_transform(history.fit_transform(derived.fit_transform(X)))
    _same(pipe.fit_transform(X), expected)
    assert list(expected.columns) == ["amount", "premium", "kind", *features]


# --------------------------------------------------------------------------- specific behaviour

def test_derived_values() -> None:
    out = DerivedFeatures(copy.deepcopy(DERIVATIONS)).fit_transform(_frame())
    np.testing.assert_array_equal(out["ratio"], [2.0, np.nan, np.nan, np.nan, 0.0, 3.625, -3.0, 1e6 / 3])
    np.testing.assert_array_equal(out["log_amount"][:2], np.log1p([100.0, 2.5]))
    assert np.isnan(out["log_amount"].iloc[6])  # log1p(-3) is undefined -> NaN, never -inf/NaN warnings
    assert out["flag_missing"].tolist() == [0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert out["hour"].tolist() == [0.0, 10.0, 23.0, 23.0, 12.0, 6.0, 0.0, 18.0]
    assert out["dow"].tolist() == [0.0, 0.0, 2.0, 2.0, 3.0, 6.0, 0.0, 5.0]  # 2024-01-01 is a Monday
    assert out["month"].tolist() == [1.0, 1.0, 1.0, 1.0, 2.0, 3.0, 4.0, 6.0]
    derived = [d["name"] for d in DERIVATIONS]
    assert all(out[c].dtype == np.float64 for c in derived)
    assert np.isfinite(out[derived].to_numpy()[~np.isnan(out[derived].to_numpy())]).all()


def test_day_of_week_uses_no_deprecated_pandas_api() -> None:
    # regression: Series.dt.dayofweek is deprecated in pandas 3.1 (Pandas4Warning)
    X = pd.DataFrame({"t": pd.to_datetime(["2024-01-01T00:00:00Z"], utc=True)})
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        out = DerivedFeatures([{"name": "dow", "op": "day_of_week", "inputs": ["t"]}]).fit_transform(X)
    assert out["dow"].tolist() == [0.0]


def test_derived_ratio_never_gives_infinity_nor_negative_zero() -> None:
    X = pd.DataFrame({"a": [1.0, -1.0, 0.0, 1e308, -0.0], "b": [0.0, 0.0, -5.0, 1e-308, 1.0]})
    out = DerivedFeatures([{"name": "r", "op": "ratio", "inputs": ["a", "b"]},
                           {"name": "p", "op": "product", "inputs": ["a", "b"]}]).fit_transform(X)
    r = out["r"].to_numpy()
    assert np.isnan(r[[0, 1, 3]]).all()  # x/0 and overflow -> NaN
    assert r[2] == 0.0 and not np.signbit(r[2])
    assert out["p"].iloc[4] == 0.0 and not np.signbit(out["p"].iloc[4])


def test_caster_values_and_dtypes() -> None:
    caster = ModelInputCaster(numeric=["amount"], categorical=["kind"])
    out = caster.fit_transform(_frame())
    assert list(out.columns) == ["amount", "kind"]
    assert out["amount"].dtype == np.float64
    assert all(type(v) is str for v in out["kind"])
    # one row or many: the same dtypes (the container must not change the answer)
    one = caster.transform(_frame().iloc[[1]])
    assert list(one.dtypes) == list(out.dtypes)
    assert out["kind"].tolist() == ["x", MISSING_CATEGORY, "y", MISSING_CATEGORY, "x", "z", MISSING_CATEGORY, "y"]


def test_caster_refuses_text_in_a_numeric_column() -> None:
    caster = ModelInputCaster(numeric=["n"]).fit(pd.DataFrame({"n": [1.0, 2.0]}))
    with pytest.raises(ValueError, match="'n' holds a non-numeric value of type str"):
        caster.transform(pd.DataFrame({"n": pd.Series([1.0, "1.5"], dtype=object)}))


def test_caster_same_answer_for_int_object_and_float_containers() -> None:
    caster = ModelInputCaster(numeric=["n"], categorical=["c"])
    frames = [
        pd.DataFrame({"n": [1, 2], "c": ["7", "x"]}),
        pd.DataFrame({"n": pd.Series([1.0, 2.0], dtype=object), "c": pd.Series([7, "x"], dtype=object)}),
        pd.DataFrame({"n": pd.array([1, 2], dtype="Int64"), "c": pd.Series([7.0, "x"], dtype=object)}),
    ]
    outs = [caster.fit(f).transform(f) for f in frames]
    for o in outs[1:]:
        _same(o, outs[0])


def test_invalid_parameters_are_reported_at_fit() -> None:
    X = _frame()
    with pytest.raises(ValueError, match="absent from X"):
        DerivedFeatures([{"name": "r", "op": "ratio", "inputs": ["amount", "nope"]}]).fit(X)
    with pytest.raises(ValueError, match="needs name, op and inputs"):
        DerivedFeatures([{"name": "r", "op": "ratio"}]).fit(X)
    with pytest.raises(ValueError, match="unknown history op"):
        PointInTimeHistory("who", "t", [{"name": "x", "op": "median", "input": "amount"}]).fit(X)
    with pytest.raises(ValueError, match="needs an input column"):
        PointInTimeHistory("who", "t", [{"name": "x", "op": "sum"}]).fit(X)
    with pytest.raises(ValueError, match="'nope' is absent from X"):
        PointInTimeHistory("nope", "t").fit(X)
    with pytest.raises(ValueError, match="both numeric and categorical"):
        ModelInputCaster(numeric=["amount"], categorical=["amount"]).fit(X)
    with pytest.raises(ValueError, match="absent from X"):
        ModelInputCaster(numeric=["nope"]).fit(X)
