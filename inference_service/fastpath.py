"""A serving fast path compiled from a fitted model pipeline, used only once proven equal to it.

Why: on a one-row request, scikit-learn spends almost all its time in
per-call overhead, not arithmetic -- ``ColumnTransformer.transform`` on a
one-row DataFrame, input validation, and for HistGradientBoosting one
Cython call (and OpenMP region) per tree. The fast path does the same
arithmetic on plain numpy arrays:

* the model-input caster's value rules (the very functions the fitted
  :class:`shared.transformers.ModelInputCaster` calls);
* ``SimpleImputer``/``StandardScaler`` with their fitted ``statistics_``,
  ``mean_`` and ``scale_``, in the same order of floating-point operations;
* ``SimpleImputer`` (any strategy: its fitted ``statistics_``), ``StandardScaler`` and
  ``RobustScaler``;
* ``OneHotEncoder`` and ``OrdinalEncoder`` through lookup tables read off the fitted encoder
  itself (each known category is pushed through ``transform`` once at compile time);
* the fitted estimator, called on the numpy matrix; for a
  HistGradientBoosting classifier on small batches, its trees evaluated all at
  once (:mod:`inference_service.fast_trees`).

Nothing here is trusted by construction: :func:`compile_pipeline` refuses any
step it does not know (the plain pipeline then serves), and
:mod:`inference_service.scoring` compares the fast path with the pipeline bit
for bit at load (certificate plus a generated sample) before using it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, RobustScaler, StandardScaler

from shared import rowwise
from shared.transformers import ModelInputCaster, canonical_floats, cast_categorical_values

_UNKNOWN_PROBE = "\x00fti-unknown-category-probe\x00"


class Unsupported(ValueError):
    """The pipeline holds something the fast path does not compile; the plain pipeline serves."""


@dataclass(frozen=True)
class _NumericStep:
    kind: str  # "impute" | "scale"
    a: np.ndarray | None = None  # impute: statistics; scale: mean (None: with_mean=False)
    b: np.ndarray | None = None  # scale: scale (None: with_std=False)


@dataclass(frozen=True)
class _NumericBlock:
    columns: list[str]
    out: slice
    steps: list[_NumericStep]


@dataclass(frozen=True)
class _OneHotBlock:
    columns: list[str]
    out: slice
    maps: list[dict[str, int]]  # per input column: category -> absolute output column (absent: all zeros)


@dataclass(frozen=True)
class _OrdinalBlock:
    columns: list[str]
    out: slice
    maps: list[dict[str, float]]  # per input column: category -> its code
    unknown: list[float]  # per input column: the code of a category the encoder never saw (may be NaN)


@dataclass
class FastPath:
    """Model-input columns -> class probabilities, without pandas or per-step validation."""

    features: list[str]
    numeric: frozenset[str]
    n_out: int
    blocks: list[_NumericBlock | _OneHotBlock | _OrdinalBlock]
    estimator: Any  # the fitted estimator, with feature-name checks off (it gets a bare matrix)
    trees: Any | None = None  # a compiled tree ensemble for small batches, or None
    tree_max_rows: int = 0
    notes: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------ input

    def columns_from_frame(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """Canonical columns from a model-input frame (as the caster reads them)."""
        out: dict[str, np.ndarray] = {}
        for name in self.features:
            col = frame[name]
            if name in self.numeric:
                if col.dtype.kind not in "fiub":
                    raise Unsupported(f"column {name!r} is not numeric ({col.dtype})")
                out[name] = col.to_numpy(dtype=np.float64, na_value=np.nan)
            else:
                out[name] = col.to_numpy(dtype=object, na_value=None)
        return out

    # ------------------------------------------------------------------ compute

    def matrix(self, columns: dict[str, np.ndarray], n: int) -> np.ndarray:
        """The estimator's input matrix (what the pipeline's preprocessing produces).

        Column-major, as pandas hands a ColumnTransformer's DataFrame output to the
        estimator: BLAS-based estimators (LogisticRegression) round differently on a
        row-major copy of the same numbers.
        """
        X = np.zeros((n, self.n_out), dtype=np.float64, order="F")
        with np.errstate(over="ignore", invalid="ignore"):  # as sklearn: huge inputs may scale to +-inf
            self._fill(X, columns, n)
        return X

    def _fill(self, X: np.ndarray, columns: dict[str, np.ndarray], n: int) -> None:
        for block in self.blocks:
            if isinstance(block, _NumericBlock):
                A = canonical_floats(np.vstack([columns[name] for name in block.columns]).T)
                for step in block.steps:
                    if step.kind == "impute":
                        assert step.a is not None  # impute steps always carry their statistics
                        A = np.where(np.isnan(A), step.a, A)
                    else:
                        if step.a is not None:
                            A -= step.a
                        if step.b is not None:
                            A /= step.b
                X[:, block.out] = A
            elif isinstance(block, _OrdinalBlock):
                for j, (name, codes) in enumerate(zip(block.columns, block.maps, strict=True)):
                    unknown = block.unknown[j]
                    X[:, block.out.start + j] = [codes.get(v, unknown) for v in cast_categorical_values(columns[name])]
            else:
                for name, lights in zip(block.columns, block.maps, strict=True):
                    for r, value in enumerate(cast_categorical_values(columns[name])):
                        k = lights.get(value)
                        if k is not None:
                            X[r, k] = 1.0

    def predict_proba(self, columns: dict[str, np.ndarray], n: int) -> np.ndarray:
        X = self.matrix(columns, n)
        if self.trees is not None and n <= self.tree_max_rows:
            return self.trees.predict_proba(X)
        return rowwise.predict_proba_matrix(self.estimator, X)  # each row as if alone

    def predict_proba_frame(self, frame: pd.DataFrame) -> np.ndarray:
        return self.predict_proba(self.columns_from_frame(frame), len(frame))


# ---------------------------------------------------------------------- compile


def compile_pipeline(pipeline: Any, *, tree_max_rows: int = 128) -> FastPath:
    """Compile a fitted ``Pipeline([ModelInputCaster, ColumnTransformer, classifier])``.

    Raises :class:`Unsupported` (with the reason) for anything else.
    """
    if not isinstance(pipeline, Pipeline) or len(pipeline.steps) != 3:
        raise Unsupported("not a three-step Pipeline (caster, ColumnTransformer, estimator)")
    caster, ct, estimator = (step for _, step in pipeline.steps)
    if not isinstance(caster, ModelInputCaster) or not hasattr(caster, "columns_"):
        raise Unsupported("the first step is not a fitted ModelInputCaster")
    if not isinstance(ct, ColumnTransformer) or not hasattr(ct, "transformers_"):
        raise Unsupported("the second step is not a fitted ColumnTransformer")
    features = [str(c) for c in caster.columns_]
    numeric = frozenset(caster.numeric_)
    categorical = frozenset(caster.categorical_)
    blocks: list[_NumericBlock | _OneHotBlock | _OrdinalBlock] = []
    names_out: list[str] = []
    for name, trans, cols in ct.transformers_:
        if trans == "drop":
            continue
        out = ct.output_indices_[name]
        if out.stop - out.start == 0:
            continue
        if not isinstance(cols, list) or not all(isinstance(c, str) for c in cols):
            raise Unsupported(f"transformer {name!r} selects columns by something other than a list of names")
        if trans == "passthrough":
            _require(all(c in numeric for c in cols), f"{name!r} passes non-numeric columns through")
            blocks.append(_NumericBlock(cols, out, []))
        else:
            steps = list(trans.steps) if isinstance(trans, Pipeline) else [(name, trans)]
            if len(steps) == 1 and isinstance(steps[0][1], OneHotEncoder):
                _require(all(c in categorical for c in cols), f"{name!r} one-hot encodes numeric columns")
                blocks.append(_onehot_block(steps[0][1], cols, out))
            elif len(steps) == 1 and isinstance(steps[0][1], OrdinalEncoder):
                _require(all(c in categorical for c in cols), f"{name!r} ordinal-encodes numeric columns")
                blocks.append(_ordinal_block(steps[0][1], cols, out))
            else:
                _require(all(c in numeric for c in cols), f"{name!r} applies numeric steps to categories")
                blocks.append(_NumericBlock(cols, out, [_numeric_step(s, len(cols)) for _, s in steps]))
        names_out.extend(f"{name}__{c}" for c in np.asarray(trans.get_feature_names_out(cols)
                                                             if trans != "passthrough" else cols, dtype=str))
    n_out = sum(b.out.stop - b.out.start for b in blocks)
    expected = [str(c) for c in ct.get_feature_names_out()]
    if ct.verbose_feature_names_out and names_out != expected:
        raise Unsupported("the ColumnTransformer's output layout is not the one the fast path derives")
    if n_out != len(expected):
        raise Unsupported(f"the ColumnTransformer outputs {len(expected)} columns, the fast path {n_out}")
    if not hasattr(estimator, "predict_proba") and not hasattr(estimator, "predict"):
        raise Unsupported("the estimator has neither predict_proba nor predict")
    bare = rowwise.without_names(estimator)  # shares the fitted state; only the feature-name check is dropped
    fast = FastPath(features=features, numeric=numeric, n_out=n_out, blocks=blocks, estimator=bare,
                    tree_max_rows=tree_max_rows)
    from inference_service import fast_trees

    try:
        fast.trees = fast_trees.compile_estimator(estimator)
    except fast_trees.Unsupported as exc:
        fast.notes.append(f"trees not compiled ({exc}); the estimator predicts on the matrix")
    return fast


def _require(ok: bool, reason: str) -> None:
    if not ok:
        raise Unsupported(reason)


def _numeric_step(step: Any, width: int) -> _NumericStep:
    if step == "passthrough" or step is None:
        return _NumericStep("scale")  # no-op
    if isinstance(step, SimpleImputer):
        _require(not step.add_indicator, "SimpleImputer(add_indicator=True)")
        _require(isinstance(step.missing_values, float) and np.isnan(step.missing_values),
                 "SimpleImputer with missing_values other than NaN")
        stats = np.asarray(step.statistics_, dtype=np.float64)
        _require(stats.shape == (width,) and not np.isnan(stats).any(),
                 "SimpleImputer with empty (all-missing) features")
        return _NumericStep("impute", stats)
    if isinstance(step, StandardScaler):
        mean = np.asarray(step.mean_, dtype=np.float64) if step.with_mean else None
        scale = np.asarray(step.scale_, dtype=np.float64) if step.with_std else None
        return _NumericStep("scale", mean, scale)
    if isinstance(step, RobustScaler):  # transform: X -= center_, then X /= scale_, as StandardScaler
        _require(not step.unit_variance, "RobustScaler(unit_variance=True)")
        center = np.asarray(step.center_, dtype=np.float64) if step.with_centering else None
        scale = np.asarray(step.scale_, dtype=np.float64) if step.with_scaling else None
        return _NumericStep("scale", center, scale)
    raise Unsupported(f"numeric step {type(step).__name__} is not compiled")


def _onehot_block(enc: OneHotEncoder, cols: list[str], out: slice) -> _OneHotBlock:
    """Read the category -> output-column table off the fitted encoder by transforming probes.

    An all-unknown row must light nothing (``handle_unknown="ignore"``); then each column's
    categories are pushed through with every other column unknown, and the one output column a
    category lights is its entry (none: it encodes as all zeros, as a dropped category does).
    Infrequent categories find their shared column this way too.
    """
    _require(not enc.sparse_output, "OneHotEncoder(sparse_output=True)")
    _require(enc.handle_unknown == "ignore", f"OneHotEncoder(handle_unknown={enc.handle_unknown!r})")
    _require(np.dtype(enc.dtype) == np.float64, "OneHotEncoder with a dtype other than float64")
    cats = [list(c) for c in enc.categories_]
    _require(all(isinstance(v, str) for c in cats for v in c), "OneHotEncoder categories are not all strings")
    unknown = pd.DataFrame({name: np.array([_UNKNOWN_PROBE], dtype=object) for name in cols})
    _require(not np.asarray(enc.transform(unknown)).any(), "unknown categories light an output column")
    # Columns of feature j: those its categories light while the other columns are unknown.
    maps: list[dict[str, int]] = []
    for name, c in zip(cols, cats, strict=True):
        single = pd.DataFrame({other: np.array([_UNKNOWN_PROBE] * len(c), dtype=object) for other in cols})
        single[name] = np.array(c, dtype=object)
        rows = np.asarray(enc.transform(single), dtype=np.float64)
        _require(set(np.unique(rows).tolist()) <= {0.0, 1.0}, f"{name!r} encodes to values other than 0/1")
        mapping: dict[str, int] = {}
        for r, category in enumerate(c):
            on = np.flatnonzero(rows[r])
            _require(len(on) <= 1, f"category {category!r} of {name!r} lights {len(on)} columns")
            if len(on) == 1:
                mapping[category] = out.start + int(on[0])
        maps.append(mapping)
    return _OneHotBlock(cols, out, maps)


def _ordinal_block(enc: OrdinalEncoder, cols: list[str], out: slice) -> _OrdinalBlock:
    """Read each category's code off the fitted encoder, as :func:`_onehot_block` reads its columns.

    Unknown categories must encode to a value (``handle_unknown="use_encoded_value"``), read off by
    transforming a probe no column has seen; infrequent categories find their shared code this way too."""
    _require(enc.handle_unknown == "use_encoded_value",
             f"OrdinalEncoder(handle_unknown={enc.handle_unknown!r})")
    _require(np.dtype(enc.dtype) == np.float64, "OrdinalEncoder with a dtype other than float64")
    cats = [list(c) for c in enc.categories_]
    _require(all(isinstance(v, str) for c in cats for v in c), "OrdinalEncoder categories are not all strings")
    probe = pd.DataFrame({name: np.array([_UNKNOWN_PROBE], dtype=object) for name in cols})
    unknown = [float(v) for v in np.asarray(enc.transform(probe), dtype=np.float64)[0]]
    maps: list[dict[str, float]] = []
    for j, (name, c) in enumerate(zip(cols, cats, strict=True)):
        single = pd.DataFrame({other: np.array([_UNKNOWN_PROBE] * len(c), dtype=object) for other in cols})
        single[name] = np.array(c, dtype=object)
        codes = np.asarray(enc.transform(single), dtype=np.float64)[:, j]
        maps.append({category: float(code) for category, code in zip(c, codes, strict=True)})
    return _OrdinalBlock(cols, out, maps, unknown)
