"""The online feature path in numpy: history held in memory, derived and history features without pandas.

Why: on ``POST /predict`` most of the time went to per-request work that does not depend on
the request -- an SQL query for the entity's events, JSON decoding of every payload, a pandas
frame per step. Here the served feature version's history is decoded **once** into typed,
sorted arrays (:class:`HistoryIndex`: event times, and each history input, grouped by entity),
and each request's derived and history features are computed on numpy arrays. History
aggregates follow the shared transformer's rules (``PointInTimeHistory._reduce``) with ``bisect``
on the sorted times; derived arithmetic is the transformer's own function (time parts and
missing flags are re-implemented on arrays).

Nothing here is trusted by construction: :func:`prepare` compares this path with the pandas
path (:func:`inference_service.online.features_for`: SQL read + ``shared.features``) on the
certificate's records and generated ones (other entities, event-time ties, window edges,
missing values, far past and future) -- one by one, in small batches and in one batch -- and
uses it only if every model input is bit-identical; otherwise, or for a spec it does not
compile, the pandas path serves. A live request sees the whole version, as on the pandas path.
"""

from __future__ import annotations

import bisect
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy.engine import Engine

from shared import feature_table as ft
from shared.raw import NAT_MICROS, frame_from_arrays, record_arrays
from shared.spec import ColumnType, DatasetSpec
from shared.transformers import derive_numeric

log = logging.getLogger(__name__)

_US_PER_DAY = 86_400_000_000
_US_PER_HOUR = 3_600_000_000
_NAT = NAT_MICROS
GENERATED = 256
SINGLE_CHECKS = 24


class Unsupported(ValueError):
    """The spec holds something this path does not compile; the pandas path serves."""


@dataclass(frozen=True)
class HistoryIndex:
    """One feature version's events, decoded once: sorted by (entity, time), located by entity."""

    version: int
    times: np.ndarray  # int64 microseconds since the epoch (UTC), ascending within each entity
    values: dict[str, np.ndarray]  # history input -> float64 (NaN missing), aligned with ``times``
    spans: dict[str, tuple[int, int]]  # entity (as text) -> [start, stop) in the arrays
    rows: int

    @property
    def nbytes(self) -> int:
        """Array bytes plus an estimate of the entity table (the dict, its keys and tuples)."""
        arrays = self.times.nbytes + sum(v.nbytes for v in self.values.values())
        table = sum(len(k) + 49 + 56 + 64 for k in self.spans)  # str + tuple + dict slot, roughly
        return int(arrays + table)

    @classmethod
    def build(cls, engine: Engine, spec: DatasetSpec, version: int) -> HistoryIndex:
        return cls.from_frame(ft.read_version(engine, spec, version), spec, version)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, spec: DatasetSpec, version: int) -> HistoryIndex:
        """From a decoded feature version (``ft.read_version``)."""
        ent = frame[spec.entity_key].astype(str).to_numpy()
        times = _epoch_us(frame[spec.event_time]) if spec.event_time else np.arange(len(frame), dtype=np.int64)
        inputs = sorted({h.input for h in spec.features.history if h.input})
        order = np.lexsort((times, ent))
        ent, times = ent[order], times[order]
        values = {c: _float_column(frame[c])[order] for c in inputs}
        uniq, starts = np.unique(ent, return_index=True)
        stops = np.append(starts[1:], len(ent)) if len(starts) else starts
        spans = {str(u): (int(a), int(b)) for u, a, b in zip(uniq, starts, stops, strict=True)}
        return cls(version, times, values, spans, len(frame))


def _epoch_us(series: pd.Series) -> np.ndarray:
    s = series
    if isinstance(s.dtype, pd.DatetimeTZDtype):
        s = s.dt.tz_convert("UTC").dt.tz_localize(None)
    arr = s.to_numpy(dtype="datetime64[us]")
    return arr.astype(np.int64)  # NaT -> int64 min


def _float_column(series: pd.Series) -> np.ndarray:
    return pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def _missing(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind == "f":
        return np.isnan(values)
    if values.dtype.kind == "i":  # epoch microseconds
        return values == _NAT
    return np.array([v is None or (isinstance(v, float) and math.isnan(v)) for v in values], dtype=bool)


@dataclass
class OnlineFeatures:
    """Normalised request records -> every model input column, in numpy."""

    spec: DatasetSpec
    index: HistoryIndex | None
    features: list[str]
    numeric: frozenset[str]
    status: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def compile(cls, spec: DatasetSpec, index: HistoryIndex | None, features: list[str],
                numeric: frozenset[str]) -> OnlineFeatures:
        for d in spec.features.derived:
            if d.op.value not in ("ratio", "diff", "product", "log1p", "is_missing", "hour", "day_of_week", "month"):
                raise Unsupported(f"derived op {d.op.value!r} is not compiled")
        if spec.features.history and (index is None or not spec.event_time):
            raise Unsupported("history features without an index")
        return cls(spec, index, list(features), numeric)

    def columns(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The model's input columns for normalised records (:func:`shared.raw.record_arrays`),
        as the scorer reads them (numbers float64, categories objects with None for missing)."""
        spec = self.spec
        n = len(next(iter(arrays.values()))) if arrays else 0
        raw: dict[str, np.ndarray] = {}
        for name, values in arrays.items():
            col = spec.columns[name]
            if col.type.is_text and name not in (spec.record_id, spec.entity_key):
                raw[name] = np.array([None if isinstance(v, float) and v != v else v for v in values], dtype=object)
            else:
                raw[name] = values
        out: dict[str, np.ndarray] = {}
        for d in spec.features.derived:
            out[d.name] = _derive(d.op.value, [raw[c] if c in raw else out[c] for c in d.inputs])
        if spec.features.history:
            out.update(self._history(raw, n))
        cols: dict[str, np.ndarray] = {}
        for name in self.features:
            values = out[name] if name in out else raw[name]
            cols[name] = np.asarray(values, dtype=np.float64) if name in self.numeric else values
        return cols

    def _history(self, raw: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        """Per record: the entity's span, then ``bisect`` on the sorted times (no slice, no temporary
        array) and exact reductions over list slices -- the rules of ``PointInTimeHistory._reduce``."""
        spec, index = self.spec, self.index
        assert index is not None and spec.event_time
        aggs = [(h.name, h.op.value, h.input, None if not h.window_days else
                 int(round(float(h.window_days) * _US_PER_DAY))) for h in spec.features.history]
        ents = raw[spec.entity_key]
        q_t = raw[spec.event_time].tolist()
        out = {name: [math.nan] * n for name, *_ in aggs}
        times = index.times
        for i in range(n):
            span = index.spans.get(str(ents[i]))
            t = int(q_t[i])
            start, stop = span if span is not None else (0, 0)
            hi = bisect.bisect_left(times, t, start, stop) if stop > start else start
            for name, op, column, window in aggs:
                lo = bisect.bisect_left(times, t - window, start, hi) if window and hi > start else start
                out[name][i] = _aggregate(op, index, column, lo, hi, t)
        return {k: np.asarray(v, dtype=np.float64) + 0.0 for k, v in out.items()}


def _aggregate(op: str, index: HistoryIndex, column: str | None, lo: int, hi: int, t: int) -> float:
    if op == "count":
        return float(hi - lo)
    if op == "days_since_last":
        return (t - int(index.times[hi - 1])) / _US_PER_DAY if hi > lo else math.nan
    assert column is not None
    vals = [v for v in index.values[column][lo:hi].tolist() if v == v]  # v == v: not NaN
    if not vals:
        return 0.0 if op == "sum" else math.nan
    if op in ("max", "min"):
        return float(max(vals) if op == "max" else min(vals))
    try:
        total = math.fsum(vals)
    except OverflowError:  # the exact sum exceeds float64: NaN, as the transformer
        return math.nan
    return total if op == "sum" else total / len(vals)


def _derive(op: str, inputs: list[np.ndarray]) -> np.ndarray:
    """DerivedFeatures' operations on arrays (numbers float64, timestamps epoch µs, text objects)."""
    first = inputs[0]
    if op == "is_missing":
        return _missing(first).astype(np.float64)
    if op in ("hour", "day_of_week", "month"):
        us = first
        bad = us == _NAT
        safe = np.where(bad, 0, us)
        if op == "hour":
            part = np.floor_divide(np.mod(safe, _US_PER_DAY), _US_PER_HOUR)
        elif op == "day_of_week":
            part = np.mod(np.floor_divide(safe, _US_PER_DAY) + 3, 7)  # 1970-01-01 was a Thursday (3)
        else:
            part = np.mod(safe.astype("datetime64[us]").astype("datetime64[M]").astype(np.int64), 12) + 1
        out = part.astype(np.float64)
        out[bad] = np.nan
        return out + 0.0
    if op not in ("log1p", "ratio", "diff", "product"):
        raise Unsupported(f"derived op {op!r}")
    a = np.asarray(first, dtype=np.float64)
    return derive_numeric(op, a, None if op == "log1p" else np.asarray(inputs[1], dtype=np.float64))


# ---------------------------------------------------------------------- proof at load


def prepare(engine: Engine, spec: DatasetSpec, version: int | None, features: list[str], numeric: frozenset[str],
            certificate: dict[str, Any] | None, *, seed: int = 0) -> OnlineFeatures | None:
    """Build the index for ``version``, compile, and prove equal to the pandas path; None when refused."""
    from inference_service.online import features_for

    t0 = time.perf_counter()
    try:
        index = HistoryIndex.build(engine, spec, version) if spec.features.history and version is not None else None
        fast = OnlineFeatures.compile(spec, index, features, numeric)
    except Unsupported as exc:
        log.warning("online fast path not used: %s; the pandas path serves", exc)
        return None
    t_index = time.perf_counter() - t0
    records = _verification_records(spec, index, certificate, seed)
    if not records:
        log.warning("online fast path not used: no records to verify it on")
        return None
    arrays, problems = record_arrays(records, spec)
    if problems:
        log.warning("online fast path not used: verification records invalid: %s", problems.items[:3])
        return None
    frame = frame_from_arrays(arrays, len(records), spec)

    def same(a: dict[str, np.ndarray], b: pd.DataFrame, rows: slice) -> str | None:
        for name in features:
            want = b[name]
            if name in numeric:
                w = want.to_numpy(dtype=np.float64, na_value=np.nan)
                g = a[name]
                ok = ((g == w) & (np.signbit(g) == np.signbit(w))) | (np.isnan(g) & np.isnan(w))
                if not ok.all():
                    return f"{name} at rows {[int(i) + (rows.start or 0) for i in np.flatnonzero(~ok)[:5]]}"
            else:
                w = want.to_numpy(dtype=object, na_value=None)
                if list(a[name]) != list(w):
                    return f"{name}"
        return None

    n = len(frame)
    step = 16
    regimes = [(0, n)] + [(i, min(i + step, n)) for i in range(0, min(n, 4 * step), step)] + \
        [(i, i + 1) for i in range(min(n, SINGLE_CHECKS))]
    for a, b in regimes:
        part = frame.iloc[a:b].reset_index(drop=True)
        want = features_for(part, spec, engine, version)
        diff = same(fast.columns({k: v[a:b] for k, v in arrays.items()}), want, slice(a, b))
        if diff is not None:
            log.error("online fast path REFUSED (rows %d..%d): %s differs from the pandas path", a, b - 1, diff)
            return None
    fast.status = {"mode": "fast", "verified_records": n, "index_rows": index.rows if index else 0,
                   "index_bytes": index.nbytes if index else 0, "feature_version": version,
                   "index_seconds": round(t_index, 3), "seconds": round(time.perf_counter() - t0, 3)}
    log.info("online fast path verified: %d records bit-identical to the pandas path (feature version %s, "
             "%d history rows, %.1f MiB) in %.2fs", n, version, fast.status["index_rows"],
             fast.status["index_bytes"] / 2**20, fast.status["seconds"])
    return fast


def _verification_records(spec: DatasetSpec, index: HistoryIndex | None, certificate: dict[str, Any] | None,
                          seed: int) -> list[dict[str, Any]]:
    """Certificate records as live requests, plus variants: other entities, ties, window edges, missing values."""
    base = [dict(r) for r in (certificate or {}).get("records") or []]
    if not base:
        return []
    rng = np.random.default_rng(seed)
    out = list(base)
    entities = list(index.spans) if index is not None else []
    windows = sorted({float(h.window_days) for h in spec.features.history if h.window_days})
    nullable = [c for c in spec.raw_input_columns if spec.columns[c].nullable]
    entity_int = spec.columns[spec.entity_key].type == ColumnType.INT
    for _ in range(GENERATED):
        rec = dict(base[int(rng.integers(len(base)))])
        if entities and spec.event_time and index is not None:
            ent = entities[int(rng.integers(len(entities)))]
            start, stop = index.spans[ent]
            t = int(index.times[int(rng.integers(start, stop))])
            shift = [0, 1, -1, 10**9][int(rng.integers(4))]
            if windows and rng.random() < 0.4:
                shift = int(round(windows[int(rng.integers(len(windows)))] * _US_PER_DAY)) + int(rng.integers(-1, 2))
            rec[spec.entity_key] = int(ent) if entity_int else ent
            rec[spec.event_time] = ft.iso_utc(pd.Timestamp(t + shift, unit="us", tz="UTC"))
        if nullable and rng.random() < 0.3:
            rec[nullable[int(rng.integers(len(nullable)))]] = None
        out.append(rec)
    return out
