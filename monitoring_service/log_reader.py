"""The prediction log, cut into windows, and each window's rows turned back into model inputs.

A window belongs to one model version (its reference profile is that version's) and is either a
fixed number of consecutive predictions (``window_rows``) or a calendar period of ``created_at``
(``window_period``: ``1D``, ``6h``...). Rows are read in ``created_at, prediction_id`` order, in
chunks, so the log is never held whole; only complete windows are reported (the last, still
filling window is left for the next run), except with ``include_partial``.

The logged ``inputs`` are the raw records after normalisation (``shared.prediction_table``), so the
model inputs are recomputed exactly as serving computed them: the same normaliser and the same
shared transformers, with history read from the feature version the prediction logged.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from shared import feature_table as ft
from shared.features import compute_online
from shared.prediction_table import PREDICTION_LOG_REVISION, predictions
from shared.raw import RawDataError, normalize_records
from shared.spec import DatasetSpec

CHUNK = 20_000


@dataclass
class Window:
    model_name: str
    model_version: str
    kind: str  # "rows" | "period"
    start: datetime  # created_at of its first prediction
    end: datetime  # ... of its last
    label: str  # "rows 0-4999" or the period's start, ISO
    complete: bool
    rows: list[Any]  # (prediction_id, created_at, feature_version, record_id, entity_key, inputs, outputs)

    @property
    def n(self) -> int:
        return len(self.rows)


def model_versions(engine: Engine, model_name: str) -> list[str]:
    """Versions of ``model_name`` that answered logged predictions, oldest first."""
    ft.check_schema(engine, minimum=PREDICTION_LOG_REVISION)
    t = predictions
    named = t.c.model_name == model_name
    rows: list[tuple[str, Any]] = []
    # One index seek per version (a skip scan on (model_name, model_version, created_at)) instead of a
    # GROUP BY that reads the whole log: the monitor service asks on every pass.
    with engine.connect() as conn:
        version = conn.execute(select(func.min(t.c.model_version)).where(named)).scalar()
        while version is not None:
            first = conn.execute(select(func.min(t.c.created_at)).where(named, t.c.model_version == version)).scalar()
            rows.append((version, first))
            version = conn.execute(select(func.min(t.c.model_version)).where(named, t.c.model_version > version)
                                   ).scalar()
    return [str(v) for v, _ in sorted(rows, key=lambda r: (r[1], r[0]))]


def _ordered(model_name: str, version: str, *cols: Any) -> Any:
    t = predictions
    return select(*cols).where(t.c.model_name == model_name, t.c.model_version == version) \
        .order_by(t.c.created_at, t.c.prediction_id)


def created_at_at(engine: Engine, model_name: str, version: str, position: int) -> datetime | None:
    """``created_at`` of a version's prediction at ``position`` in reading order (None past the end)."""
    with engine.connect() as conn:
        value = conn.execute(_ordered(model_name, version, predictions.c.created_at)
                             .offset(position).limit(1)).scalar()
    return ft.naive_utc(value) if value is not None else None


def _rows(engine: Engine, model_name: str, version: str, offset: int = 0) -> Iterator[Any]:
    t = predictions
    cols = (t.c.prediction_id, t.c.created_at, t.c.feature_version, t.c.record_id, t.c.entity_key, t.c.inputs,
            t.c.outputs)
    q = _ordered(model_name, version, *cols)
    if offset:
        q = q.offset(offset)
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=CHUNK).execute(q)
        yield from result


def windows(engine: Engine, model_name: str, version: str, *, rows: int | None, period: str | None,
            include_partial: bool = False, skip_windows: int = 0) -> Iterator[Window]:
    """The windows of one model version's logged predictions, oldest first; ``skip_windows`` (row
    windows only) starts past that many complete windows without reading them."""
    if skip_windows and rows is None:
        raise ValueError("only row windows can be skipped by count")
    buf: list[Any] = []
    key: Any = None
    index = skip_windows

    def emit(complete: bool) -> Window:
        if rows is not None:
            label = f"rows {index * rows}-{index * rows + len(buf) - 1}"
        else:
            label = ft.iso_utc(key)
        return Window(model_name, version, "rows" if rows is not None else "period", buf[0][1], buf[-1][1], label,
                      complete, list(buf))

    for row in _rows(engine, model_name, version, offset=skip_windows * (rows or 0)):
        if period is not None:
            k = pd.Timestamp(row[1]).floor(period)
            if key is not None and k != key and buf:
                yield emit(True)
                buf = []
            key = k
        buf.append(tuple(row))
        if rows is not None and len(buf) == rows:
            yield emit(True)
            buf = []
            index += 1
    if buf and include_partial:
        yield emit(False)


def scores_and_predictions(window: Window, positive_label: str | None, regression: bool
                           ) -> tuple[np.ndarray, list[Any], np.ndarray | None]:
    """(the monitored score per row, the served prediction per row, class probabilities or None)."""
    outs = [json.loads(r[6]) for r in window.rows]
    preds = [o["prediction"] for o in outs]
    if regression:
        return np.asarray(preds, dtype=np.float64), preds, None
    labels = list(outs[0].get("probabilities", {}))
    proba = np.asarray([[o["probabilities"][k] for k in labels] for o in outs], dtype=np.float64)
    if len(labels) == 2 and positive_label is not None and positive_label in labels:
        score = proba[:, labels.index(positive_label)]
    else:
        score = proba.max(axis=1)
    return score, preds, proba


class VersionEvents:
    """Each feature version's rows, read once per monitor pass (not once per window): the history
    transformer takes every event of the version and keeps, per record, the entity's strictly earlier ones."""

    def __init__(self, engine: Engine, spec: DatasetSpec):
        self.engine, self.spec = engine, spec
        self._cache: dict[int, pd.DataFrame] = {}

    def __call__(self, version: int) -> pd.DataFrame:
        if version not in self._cache:
            self._cache[version] = ft.read_version(self.engine, self.spec, version)
        return self._cache[version]


def model_inputs(engine: Engine, spec: DatasetSpec, window: Window, events: VersionEvents | None = None
                 ) -> pd.DataFrame:
    """The window's model inputs (and raw columns), recomputed from the logged records as serving did:
    history from each prediction's logged feature version (strictly earlier events of the entity)."""
    records = [json.loads(r[5]) for r in window.rows]
    frame, problems = normalize_records(records, spec)
    if problems:
        raise RawDataError(problems.items, row_label="logged prediction", context="prediction log")
    if not spec.features.history:
        return compute_online(frame, frame.iloc[:0], spec)
    versions = np.asarray([r[2] if r[2] is not None else -1 for r in window.rows])
    parts: list[pd.DataFrame] = []
    order: list[np.ndarray] = []
    for v in sorted(set(versions.tolist())):
        idx = np.flatnonzero(versions == v)
        part = frame.iloc[idx].reset_index(drop=True)
        if v < 0:
            history = part.iloc[:0]
        elif events is not None:
            history = events(int(v))
        else:
            before = part[spec.event_time].max()
            history = ft.read_history(engine, spec, int(v), part[spec.entity_key].tolist(), before)
        parts.append(compute_online(part, history, spec))
        order.append(idx)
    out = pd.concat(parts, ignore_index=True)
    positions = np.concatenate(order)
    return out.iloc[np.argsort(positions, kind="stable")].reset_index(drop=True)


__all__ = ["VersionEvents", "Window", "created_at_at", "model_inputs", "model_versions", "scores_and_predictions",
           "windows"]
