"""Batch-invariant scoring: a record's probabilities never depend on the batch it arrives in.

scikit-learn is not batch-invariant for every estimator: a BLAS-backed model
(LogisticRegression, an MLP, an SVM kernel...) computes a one-row matrix product
with another kernel than a many-row one, and the last bit of a probability moves
(up to 2.2e-16 measured). fti's promise is per record, so its reference is
**the pipeline applied to each record alone**; every fti path -- training's
evaluation and certificate, serving (``/predict``, ``/invocations``), batch
scoring, lineage and reproduce -- computes exactly that, through
:func:`predict_proba` here (serving's fast path is proven equal to it at load).

Estimators whose output for a row is computed from that row alone, elementwise
(the tree ensembles below), are called on the whole batch. For every other
estimator the preprocessing (row-wise by construction: casting, imputation,
scaling, one-hot) runs on the batch and the estimator on one row at a time --
given exactly the one-row frame the pipeline itself would hand it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

# Exact class paths whose predict_proba is elementwise per row (tree walks, sums over trees
# in a fixed order): batch-invariant, checked by tests/unit/shared/test_rowwise.py.
BATCH_INVARIANT = frozenset({
    "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingClassifier",
    "sklearn.ensemble._forest.RandomForestClassifier",
    "sklearn.ensemble._forest.ExtraTreesClassifier",
    "sklearn.ensemble._gb.GradientBoostingClassifier",
    "sklearn.tree._classes.DecisionTreeClassifier",
    "sklearn.tree._classes.ExtraTreeClassifier",
})


def class_path(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def final_estimator(model: Any) -> Any:
    return model.steps[-1][1] if hasattr(model, "steps") else model


def is_batch_invariant(model: Any) -> bool:
    """Whether ``model.predict_proba`` is known to give each row the same bits in any batch."""
    est = final_estimator(model)
    if class_path(est) not in BATCH_INVARIANT:
        return False
    return getattr(est, "n_jobs", None) in (None, 1)  # parallel forests add tree outputs in finishing order


def outputs(model: Any, X: Any) -> np.ndarray:
    """The model's answer as a float64 matrix: ``predict_proba`` of a classifier (a column per class),
    ``predict`` of a regressor as one column. Every stage compares and serves this matrix, so a
    regression model goes through the same certificate, fast-path proof and reproduction as a classifier."""
    if hasattr(model, "predict_proba"):
        return np.asarray(model.predict_proba(X), dtype=np.float64)
    return np.asarray(model.predict(X), dtype=np.float64).reshape(-1, 1)


def is_regressor(model: Any) -> bool:
    """A fitted model that predicts a number (no ``classes_``, no ``predict_proba``)."""
    return not hasattr(final_estimator(model), "predict_proba")


def predict_proba(pipeline: Any, X: pd.DataFrame) -> np.ndarray:
    """:func:`outputs` of ``pipeline`` (probabilities, or a regressor's value) for each row of ``X`` as if
    it were scored alone."""
    if len(X) <= 1 or is_batch_invariant(pipeline):
        return outputs(pipeline, X)
    if not hasattr(pipeline, "steps") or len(pipeline.steps) < 2:
        return np.vstack([outputs(pipeline, X.iloc[i:i + 1]) for i in range(len(X))])
    Z = pipeline[:-1].transform(X)
    est = final_estimator(pipeline)
    if isinstance(Z, pd.DataFrame) and all(dtype == np.float64 for dtype in Z.dtypes):
        # The values the estimator would get from a one-row frame, without a frame per row: the
        # estimator's fitted state shared, only its feature-name check dropped (test_rowwise.py
        # proves this equal to the pipeline on each row alone).
        return predict_proba_matrix(without_names(est), np.asarray(Z, dtype=np.float64))
    take = Z.iloc if isinstance(Z, pd.DataFrame) else None
    rows = [take[i:i + 1] if take is not None else Z[i:i + 1] for i in range(len(X))]
    return np.vstack([outputs(est, r) for r in rows])


def without_names(est: Any) -> Any:
    """A shallow copy of a fitted estimator that takes a bare matrix without a feature-name warning:
    its fitted state is shared, only ``feature_names_in_`` is dropped -- also inside the preprocessor a
    HistGradientBoosting with categorical features keeps (``_preprocessor``), whose encoders would
    otherwise warn on every call (a warning per scored row)."""
    import copy

    bare = copy.copy(est)
    if hasattr(bare, "feature_names_in_"):
        del bare.feature_names_in_
    inner = getattr(bare, "_preprocessor", None)
    if inner is not None and hasattr(inner, "transformers_"):
        inner = without_names(inner)
        inner.transformers_ = [(name, t if isinstance(t, str) else without_names(t), cols)
                               for name, t, cols in inner.transformers_]
        bare._preprocessor = inner
    return bare


def predict_proba_matrix(estimator: Any, X: np.ndarray) -> np.ndarray:
    """The bare estimator on a preprocessed matrix, one C-contiguous row at a time unless batch-invariant."""
    if len(X) <= 1 or is_batch_invariant(estimator):
        return outputs(estimator, X)
    return np.vstack([outputs(estimator, np.ascontiguousarray(X[i:i + 1])) for i in range(len(X))])


__all__ = ["BATCH_INVARIANT", "is_batch_invariant", "is_regressor", "outputs", "predict_proba",
           "predict_proba_matrix", "without_names"]
