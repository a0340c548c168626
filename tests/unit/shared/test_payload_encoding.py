"""Feature payloads are encoded a column at a time (``shared.feature_table.encode_payloads``); the text must
be what encoding each cell with ``_json_value`` and ``json.dumps`` gave, for every kind of column the
feature job stores, and the vectorised timestamps must be ``iso_utc``/``naive_utc`` of each value."""

from __future__ import annotations

import json
from datetime import datetime

import numpy as np
import pandas as pd
import pytest

from shared import feature_table as ft


def _reference(frame: pd.DataFrame, columns: list[str]) -> list[str]:
    """The encoding as it was, cell by cell."""
    cols = {c: frame[c].to_numpy(dtype=object) for c in columns}
    return [json.dumps({c: ft._json_value(cols[c][i]) for c in columns}, sort_keys=True, separators=(",", ":"),
                       ensure_ascii=False, allow_nan=False) for i in range(len(frame))]


def _frame(rng: np.random.Generator, n: int) -> pd.DataFrame:
    f = rng.lognormal(0, 20, size=n) * np.where(rng.random(n) < 0.3, -1, 1)
    f[rng.random(n) < 0.1] = np.nan
    f[rng.random(n) < 0.05] = -0.0
    f[rng.random(n) < 0.05] = 5e-324
    micros = rng.integers(-2_000_000_000_000_000, 7_000_000_000_000_000, size=n)
    ts = pd.Series(pd.to_datetime(micros, unit="us", utc=True)).astype("datetime64[us, UTC]")
    ts[rng.random(n) < 0.1] = pd.NaT
    texts = np.array(["a", "Zürich ✓", "", "x" * 40, None, "1.5"], dtype=object)[rng.integers(0, 6, size=n)]
    mixed = np.array([True, False, None, 3, "t", np.nan, np.float64(2.5), np.int64(4), pd.NA],
                     dtype=object)[rng.integers(0, 9, size=n)]
    return pd.DataFrame({
        "f": f, "f32": np.clip(f, -1e30, 1e30).astype(np.float32), "i": rng.integers(-10**12, 10**12, size=n),
        "ts": ts, "naive": ts.dt.tz_localize(None), "text": texts, "mixed": mixed,
        "label": pd.array(rng.integers(0, 2, size=n), dtype="Int64"),
        "arrow": pd.array(texts, dtype="string[pyarrow]"), "python_str": pd.array(texts, dtype="string[python]"),
        "text_nan": pd.Series(np.array(["a", "b", np.nan], dtype=object)[rng.integers(0, 3, size=n)], dtype=object),
        "np_str": pd.Series(np.array([np.str_("n"), "s", None], dtype=object)[rng.integers(0, 3, size=n)],
                            dtype=object),
    })


@pytest.mark.parametrize("seed", range(8))
def test_payloads_are_the_cell_by_cell_encoding(seed: int) -> None:
    rng = np.random.default_rng(seed)
    frame = _frame(rng, int(rng.integers(0, 400)))
    frame.loc[frame.sample(frac=0.1, random_state=seed).index, "label"] = pd.NA
    columns = sorted(frame.columns)
    assert ft.encode_payloads(frame, columns) == _reference(frame, columns)


def test_blocks_give_the_same_text(monkeypatch: pytest.MonkeyPatch) -> None:
    """Frames longer than a block are encoded a block at a time (bounded memory): the same text."""
    frame = _frame(np.random.default_rng(9), 500)
    columns = sorted(frame.columns)
    monkeypatch.setattr(ft, "PAYLOAD_BLOCK_ROWS", 37)
    assert ft.encode_payloads(frame, columns) == _reference(frame, columns)
    assert ft.encode_payloads(frame.iloc[:0], columns) == []


def test_keys_in_any_order_with_characters_to_escape_and_every_cell_kind() -> None:
    """Columns given unsorted, keys that JSON or ``%`` formatting must escape, cells of every kind a row may
    hold (bools beside ints, big ints, quotes, backslashes, control and non-ASCII characters)."""
    rng = np.random.default_rng(5)
    n = 300
    frame = _frame(rng, n)
    frame["%s 100%"] = np.array([True, False, 10**30, -7, None], dtype=object)[rng.integers(0, 5, size=n)]
    frame['q"uote\\'] = np.array(['say "hi"', "back\\slash", "tab\there", "\x00\x1f", "\u2028", "é"],
                                  dtype=object)[rng.integers(0, 6, size=n)]
    frame["Ünïcode ✓"] = rng.normal(size=n)
    frame["B"] = rng.integers(0, 3, size=n).astype(bool)
    columns = list(frame.columns)
    rng.shuffle(columns)
    assert ft.encode_payloads(frame, columns) == _reference(frame, columns)


def _few_values_frame(rng: np.random.Generator, n: int) -> pd.DataFrame:
    """Columns of a few distinct values each (the path that writes each value's text once), with every
    awkward value those columns may hold, and columns where that path must step aside."""
    from decimal import Decimal

    def pick(values: list[object] | np.ndarray, dtype: object = object) -> np.ndarray:
        return np.array(values, dtype=dtype)[rng.integers(0, len(values), size=n)]

    floats = pick([0.0, -0.0, np.nan, 5e-324, 1e16, 1e-5, 0.1 + 0.2, -3.0, 1.7976931348623157e308], np.float64)
    words = ["a", "Zürich ✓", "", 'say "hi"', "back\\slash", "\x00\x1f", "\u2028", "%s"]
    frame = pd.DataFrame({
        "few": floats, "few32": np.clip(floats, -1e30, 1e30).astype(np.float32),
        "text": pick(words + [None, np.nan, pd.NA, pd.NaT, np.float32("nan")]),
        "arrow": pd.array(pick(words + [None]), dtype="string[pyarrow]"),
        "python_str": pd.array(pick(words + [None]), dtype="string[python]"),
        "np_str": pick([np.str_("n"), "n", "m", None]),  # a str subclass: the same text
        "mixed": pick(["1", 1, True, 1.0, None]),  # not all text: cell by cell
        "dicts": pick([{"a": 1}, [1, 2], "x"]),  # unhashable: cell by cell
        "many": rng.normal(size=n),  # many distinct values: cell by cell
        "many_text": [f"t{i}" for i in rng.integers(0, n, size=n)],
    })
    frame.loc[frame.index[: n // 3], "few"] = floats[0]  # a sample that differs from the rest
    frame["decimal_nan"] = pick(["x", Decimal("NaN")])  # missing to pandas, refused by the encoder
    return frame


@pytest.mark.parametrize("n", [1999, 2000, 5000])
def test_columns_with_few_values_give_the_same_text(n: int) -> None:
    frame = _few_values_frame(np.random.default_rng(n), n)
    columns = sorted(c for c in frame.columns if c != "decimal_nan")
    assert ft.encode_payloads(frame, columns) == _reference(frame, columns)
    few = [c for c in ("few", "few32", "text", "arrow", "python_str", "np_str")
           if ft.few_values_texts(frame[c]) is not None]
    assert few == ([] if n < 2000 else ["few", "few32", "text", "arrow", "python_str", "np_str"])
    assert all(ft.few_values_texts(frame[c]) is None for c in ("mixed", "dicts", "many", "many_text", "decimal_nan"))
    with pytest.raises(TypeError):
        ft.encode_payloads(frame, ["decimal_nan"])


def test_few_values_with_an_infinity_are_refused() -> None:
    frame = pd.DataFrame({"f": [1.0, 2.0] * 1500 + [np.inf]})
    with pytest.raises(ValueError, match="infinite values cannot be stored"):
        ft.encode_payloads(frame, ["f"])


def test_a_cell_the_encoder_cannot_take_fails_as_it_did() -> None:
    from decimal import Decimal

    frame = pd.DataFrame({"a": [1.5, 2.5], "d": np.array([Decimal("1"), "x"], dtype=object)})
    with pytest.raises(TypeError):
        _reference(frame, ["a", "d"])
    with pytest.raises(TypeError):
        ft.encode_payloads(frame, ["a", "d"])


def test_timestamps_are_iso_utc_and_naive_utc_of_each_value() -> None:
    frame = _frame(np.random.default_rng(3), 500)
    for col in ("ts", "naive"):
        want_iso = [None if pd.isna(v) else ft.iso_utc(v) for v in frame[col]]
        want_naive = [None if pd.isna(v) else ft.naive_utc(v) for v in frame[col]]
        assert ft.iso_utc_column(frame[col]) == want_iso
        got = ft.naive_utc_column(frame[col])
        assert got == want_naive and all(v is None or type(v) is datetime for v in got)
    ns = pd.Series(pd.to_datetime(["2024-01-01T00:00:00.123456789Z", "1850-03-04T05:06:07.000000000Z"], utc=True))
    assert ft.iso_utc_column(ns) == [ft.iso_utc(v) for v in ns]  # sub-microsecond: the per-value path
    old = pd.Series(pd.to_datetime(["0999-12-31T23:59:59Z"], utc=True).astype("datetime64[us, UTC]"))
    assert ft.iso_utc_column(old) == [ft.iso_utc(old.iloc[0])]  # outside 1000-9999: the per-value path


def test_an_infinite_value_is_refused_as_before() -> None:
    frame = pd.DataFrame({"f": [1.0, np.inf]})
    with pytest.raises(ValueError, match="infinite values cannot be stored"):
        ft.encode_payloads(frame, ["f"])
