"""``shared.certificate.raw_records`` (column-wise) renders exactly what the per-cell rule gives.

It renders parity-certificate records at training and every logged prediction's inputs at
serving, so its output must not depend on how it is computed: the oracle below is the original
row-by-row implementation.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.certificate import _json_scalar, raw_records, raw_records_from_arrays
from shared.raw import normalize_records, record_arrays
from shared.spec import DatasetSpec

SPEC = DatasetSpec.model_validate({
    "name": "t",
    "source": {"format": "csv", "path": "x.csv"},
    "record_id": "rid",
    "entity_key": "who",
    "event_time": "ts",
    "label": "label",
    "columns": {
        "rid": {"type": "string", "nullable": False},
        "who": {"type": "int", "nullable": False},
        "ts": {"type": "timestamp", "nullable": False},
        "seen": {"type": "timestamp"},
        "amount": {"type": "float"},
        "n": {"type": "int"},
        "flag": {"type": "bool"},
        "kind": {"type": "category"},
        "label": {"type": "category", "nullable": False},
    },
    "model": {"name": "m", "estimator": {"class": "sklearn.linear_model.LogisticRegression"}},
})


def oracle(frame: pd.DataFrame, spec: DatasetSpec) -> list[dict[str, Any]]:
    return [{c: _json_scalar(row[c], spec.columns[c].type) for c in spec.raw_input_columns}
            for row in frame.to_dict(orient="records")]


def same(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    if len(a) != len(b):
        return False
    for ra, rb in zip(a, b, strict=True):
        if list(ra) != list(rb):
            return False
        for k in ra:
            x, y = ra[k], rb[k]
            if type(x) is not type(y) or x != y or (isinstance(x, float) and math.copysign(1, x) != math.copysign(1, y)):
                return False
    return True


def test_edge_values_render_like_the_per_cell_rule() -> None:
    utc = pd.DatetimeTZDtype("us", "UTC")
    frame = pd.DataFrame({
        "rid": pd.Series(["a", "b", "c", "d"], dtype=object),
        "who": pd.Series(["1", "22", "12345678901234567", "4"], dtype=object),
        "ts": pd.Series(pd.to_datetime(["1900-01-01T00:00:00Z", "2024-02-29T23:59:59.999999Z",
                                        "2199-12-31T00:00:00.000001Z", "2024-06-01T12:00:00Z"], format="ISO8601"), dtype=utc),
        "seen": pd.Series(pd.to_datetime(["2024-01-01T00:00:00Z", None, "2020-05-05T05:05:05.5Z", None], format="ISO8601"),
                          dtype=utc),
        "amount": [0.1, -0.0, np.nan, 1e308],
        "n": [3.0, np.nan, -7.0, 0.0],
        "flag": [1.0, 0.0, np.nan, 1.0],
        "kind": pd.Series(["x", np.nan, "é", ""], dtype=object),
        "label": pd.Series(["0", "1", "0", "1"], dtype=object),
    })
    got = raw_records(frame, SPEC)
    assert same(got, oracle(frame, SPEC))
    assert got[1]["ts"] == "2024-02-29T23:59:59.999999Z" and got[1]["seen"] is None
    assert got[2]["who"] == 12345678901234567 and got[2]["amount"] is None
    assert math.copysign(1, got[1]["amount"]) == -1.0
    assert raw_records(frame.iloc[:0], SPEC) == []


def test_a_non_utc_or_naive_timestamp_column_renders_like_the_per_cell_rule() -> None:
    frame = pd.DataFrame({"rid": ["a"], "who": ["1"], "amount": [1.0], "n": [1.0], "flag": [0.0],
                          "kind": ["k"], "label": ["0"],
                          "ts": pd.to_datetime(["2024-01-01T10:00:00+02:00"]),
                          "seen": pd.to_datetime(["2024-01-01T10:00:00"])})
    got = raw_records(frame, SPEC)
    assert same(got, oracle(frame, SPEC))
    assert got[0]["ts"] == "2024-01-01T08:00:00.000000Z" and got[0]["seen"] == "2024-01-01T10:00:00.000000Z"


_record = st.fixed_dictionaries({
    "rid": st.text(alphabet="abcXYZ09-", min_size=1, max_size=6),
    "who": st.integers(0, 10**12),
    "ts": st.datetimes(min_value=pd.Timestamp("1900-01-02").to_pydatetime(),
                       max_value=pd.Timestamp("2199-12-30").to_pydatetime()).map(lambda d: d.isoformat() + "Z"),
    "seen": st.none() | st.datetimes(min_value=pd.Timestamp("1901-01-01").to_pydatetime(),
                                     max_value=pd.Timestamp("2198-01-01").to_pydatetime()).map(
        lambda d: d.isoformat() + "Z"),
    "amount": st.none() | st.floats(allow_nan=False, allow_infinity=False, width=64),
    "n": st.none() | st.integers(-(2**40), 2**40),
    "flag": st.none() | st.booleans(),
    "kind": st.none() | st.text(max_size=5),
})


@settings(max_examples=60, deadline=None)
@given(st.lists(_record, min_size=1, max_size=12, unique_by=lambda r: r["rid"]))
def test_normalised_records_render_like_the_per_cell_rule_and_replay(records: list[dict[str, Any]]) -> None:
    frame, problems = normalize_records(records, SPEC)
    assert not problems, problems.items
    got = raw_records(frame, SPEC)
    assert same(got, oracle(frame, SPEC))
    again, problems = normalize_records(got, SPEC)  # what the prediction log replays
    assert not problems
    assert same(raw_records(again, SPEC), got)


@settings(max_examples=60, deadline=None)
@given(st.lists(_record, min_size=1, max_size=12, unique_by=lambda r: r["rid"]))
def test_arrays_render_exactly_like_the_frame(records: list[dict[str, Any]]) -> None:
    """The prediction log renders the numpy online path's arrays without a frame: the same values."""
    frame, problems = normalize_records(records, SPEC)
    arrays, problems2 = record_arrays(records, SPEC)
    assert not problems and not problems2
    assert same(raw_records_from_arrays(arrays, SPEC), raw_records(frame, SPEC))
