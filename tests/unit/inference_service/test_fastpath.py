"""The serving fast path against the fitted sklearn pipeline it is compiled from: bit for bit.

Real pipelines, fitted in-process by training's own ``build_pipeline`` on small
seeded data: the claims spec (ColumnTransformer + HistGradientBoosting, infrequent
categories) and the churn spec (LogisticRegression). Hypothesis generates
records with missing values (None and NaN), ``-0.0``, unknown and blank
categories, extreme numbers; the fast path must give the same model inputs and
the same probabilities as ``pipeline.predict_proba``, one row at a time and in
any batch. Then the load-time check: a tampered fast path is caught and the
pipeline serves; steps it does not know are refused, not guessed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.compose import ColumnTransformer
from sklearn.preprocessing import MinMaxScaler

from inference_service import fast_trees, fastpath, scoring
from shared import rowwise
from shared.features import compute_batch
from shared.raw import normalize_frame
from shared.spec import load_spec
from tests.helpers import CHURN_SPEC, write_claims_spec
from training_pipeline.data import labels
from training_pipeline.model import build_pipeline


@dataclasses.dataclass
class Fitted:
    pipeline: Any
    features: list[str]
    frame: pd.DataFrame
    fast: fastpath.FastPath


def _fit(spec_path: Path, csv_path: Path | None = None) -> Fitted:
    loaded = load_spec(spec_path)
    spec = loaded.spec
    source = csv_path or loaded.resolve_path(spec.source.path)
    raw, problems, _ = normalize_frame(pd.read_csv(source, dtype=str, keep_default_na=False), spec)
    assert not problems, problems
    frame = compute_batch(raw, spec)
    pipe = build_pipeline(spec).fit(frame[spec.model_features], labels(frame, spec))
    return Fitted(pipe, spec.model_features, frame[spec.model_features].reset_index(drop=True),
                  fastpath.compile_pipeline(pipe))


@pytest.fixture(scope="module")
def claims(tmp_path_factory: pytest.TempPathFactory) -> Fitted:
    spec = write_claims_spec(tmp_path_factory.mktemp("claims"), n_policyholders=200)
    return _fit(spec)


@pytest.fixture(scope="module")
def churn() -> Fitted:
    return _fit(CHURN_SPEC)


@pytest.fixture(params=["claims", "churn"])
def fitted(request: pytest.FixtureRequest) -> Fitted:
    return request.getfixturevalue(request.param)


def _columns(fast: fastpath.FastPath, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    return {n: (frame[n].to_numpy(dtype=np.float64, na_value=np.nan) if n in fast.numeric
                else frame[n].to_numpy(dtype=object, na_value=None)) for n in fast.features}


def _assert_same(fitted: Fitted, frame: pd.DataFrame) -> None:
    fast, pipe = fitted.fast, fitted.pipeline
    cols = _columns(fast, frame)
    n = len(frame)
    want_x = np.asarray(pipe[:-1].transform(frame), dtype=np.float64)
    got_x = fast.matrix(cols, n)
    assert scoring._same_bits(got_x, want_x), "model inputs differ"
    assert _same_outcome(lambda: fast.predict_proba(cols, n), lambda: rowwise.predict_proba(pipe, frame)), \
        "batch probabilities differ from the pipeline on each row alone"
    for i in range(min(n, 3)):  # against the pipeline on that row alone (BLAS may round a batch differently)
        one = {k: v[i:i + 1] for k, v in cols.items()}
        assert _same_outcome(lambda: fast.predict_proba(one, 1),  # noqa: B023 - called at once
                             lambda: pipe.predict_proba(frame.iloc[i:i + 1])), f"row {i} alone differs"  # noqa: B023


def _same_outcome(fast: Any, pipeline: Any) -> bool:
    """Equal probabilities, or the same refusal: values that overflow to infinity after scaling make a
    LogisticRegression raise ValueError, and the fast path must raise it too (the API turns it into a 400)."""
    try:
        want = pipeline()
    except ValueError as exc:
        with pytest.raises(type(exc), match="infinity"):
            fast()
        return True
    return bool(np.array_equal(fast(), want))


def test_compiles_both_pipelines(claims: Fitted, churn: Fitted) -> None:
    assert claims.fast.trees is not None, claims.fast.notes  # HistGradientBoosting: trees compiled
    assert churn.fast.trees is None and "LogisticRegression" in churn.fast.notes[0]


def test_equal_on_the_training_rows(fitted: Fitted) -> None:
    frame = fitted.frame
    # the reference: the pipeline on each row alone (shared.rowwise); sklearn on the batch for trees
    want = rowwise.predict_proba(fitted.pipeline, frame)
    cols = _columns(fitted.fast, frame)
    assert np.array_equal(fitted.fast.predict_proba(cols, len(frame)), want)
    step = 17
    for i in range(0, len(frame), step):
        chunk = frame.iloc[i:i + step]
        got = fitted.fast.predict_proba({k: v[i:i + step] for k, v in cols.items()}, len(chunk))
        assert np.array_equal(got, want[i:i + step]), f"rows {i}..{i + len(chunk) - 1}"
    for i in range(0, len(frame), 97):  # and scikit-learn itself on each row alone
        one = {k: v[i:i + 1] for k, v in cols.items()}
        assert np.array_equal(fitted.fast.predict_proba(one, 1), fitted.pipeline.predict_proba(frame.iloc[i:i + 1]))


def test_trees_equal_the_estimator_on_every_row(claims: Fitted) -> None:
    X = np.asarray(claims.pipeline[:-1].transform(claims.frame), dtype=np.float64)
    want = claims.pipeline[-1].predict_proba(claims.pipeline[:-1].transform(claims.frame))
    assert np.array_equal(claims.fast.trees.predict_proba(X), want)
    # with NaN in every column the missing-value branches are taken everywhere
    holes = X.copy()
    holes[::3] = np.nan
    bare = claims.fast.estimator
    assert np.array_equal(claims.fast.trees.predict_proba(holes), bare.predict_proba(holes))


def _record_strategy(fitted: Fitted) -> st.SearchStrategy[dict[str, Any]]:
    fast = fitted.fast
    known: dict[str, list[str]] = {}
    for block in fast.blocks:
        if isinstance(block, fastpath._OneHotBlock):
            for name, mapping in zip(block.columns, block.maps, strict=True):
                known[name] = sorted(mapping)
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for name in fast.features:
        if name in fast.numeric:
            observed = fitted.frame[name].dropna().unique().tolist()[:50] or [0.0]
            fields[name] = st.one_of(
                st.none(), st.just(float("nan")), st.just(-0.0), st.just(0.0),
                st.sampled_from(observed),
                st.floats(allow_nan=False, allow_infinity=False, min_value=-1e9, max_value=1e9),
                st.floats(allow_nan=False, allow_infinity=False, width=64),
                st.integers(-1000, 1000).map(float))
        else:
            fields[name] = st.one_of(
                st.none(), st.sampled_from(known.get(name) or ["x"]),
                st.sampled_from(["", "  ", "__missing__", "unseen", "ÜNKNÖWN ✓"]),
                st.text(max_size=8))
    return st.fixed_dictionaries(fields)


def _frame(fitted: Fitted, records: list[dict[str, Any]]) -> pd.DataFrame:
    fast = fitted.fast
    data = {}
    for name in fast.features:
        values = [r[name] for r in records]
        if name in fast.numeric:
            data[name] = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        else:
            data[name] = np.array(values, dtype=object)
    return pd.DataFrame(data)


@pytest.mark.parametrize("which", ["claims", "churn"])
def test_property_generated_records(which: str, request: pytest.FixtureRequest) -> None:
    fitted: Fitted = request.getfixturevalue(which)

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
    @given(st.lists(_record_strategy(fitted), min_size=1, max_size=40))
    def check(records: list[dict[str, Any]]) -> None:
        _assert_same(fitted, _frame(fitted, records))

    check()


def test_prepare_verifies_and_serves_fast(claims: Fitted) -> None:
    scorer = scoring.prepare(claims.pipeline, claims.features, None)
    assert scorer.fast is not None and scorer.status["mode"] == "fast" and scorer.status["passed"]
    assert scorer.status["rows"] >= scoring.SAMPLE_ROWS
    assert np.array_equal(scorer.predict_frame(claims.frame), claims.pipeline.predict_proba(claims.frame))


def test_generated_sample_covers_every_known_category_and_missing(claims: Fitted) -> None:
    sample = scoring.generated_sample(claims.fast, 512, seed=0)
    for block in claims.fast.blocks:
        if isinstance(block, fastpath._OneHotBlock):
            for name, mapping in zip(block.columns, block.maps, strict=True):
                assert set(mapping) <= set(sample[name].dropna())
                assert sample[name].isna().any()
    numeric = [n for n in claims.fast.features if n in claims.fast.numeric]
    assert sample[numeric].isna().any().all()
    assert any(np.signbit(sample[n].to_numpy()).any() for n in numeric)


def test_a_one_ulp_drift_in_a_fitted_parameter_is_refused(claims: Fitted) -> None:
    fast = fastpath.compile_pipeline(claims.pipeline)
    block = next(b for b in fast.blocks if isinstance(b, fastpath._NumericBlock))
    i, step = next((i, s) for i, s in enumerate(block.steps) if s.kind == "scale")
    drifted = step.a.copy()
    drifted[0] = np.nextafter(drifted[0], np.inf)
    block.steps[i] = dataclasses.replace(step, a=drifted)
    report = scoring.verify(fast, claims.pipeline, None)
    assert not report["passed"] and report["regime"].startswith("model inputs")


def test_a_wrong_tree_is_refused_and_the_pipeline_serves(claims: Fitted, monkeypatch: pytest.MonkeyPatch) -> None:
    real = fast_trees.compile_estimator

    def corrupt(estimator: Any) -> fast_trees.CompiledTrees:
        trees = real(estimator)
        value = trees.value.copy()
        value[trees.is_leaf] *= 1.0 + 1e-12
        return dataclasses.replace(trees, value=value)

    monkeypatch.setattr(fast_trees, "compile_estimator", corrupt)
    scorer = scoring.prepare(claims.pipeline, claims.features, None)
    assert scorer.fast is None and scorer.status["mode"] == "pipeline"
    assert scorer.status["reason"] == "verification failed"
    assert scorer.status["regime"] in ("batches of 128", "one row at a time")  # where the trees serve
    assert np.array_equal(scorer.predict_frame(claims.frame), claims.pipeline.predict_proba(claims.frame))


def test_unknown_steps_are_not_compiled(claims: Fitted) -> None:
    pipe = claims.pipeline
    ct: ColumnTransformer = pipe[1]
    name, _, cols = ct.transformers_[0]
    odd = ColumnTransformer([(name, MinMaxScaler(), cols)], remainder="drop").set_output(transform="pandas")
    other = type(pipe)([("cast", pipe[0]), ("preprocess", odd.fit(pipe[0].transform(claims.frame))),
                        ("model", pipe[-1])])
    with pytest.raises(fastpath.Unsupported, match="MinMaxScaler"):
        fastpath.compile_pipeline(other)
    scorer = scoring.prepare(other, claims.features, None)
    assert scorer.fast is None and "MinMaxScaler" in scorer.status["reason"]


def test_disabled_by_setting(claims: Fitted) -> None:
    scorer = scoring.prepare(claims.pipeline, claims.features, None, enabled=False)
    assert scorer.fast is None and "FTI_FAST_PATH=false" in scorer.status["reason"]
