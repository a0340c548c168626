"""HistGradientBoosting trees evaluated all at once, for small batches.

scikit-learn predicts a HistGradientBoosting model one tree at a time: a
Cython call (and an OpenMP region) per tree, so a one-row prediction with
200 trees costs milliseconds of overhead for microseconds of arithmetic.
Here every tree is packed into flat node arrays and walked level by level
for all trees and rows together, with the fitted model's own node tables.

Equality with scikit-learn, by construction and then by test:

* the split rule is ``_predict_one_from_raw_data``'s: NaN follows
  ``missing_go_to_left``, otherwise ``x <= num_threshold`` goes left; the
  (tree, row) pairs still inside a tree are walked level by level;
* leaf values are added to the baseline tree by tree in iteration order
  (``np.add.accumulate`` is sequential), exactly as ``_raw_predict`` does;
* probabilities come from the fitted estimator's own loss object.

It reads private, version-pinned attributes (``_predictors``,
``_baseline_prediction``, ``_loss``): the lock pins scikit-learn, and the
service proves the result equal to ``predict_proba`` at every load, so a
change there can only switch the fast path off, never change an answer.
Models with categorical splits or a categorical preprocessor are not compiled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


class Unsupported(ValueError):
    """The estimator's trees are not compiled (the estimator itself predicts)."""


@dataclass(frozen=True)
class CompiledTrees:
    roots: np.ndarray  # (T,) absolute index of each tree's root, in (iteration, class) order
    feature: np.ndarray  # per node (all trees concatenated)
    threshold: np.ndarray
    missing_right: np.ndarray  # NaN goes right (not ``missing_go_to_left``)
    child: np.ndarray  # (2 * nodes,): [2i] left child of node i, [2i+1] right child; leaves point at themselves
    is_leaf: np.ndarray
    value: np.ndarray
    n_classes_out: int  # trees per iteration
    baseline: np.ndarray  # (1, n_classes_out)
    loss: Any
    n_features: int
    max_depth: int  # deepest leaf: pointer-following steps that reach every leaf
    _twice: np.ndarray  # 2 * node index, for ``child``

    def _go_right(self, x: np.ndarray, node: np.ndarray | slice) -> np.ndarray:
        """sklearn's split rule: NaN follows ``missing_go_to_left``, else ``x <= threshold`` goes left."""
        return (x > self.threshold[node]) | (np.isnan(x) & self.missing_right[node])

    def _leaves_one_row(self, x: np.ndarray) -> np.ndarray:
        """One row: decide every node of every tree at once (a few vector operations over all nodes),
        then follow the pointers level by level -- no per-level bookkeeping of who is still inside."""
        nxt = self.child[self._twice + self._go_right(x[self.feature], slice(None))]
        node = self.roots
        for _ in range(self.max_depth):
            node = nxt[node]
        return self.value[node].reshape(-1, 1)

    def _leaves_walk(self, X: np.ndarray) -> np.ndarray:
        """Walk all (tree, row) pairs level by level, only those not at a leaf yet.

        NaN is read as +inf where the node sends missing values right and as -inf where it sends
        them left (two copies of the input; ``fs`` picks the copy per node), so ``x > threshold``
        alone decides every step -- thresholds are finite (checked at compile), and real
        infinities go the same way in both copies, as in scikit-learn."""
        n, d = X.shape
        T = len(self.roots)
        size = n * d
        both = np.empty(2 * size, dtype=np.float64)
        nan = np.isnan(X).ravel()
        flat = np.ascontiguousarray(X).ravel()
        both[:size] = np.where(nan, -np.inf, flat)
        both[size:] = np.where(nan, np.inf, flat)
        fs = self.feature + self.missing_right * size
        node = np.repeat(self.roots, n)  # tree-major: entry t*n + r is tree t on row r
        offset = np.tile(np.arange(n) * d, T)
        active = np.flatnonzero(~self.is_leaf[node])
        while active.size:
            cur = node[active]
            right = both[offset[active] + fs[cur]] > self.threshold[cur]
            cur = self.child[2 * cur + right]
            node[active] = cur
            active = active[~self.is_leaf[cur]]
        return self.value[node].reshape(T, n)

    def raw_predict(self, X: np.ndarray) -> np.ndarray:
        n = X.shape[0]
        values = self._leaves_one_row(X[0]) if n == 1 else self._leaves_walk(X)
        leaves = values.reshape(len(self.roots) // self.n_classes_out, self.n_classes_out, n)
        raw = np.empty((n, self.n_classes_out), dtype=np.float64, order="F")
        for k in range(self.n_classes_out):
            stacked = np.empty((leaves.shape[0] + 1, n), dtype=np.float64)
            stacked[0] = self.baseline[0, k]
            stacked[1:] = leaves[:, k, :]
            raw[:, k] = np.add.accumulate(stacked, axis=0)[-1]  # sequential: sklearn's += per tree
        return raw

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"expected a matrix with {self.n_features} columns, got shape {X.shape}")
        return np.asarray(self.loss.predict_proba(self.raw_predict(X)), dtype=np.float64)


def compile_estimator(estimator: Any) -> CompiledTrees:
    from sklearn.ensemble import HistGradientBoostingClassifier

    if not isinstance(estimator, HistGradientBoostingClassifier):
        raise Unsupported(f"{type(estimator).__name__} is not a HistGradientBoostingClassifier")
    try:
        predictors = estimator._predictors
        baseline = np.asarray(estimator._baseline_prediction, dtype=np.float64)
        loss = estimator._loss
        preprocessor = estimator._preprocessor
    except AttributeError as exc:
        raise Unsupported(f"unexpected HistGradientBoosting internals ({exc})") from None
    if preprocessor is not None:
        raise Unsupported("the model was fitted with categorical features")
    k = int(estimator.n_trees_per_iteration_)
    if baseline.shape != (1, k) or not predictors or any(len(it) != k for it in predictors):
        raise Unsupported("unexpected tree layout")
    tables, roots, offset = [], [], 0
    for iteration in predictors:
        for predictor in iteration:
            nodes = predictor.nodes
            if nodes["is_categorical"].any():
                raise Unsupported("the model has categorical splits")
            tables.append(nodes)
            roots.append(offset)
            offset += len(nodes)
    starts = np.repeat(np.asarray(roots, dtype=np.intp), [len(t) for t in tables])
    nodes = np.concatenate(tables)
    is_leaf = nodes["is_leaf"].astype(bool)
    if not np.isfinite(nodes["num_threshold"][~is_leaf]).all():
        raise Unsupported("a split threshold is not finite")
    idx = np.arange(len(nodes), dtype=np.intp)
    left = np.where(is_leaf, idx, nodes["left"].astype(np.intp) + starts)
    right = np.where(is_leaf, idx, nodes["right"].astype(np.intp) + starts)
    child = np.empty(2 * len(nodes), dtype=np.intp)
    child[0::2], child[1::2] = left, right
    return CompiledTrees(
        roots=np.asarray(roots, dtype=np.intp),
        feature=np.where(is_leaf, 0, nodes["feature_idx"]).astype(np.intp),
        threshold=nodes["num_threshold"].astype(np.float64),
        missing_right=~nodes["missing_go_to_left"].astype(bool),  # as 0/1 it also selects the +inf copy
        child=child, is_leaf=is_leaf, value=nodes["value"].astype(np.float64),
        max_depth=int(nodes["depth"].max()), _twice=2 * idx,
        n_classes_out=k, baseline=baseline, loss=loss, n_features=int(estimator.n_features_in_),
    )
