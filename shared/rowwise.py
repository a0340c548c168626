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


def predict_proba(pipeline: Any, X: pd.DataFrame) -> np.ndarray:
    """Probabilities of ``pipeline`` for each row of ``X`` as if it were scored alone."""
    if len(X) <= 1 or is_batch_invariant(pipeline):
        return np.asarray(pipeline.predict_proba(X), dtype=np.float64)
    if not hasattr(pipeline, "steps") or len(pipeline.steps) < 2:
        return np.vstack([np.asarray(pipeline.predict_proba(X.iloc[i:i + 1]), dtype=np.float64)
                          for i in range(len(X))])
    Z = pipeline[:-1].transform(X)
    est = final_estimator(pipeline)
    if isinstance(Z, pd.DataFrame) and all(dtype == np.float64 for dtype in Z.dtypes):
        # The values the estimator would get from a one-row frame, without a frame per row: the
        # estimator's fitted state shared, only its feature-name check dropped (test_rowwise.py
        # proves this equal to the pipeline on each row alone).
        return predict_proba_matrix(_without_names(est), np.asarray(Z, dtype=np.float64))
    take = Z.iloc if isinstance(Z, pd.DataFrame) else None
    rows = [take[i:i + 1] if take is not None else Z[i:i + 1] for i in range(len(X))]
    return np.vstack([np.asarray(est.predict_proba(r), dtype=np.float64) for r in rows])


def _without_names(est: Any) -> Any:
    if not hasattr(est, "feature_names_in_"):
        return est
    import copy

    bare = copy.copy(est)
    del bare.feature_names_in_
    return bare


def predict_proba_matrix(estimator: Any, X: np.ndarray) -> np.ndarray:
    """The bare estimator on a preprocessed matrix, one C-contiguous row at a time unless batch-invariant."""
    if len(X) <= 1 or is_batch_invariant(estimator):
        return np.asarray(estimator.predict_proba(X), dtype=np.float64)
    return np.vstack([np.asarray(estimator.predict_proba(np.ascontiguousarray(X[i:i + 1])), dtype=np.float64)
                      for i in range(len(X))])


__all__ = ["BATCH_INVARIANT", "is_batch_invariant", "predict_proba", "predict_proba_matrix"]
