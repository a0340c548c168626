"""The reference profile: what the training data looked like, frozen with the model version.

Training builds it (:func:`build`) from the training split and stores it beside the model
(``extra_files/reference_profile.json``, covered by the artifact digest, visible in MLflow); the
monitor counts each window of served records into the very same bins (:func:`counts`) and
compares. Shared because both sides must bin identically, and because the bins are fixed here,
once, from training quantiles -- never recomputed from reference plus current data, so a window's
numbers do not move with the window (the flaw users report in Evidently's PSI).

* numeric features: edges at the training deciles (distinct values only) plus ``-inf``/``+inf``,
  counts per bin, missing count, min and max (for the out-of-range rate);
* categorical features: the top :data:`TOP_K` categories with their counts, ``other`` (seen in
  training, not in the top), ``missing``, and the full set of training categories up to
  :data:`MAX_KNOWN` so that a window can count ``unseen`` ones;
* the model's output on the evaluation split: the positive-class probability (binary), the top
  probability (multi-class) or the predicted value (regression), binned like a numeric feature;
* the label: class shares, or a regression target's bins.

Only counts and edges are stored -- never a row -- so the profile is small and safe to share.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

PROFILE_FORMAT = 1
N_BINS = 10  # deciles
TOP_K = 20
MAX_KNOWN = 1000
MISSING = "__missing__"  # the key of the missing count among categories (the caster's marker)


def _finite(values: np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    return v[np.isfinite(v)]


def numeric_edges(values: np.ndarray, n_bins: int = N_BINS) -> list[float]:
    """Inner bin edges at the quantiles of ``values`` (distinct, finite); the outer ones are +-inf."""
    v = _finite(values)
    if len(v) == 0:
        return []
    qs = np.quantile(v, np.linspace(0, 1, n_bins + 1)[1:-1], method="linear")
    return [float(q) for q in np.unique(qs)]


def bin_counts(values: np.ndarray, inner_edges: list[float]) -> tuple[list[int], int]:
    """(counts per bin, missing count): bin ``i`` holds ``edges[i-1] <= v < edges[i]``."""
    v = np.asarray(values, dtype=np.float64)
    missing = np.isnan(v)  # +-inf fall in the outer bins
    idx = np.searchsorted(np.asarray(inner_edges, dtype=np.float64), v[~missing], side="right")
    return np.bincount(idx, minlength=len(inner_edges) + 1).astype(int).tolist(), int(missing.sum())


def _categorical(values: pd.Series) -> dict[str, Any]:
    text = values.astype(object).where(values.notna(), None)
    missing = int(text.isna().sum())
    present = text.dropna().astype(str)
    counts = present.value_counts()
    ordered = sorted(((str(k), int(v)) for k, v in counts.items()), key=lambda kv: (-kv[1], kv[0]))
    top = dict(ordered[:TOP_K])
    known = sorted(str(k) for k in counts.index)
    return {"kind": "categorical", "n": int(len(values)), "missing": missing, "top": top,
            "other": int(len(present)) - sum(top.values()), "known": known[:MAX_KNOWN],
            "known_complete": len(known) <= MAX_KNOWN}


def _numeric(values: np.ndarray) -> dict[str, Any]:
    v = np.asarray(values, dtype=np.float64)
    edges = numeric_edges(v)
    counts, missing = bin_counts(v, edges)
    finite = _finite(v)
    return {"kind": "numeric", "n": int(len(v)), "missing": missing, "edges": edges, "counts": counts,
            "min": float(finite.min()) if len(finite) else None, "max": float(finite.max()) if len(finite) else None,
            "mean": float(finite.mean()) if len(finite) else None,
            "sd": float(finite.std(ddof=1)) if len(finite) > 1 else None}


def score_column(outputs: np.ndarray, positive_index: int | None) -> np.ndarray:
    """The one number per row the monitor watches: the positive class's probability (binary), the top
    probability (multi-class) or the predicted value (regression: one column)."""
    out = np.asarray(outputs, dtype=np.float64)
    if out.shape[1] == 1:
        return out[:, 0]
    if out.shape[1] == 2 and positive_index is not None:
        return out[:, positive_index]
    return out.max(axis=1)


def build(frame: pd.DataFrame, features: list[str], numeric: set[str] | frozenset[str], *,
          outputs: np.ndarray, positive_index: int | None, labels: np.ndarray, task: str,
          model_name: str = "", feature_version: int | None = None) -> dict[str, Any]:
    """The profile of ``frame`` (the training split's model inputs), the model's evaluation ``outputs``
    and the training ``labels``. Deterministic: the same rows give the same JSON."""
    columns: dict[str, Any] = {}
    for name in features:
        columns[name] = _numeric(frame[name].to_numpy(dtype=np.float64, na_value=np.nan)) if name in numeric \
            else _categorical(frame[name])
    if task == "regression":
        label: dict[str, Any] = _numeric(np.asarray(labels, dtype=np.float64))
    else:
        shares = pd.Series(np.asarray(labels).astype(str)).value_counts(normalize=True)
        label = {"kind": "classes", "shares": {str(k): float(v) for k, v in sorted(shares.items())}}
    return {"format": PROFILE_FORMAT, "model_name": model_name, "feature_version": feature_version,
            "task": task, "rows": int(len(frame)), "features": columns,
            "score": _numeric(score_column(outputs, positive_index)), "label": label}


def counts(column: dict[str, Any], values: Any) -> dict[str, Any]:
    """A window's values counted into a profiled column's bins (``values``: floats for numeric, objects
    for categorical; ``None``/NaN/blank missing)."""
    if column["kind"] == "numeric":
        v = np.asarray(values, dtype=np.float64)
        binned, missing = bin_counts(v, column["edges"])
        finite = _finite(v)
        lo, hi = column.get("min"), column.get("max")
        out_of_range = int(((finite < lo) | (finite > hi)).sum()) if lo is not None and hi is not None else 0
        return {"n": int(len(v)), "missing": missing, "counts": binned, "out_of_range": out_of_range}
    top = column["top"]
    known = set(column["known"])
    n = missing = other = unseen = 0
    hits = dict.fromkeys(top, 0)
    for value in values:
        n += 1
        if value is None or (isinstance(value, float) and math.isnan(value)) or \
                (isinstance(value, str) and (not value.strip() or value == MISSING)):
            missing += 1
            continue
        text = str(value).lower() if isinstance(value, (bool, np.bool_)) else str(value)
        if text in hits:
            hits[text] += 1
        else:
            other += 1
            if column.get("known_complete", True) and text not in known:
                unseen += 1
    return {"n": n, "missing": missing, "counts": [hits[k] for k in top] + [other], "unseen": unseen}


def reference_counts(column: dict[str, Any]) -> list[int]:
    """The training counts in the layout :func:`counts` returns (categorical: top then ``other``)."""
    if column["kind"] == "numeric":
        return list(column["counts"])
    return list(column["top"].values()) + [column["other"]]


__all__ = ["N_BINS", "PROFILE_FORMAT", "TOP_K", "bin_counts", "build", "counts", "numeric_edges",
           "reference_counts", "score_column"]
