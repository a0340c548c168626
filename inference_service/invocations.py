"""MLflow scoring-server input formats -> validated model-input columns.

``POST /invocations`` takes what ``mlflow models serve`` takes for the same
registered model: the model's signature columns (the feature-table columns the
pipeline consumes), as JSON ``dataframe_split``, ``dataframe_records``,
``inputs`` or ``instances``, as CSV with a header row, or as Parquet.

Where MLflow guesses, this module refuses with a 400 that names every bad
column and row (docs/serving.md lists each deliberate difference):

* an unknown top-level key, a second format key, or non-empty ``params``;
* a column the signature does not have, or one it has but the request lacks
  (send ``null`` for a missing value);
* a string, boolean or object in a numeric column (booleans are accepted only
  where the spec declares the column ``bool``), a number in a text column;
* ``Infinity``/``-Infinity``/overflowing numbers, values outside the spec's
  bounds, fractions in integer columns, missing values in columns the spec
  declares non-nullable, text longer than the spec's ``max_length``.

``NaN`` (which MLflow's own Python client writes for a missing value in a
DataFrame) is accepted as a missing value, exactly like ``null``.

Output: ``{name: ndarray}`` with numeric columns as float64 (NaN for missing)
and text columns as object arrays (``None`` for missing), in the signature's
order -- the canonical input of :mod:`inference_service.scoring`.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inference_service import json_stream
from shared.raw import Problems, is_decimal_text
from shared.spec import ColumnType, DatasetSpec

FORMATS = ("dataframe_split", "dataframe_records", "inputs", "instances")
CONTENT_TYPES = ("application/json", "text/csv", "application/vnd.apache.parquet")
# pandas.read_csv's default missing-value strings: MLflow parses CSV with them, so fti does too.
CSV_NA = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
                    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"})


class InvocationError(ValueError):
    """A request fti will not score; ``status`` and MLflow's ``error_code`` go into the response."""

    def __init__(self, message: str, *, status: int = 400, error_code: str = "BAD_REQUEST",
                 problems: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.problems = problems


@dataclass(frozen=True)
class Column:
    name: str
    numeric: bool
    nullable: bool = True
    is_int: bool = False
    is_bool: bool = False
    min: float | None = None
    max: float | None = None
    max_length: int | None = None


@dataclass(frozen=True)
class Signature:
    """The model's input columns with the spec's constraints, in order."""

    columns: tuple[Column, ...]
    names: list[str] = field(init=False)
    name_set: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", [c.name for c in self.columns])
        object.__setattr__(self, "name_set", frozenset(self.names))

    @classmethod
    def from_spec(cls, spec: DatasetSpec) -> Signature:
        cols = []
        for name in spec.model_features:
            col = spec.columns.get(name)
            numeric = spec.feature_kind(name) == "numeric"
            if col is None:  # derived and history features: numeric, may be missing, no bounds
                cols.append(Column(name, numeric=True))
                continue
            cols.append(Column(name, numeric=numeric, nullable=col.nullable, is_int=col.type == ColumnType.INT,
                               is_bool=col.type == ColumnType.BOOL, min=col.min, max=col.max,
                               max_length=None if numeric else col.max_length))
        return cls(tuple(cols))


# ---------------------------------------------------------------------- body -> raw columns


def check_content_type(content_type: str | None) -> str:
    """The media type, or a 415 like MLflow's (charset other than UTF-8, unknown parameters, other types)."""
    if not content_type:
        raise InvocationError("Content-Type header is missing; send one of: " + ", ".join(CONTENT_TYPES),
                              status=415)
    parts = [p.strip() for p in content_type.split(";")]
    mime = parts[0].lower()
    for param in parts[1:]:
        key, _, value = param.partition("=")
        if key.strip().lower() != "charset":
            raise InvocationError(f"unsupported Content-Type parameter {key.strip()[:40]!r}", status=415)
        if value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise InvocationError("The scoring server only supports UTF-8", status=415)
    if mime not in CONTENT_TYPES:
        raise InvocationError(f"unsupported Content-Type {mime[:60]!r}; this server accepts "
                              + ", ".join(CONTENT_TYPES), status=415)
    return mime


def _nan_constant(token: str) -> float:
    if token == "NaN":
        return math.nan  # MLflow's Python client writes NaN for a missing value: read it as missing
    raise InvocationError(f"{token} is not a valid value; send null for a missing value",
                          error_code="INVALID_PARAMETER_VALUE")


def _bounded_int(text: str) -> int | float:
    """Python refuses ints beyond 4,300 digits; no float holds 310+: an infinity, refused by validation
    naming the column and row."""
    if len(text) > 400:
        return -math.inf if text.startswith("-") else math.inf
    return int(text)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise InvocationError(f"duplicate key {dup[:64]!r} in one JSON object")
    return out


def _duplicate(key: str) -> InvocationError:
    return InvocationError(f"duplicate key {key[:64]!r} in one JSON object")


def decode_json(raw: bytes, max_rows: int | None = None) -> Any:
    """The JSON body; above 64 KiB parsed a row at a time (``json_stream``), refused (413) at the first row
    past ``max_rows``."""
    if not raw.strip():
        raise InvocationError("the request body is empty; send a JSON object with one of: " + ", ".join(FORMATS))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvocationError(f"the body is not valid UTF-8 (byte {exc.start})") from None
    if text.startswith("\ufeff"):
        raise InvocationError("the body starts with a byte-order mark; send plain UTF-8")
    decoder = json.JSONDecoder(parse_constant=_nan_constant, parse_int=_bounded_int, object_pairs_hook=_no_duplicates)
    try:
        if len(raw) <= 64 * 1024 or max_rows is None:
            return decoder.decode(text)
        return json_stream.loads(text, decoder, max_items=max_rows, duplicate=_duplicate)
    except InvocationError:
        raise
    except json_stream.TooManyItems as exc:
        raise InvocationError(f"more than {exc.limit} rows; the limit is {exc.limit} per request "
                              "(FTI_MAX_INVOCATION_ROWS)", status=413) from None
    except json.JSONDecodeError as exc:
        raise InvocationError(f"malformed JSON: {exc.msg} at position {exc.pos}") from None
    except RecursionError:
        raise InvocationError("malformed JSON: nested too deeply") from None


def json_columns(payload: Any) -> tuple[dict[str, list[Any]], int]:
    """One of MLflow's four JSON layouts -> ``{column: values}`` (names as the client sent them)."""
    if not isinstance(payload, dict):
        kind = "a list" if isinstance(payload, list) else type(payload).__name__
        raise InvocationError(f"The input must be a JSON dictionary with exactly one of the input fields "
                              f"{set(FORMATS)}. Received {kind}.")
    keys = [k for k in payload if k in FORMATS]
    unknown = [k for k in payload if k not in FORMATS and k != "params"]
    if len(keys) != 1 or unknown:
        raise InvocationError(f"The input must be a JSON dictionary with exactly one of the input fields "
                              f"{set(FORMATS)}. Received dictionary with input fields: {list(payload)[:10]}.")
    params = payload.get("params")
    if params not in (None, {}):
        raise InvocationError("this model takes no params; remove \"params\" (MLflow would ignore them)",
                              error_code="INVALID_PARAMETER_VALUE")
    key = keys[0]
    data = payload[key]
    if key == "dataframe_split":
        return _split(data)
    if key == "dataframe_records":
        if not isinstance(data, list):
            raise InvocationError("Dataframe records format must be a list of records.")
        return _records(data, key)
    if isinstance(data, list):  # instances (and inputs) as a list of records
        if data and all(isinstance(r, dict) for r in data):
            return _records(data, key)
        if key == "instances" or data:
            raise InvocationError(f'"{key}" must be a list of records (objects) or an object of columns; '
                                  "this model takes named columns, not a tensor")
    if isinstance(data, dict):  # inputs (and instances) as columns
        return _column_dict(data, key)
    raise InvocationError(f'"{key}" must be an object of columns or a list of records')


def _split(data: Any) -> tuple[dict[str, list[Any]], int]:
    if not isinstance(data, dict):
        raise InvocationError("Dataframe split format must be a dictionary.")
    extra = set(data) - {"columns", "data", "index"}
    if "data" not in data or extra:
        raise InvocationError(f"Dataframe split format must have 'data' field and optionally 'columns' and "
                              f"'index' fields. Got {sorted(data)[:10]}.")
    columns, rows = data.get("columns"), data["data"]
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise InvocationError('"dataframe_split" needs "columns": a list of column names')
    if len(set(columns)) != len(columns):
        dupes = sorted({c for c in columns if columns.count(c) > 1})
        raise InvocationError(f"duplicate column names: {dupes[:10]}")
    if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
        raise InvocationError('"dataframe_split" needs "data": a list of rows, each a list of values')
    width = len(columns)
    ragged = [i for i, r in enumerate(rows) if len(r) != width]
    if ragged:
        raise InvocationError(f"{len(ragged)} row(s) do not have {width} values (one per column): rows "
                              f"{ragged[:10]}", error_code="INVALID_PARAMETER_VALUE")
    index = data.get("index")
    if index is not None and (not isinstance(index, list) or len(index) != len(rows)):
        raise InvocationError('"index" must be a list with one entry per row')
    if not rows:
        return {c: [] for c in columns}, 0
    return {c: list(v) for c, v in zip(columns, zip(*rows, strict=True), strict=True)}, len(rows)


def _records(records: list[Any], key: str) -> tuple[dict[str, list[Any]], int]:
    if not records:
        return {}, 0
    bad = [i for i, r in enumerate(records) if not isinstance(r, dict)]
    if bad:
        raise InvocationError(f'each entry of "{key}" must be a JSON object (record); rows {bad[:10]} are not')
    first = list(records[0])
    shape = set(first)
    odd = [i for i, r in enumerate(records) if set(r) != shape]
    if odd:
        r = records[odd[0]]
        missing, extra = sorted(shape - set(r)), sorted(set(r) - shape)
        raise InvocationError(f"record {odd[0]} has other fields than record 0 (missing {missing[:5]}, extra "
                              f"{extra[:5]}); every record needs every column (null for a missing value)",
                              error_code="INVALID_PARAMETER_VALUE")
    return {c: [r[c] for r in records] for c in first}, len(records)


def _column_dict(data: dict[str, Any], key: str) -> tuple[dict[str, list[Any]], int]:
    if not data:
        return {}, 0
    lists = [isinstance(v, list) for v in data.values()]
    if not any(lists):  # one row given as scalars
        return {c: [v] for c, v in data.items()}, 1
    if not all(lists):
        raise InvocationError(f'"{key}": every column must be a list of values (or every value a scalar for one row)')
    lengths = {len(v) for v in data.values()}
    if len(lengths) != 1:
        raise InvocationError(f'"{key}": columns have different lengths {sorted(lengths)[:5]}',
                              error_code="INVALID_PARAMETER_VALUE")
    return {c: list(v) for c, v in data.items()}, lengths.pop()


def csv_columns(raw: bytes, signature: Signature) -> tuple[dict[str, list[Any]], int]:
    """CSV with a header row; cells in pandas.read_csv's missing-value set are missing."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvocationError(f"the CSV body is not valid UTF-8 (byte {exc.start})") from None
    text = text.removeprefix("\ufeff")
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    except csv.Error as exc:
        raise InvocationError(f"malformed CSV: {exc}") from None
    rows = [r for r in rows if r]  # blank lines, as pandas skips them
    if not rows:
        raise InvocationError("the CSV body is empty; send a header row and at least one data row")
    header, body = rows[0], rows[1:]
    if len(set(header)) != len(header):
        raise InvocationError(f"duplicate column names in the CSV header: {sorted({c for c in header if header.count(c) > 1})[:10]}")
    ragged = [i for i, r in enumerate(body) if len(r) != len(header)]
    if ragged:
        raise InvocationError(f"{len(ragged)} CSV row(s) do not have {len(header)} fields: rows {ragged[:10]}",
                              error_code="INVALID_PARAMETER_VALUE")
    kinds = {c.name: c for c in signature.columns}
    out: dict[str, list[Any]] = {}
    bad: dict[str, list[int]] = {}
    for j, name in enumerate(header):
        col = kinds.get(name)
        values: list[Any] = []
        for i, row in enumerate(body):
            cell = row[j]
            if cell in CSV_NA:
                values.append(None)
            elif col is not None and col.numeric:
                if col.is_bool and cell.lower() in ("true", "false"):
                    values.append(cell.lower() == "true")
                elif is_decimal_text(cell.strip()):  # ASCII digits only (float() takes "1_000", "１０")
                    values.append(float(cell))
                else:
                    bad.setdefault(name, []).append(i)
                    values.append(None)
            else:
                values.append(cell)
        out[name] = values
    if bad:
        problems = [{"code": "invalid_type", "column": c, "message": "expected a number", "rows": rows_[:10],
                     "row_count": len(rows_)} for c, rows_ in bad.items()]
        raise InvocationError(_summary(problems), error_code="INVALID_PARAMETER_VALUE", problems=problems)
    return out, len(body)


MAX_PARQUET_DECODED_BYTES = 64 * 1024 * 1024


def _pylist(column: Any) -> list[Any]:
    """A column as Python values; a dictionary-encoded one maps indices onto one list of its distinct
    values, so a value repeated in every row exists once (a 13 KB file cannot become 200 MB of copies)."""
    import pyarrow as pa

    if not pa.types.is_dictionary(column.type):
        return column.to_pylist()
    out: list[Any] = []
    for chunk in column.chunks:
        values = chunk.dictionary.to_pylist()
        out.extend(None if i is None else values[i] for i in chunk.indices.to_pylist())
    return out


def parquet_columns(raw: bytes, max_rows: int, max_decoded_bytes: int = MAX_PARQUET_DECODED_BYTES
                    ) -> tuple[dict[str, list[Any]], int]:
    """Rows and decompressed size are checked from the file's metadata before any page is read; text
    columns stay dictionary-encoded while read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(io.BytesIO(raw))
        meta = pf.metadata
        n = meta.num_rows
        if n > max_rows:
            raise InvocationError(f"{n} rows; the limit is {max_rows} (FTI_MAX_INVOCATION_ROWS)", status=413)
        unpacked = sum(meta.row_group(g).total_byte_size for g in range(meta.num_row_groups))
        if unpacked > max_decoded_bytes:
            raise InvocationError(f"the Parquet file decompresses to {unpacked:,} bytes; the limit is "
                                  f"{max_decoded_bytes:,}", status=413)
        text = [f.name for f in pf.schema_arrow
                if pa.types.is_string(f.type) or pa.types.is_large_string(f.type) or pa.types.is_binary(f.type)]
        table = pq.ParquetFile(io.BytesIO(raw), read_dictionary=text).read()
    except InvocationError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parse failure is the client's file
        raise InvocationError(f"the body is not a readable Parquet file: {type(exc).__name__}") from None
    meta_pd = table.schema.pandas_metadata or {}
    index_cols = {c for c in meta_pd.get("index_columns", []) if isinstance(c, str)}
    return {name: _pylist(table.column(name)) for name in table.column_names if name not in index_cols}, n


# ---------------------------------------------------------------------- raw columns -> canonical


def validate(columns: dict[str, list[Any]], n: int, signature: Signature, *, max_rows: int) -> dict[str, np.ndarray]:
    """Check every value against the signature; return canonical columns in signature order."""
    if n == 0:
        raise InvocationError("the request has no rows; send at least one", error_code="INVALID_PARAMETER_VALUE")
    if n > max_rows:
        raise InvocationError(f"{n} rows; the limit is {max_rows} per request (FTI_MAX_INVOCATION_ROWS)",
                              status=413)
    problems = Problems()
    missing = [c for c in signature.names if c not in columns]
    extra = [c for c in columns if c not in signature.name_set]
    if missing:
        problems.add("missing_column", "column is absent (send null for a missing value): " + ", ".join(missing[:20]))
    if extra:
        problems.add("unknown_column", "columns are not part of the model's signature: "
                     + ", ".join(str(c)[:64] for c in extra[:20]))
    if problems:
        raise _problems(problems)
    out: dict[str, np.ndarray] = {}
    for col in signature.columns:
        values = columns[col.name]
        out[col.name] = _numeric(col, values, problems) if col.numeric else _text(col, values, problems)
    if problems:
        raise _problems(problems)
    return out


_PLAIN_NUMBERS = frozenset({float, int, type(None)})
VECTOR_MIN_ROWS = 16


def _numeric(col: Column, values: list[Any], problems: Problems) -> np.ndarray:
    """One pass in plain Python: for the one-row requests that dominate serving, a handful of
    comparisons per value is far cheaper than a dozen numpy calls per column. Columns of many
    rows holding only JSON numbers and nulls (the usual batch) are checked with numpy instead."""
    if len(values) >= VECTOR_MIN_ROWS and set(map(type, values)) <= _PLAIN_NUMBERS:
        try:
            return _numeric_vector(col, np.array(values, dtype=np.float64), problems)
        except OverflowError:  # an int beyond float64: the per-value pass names it
            pass
    out: list[float] = []
    bad: list[int] = []
    inf: list[int] = []
    frac: list[int] = []
    low: list[int] = []
    high: list[int] = []
    null: list[int] = []
    lo, hi, is_int, is_bool = col.min, col.max, col.is_int, col.is_bool
    nan = math.nan
    for i, v in enumerate(values):
        t = type(v)
        if t is float:
            if v != v:  # NaN: missing
                null.append(i)
                out.append(nan)
                continue
            if v == math.inf or v == -math.inf:
                inf.append(i)
                out.append(nan)
                continue
            f = v
        elif t is int:
            try:
                f = float(v)
            except OverflowError:
                inf.append(i)
                out.append(nan)
                continue
        elif v is None:
            null.append(i)
            out.append(nan)
            continue
        elif t is bool and is_bool:
            f = 1.0 if v else 0.0
        else:
            bad.append(i)
            out.append(nan)
            continue
        if is_int and not f.is_integer():
            frac.append(i)
        elif is_bool and f != 0.0 and f != 1.0:
            bad.append(i)
        if lo is not None and f < lo:
            low.append(i)
        elif hi is not None and f > hi:
            high.append(i)
        out.append(f)
    if bad:
        problems.add("invalid_type", "expected true/false (or 1/0)" if is_bool else "expected a number", col.name,
                     bad)
    if inf:
        problems.add("not_finite", "infinite or overflowing numbers are not allowed", col.name, inf)
    if frac:
        problems.add("invalid_type", "expected an integer", col.name, frac)
    if low:
        problems.add("out_of_range", f"below the minimum {lo:g}", col.name, low)
    if high:
        problems.add("out_of_range", f"above the maximum {hi:g}", col.name, high)
    if null and not col.nullable:
        problems.add("missing_value", "a value is required", col.name, null)
    return np.array(out, dtype=np.float64)


def _numeric_vector(col: Column, arr: np.ndarray, problems: Problems) -> np.ndarray:
    """``_numeric`` for a column of JSON numbers and nulls (``None`` and NaN became NaN): same checks."""
    missing = np.isnan(arr)
    inf = np.isinf(arr)
    if inf.any():
        problems.add("not_finite", "infinite or overflowing numbers are not allowed", col.name, np.flatnonzero(inf))
        arr = np.where(inf, np.nan, arr)
    present = ~missing & ~inf
    if col.is_int:
        frac = np.flatnonzero(present & (np.floor(arr) != arr))
        if len(frac):
            problems.add("invalid_type", "expected an integer", col.name, frac)
    if col.is_bool:
        bad = np.flatnonzero(present & (arr != 0.0) & (arr != 1.0))
        if len(bad):
            problems.add("invalid_type", "expected true/false (or 1/0)", col.name, bad)
    if col.min is not None:
        low = np.flatnonzero(present & (arr < col.min))
        if len(low):
            problems.add("out_of_range", f"below the minimum {col.min:g}", col.name, low)
    if col.max is not None:
        high = np.flatnonzero(present & ~(arr < col.min if col.min is not None else False) & (arr > col.max))
        if len(high):
            problems.add("out_of_range", f"above the maximum {col.max:g}", col.name, high)
    if not col.nullable and missing.any():
        problems.add("missing_value", "a value is required", col.name, np.flatnonzero(missing))
    return arr


def _text(col: Column, values: list[Any], problems: Problems) -> np.ndarray:
    arr = np.empty(len(values), dtype=object)
    bad: list[int] = []
    surrogate: list[int] = []
    too_long: list[int] = []
    null: list[int] = []
    for i, v in enumerate(values):
        if type(v) is str:
            if not v.isascii():
                try:
                    v.encode("utf-8")
                except UnicodeEncodeError:  # a lone surrogate such as "\ud800"
                    surrogate.append(i)
            if col.max_length is not None and len(v) > col.max_length:
                too_long.append(i)
            if not v.strip():
                null.append(i)
            arr[i] = v
        elif v is None or (type(v) is float and v != v):
            arr[i] = None
            null.append(i)
        else:
            bad.append(i)
            arr[i] = None
    if bad:
        problems.add("invalid_type", "expected a string (or null)", col.name, bad)
    if surrogate:
        problems.add("invalid_text", "not valid Unicode (lone surrogate)", col.name, surrogate)
    if too_long:
        problems.add("too_long", f"longer than {col.max_length} characters", col.name, too_long)
    if not col.nullable and null:
        problems.add("missing_value", "a value is required", col.name, null)
    return arr


def _summary(problems: list[dict[str, Any]]) -> str:
    first = problems[0]
    where = f"column {first['column']!r}: " if first.get("column") else ""
    rows = first.get("rows") or []
    at = f" at row(s) {rows[:5]}" if rows else ""
    more = f" (and {len(problems) - 1} more problem(s), listed in \"problems\")" if len(problems) > 1 else ""
    return f"Failed to enforce schema of data: {where}{first['message']}{at}{more}"


def _problems(problems: Problems) -> InvocationError:
    items = [p.as_dict() for p in problems.items]
    return InvocationError(_summary(items), error_code="INVALID_PARAMETER_VALUE", problems=items)
