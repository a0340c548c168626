"""A source's plain cells decided a column at a time (:mod:`shared.raw_plain`) give exactly what the
cell-by-cell rules give: the same arrays (values, types, missing markers), the same problems, naming the
same rows, in the same order -- on columns mixing plain cells with every kind of awkward one."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest

from shared.raw import normalize_frame
from shared.transformers import MISSING_CATEGORY
from tests.unit.shared.test_raw import SPEC  # every column type, keys, an ingestion time

PLAIN_NUMBERS = ["1", "-2.5", "1e3", ".5", "5.", "+3", "0", "12", "3.0000000000000004", "999.99", "7"]
AWKWARD_NUMBERS = [" 7 ", "7 ", "\t8", "", "  ", "nan", "NaN", "inf", "-inf", "1_000", "\u0661\u0662", "\uff11",
                   "abc", "1e400", "-1e400", "-0", "-0.0", "0x10", "1.5e-400", "\xa0", "\u20039", "2.0", "true",
                   "99999999999999999999", "1e-5", "1001", "-1", "0.5", "1.", "e5", ".", "+ 3", "-\t1", "1 000", "1e 5"]
BOOL_WORDS = ["true", "false", "1", "0", "yes", "no", "y", "n", "t", "f", "True", "FALSE", " true", "2", "1.0",
              "", " ", "maybe", "-0"]
PLAIN_TEXT = ["abc", "north", "a b", "x", "~ok", "!", "12", "Zurich"]
AWKWARD_TEXT = [" abc", "abc ", "", "   ", "\xa0", "\u2003x", "\x1c", "\x1cx", "Z\u00fcrich", "\u00fcn\u00ef",
                MISSING_CATEGORY, "x" * 300, "\u00e9" * 257, "a" * 257, "abcdef", "\u00e9\u00e9\u00e9\u00e9\u00e9",
                "-", "\t", "\n", "a\nb", "\U0001f600", "\u00e9"]
AWARE = ["2023-01-01T10:11:17Z", "2023-01-01T10:11:17.5Z", "2023-01-01T10:11:17.123456789+05:30",
         "2023-06-30T23:59:59-08:00", "1969-12-31T23:59:59.9999995Z", "1900-01-01T00:00:00Z",
         "2199-12-31T23:59:59.999999999Z", "1970-01-01 00:00:00.000001-00:30"]
NAIVE = ["2023-01-01T10:11:17", "2023-01-01 10:11:17", "2023-01-01", "2020-02-29", "1969-12-31T23:59:59.0000001"]
BAD_TIMES = ["2024-02-30T00:00:00Z", "1899-12-31T23:59:59Z", "2200-01-01T00:00:00Z", "0001-01-01", "9999-12-31",
             " 2023-01-01T00:00:00Z", "2023-01-01T10:11Z", "2023-01-01T10:11:17+0530", "2023-01-01T10:11:17+05",
             "now", "", "  ", "2023-13-01", "2023-01-01T25:00:00Z", "2023-01-01T10:11:17.1234567891Z",
             "2023-01-01T10:11:17z", "2023-01-01t10:11:17", "\uff11\uff19\uff19\uff19-01-01", "2023-1-1",
             "2023-01-01T10:11:17+24:00", "1677-09-21T00:12:43.145224192Z"]


def _column(rng: np.random.Generator, n: int, plain: list[str], awkward: list[str], share: float) -> list[Any]:
    """Mostly plain cells with a ``share`` of awkward ones (and a few nulls, as typed frames hold them)."""
    pool_awkward: list[Any] = [*awkward, None, math.nan]
    return [pool_awkward[rng.integers(len(pool_awkward))] if rng.random() < share else plain[rng.integers(len(plain))]
            for _ in range(n)]


def _frame(seed: int, n: int, share: float, *, naive_times: bool) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    times = NAIVE if naive_times else AWARE
    return pd.DataFrame({
        "rid": _column(rng, n, [f"r{i}" for i in range(n)], AWKWARD_TEXT, share),
        "who": _column(rng, n, PLAIN_NUMBERS, AWKWARD_NUMBERS, share),
        "ts": _column(rng, n, times, BAD_TIMES + (AWARE if naive_times else NAIVE), share),
        "ingested": _column(rng, n, times, BAD_TIMES, share),
        "amount": _column(rng, n, PLAIN_NUMBERS, AWKWARD_NUMBERS, share),
        "n": _column(rng, n, PLAIN_NUMBERS, AWKWARD_NUMBERS, share),
        "flag": _column(rng, n, ["true", "false", "1", "0"], BOOL_WORDS, share),
        "kind": _column(rng, n, PLAIN_TEXT, AWKWARD_TEXT, share),
        "note": _column(rng, n, PLAIN_TEXT, AWKWARD_TEXT, share),
        "label": _column(rng, n, ["0", "1"], AWKWARD_NUMBERS, share),
    })


def _same_cells(a: pd.Series, b: pd.Series) -> None:
    assert a.dtype == b.dtype, (a.name, a.dtype, b.dtype)
    if a.dtype == object:
        for i, (x, y) in enumerate(zip(a.tolist(), b.tolist(), strict=True)):
            assert type(x) is type(y), (a.name, i, x, y)
            assert x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y)), (a.name, i, x, y)
    elif a.dtype.kind == "f":
        assert np.array_equal(a.to_numpy().view(np.int64), b.to_numpy().view(np.int64)), a.name  # bit for bit
    else:
        pd.testing.assert_series_equal(a, b)


def _both(frame: pd.DataFrame) -> None:
    fast, fast_problems, fast_extra = normalize_frame(frame, SPEC)
    slow, slow_problems, slow_extra = normalize_frame(frame, SPEC, plain_cells=False)
    assert fast_problems.items == slow_problems.items
    assert fast_extra == slow_extra
    assert list(fast.columns) == list(slow.columns)
    for name in slow.columns:
        _same_cells(fast[name], slow[name])


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("share", [0.0, 0.05, 0.5])
@pytest.mark.parametrize("naive_times", [False, True])
def test_plain_cells_give_what_the_cell_by_cell_rules_give(seed: int, share: float, naive_times: bool) -> None:
    _both(_frame(seed, 600, share, naive_times=naive_times))


@pytest.mark.parametrize("dtype", ["str", "object"])
def test_the_same_on_a_csv_read_as_the_feature_job_reads_it(tmp_path: Any, dtype: str) -> None:
    """As read by ``read_csv(dtype=str)`` (pandas' Arrow-backed text, no nulls) and as plain objects."""
    path = tmp_path / "src.csv"
    frame = _frame(11, 900, 0.2, naive_times=False)
    frame.to_csv(path, index=False)
    read = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[])
    _both(read if dtype == "str" else read.astype(object))


def test_every_awkward_cell_alone_among_plain_ones() -> None:
    """Each awkward cell at a known row of an otherwise plain column: the problem names that row."""
    base = _frame(3, 200, 0.0, naive_times=False)
    for column, cells in [("amount", AWKWARD_NUMBERS), ("n", AWKWARD_NUMBERS), ("flag", BOOL_WORDS),
                          ("kind", AWKWARD_TEXT), ("note", AWKWARD_TEXT), ("ts", BAD_TIMES + NAIVE),
                          ("ingested", BAD_TIMES + NAIVE), ("who", AWKWARD_NUMBERS)]:
        for cell in cells:
            frame = base.copy()
            frame.loc[137, column] = cell
            _both(frame)


def test_decimal_spellings_parse_to_the_same_doubles() -> None:
    """Plain numbers are parsed a column at a time (Arrow's cast) and must be ``float(cell)`` bit for bit:
    shortest spellings of doubles over the whole exponent range, long mantissas, values halfway between
    two doubles, subnormals, and numbers beyond the float range (infinite, then refused as not finite)."""
    rng = np.random.default_rng(17)
    n = 3000
    doubles = rng.normal(size=n) * 10.0 ** rng.integers(-300, 300, size=n)
    spellings = [repr(float(x)) for x in doubles]
    spellings += [f"{x:.25e}" for x in doubles[:300]] + [f"{x:.17g}" for x in doubles[300:600]]
    spellings += [f"{rng.integers(0, 10**6)}.{rng.integers(0, 10**9):09d}" for _ in range(600)]
    spellings += ["2.4703282292062327e-324", "2.4703282292062328e-324", "4.9406564584124654e-324",
                  "2.2250738585072011e-308", "9007199254740993", "1." + "0" * 60 + "1", "0" * 40 + "1.5",
                  "9" * 400, "1e400", "1e-400", "+.5e-3", "-0"]
    frame = _frame(5, len(spellings), 0.0, naive_times=False)
    frame["amount"] = spellings
    fast, fast_problems, _ = normalize_frame(frame, SPEC)
    slow, slow_problems, _ = normalize_frame(frame, SPEC, plain_cells=False)
    assert fast_problems.items == slow_problems.items
    _same_cells(fast["amount"], slow["amount"])
    finite = np.array([float(s) for s in spellings if math.isfinite(float(s))], dtype=np.float64) + 0.0  # -0: 0
    assert np.array_equal(fast["amount"].dropna().to_numpy().view(np.int64), finite.view(np.int64))
    import pyarrow as pa
    import pyarrow.compute as pc

    arrow = pc.cast(pa.array(spellings), pa.float64()).to_numpy(zero_copy_only=False)  # the fast path itself
    assert np.array_equal(arrow.view(np.int64), np.array([float(s) for s in spellings]).view(np.int64))
