"""Realized performance: a window's served predictions against the labels that arrived since.

Labels are joined by record id from the dataset's latest feature version (the source's next
version carries the outcomes of records served earlier). Only rows with a label count; the
metrics are sklearn's, on the served outputs as logged (the probabilities and the decision the
client received), so they can be recomputed by anyone from the same rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm
from sqlalchemy.engine import Engine

from shared import feature_table as ft
from shared.spec import DatasetSpec


def labels_for(engine: Engine, spec: DatasetSpec, record_ids: list[str]) -> tuple[dict[str, Any], int | None]:
    """{record id: label} for the ids whose label the latest feature version holds, and that version."""
    try:
        info = ft.get_version(engine, spec.name)
    except ft.FeatureStoreError:
        return {}, None
    frame = ft.read_records(engine, spec, info.version, record_ids)
    if frame.empty:
        return {}, info.version
    known = frame[frame[spec.label].notna()]
    return dict(zip(known[spec.record_id].astype(str), known[spec.label].tolist(), strict=True)), info.version


def _same_type(label: Any, classes: list[str]) -> str:
    text = str(label)
    if isinstance(label, float) and label.is_integer() and str(int(label)) in classes:
        return str(int(label))
    return text


def realized(spec: DatasetSpec, y: list[Any], predictions: list[Any], proba: np.ndarray | None,
             class_labels: list[str] | None, positive_label: str | None) -> dict[str, Any]:
    """sklearn metrics of served outputs against arrived labels (rows aligned)."""
    n = len(y)
    out: dict[str, Any] = {"labeled_rows": n}
    if n == 0:
        out["status"] = "no labels yet"
        return out
    out["status"] = "ok"
    if spec.model.task == "regression":
        t = np.asarray(y, dtype=np.float64)
        p = np.asarray(predictions, dtype=np.float64)
        out.update(rmse=float(np.sqrt(skm.mean_squared_error(t, p))), mae=float(skm.mean_absolute_error(t, p)),
                   r2=float(skm.r2_score(t, p)) if n > 1 else None)
        return out
    assert class_labels is not None and proba is not None
    truth = [_same_type(v, class_labels) for v in y]
    served = [str(v) for v in predictions]
    out["accuracy"] = float(skm.accuracy_score(truth, served))
    present = sorted(set(truth))
    if len(class_labels) == 2 and positive_label is not None:
        pos = positive_label
        t = np.asarray([v == pos for v in truth])
        d = np.asarray([v == pos for v in served])
        score = proba[:, class_labels.index(pos)]
        out["positive_rate"] = float(t.mean())
        out["precision"] = float(skm.precision_score(t, d, zero_division=0))
        out["recall"] = float(skm.recall_score(t, d, zero_division=0))
        out["f1"] = float(skm.f1_score(t, d, zero_division=0))
        out["brier"] = float(skm.brier_score_loss(t, score))
        out["roc_auc"] = float(skm.roc_auc_score(t, score)) if len(present) == 2 else None
        out["average_precision"] = float(skm.average_precision_score(t, score)) if len(present) == 2 else None
    else:
        out["f1_macro"] = float(skm.f1_score(truth, served, average="macro", labels=class_labels, zero_division=0))
    if set(truth) <= set(class_labels):
        out["log_loss"] = float(skm.log_loss(truth, proba, labels=class_labels))
    else:
        out["log_loss"] = None
        out["unknown_labels"] = sorted(set(truth) - set(class_labels))[:10]
    return out


def join(record_ids: list[str], labels: dict[str, Any]) -> np.ndarray:
    """Positions of ``record_ids`` that have a label."""
    return np.flatnonzero(pd.Series(record_ids).isin(list(labels)).to_numpy())


__all__ = ["join", "labels_for", "realized"]
