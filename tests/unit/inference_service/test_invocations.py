"""Decoding and validating MLflow scoring-server bodies (no server): formats, errors, and the two
validation paths (per value for small requests, numpy for large ones) agreeing on every input."""

from __future__ import annotations

import io
import json
import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inference_service import invocations as inv
from shared.raw import Problems

SIG = inv.Signature((
    inv.Column("age", numeric=True, nullable=True, is_int=True, min=16, max=110),
    inv.Column("amount", numeric=True, nullable=False, min=0),
    inv.Column("flag", numeric=True, is_bool=True),
    inv.Column("ratio", numeric=True),
    inv.Column("region", numeric=False, nullable=True, max_length=8),
))
ROWS = [[30, 10.5, 1.0, None, "north"], [None, 0.0, None, 2.5, None]]
COLS = SIG.names


def _canon(payload: Any) -> dict[str, np.ndarray]:
    columns, n = inv.json_columns(payload)
    return inv.validate(columns, n, SIG, max_rows=100)


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    for k in COLS:
        x, y = a[k], b[k]
        if x.dtype == object:
            if list(x) != list(y):
                return False
        elif not np.array_equal(x, y, equal_nan=True):
            return False
    return True


def test_every_format_gives_the_same_columns() -> None:
    records = [dict(zip(COLS, r, strict=True)) for r in ROWS]
    split = _canon({"dataframe_split": {"columns": COLS, "data": ROWS}})
    for payload in ({"dataframe_split": {"columns": COLS, "data": ROWS, "index": [7, 8]}},
                    {"dataframe_records": records}, {"instances": records}, {"inputs": records},
                    {"inputs": {c: [r[i] for r in ROWS] for i, c in enumerate(COLS)}},
                    {"instances": {c: [r[i] for r in ROWS] for i, c in enumerate(COLS)}},
                    {"dataframe_split": {"columns": COLS, "data": ROWS}, "params": {}}):
        assert _same(_canon(payload), split), payload
    assert split["age"][0] == 30.0 and math.isnan(split["age"][1]) and split["region"][1] is None
    one = _canon({"inputs": dict(zip(COLS, ROWS[0], strict=True))})  # scalars: one row
    assert one["amount"].tolist() == [10.5]


def test_csv_and_parquet() -> None:
    frame = pd.DataFrame(ROWS, columns=COLS)
    cols, n = inv.csv_columns(frame.to_csv(index=False).encode(), SIG)
    assert _same(inv.validate(cols, n, SIG, max_rows=10), _canon({"dataframe_split": {"columns": COLS, "data": ROWS}}))
    buf = io.BytesIO()
    frame.to_parquet(buf)
    cols, n = inv.parquet_columns(buf.getvalue(), 10)
    assert set(cols) == set(COLS) and n == 2
    with pytest.raises(inv.InvocationError) as err:
        inv.parquet_columns(buf.getvalue(), 1)
    assert err.value.status == 413


@pytest.mark.parametrize(("payload", "needle"), [
    ([1], "Received a list"),
    ({"inputs": {}, "instances": []}, "exactly one of"),
    ({"dataframe_split": {"columns": COLS, "data": ROWS}, "extra": 1}, "exactly one of"),
    ({"dataframe_split": {"columns": COLS, "data": [[1]]}}, "do not have 5 values"),
    ({"dataframe_split": {"columns": COLS + COLS[:1], "data": []}}, "duplicate column"),
    ({"dataframe_records": [{"age": 1}, {"amount": 2}]}, "other fields than record 0"),
    ({"dataframe_split": {"columns": COLS, "data": ROWS}, "params": {"k": 1}}, "takes no params"),
])
def test_format_errors(payload: Any, needle: str) -> None:
    with pytest.raises(inv.InvocationError, match=needle):
        _canon(payload)


def test_value_errors_name_every_column_and_row() -> None:
    bad = [[15, -1.0, 2.0, "x", 7], [30.5, None, True, math.inf, "much too long"]]
    with pytest.raises(inv.InvocationError) as err:
        _canon({"dataframe_split": {"columns": COLS, "data": bad}})
    got = {(p["column"], p["code"]): p["rows"] for p in err.value.problems}
    assert got == {("age", "out_of_range"): [0], ("age", "invalid_type"): [1],
                   ("amount", "out_of_range"): [0], ("amount", "missing_value"): [1],
                   ("flag", "invalid_type"): [0], ("ratio", "invalid_type"): [0], ("ratio", "not_finite"): [1],
                   ("region", "invalid_type"): [0], ("region", "too_long"): [1]}
    assert err.value.error_code == "INVALID_PARAMETER_VALUE" and err.value.status == 400


def test_signature_mismatch_and_limits() -> None:
    with pytest.raises(inv.InvocationError, match="absent.*region"):
        _canon({"dataframe_split": {"columns": COLS[:-1], "data": [r[:-1] for r in ROWS]}})
    with pytest.raises(inv.InvocationError, match="not part of the model's signature: zzz"):
        _canon({"dataframe_records": [{**dict(zip(COLS, ROWS[0], strict=True)), "zzz": 1}]})
    with pytest.raises(inv.InvocationError, match="no rows"):
        _canon({"dataframe_split": {"columns": COLS, "data": []}})
    columns, n = inv.json_columns({"dataframe_split": {"columns": COLS, "data": ROWS * 3}})
    with pytest.raises(inv.InvocationError) as err:
        inv.validate(columns, n, SIG, max_rows=5)
    assert err.value.status == 413


def test_json_decoding() -> None:
    assert math.isnan(inv.decode_json(b'{"a": NaN}')["a"])  # MLflow's client writes NaN for missing
    for raw, needle in ((b'{"a": Infinity}', "Infinity"), (b'{"a": 1, "a": 2}', "duplicate key"),
                        (b"[" * 100_000, "nested too deeply|malformed"), (b"", "empty"), (b"\xff", "UTF-8"),
                        (b"\xef\xbb\xbf{}", "byte-order mark")):
        with pytest.raises(inv.InvocationError, match=needle):
            inv.decode_json(raw)
    assert inv.check_content_type("application/json; charset=utf-8") == "application/json"
    for ctype in (None, "text/plain", "application/json; charset=latin-1", "application/json; q=1"):
        with pytest.raises(inv.InvocationError) as err:
            inv.check_content_type(ctype)
        assert err.value.status == 415


_values = st.one_of(st.none(), st.just(math.nan), st.just(math.inf), st.just(-math.inf),
                    st.integers(-200, 200), st.integers(-10**30, 10**30), st.integers(10**308, 10**309),
                    st.floats(allow_nan=False, allow_infinity=False, width=64), st.sampled_from([0.0, -0.0, 1.0, 16.0, 110.0]))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(_values, min_size=inv.VECTOR_MIN_ROWS, max_size=40), st.sampled_from(SIG.columns[:4]))
def test_vector_and_per_value_validation_agree(values: list[Any], col: inv.Column) -> None:
    a, b = Problems(), Problems()
    fast = inv._numeric(col, values, a)  # numpy path (all plain numbers), or the fallback on overflow
    ref = _per_value(col, values, b)
    assert np.array_equal(fast, ref, equal_nan=True)
    assert sorted((p.code, p.rows, p.row_count) for p in a.items) == sorted((p.code, p.rows, p.row_count) for p in b.items)


def _per_value(col: inv.Column, values: list[Any], problems: Problems) -> np.ndarray:
    """The per-value path on the same values (forced by raising the row threshold)."""
    saved = inv.VECTOR_MIN_ROWS
    inv.VECTOR_MIN_ROWS = 10**9
    try:
        return inv._numeric(col, values, problems)
    finally:
        inv.VECTOR_MIN_ROWS = saved


def test_json_columns_roundtrip_numbers_exactly() -> None:
    vals = [0.1, 1e-300, 5e-324, 123456789.123456789, -0.0]
    payload = json.loads(json.dumps({"inputs": {"ratio": vals}}))
    cols, n = inv.json_columns(payload)
    assert n == 5 and cols["ratio"] == vals
