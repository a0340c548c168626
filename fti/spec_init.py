"""``fti spec init``: draft a dataset spec from a CSV file the project has never seen.

The draft is meant to be read and edited, then checked (``fti spec check``), so it stays
conservative where a guess would silently cost later:

* **Types** from the text of every cell, with the feature job's own rules (ASCII decimals,
  ``true``/``false``-style booleans, ISO timestamps); a column whose few distinct values are
  text becomes ``category``, one with many (names, free text) ``string``, which is never a model
  input.
* **No bounds.** ``min``/``max`` from one file would refuse tomorrow's legitimate values at the
  feature job and at ``/predict``; the observed range is written as the column's description.
* **Nullability** only where the spec needs it: role columns are ``nullable: false``; features
  stay nullable (a missing value is scored, not refused), and the observed missing share is noted.
* **Roles**: ``--record-id`` (or the first column unique on every row), ``--entity-key``
  (default: the record id, one row per entity), ``--event-time`` (default: none; the split is then
  stratified).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd

from shared.raw import is_decimal_text

_TRUE = {"true", "yes", "y", "t"}
_FALSE = {"false", "no", "n", "f"}
_INT = re.compile(r"[+-]?[0-9]+")
_ISO = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?)?(Z|[+-][0-9]{2}:?[0-9]{2})?")
_NAME = re.compile(r"[^A-Za-z0-9_]")
CATEGORY_MAX_DISTINCT = 50


class SpecInitError(ValueError):
    """The file cannot be drafted as asked; the message says what to pass."""


def column_type(values: pd.Series) -> str:
    """The fti column type whose rules every non-empty cell of ``values`` satisfies."""
    present = values[values != ""]
    if present.empty:
        return "string"
    low = present.str.strip().str.lower()
    distinct = set(low.unique())
    if distinct <= _TRUE | _FALSE and distinct & _TRUE and distinct & _FALSE:
        return "bool"
    if present.map(lambda v: _INT.fullmatch(v) is not None).all():
        return "int"
    if present.map(is_decimal_text).all():
        return "float"
    if present.map(lambda v: _ISO.fullmatch(v) is not None).all():
        return "timestamp"
    limit = max(CATEGORY_MAX_DISTINCT, int(0.05 * len(present)))
    return "category" if present.nunique() <= min(limit, len(present) // 2 or 1) else "string"


def _describe(values: pd.Series, kind: str) -> str:
    missing = float((values == "").mean())
    parts = []
    if kind in ("int", "float"):
        nums = pd.to_numeric(values[values != ""])
        parts.append(f"observed {nums.min():g} to {nums.max():g}")
    elif kind == "category":
        parts.append(f"{values[values != ''].nunique()} distinct values observed")
    if missing:
        parts.append(f"{missing:.1%} missing")
    return "; ".join(parts)


REGRESSION_MIN_DISTINCT = 20  # an integer label with more distinct values than this is drafted as a number


def draft(source: Path, label: str, *, record_id: str | None = None, entity_key: str | None = None,
          event_time: str | None = None, name: str | None = None, task: str | None = None
          ) -> tuple[dict[str, Any], list[str]]:
    """(the spec as a mapping, notes for the user) for the CSV at ``source``.

    ``task`` None infers it from the label: non-integer numbers, or integers with more than
    :data:`REGRESSION_MIN_DISTINCT` distinct values, are a regression target; anything else has classes."""
    frame = pd.read_csv(source, dtype=str, keep_default_na=False, na_values=[], encoding="utf-8-sig")
    if frame.empty:
        raise SpecInitError(f"{source} has no data rows")
    bad = [c for c in frame.columns if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(c))]
    if bad:
        raise SpecInitError(f"column names must be letters, digits and _ (not starting with a digit): {bad[:5]}; "
                            "rename them in the header")
    for role, col in (("--label", label), ("--record-id", record_id), ("--entity-key", entity_key),
                      ("--event-time", event_time)):
        if col is not None and col not in frame.columns:
            raise SpecInitError(f"{role} {col!r} is not a column of {source.name}: {list(frame.columns)[:20]}")
    notes: list[str] = []
    if record_id is None:
        unique = [c for c in frame.columns if c != label and frame[c].ne("").all() and frame[c].is_unique]
        if not unique:
            raise SpecInitError(f"no column of {source.name} is unique and present on every row; a record id is "
                                "needed: pass --record-id COLUMN (or add an id column)")
        record_id = unique[0]
        notes.append(f"record_id: {record_id!r} (the first column unique on every row; --record-id to choose)")
    entity_key = entity_key or record_id
    if entity_key == record_id:
        notes.append("entity_key = record_id: one row per entity, no history features (--entity-key COLUMN groups "
                     "rows by entity and allows them)")
    columns: dict[str, dict[str, Any]] = {}
    for col in frame.columns:
        kind = column_type(frame[col])
        if col in (record_id, entity_key) and kind not in ("int", "string", "category"):
            kind = "string"
        if col == label:
            distinct = frame[col][frame[col] != ""].nunique()
            numeric = kind in ("int", "float")
            if task is None:
                task = "regression" if kind == "float" or (kind == "int" and distinct > REGRESSION_MIN_DISTINCT) \
                    else "classification"
                if task == "regression":
                    notes.append(f"label {label!r}: {distinct} distinct numbers, so a regression (--task "
                                 "classification to predict classes instead)")
            if task == "regression" and not numeric:
                raise SpecInitError(f"--task regression needs a numeric label; {label!r} holds {kind} values")
            if task == "classification" and kind in ("float", "string", "timestamp"):
                kind = "category"
        entry: dict[str, Any] = {"type": kind}
        if col in (record_id, entity_key, event_time, label):
            entry["nullable"] = False
        described = _describe(frame[col], kind)
        if described:
            entry["description"] = described
        columns[col] = entry
        if kind == "string" and col not in (record_id, entity_key):
            notes.append(f"{col!r} looks like free text (many distinct values): type string, not a model input")
    if event_time is not None and columns[event_time]["type"] != "timestamp":
        raise SpecInitError(f"--event-time {event_time!r} does not hold ISO timestamps (e.g. 2024-03-05 14:22:31)")
    classes = sorted(frame[label][frame[label] != ""].unique())
    if len(classes) < 2:
        raise SpecInitError(f"label {label!r} has {len(classes)} distinct value(s); a model needs two or more")
    regression = task == "regression"
    if (frame[label] == "").any():
        columns[label]["nullable"] = True
        notes.append(f"{int((frame[label] == '').sum())} rows have no {label!r} yet: kept in feature versions, "
                     "skipped by training")
    if len(classes) == 2 and not regression:
        notes.append(f"binary label {label!r} {classes}: metrics describe {classes[-1]!r} (the last); set "
                     "model.positive_class to the event you care about")
    dataset = _NAME.sub("_", name or source.stem).strip("_").lower()[:60] or "dataset"
    if not dataset[0].isalpha():
        dataset = "d_" + dataset
    spec: dict[str, Any] = {
        "spec_version": 2,  # model.preprocessing: auto suits the estimator
        "name": dataset,
        "description": f"Drafted by `fti spec init` from {source.name} ({len(frame)} rows): read and edit.",
        "source": {"format": "csv", "path": source.name},
        "record_id": record_id,
        "entity_key": entity_key,
        **({"event_time": event_time} if event_time else {}),
        "label": label,
        "columns": columns,
        "model": {
            "name": f"{dataset.replace('_', '-')}-model",
            **({"task": "regression"} if regression else {}),
            "estimator": {"class": "sklearn.ensemble.HistGradientBoosting"
                                   + ("Regressor" if regression else "Classifier"),
                          "params": {"max_iter": 200}},
            "primary_metric": "rmse" if regression else "roc_auc",
            "split": {"method": "time" if event_time else "random" if regression else "stratified",
                      "test_size": 0.25},
            "seed": 42,
        },
    }
    return spec, notes
