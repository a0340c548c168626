"""Metrics and plots for a fitted classifier or regressor on the evaluation split."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from shared import decision as decisions
from shared import rowwise
from shared.labels import positive_index
from training_pipeline.importance import permutation_importance

LOWER_IS_BETTER = {"log_loss", "brier", "decision.cost", "rmse", "mae"}


def _regression_fns(y_true: np.ndarray, predicted: np.ndarray) -> dict[str, Callable[[], float]]:
    """Regression: RMSE, MAE and R² of the predicted values (``predicted``: the one-column output)."""
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(predicted, dtype=np.float64).reshape(-1)
    return {"rmse": lambda: float(np.sqrt(skm.mean_squared_error(y, p))),
            "mae": lambda: float(skm.mean_absolute_error(y, p)),
            "r2": lambda: float(skm.r2_score(y, p)) if len(y) > 1 else float("nan"),
            "n_eval": lambda: float(len(y))}


def _metric_fns(classes: np.ndarray | None, y_true: np.ndarray, proba: np.ndarray, positive_class: Any = None
                ) -> dict[str, Callable[[], float]]:
    """Each metric as a thunk: all of them for the run, one for the permutation importance.

    Binary: roc_auc, average_precision, f1, precision, recall and brier describe ``positive_class``
    (``model.positive_class``; default the last class). Multi-class: roc_auc is one-vs-rest macro,
    average_precision macro over classes, f1 macro. ``classes`` None: a regressor (:func:`_regression_fns`)."""
    if classes is None:
        return _regression_fns(y_true, proba)
    pred = classes[np.argmax(proba, axis=1)]
    fns: dict[str, Callable[[], float]] = {
        "accuracy": lambda: float(skm.accuracy_score(y_true, pred)),
        "log_loss": lambda: float(skm.log_loss(y_true, proba, labels=classes)),
        "n_eval": lambda: float(len(y_true)),
    }
    if len(classes) == 2:
        k = positive_index(classes, positive_class)
        pos = classes[k]
        score = proba[:, k]
        y_bin = (y_true == pos).astype(int)
        fns.update({
            "roc_auc": lambda: float(skm.roc_auc_score(y_bin, score)) if len(np.unique(y_bin)) == 2
            else float("nan"),
            "average_precision": lambda: float(skm.average_precision_score(y_bin, score)),
            "f1": lambda: float(skm.f1_score(y_true, pred, pos_label=pos, zero_division=0)),
            "precision": lambda: float(skm.precision_score(y_true, pred, pos_label=pos, zero_division=0)),
            "recall": lambda: float(skm.recall_score(y_true, pred, pos_label=pos, zero_division=0)),
            "brier": lambda: float(skm.brier_score_loss(y_bin, score)),
            "positive_rate": lambda: float(y_bin.mean()),
        })
    else:
        fns.update({
            "roc_auc": lambda: float(skm.roc_auc_score(y_true, proba, multi_class="ovr", labels=classes)),
            "average_precision": lambda: float(skm.average_precision_score(
                (y_true[:, None] == classes[None, :]).astype(int), proba)),
            "f1": lambda: float(skm.f1_score(y_true, pred, average="macro", zero_division=0)),
        })
    return fns


def compute_metrics(classes: np.ndarray | None, y_true: np.ndarray, proba: np.ndarray, positive_class: Any = None
                    ) -> dict[str, float]:
    return {name: fn() for name, fn in _metric_fns(classes, y_true, proba, positive_class).items()}


def metric_value(metric: str, classes: np.ndarray | None, y_true: np.ndarray, proba: np.ndarray,
                 positive_class: Any = None) -> float:
    """One metric, computed as :func:`compute_metrics` computes it."""
    return _metric_fns(classes, y_true, proba, positive_class)[metric]()


def better_or_equal(metric: str, new: float, old: float, margin: float = 0.0) -> bool:
    """``new`` is at least as good as ``old``, or worse by at most ``margin`` (non-inferiority)."""
    if np.isnan(old):
        return True
    if np.isnan(new):
        return False
    return new <= old + margin if metric in LOWER_IS_BETTER else new >= old - margin


def _classification_figures(classes: np.ndarray, y_true: np.ndarray, proba: np.ndarray, positive_class: Any,
                            threshold: float | None) -> dict[str, Any]:
    import matplotlib.pyplot as plt

    figs: dict[str, Any] = {}
    if len(classes) == 2:
        k = positive_index(classes, positive_class)
        pos = classes[k]
        y_bin = (y_true == pos).astype(int)
        score = proba[:, k]
        fig, ax = plt.subplots(figsize=(5, 5))
        skm.RocCurveDisplay.from_predictions(y_bin, score, ax=ax, name="model")
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        ax.set_title("ROC curve (evaluation split)")
        figs["plots/roc_curve.png"] = fig
        fig, ax = plt.subplots(figsize=(5, 5))
        skm.PrecisionRecallDisplay.from_predictions(y_bin, score, ax=ax, name="model")
        ax.set_title("Precision-recall curve (evaluation split)")
        figs["plots/pr_curve.png"] = fig
        from sklearn.calibration import CalibrationDisplay

        fig, ax = plt.subplots(figsize=(5, 5))
        CalibrationDisplay.from_predictions(y_bin, score, n_bins=10, strategy="quantile", ax=ax, name="model")
        ax.set_title(f"Calibration of P({pos}) (evaluation split, deciles)")
        figs["plots/calibration.png"] = fig
        if threshold is not None:
            precision, recall, cuts = skm.precision_recall_curve(y_bin, score)
            fig, ax = plt.subplots(figsize=(6, 4))
            ax.plot(cuts, precision[:-1], label="precision")
            ax.plot(cuts, recall[:-1], label="recall")
            ax.axvline(min(threshold, 1.0), color="k", ls="--", lw=0.8, label=f"chosen threshold {threshold:.4g}")
            ax.set_xlabel(f"threshold on P({pos})")
            ax.set_title("Decision threshold (evaluation split)")
            ax.legend(loc="best")
            fig.tight_layout()
            figs["plots/decision_threshold.png"] = fig
    decided = classes[decisions.apply(proba, positive_index(classes, positive_class) if len(classes) == 2 else -1,
                                      threshold)]
    fig, ax = plt.subplots(figsize=(5, 5))
    skm.ConfusionMatrixDisplay.from_predictions(y_true, decided, ax=ax, colorbar=False)
    ax.set_title("Confusion matrix (evaluation split" + (f", threshold {threshold:.4g})" if threshold is not None
                                                         else ")"))
    figs["plots/confusion_matrix.png"] = fig

    return figs


def _regression_figures(y_true: np.ndarray, proba: np.ndarray) -> dict[str, Any]:
    """Predicted vs actual (the diagonal is perfect) and residuals vs predicted (structure = bias left)."""
    import matplotlib.pyplot as plt

    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(proba, dtype=np.float64).reshape(-1)
    figs: dict[str, Any] = {}
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(y, p, s=8, alpha=0.6)
    low, high = float(min(y.min(), p.min())), float(max(y.max(), p.max()))
    ax.plot([low, high], [low, high], "k--", lw=0.8)
    ax.set_xlabel("actual")
    ax.set_ylabel("predicted")
    ax.set_title("Predicted vs actual (evaluation split)")
    figs["plots/predicted_vs_actual.png"] = fig
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(p, y - p, s=8, alpha=0.6)
    ax.axhline(0.0, color="k", ls="--", lw=0.8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual - predicted")
    ax.set_title("Residuals (evaluation split)")
    fig.tight_layout()
    figs["plots/residuals.png"] = fig
    return figs


def figures(pipe: Any, X: pd.DataFrame, y_true: np.ndarray, proba: np.ndarray, *, seed: int,
            primary_metric: str, positive_class: Any = None, threshold: float | None = None) -> dict[str, Any]:
    """Classification: ROC / PR curves, calibration, confusion matrix (of the decision rule when
    ``threshold`` is set), the precision and recall at every threshold with the chosen one marked.
    Regression: predicted vs actual, residuals. Both: permutation feature importance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = getattr(pipe, "classes_", None)
    figs = _regression_figures(y_true, proba) if classes is None else \
        _classification_figures(classes, y_true, proba, positive_class, threshold)

    sample = X if len(X) <= 3000 else X.sample(3000, random_state=seed)
    y_sample = y_true if len(X) <= 3000 else y_true[sample.index.to_numpy()]
    def scoring(est: Any, X_: pd.DataFrame, y_: np.ndarray) -> float:
        value = metric_value(primary_metric, getattr(est, "classes_", None), y_, rowwise.outputs(est, X_),
                             positive_class)
        return -value if primary_metric in LOWER_IS_BETTER else value

    imp = permutation_importance(pipe, sample, y_sample, scoring, n_repeats=3, seed=seed)
    order = np.argsort(imp.mean)
    fig, ax = plt.subplots(figsize=(6, max(3, 0.28 * len(order))))
    ax.barh(np.asarray(X.columns)[order], imp.mean[order], xerr=imp.std[order])
    ax.set_title(f"Permutation importance ({primary_metric} drop)")
    fig.tight_layout()
    figs["plots/feature_importance.png"] = fig
    return figs
