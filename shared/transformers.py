"""scikit-learn transformers shared by the feature job, training and serving.

They follow scikit-learn's conventions (parameters only stored in ``__init__``,
learned attributes end in ``_``, ``get_feature_names_out``) and feature_engine's
DataFrame discipline: DataFrame in, DataFrame out, columns reordered to
``feature_names_in_``, the input never modified.

* :class:`DerivedFeatures` -- row-level features (ratios, logs, time parts).
* :class:`PointInTimeHistory` -- per-entity aggregates over events strictly
  before each row's event time. Every aggregate is order-independent
  (``math.fsum``, counts, max/min), so the feature job (all events at once) and
  the inference service (a new record plus the entity's stored events) compute
  bit-identical values.
* :class:`ModelInputCaster` -- the first step of every model pipeline: selects
  the model's columns in order and fixes their dtypes, so the pipeline gives the
  same answer whatever container the rows arrive in (one-row frame, JSON from
  MLflow's scoring server, SQL round trip).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from shared.history_fast import fast_history

MISSING_CATEGORY = "__missing__"
_US_PER_DAY = 86_400_000_000


def _as_frame(X: Any, feature_names: Sequence[str] | None = None) -> pd.DataFrame:
    if isinstance(X, pd.DataFrame):
        return X
    arr = np.asarray(X)
    if arr.ndim != 2:
        raise ValueError(f"Expected 2D input, got an array of shape {arr.shape}.")
    names = list(feature_names) if feature_names is not None else [f"x{i}" for i in range(arr.shape[1])]
    return pd.DataFrame(arr, columns=names)


def _check_frame_input(est: BaseEstimator, X: Any, *, reset: bool) -> pd.DataFrame:
    """Validate X the scikit-learn way without converting a DataFrame to an array."""
    if isinstance(X, pd.DataFrame):
        names = getattr(est, "feature_names_in_", None)
        if not reset and names is not None and set(map(str, X.columns)) >= set(names):
            X = X[list(names)]  # same columns in another order (or extra ones): reorder, as documented
        validate_data(est, X, reset=reset, skip_check_array=True)
        frame = X
    else:
        arr = validate_data(est, X, reset=reset, ensure_all_finite="allow-nan", dtype=None)
        frame = _as_frame(arr, getattr(est, "feature_names_in_", None))
    if frame.shape[0] == 0:
        raise ValueError(f"Found array with 0 sample(s) (shape=(0, {frame.shape[1]})) while a minimum of 1 "
                         "is required.")
    if not reset and hasattr(est, "feature_names_in_"):
        frame = frame[list(est.feature_names_in_)]
    return frame


def _numeric(frame: pd.DataFrame, name: str) -> np.ndarray:
    return pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def _epoch_us(values: pd.Series | np.ndarray) -> np.ndarray:
    """Timestamps (tz-aware or naive=UTC) or plain numbers -> int64 microseconds."""
    s = pd.Series(values)
    if isinstance(s.dtype, pd.DatetimeTZDtype):
        s = s.dt.tz_convert("UTC").dt.tz_localize(None)
    if s.dtype.kind == "M":
        return s.to_numpy(dtype="datetime64[us]").astype(np.int64)
    return pd.to_numeric(s, errors="raise").to_numpy(dtype=np.float64).astype(np.int64)


class DerivedFeatures(TransformerMixin, BaseEstimator):
    """Append row-level derived features.

    Parameters
    ----------
    derivations : list of dict, default=None
        Each ``{"name": str, "op": str, "inputs": [col, ...]}`` with ``op`` one of
        ``ratio``, ``diff``, ``product``, ``log1p``, ``is_missing``, ``hour``,
        ``day_of_week``, ``month``. ``None`` derives nothing (identity).

    Never produces infinities: a ratio with a zero denominator is NaN.

    Examples
    --------
    >>> import pandas as pd
    >>> X = pd.DataFrame({"a": [1.0, 4.0], "b": [2.0, 0.0]})
    >>> DerivedFeatures([{"name": "r", "op": "ratio", "inputs": ["a", "b"]}]).fit_transform(X)["r"].tolist()
    [0.5, nan]
    """

    def __init__(self, derivations: list[dict[str, Any]] | None = None):
        self.derivations = derivations

    def _specs(self) -> list[dict[str, Any]]:
        specs = list(self.derivations or [])
        for d in specs:
            if not isinstance(d, dict) or {"name", "op", "inputs"} - set(d):
                raise ValueError(f"each derivation needs name, op and inputs; got {d!r}")
        return specs

    def fit(self, X: Any, y: Any = None) -> DerivedFeatures:
        frame = _check_frame_input(self, X, reset=True)
        names = set(map(str, frame.columns))
        for d in self._specs():
            missing = [c for c in d["inputs"] if c not in names]
            if missing:
                raise ValueError(f"derivation {d['name']!r} needs columns {missing} absent from X")
            names.add(d["name"])
        self.derived_names_ = [d["name"] for d in self._specs()]
        self.columns_ = [str(c) for c in frame.columns]
        return self

    def transform(self, X: Any) -> pd.DataFrame:
        check_is_fitted(self)
        frame = _check_frame_input(self, X, reset=False).copy()
        for d in self._specs():
            frame[d["name"]] = self._compute(frame, d["op"], d["inputs"])
        return frame

    @staticmethod
    def _compute(frame: pd.DataFrame, op: str, inputs: list[str]) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            if op in ("hour", "day_of_week", "month"):
                s = pd.Series(frame[inputs[0]])
                if isinstance(s.dtype, pd.DatetimeTZDtype):
                    s = s.dt.tz_convert("UTC")
                elif s.dtype.kind != "M":
                    s = pd.to_datetime(s, utc=True)
                part = {"hour": s.dt.hour, "day_of_week": s.dt.day_of_week, "month": s.dt.month}[op]
                return part.to_numpy(dtype=np.float64, na_value=np.nan)
            if op == "is_missing":
                return frame[inputs[0]].isna().to_numpy().astype(np.float64)
            a = _numeric(frame, inputs[0])
            b = _numeric(frame, inputs[1]) if op != "log1p" else None
        return derive_numeric(op, a, b)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        check_is_fitted(self)
        return np.asarray(self.columns_ + list(self.derived_names_), dtype=object)

    def __sklearn_tags__(self):  # type: ignore[no-untyped-def]
        tags = super().__sklearn_tags__()
        tags.requires_fit = True
        tags.input_tags.allow_nan = True
        tags.input_tags.string = True
        return tags


def derive_numeric(op: str, a: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    """:class:`DerivedFeatures`' arithmetic on float64 arrays (``log1p``, ``ratio``, ``diff``, ``product``).

    Never infinite: non-finite results are NaN; ``-0.0`` becomes ``0.0``. Serving's numpy online path
    calls this very function, so the arithmetic cannot drift from the transformer's.
    """
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if op == "log1p":
            out = np.where(a > -1, np.log1p(np.where(a > -1, a, 0.0)), np.nan)
        else:
            assert b is not None
            if op == "ratio":
                out = np.where(b != 0, a / np.where(b != 0, b, 1.0), np.nan)
            elif op == "diff":
                out = a - b
            elif op == "product":
                out = a * b
            else:
                raise ValueError(f"unknown derivation op {op!r}")
    out = np.asarray(out, dtype=np.float64)
    out[~np.isfinite(out)] = np.nan
    return out + 0.0


class PointInTimeHistory(TransformerMixin, BaseEstimator):
    """Append per-entity aggregates over events strictly before each row's time.

    Parameters
    ----------
    entity : str, default=None
        Entity-key column. ``None`` treats all rows as one entity.
    time : str, default=None
        Event-time column. ``None`` uses row order as time.
    aggregations : list of dict, default=None
        Each ``{"name", "op", "input"?, "window_days"?}`` with ``op`` one of
        ``count``, ``sum``, ``mean``, ``max``, ``min``, ``days_since_last``.
        ``None`` means one aggregate, ``prior_count``.
    known_time : str, default=None
        Ingestion-time column: when each event became known. With it, a row's
        history holds only events that happened strictly before the row's time
        *and* were known by then (``known_time <= row time``) -- what a live
        server at that moment could have seen. ``None``: every earlier event.

    ``transform(X)`` uses X's own rows as the event history (the batch path,
    each row seen as of its own time); :meth:`transform_with_history` takes the
    history separately (the online path) and an optional known-at time per row
    (``None``: everything in ``events`` is known, as for a live request). Events
    at exactly the row's time are excluded in both.

    Examples
    --------
    >>> import pandas as pd
    >>> X = pd.DataFrame({"who": ["a", "a", "b", "a"], "t": [1, 2, 2, 2], "v": [1.0, 2.0, 5.0, 4.0]})
    >>> h = PointInTimeHistory("who", "t", [{"name": "n", "op": "count"}, {"name": "s", "op": "sum", "input": "v"}])
    >>> h.fit_transform(X)[["n", "s"]].values.tolist()
    [[0.0, 0.0], [1.0, 1.0], [0.0, 0.0], [1.0, 1.0]]
    """

    _fast = True  # shared.history_fast for the rows it covers; False: every row by the per-row rules (tests)

    def __init__(self, entity: str | None = None, time: str | None = None,
                 aggregations: list[dict[str, Any]] | None = None, known_time: str | None = None):
        self.entity = entity
        self.time = time
        self.aggregations = aggregations
        self.known_time = known_time

    def _aggs(self) -> list[dict[str, Any]]:
        aggs = list(self.aggregations) if self.aggregations is not None else [
            {"name": "prior_count", "op": "count"}]
        for a in aggs:
            if a.get("op") not in ("count", "sum", "mean", "max", "min", "days_since_last"):
                raise ValueError(f"unknown history op in {a!r}")
            if a["op"] in ("sum", "mean", "max", "min") and not a.get("input"):
                raise ValueError(f"history op {a['op']!r} needs an input column: {a!r}")
        return aggs

    def fit(self, X: Any, y: Any = None) -> PointInTimeHistory:
        frame = _check_frame_input(self, X, reset=True)
        cols = set(map(str, frame.columns))
        if self.known_time is not None and self.time is None:
            raise ValueError("known_time needs a time column")
        for col in (self.entity, self.time):  # known_time: only the events need it (online records lack it)
            if col is not None and col not in cols:
                raise ValueError(f"column {col!r} is absent from X")
        for a in self._aggs():
            if a.get("input") and a["input"] not in cols:
                raise ValueError(f"history input {a['input']!r} is absent from X")
        self.history_names_ = [a["name"] for a in self._aggs()]
        self.columns_ = [str(c) for c in frame.columns]
        return self

    def transform(self, X: Any) -> pd.DataFrame:
        check_is_fitted(self)
        frame = _check_frame_input(self, X, reset=False)
        if self.known_time and self.known_time not in frame.columns:
            raise ValueError(f"column {self.known_time!r} (known_time) is absent from X")
        known_at = self._keys(frame)[1] if self.known_time else None  # each row as of its own time
        return self._append(frame, frame, known_at)

    def transform_with_history(self, X: pd.DataFrame, events: pd.DataFrame,
                               known_at: Any = None) -> pd.DataFrame:
        """Aggregate over ``events`` (e.g. rows read from the feature table) for each row of X.

        ``events`` must hold, for each entity in X, at least every event before
        that entity's latest time in X; extra later events are ignored.
        ``known_at`` (one timestamp per row of X, or ``"row_time"`` for each
        row's own time) replays what was known then: only events whose
        ``known_time`` is at or before it count. ``None`` counts every event
        in ``events`` (a live request: the store holds only what is known).
        """
        check_is_fitted(self)
        frame = _check_frame_input(self, X, reset=False)
        needed = [c for c in (self.entity, self.time) if c] + [a["input"] for a in self._aggs() if a.get("input")]
        if known_at is not None and self.known_time:
            needed.append(self.known_time)
        missing = sorted({c for c in needed if c not in events.columns})
        if missing:
            raise ValueError(f"history events lack columns {missing}")
        k: np.ndarray | None = None
        if known_at is not None and self.known_time:
            if isinstance(known_at, str) and known_at == "row_time":
                k = self._keys(frame)[1]
            else:
                k = _epoch_us(pd.Series(known_at).reset_index(drop=True))
                if len(k) != len(frame):
                    raise ValueError(f"known_at has {len(k)} values for {len(frame)} rows")
        return self._append(frame, events, k)

    def _keys(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        n = len(frame)
        ent = frame[self.entity].astype(str).to_numpy() if self.entity else np.zeros(n, dtype=object)
        if self.time:
            t = _epoch_us(frame[self.time].reset_index(drop=True))
        else:
            t = np.arange(n, dtype=np.int64)
        return ent, t

    def _append(self, frame: pd.DataFrame, events: pd.DataFrame, known_at: np.ndarray | None) -> pd.DataFrame:
        q_ent, q_t = self._keys(frame)
        e_ent, e_t = self._keys(events)
        aggs = self._aggs()
        values = {a["input"]: _numeric(events.reset_index(drop=True), a["input"])
                  for a in aggs if a.get("input")}
        order = np.lexsort((e_t, e_ent.astype(str)))
        e_ent_s, e_t_s = e_ent[order].astype(str), e_t[order]
        values = {k: v[order] for k, v in values.items()}
        e_known = _epoch_us(events[self.known_time].reset_index(drop=True))[order] \
            if known_at is not None and self.known_time else None
        uniq, starts = np.unique(e_ent_s, return_index=True)
        ends = np.append(starts[1:], len(e_ent_s)) if len(starts) else starts
        where = {u: (int(s), int(e)) for u, s, e in zip(uniq, starts, ends, strict=True)}
        out = {a["name"]: np.full(len(frame), np.nan) for a in aggs}
        rows: Any = range(len(frame))
        if self._fast:  # every row at once; the rows it leaves (late arrivals in a window...) by the rules below
            rows = fast_history(aggs, q_ent, q_t, e_ent_s, e_t_s, values, e_known, known_at, out).tolist()
        for i in rows:
            span = where.get(str(q_ent[i]))
            base = span[0] if span else 0
            times = e_t_s[span[0]:span[1]] if span else e_t_s[:0]
            hi = int(np.searchsorted(times, q_t[i], side="left"))
            for a in aggs:
                window = a.get("window_days")
                lo = 0 if not window else int(np.searchsorted(
                    times, q_t[i] - int(round(float(window) * _US_PER_DAY)), side="left"))
                idx = np.arange(base + lo, base + hi)
                if e_known is not None and known_at is not None:
                    idx = idx[e_known[idx] <= known_at[i]]  # known by then (late arrivals excluded)
                out[a["name"]][i] = self._reduce(a, e_t_s, values, idx, q_t[i])
        result = frame.copy()
        for name, col in out.items():
            result[name] = col + 0.0
        return result

    @staticmethod
    def _reduce(a: dict[str, Any], times: np.ndarray, values: dict[str, np.ndarray],
                idx: np.ndarray, t: int) -> float:
        """One aggregate over the events at sorted positions ``idx`` (ascending time)."""
        op = a["op"]
        if op == "count":
            return float(len(idx))
        if op == "days_since_last":
            return (t - int(times[idx[-1]])) / _US_PER_DAY if len(idx) else math.nan
        vals = values[a["input"]][idx]
        vals = vals[~np.isnan(vals)]
        if len(vals) == 0:
            return 0.0 if op == "sum" else math.nan
        try:
            total = math.fsum(vals.tolist())
        except OverflowError:  # the exact sum exceeds float64: same NaN on every path
            return math.nan
        if op == "sum":
            return total
        if op == "mean":
            return total / len(vals)
        return float(vals.max() if op == "max" else vals.min())

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        check_is_fitted(self)
        return np.asarray(self.columns_ + list(self.history_names_), dtype=object)

    def __sklearn_tags__(self):  # type: ignore[no-untyped-def]
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.input_tags.string = True
        return tags


def cast_categorical_values(values: np.ndarray) -> np.ndarray:
    """:class:`ModelInputCaster`'s rule for one categorical column, on an object array.

    Missing (None, NaN, empty or whitespace-only strings) becomes ``MISSING_CATEGORY``;
    bools become ``"true"``/``"false"``; whole numbers their integer text. The
    serving fast path calls this very function, so it cannot drift from the caster.
    """
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        if v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip()):
            out[i] = MISSING_CATEGORY
        elif isinstance(v, str):
            out[i] = v
        elif isinstance(v, (bool, np.bool_)):
            out[i] = str(v).lower()
        elif isinstance(v, (int, np.integer)) or (isinstance(v, (float, np.floating)) and float(v).is_integer()):
            out[i] = str(int(v))
        else:
            out[i] = str(v)
    return out


def canonical_floats(values: np.ndarray) -> np.ndarray:
    """float64 copy with ``-0.0`` turned into ``0.0`` (NaN stays NaN): the caster's numeric output."""
    return np.asarray(values, dtype=np.float64) + 0.0


def cast_numeric_values(name: str, values: np.ndarray) -> np.ndarray:
    """:class:`ModelInputCaster`'s rule for one numeric column held as Python objects."""
    arr = np.empty(len(values), dtype=np.float64)
    for i, v in enumerate(values):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            arr[i] = np.nan
        elif isinstance(v, (int, float, np.integer, np.floating, bool, np.bool_)):
            arr[i] = float(v)
        else:
            raise ValueError(f"column {name!r} holds a non-numeric value of type {type(v).__name__}")
    return canonical_floats(arr)


class ModelInputCaster(TransformerMixin, BaseEstimator):
    """Select the model's columns in order and fix their dtypes.

    Parameters
    ----------
    numeric : list of str, default=None
        Columns cast to float64 (missing -> NaN). ``None``: every column not in
        ``categorical``.
    categorical : list of str, default=None
        Columns cast to ``str`` objects, with missing values (None, NaN, empty
        or whitespace-only strings) replaced by ``"__missing__"``.

    A non-numeric value in a numeric column raises ``ValueError`` rather than
    becoming NaN: silent coercion would hide a client bug.

    Examples
    --------
    >>> import pandas as pd
    >>> X = pd.DataFrame({"c": ["x", None], "n": [1, None]})
    >>> ModelInputCaster(numeric=["n"], categorical=["c"]).fit_transform(X).values.tolist()
    [['x', 1.0], ['__missing__', nan]]
    """

    def __init__(self, numeric: list[str] | None = None, categorical: list[str] | None = None):
        self.numeric = numeric
        self.categorical = categorical

    def fit(self, X: Any, y: Any = None) -> ModelInputCaster:
        frame = _check_frame_input(self, X, reset=True)
        cols = [str(c) for c in frame.columns]
        categorical = list(self.categorical or [])
        numeric = list(self.numeric) if self.numeric is not None else [c for c in cols if c not in categorical]
        overlap = set(numeric) & set(categorical)
        if overlap:
            raise ValueError(f"columns both numeric and categorical: {sorted(overlap)}")
        missing = [c for c in numeric + categorical if c not in cols]
        if missing:
            raise ValueError(f"columns absent from X: {missing}")
        self.numeric_ = numeric
        self.categorical_ = categorical
        self.columns_ = cols
        return self

    def transform(self, X: Any) -> pd.DataFrame:
        check_is_fitted(self)
        frame = _check_frame_input(self, X, reset=False)
        out: dict[str, Any] = {}
        for name in self.columns_:
            col = frame[name]
            if name in self.categorical_:
                out[name] = self._cast_categorical(col)
            elif name in self.numeric_:
                out[name] = self._cast_numeric(name, col)
        result = pd.DataFrame(out, index=frame.index)
        return result[self._out_names()]

    def _out_names(self) -> list[str]:
        keep = set(self.numeric_) | set(self.categorical_)
        return [c for c in self.columns_ if c in keep]

    @staticmethod
    def _cast_categorical(col: pd.Series) -> np.ndarray:
        return cast_categorical_values(col.to_numpy(dtype=object, na_value=None))

    @staticmethod
    def _cast_numeric(name: str, col: pd.Series) -> np.ndarray:
        if col.dtype.kind in "fiub":
            return canonical_floats(col.to_numpy(dtype=np.float64, na_value=np.nan))
        return cast_numeric_values(name, col.to_numpy(dtype=object, na_value=None))

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        check_is_fitted(self)
        return np.asarray(self._out_names(), dtype=object)

    def __sklearn_tags__(self):  # type: ignore[no-untyped-def]
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.input_tags.string = True
        return tags
