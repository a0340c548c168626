"""Raw records -> one canonical, typed DataFrame, with every problem named.

The feature job (CSV / Parquet / SQL rows) and the inference service (JSON
records) both go through this module, so a value means the same thing on both
sides. Dtypes come from the spec, never from pandas inference, because pandas
infers differently for one row than for many (a JSON ``null`` alone is float,
beside strings it is object). Canonical dtypes:

* ``int`` / ``float`` / ``bool`` -> float64, missing -> NaN, ``-0.0`` -> ``0.0``
* ``category`` / ``string`` -> object holding ``str``, missing -> NaN;
  empty or whitespace-only strings count as missing
* ``timestamp`` -> ``datetime64[us, UTC]``; naive times are taken as UTC
* ``record_id`` and ``entity_key`` -> ``str`` whatever their declared type
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from shared import raw_plain
from shared.spec import ColumnSpec, ColumnType, DatasetSpec
from shared.transformers import MISSING_CATEGORY

# Business bounds for timestamps: pandas accepts years 1 and 9999, which are
# almost always unit or entry errors in tabular ML data.
MIN_TIMESTAMP = pd.Timestamp("1900-01-01", tz="UTC")
MAX_TIMESTAMP = pd.Timestamp("2200-01-01", tz="UTC")
MAX_ROWS_LISTED = 10
# ISO 8601 only: pandas would also take "now", "5/3/2024" (which day?) or "2024".
# ASCII digits only: ``\d`` would also match Arabic-Indic or full-width digits, which pandas then misreads.
_ISO_TIMESTAMP = re.compile(
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,9})?)?)?(Z|[+-][0-9]{2}(:?[0-9]{2})?)?$")
# A decimal number as text, ASCII only: ``float()`` alone also takes "1_000", full-width digits, "nan", "inf".
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)


def is_decimal_text(text: str) -> bool:
    """True for a plain ASCII decimal number (``-1.5``, ``2e3``); False for what ``float()`` also takes
    but a data file should not hold: ``1_000``, non-ASCII digits, ``nan``, ``inf``."""
    return _DECIMAL.fullmatch(text) is not None
_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input: a column (or None for the whole input) and the rows."""

    code: str
    message: str
    column: str | None = None
    rows: tuple[int, ...] = ()
    row_count: int = 0

    def describe(self, row_label: str = "row", row_base: int = 0) -> str:
        where = f"column {self.column!r}: " if self.column else ""
        if not self.rows:
            return where + self.message
        shown = ", ".join(str(r + row_base) for r in self.rows)
        more = f" (+{self.row_count - len(self.rows)} more)" if self.row_count > len(self.rows) else ""
        plural = "s" if self.row_count > 1 else ""
        return f"{where}{self.message} at {row_label}{plural} {shown}{more}"

    def as_dict(self, row_base: int = 0) -> dict[str, Any]:
        return {"code": self.code, "column": self.column, "message": self.message,
                "rows": [r + row_base for r in self.rows], "row_count": self.row_count}


@dataclass
class Problems:
    items: list[Problem] = field(default_factory=list)

    def add(self, code: str, message: str, column: str | None = None,
            rows: Iterable[int] | np.ndarray | None = None) -> None:
        rows_list = [int(r) for r in (rows if rows is not None else [])]
        self.items.append(Problem(code, message, column, tuple(rows_list[:MAX_ROWS_LISTED]),
                                  len(rows_list)))

    def __bool__(self) -> bool:
        return bool(self.items)


class RawDataError(ValueError):
    """Raised when raw input fails the spec; ``problems`` lists every finding."""

    def __init__(self, problems: Sequence[Problem], *, row_label: str = "row", row_base: int = 0,
                 context: str = "input"):
        self.problems = list(problems)
        self.row_label = row_label
        self.row_base = row_base
        lines = [f"  - {p.describe(row_label, row_base)}" for p in self.problems]
        super().__init__(f"{context} failed validation ({len(self.problems)} problem(s)):\n" + "\n".join(lines))


# --------------------------------------------------------------------------- helpers

NAT_MICROS = np.iinfo(np.int64).min  # the missing timestamp, as epoch microseconds


def _missing_mask(values: np.ndarray) -> np.ndarray:
    out = np.zeros(len(values), dtype=bool)
    for i, v in enumerate(values):
        if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA or v is pd.NaT:
            out[i] = True
        elif isinstance(v, str) and not v.strip():
            out[i] = True
    return out


def _canonical_float(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr, dtype=np.float64)
    return arr + 0.0  # turns -0.0 into 0.0 so SQL round trips cannot flip a sign


def _parse_numeric(values: np.ndarray, col: ColumnSpec, strict_json: bool
                   ) -> tuple[np.ndarray, list[int], str]:
    """Return float64 values and the rows that could not be parsed."""
    out = np.full(len(values), np.nan, dtype=np.float64)
    bad: list[int] = []
    is_bool = col.type == ColumnType.BOOL
    for i, v in enumerate(values):
        if v is None or v is pd.NA or v is pd.NaT:
            continue
        if isinstance(v, (bool, np.bool_)):
            if is_bool:
                out[i] = 1.0 if v else 0.0
            else:
                bad.append(i)
            continue
        if isinstance(v, str):
            s = v.strip()
            if not s:
                continue
            if strict_json:  # JSON sends numbers as numbers; "1.5" is a client bug
                bad.append(i)
                continue
            if is_bool:
                low = s.lower()
                if low in _TRUE:
                    out[i] = 1.0
                elif low in _FALSE:
                    out[i] = 0.0
                else:
                    bad.append(i)
                continue
            if not is_decimal_text(s):
                if s.lower() != "nan":  # "nan" is a missing value, as pandas writes one
                    bad.append(i)
                continue
            out[i] = float(s)  # beyond the float range: inf, reported as not finite
            continue
        if isinstance(v, (int, float, np.integer, np.floating)):
            if is_bool and strict_json:
                bad.append(i)
                continue
            try:
                f = float(v)
            except OverflowError:  # an integer beyond the float range (JSON allows any number of digits)
                f = math.inf if v > 0 else -math.inf
            if is_bool and not math.isnan(f) and f not in (0.0, 1.0):
                bad.append(i)
                continue
            out[i] = f
            continue
        bad.append(i)
    return out, bad, _number_kind(col)


def _number_kind(col: ColumnSpec) -> str:
    return "true/false" if col.type == ColumnType.BOOL else ("an integer" if col.type == ColumnType.INT else "a number")


def _with_plain(raw: np.ndarray, plain: raw_plain.Plain, parse: Any, *, plain_values: np.ndarray | None = None
                ) -> tuple[np.ndarray, list[int], np.ndarray]:
    """A column's (values, bad rows, missing): its plain cells as :mod:`shared.raw_plain` decided them,
    the rest through ``parse`` (the cell-by-cell rule: sub-array -> (values, bad positions, ...))."""
    rest = np.flatnonzero(~plain.mask)
    source = plain_values if plain_values is not None else plain.values
    assert source is not None
    values = source.copy()
    missing = plain.missing.copy() if plain.missing is not None else np.zeros(len(raw), dtype=bool)
    bad: list[int] = []
    if len(rest):
        sub = raw[rest]
        parsed = parse(sub)
        sub_values, sub_bad = parsed[0], parsed[1]
        values[rest] = sub_values
        missing[rest] = _missing_mask(sub)
        bad = [int(rest[i]) for i in sub_bad]
    return values, bad, missing


def _too_long(values: np.ndarray, max_length: int) -> list[int]:
    return [i for i, v in enumerate(values) if isinstance(v, str) and len(v) > max_length]


def _reserved(values: np.ndarray) -> list[int]:
    return [i for i, v in enumerate(values) if isinstance(v, str) and v == MISSING_CATEGORY]


def _parse_text(values: np.ndarray, strict_json: bool) -> tuple[np.ndarray, list[int]]:
    out = np.empty(len(values), dtype=object)
    bad: list[int] = []
    for i, v in enumerate(values):
        if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
            out[i] = np.nan
        elif isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate such as "\ud800"
                bad.append(i)
                out[i] = np.nan
                continue
            out[i] = v if v.strip() else np.nan
        elif strict_json or isinstance(v, (bool, np.bool_, float, np.floating)) and not float(v).is_integer():
            bad.append(i)
            out[i] = np.nan
        elif isinstance(v, (bool, np.bool_)):
            bad.append(i)
            out[i] = np.nan
        elif isinstance(v, (int, np.integer, float, np.floating)):
            out[i] = str(int(v))  # typed sources (Parquet/SQL) may hold codes as numbers
        else:
            bad.append(i)
            out[i] = np.nan
    return out, bad


def _parse_timestamps(values: np.ndarray) -> tuple[pd.Series, list[int]]:
    micros, bad = _parse_timestamp_micros(values)
    return _timestamp_series(micros), bad


def _timestamp_series(micros: np.ndarray) -> pd.Series:
    return pd.Series(micros.view("datetime64[us]")).dt.tz_localize("UTC")


def _parse_timestamp_micros(values: np.ndarray, naive_rows: list[int] | None = None,
                            aware_rows: list[int] | None = None) -> tuple[np.ndarray, list[int]]:
    """Epoch microseconds (UTC), ``NAT_MICROS`` where missing, and the rows that could not be parsed.

    ``naive_rows`` / ``aware_rows``, if given, collect the rows without and with a UTC offset."""
    micros = np.full(len(values), NAT_MICROS, dtype=np.int64)  # NaT sentinel
    bad: list[int] = []
    for i, v in enumerate(values):
        if v is None or v is pd.NaT or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
            continue
        if isinstance(v, str):
            if not v.strip():
                continue
            v = v.strip()
            if not _ISO_TIMESTAMP.match(v):
                bad.append(i)
                continue
        elif not (isinstance(v, (pd.Timestamp, np.datetime64)) or hasattr(v, "isoformat")):
            bad.append(i)  # epoch numbers are ambiguous (s? ms?): refuse rather than guess
            continue
        try:
            ts = pd.Timestamp(v)
        except (ValueError, TypeError, OverflowError):
            bad.append(i)
            continue
        if ts is pd.NaT:
            continue
        if naive_rows is not None and aware_rows is not None:
            (naive_rows if ts.tzinfo is None else aware_rows).append(i)
        ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
        if not (MIN_TIMESTAMP <= ts < MAX_TIMESTAMP):  # before .value, which overflows far out
            bad.append(i)
            continue
        micros[i] = int(ts.value // 1000)  # Timestamp.value is always in nanoseconds
    return micros, bad


def _as_object_array(series_or_values: Any) -> np.ndarray:
    if isinstance(series_or_values, pd.Series):
        s = series_or_values
        if isinstance(s.dtype, pd.DatetimeTZDtype) or s.dtype.kind == "M":
            return np.array(list(s), dtype=object)
        return s.astype(object).to_numpy()
    return np.asarray(series_or_values, dtype=object)


# --------------------------------------------------------------------------- core

def _normalize_columns(data: Mapping[str, Any], n_rows: int, spec: DatasetSpec, columns: list[str],
                       *, strict_json: bool, problems: Problems, plain_cells: bool = True) -> pd.DataFrame:
    return frame_from_arrays(_normalize_arrays(data, n_rows, spec, columns, strict_json=strict_json,
                                               problems=problems, plain_cells=plain_cells), n_rows, spec)


def frame_from_arrays(arrays: Mapping[str, np.ndarray], n_rows: int, spec: DatasetSpec) -> pd.DataFrame:
    """Normalised column arrays (``_normalize_arrays``) -> the canonical frame."""
    out: dict[str, Any] = {}
    for name, values in arrays.items():
        out[name] = _timestamp_series(values) if spec.columns[name].type == ColumnType.TIMESTAMP \
            and name not in (spec.record_id, spec.entity_key) else values
    frame = pd.DataFrame(out, index=pd.RangeIndex(n_rows))
    key_columns = {spec.record_id, spec.entity_key}
    for name in arrays:
        col = spec.columns[name]
        if col.type.is_text or name in key_columns:
            frame[name] = frame[name].astype(object)
    return frame


def _normalize_arrays(data: Mapping[str, Any], n_rows: int, spec: DatasetSpec, columns: list[str],
                      *, strict_json: bool, problems: Problems, plain_cells: bool = True) -> dict[str, np.ndarray]:
    """Each column's canonical values as a numpy array: numbers float64 (NaN missing), text objects
    (NaN missing), timestamps epoch microseconds UTC (``NAT_MICROS`` missing), keys strings.

    ``plain_cells``: a source's text columns (never JSON records, whose numbers are typed) have their
    plain cells decided a column at a time (:mod:`shared.raw_plain`), the same result as cell by cell."""
    out: dict[str, Any] = {}
    key_columns = {spec.record_id, spec.entity_key}
    for name in columns:
        col = spec.columns[name]
        raw = _as_object_array(data[name])
        arrow = raw_plain.arrow_strings(data[name]) \
            if plain_cells and not strict_json and n_rows >= raw_plain.MIN_ROWS else None
        if col.type.is_numeric:
            if arrow is None:
                missing = _missing_mask(raw)
                values, bad, kind = _parse_numeric(raw, col, strict_json)
            else:
                plain = raw_plain.numeric(arrow, raw, is_bool=col.type == ColumnType.BOOL,
                                          true_words=sorted(_TRUE), false_words=sorted(_FALSE))
                values, bad, missing = _with_plain(raw, plain, partial(_parse_numeric, col=col, strict_json=False))
                kind = _number_kind(col)
            if bad:
                problems.add("invalid_type", f"expected {kind}", name, bad)
            finite_bad = np.flatnonzero(np.isinf(values))
            if len(finite_bad):
                problems.add("not_finite", "infinite values, or numbers beyond the 64-bit float range, are not "
                             "allowed", name, finite_bad)
                values[np.isinf(values)] = np.nan
                bad = bad + [int(i) for i in finite_bad]
            if col.type == ColumnType.INT:
                frac = np.flatnonzero(~np.isnan(values) & (np.floor(values) != values))
                frac = np.setdiff1d(frac, bad)
                if len(frac):
                    problems.add("invalid_type", "expected an integer", name, frac)
            with np.errstate(invalid="ignore"):
                if col.min is not None:
                    low = np.flatnonzero(values < col.min)
                    if len(low):
                        problems.add("out_of_range", f"below the minimum {col.min:g}", name, low)
                if col.max is not None:
                    high = np.flatnonzero(values > col.max)
                    if len(high):
                        problems.add("out_of_range", f"above the maximum {col.max:g}", name, high)
            series: Any = _canonical_float(values)
            missing = missing | np.isnan(series)
        elif col.type.is_text:
            if arrow is None:
                missing = _missing_mask(raw)
                values_t, bad = _parse_text(raw, strict_json)
                too_long = _too_long(values_t, col.max_length)
                reserved = _reserved(values_t) if col.type == ColumnType.CATEGORY else []
            else:
                plain = raw_plain.text(arrow)
                values_t, bad, missing = _with_plain(raw, plain, partial(_parse_text, strict_json=False),
                                                     plain_values=raw)
                rest = np.flatnonzero(~plain.mask)
                too_long = sorted(raw_plain.longer_than(arrow, col.max_length, plain.mask).tolist()
                                  + [int(rest[i]) for i in _too_long(values_t[rest], col.max_length)])
                reserved = sorted(raw_plain.equal_to(arrow, MISSING_CATEGORY, plain.mask).tolist()
                                  + [int(rest[i]) for i in _reserved(values_t[rest])]) \
                    if col.type == ColumnType.CATEGORY else []
            if bad:
                problems.add("invalid_type", "expected a string", name, bad)
            if too_long:
                problems.add("too_long", f"longer than {col.max_length} characters", name, too_long)
            if col.type == ColumnType.CATEGORY:  # the caster's marker for a missing category: never data
                if reserved:
                    problems.add("reserved_value", f"{MISSING_CATEGORY!r} is how a model input marks a missing "
                                 "category, so as data it would mean 'missing': leave the cell empty if it means "
                                 "missing, or give the category another name", name, reserved)
                    bad = bad + reserved
            series = values_t
        else:
            naive: list[int] = []
            aware: list[int] = []
            if arrow is None:
                missing = _missing_mask(raw)
                micros, bad = _parse_timestamp_micros(raw, naive, aware)
            else:
                plain = raw_plain.timestamps(arrow, raw, low=MIN_TIMESTAMP, high=MAX_TIMESTAMP)
                sub_naive: list[int] = []
                sub_aware: list[int] = []
                micros, bad, missing = _with_plain(
                    raw, plain, partial(_parse_timestamp_micros, naive_rows=sub_naive, aware_rows=sub_aware))
                rest = np.flatnonzero(~plain.mask)
                assert plain.aware is not None and plain.missing is not None
                decided = plain.mask & ~plain.missing
                naive = sorted(np.flatnonzero(decided & ~plain.aware).tolist() + [int(rest[i]) for i in sub_naive])
                aware = sorted(np.flatnonzero(plain.aware).tolist() + [int(rest[i]) for i in sub_aware])
            if bad:
                problems.add("invalid_timestamp",
                             f"expected an ISO 8601 timestamp between {MIN_TIMESTAMP.year} and "
                             f"{MAX_TIMESTAMP.year}", name, bad)
            if naive and aware:  # naive ones would silently be read as UTC: the data says otherwise
                rows = naive if len(naive) <= len(aware) else aware
                problems.add("mixed_timezones",
                             f"mixes timestamps with and without a UTC offset ({len(aware)} with, {len(naive)} "
                             f"without); these rows are the {'naive' if rows is naive else 'offset'} ones: give "
                             "every timestamp an offset (e.g. Z), or none", name, rows)
                bad = bad + rows
            series = micros
            missing = missing | (micros == NAT_MICROS)
        if not col.nullable:
            null_rows = np.setdiff1d(np.flatnonzero(missing), np.asarray(bad, dtype=int))
            if len(null_rows):
                problems.add("missing_value", "a value is required", name, null_rows)
        if name in key_columns:
            series = _key_strings(_timestamp_series(series) if col.type == ColumnType.TIMESTAMP else series, col)
        out[name] = series
    return out


def _key_strings(values: Any, col: ColumnSpec) -> np.ndarray:
    arr = np.asarray(values, dtype=object)
    if col.type == ColumnType.INT:
        return np.array([np.nan if (isinstance(v, float) and math.isnan(v)) else str(int(v)) for v in arr],
                        dtype=object)
    return arr


def check_unique(frame: pd.DataFrame, columns: list[str], problems: Problems, what: str) -> None:
    """Report rows whose ``columns`` values repeat (missing keys are reported elsewhere)."""
    dup = frame.duplicated(subset=columns, keep=False) & frame[columns].notna().all(axis=1)
    if dup.any():
        problems.add("duplicate_key", f"duplicate {what}", columns[0], np.flatnonzero(dup.to_numpy()))


def normalize_frame(frame: pd.DataFrame, spec: DatasetSpec, *, require_label: bool = True, plain_cells: bool = True
                    ) -> tuple[pd.DataFrame, Problems, list[str]]:
    """Normalise a source frame (file or SQL rows). Returns (frame, problems, extra columns).

    Extra source columns are reported, not fatal (schema drift that adds a column
    must not break the job); missing ones are problems.
    """
    problems = Problems()
    wanted = [c for c in spec.columns if require_label or c != spec.label]
    present = set(map(str, frame.columns))
    missing = [c for c in wanted if c not in present]
    if missing:
        problems.add("missing_column", "required column is absent from the source: " + ", ".join(missing))
    dupes = sorted({str(c) for c in frame.columns if list(frame.columns).count(c) > 1})
    if dupes:
        problems.add("duplicate_column", "column names appear more than once: " + ", ".join(dupes))
    extra = [str(c) for c in frame.columns if str(c) not in spec.columns]
    if missing or dupes:
        return pd.DataFrame(), problems, extra
    if len(frame) == 0:
        problems.add("empty", "the source has no rows")
        return pd.DataFrame(), problems, extra
    data = {c: frame[c].reset_index(drop=True) for c in wanted}
    out = _normalize_columns(data, len(frame), spec, wanted, strict_json=False, problems=problems,
                             plain_cells=plain_cells)
    return out, problems, extra


def normalize_records(records: Sequence[Any], spec: DatasetSpec) -> tuple[pd.DataFrame, Problems]:
    """Normalise JSON prediction records (strict: numbers must be JSON numbers); see :func:`record_arrays`."""
    arrays, problems = record_arrays(records, spec)
    if problems:
        return pd.DataFrame(), problems
    return frame_from_arrays(arrays, len(records), spec), problems


def record_arrays(records: Sequence[Any], spec: DatasetSpec) -> tuple[dict[str, np.ndarray], Problems]:
    """Normalise JSON prediction records into column arrays (strict: numbers must be JSON numbers).

    Every raw input column is required as a key (``null`` where missing); the
    label may be present and is ignored; any other key is an error, because a
    silently dropped field is a silent disagreement with the client.
    """
    problems = Problems()
    columns = spec.raw_input_columns
    allowed = set(columns) | {spec.label}
    if spec.source.ingestion_time:
        allowed.add(spec.source.ingestion_time)
    data: dict[str, list[Any]] = {c: [None] * len(records) for c in columns}
    not_objects: list[int] = []
    missing_by_col: dict[str, list[int]] = {}
    unknown_by_col: dict[str, list[int]] = {}
    for i, rec in enumerate(records):
        if not isinstance(rec, Mapping):
            not_objects.append(i)
            continue
        for key, value in rec.items():
            if key in data:
                data[key][i] = value
            elif key not in allowed:
                unknown_by_col.setdefault(str(key)[:64], []).append(i)
        for c in columns:
            if c not in rec:
                missing_by_col.setdefault(c, []).append(i)
    if not_objects:
        problems.add("invalid_record", "each record must be a JSON object", None, not_objects)
    for c, rows in missing_by_col.items():
        problems.add("missing_field", "field is absent (send null for a missing value)", c, rows)
    for c, rows in list(unknown_by_col.items())[:20]:
        problems.add("unknown_field", "field is not part of the spec", c, rows)
    if problems:
        return {}, problems
    out = _normalize_arrays(data, len(records), spec, columns, strict_json=True, problems=problems)
    return out, problems
