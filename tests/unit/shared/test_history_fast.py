"""The all-rows-at-once history aggregates (``shared.history_fast``) against the per-row rules of
``PointInTimeHistory``: bit-equal outputs on generated data -- few or many entities, time ties, windows,
missing values, signed zeros, values whose float sums round differently in every order, huge and
infinite values (left to the per-row rules), late arrivals (known after later rows' times), and the
online path with separate events, with and without known-at times."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from shared.transformers import PointInTimeHistory

AGGS = [
    {"name": "n", "op": "count"},
    {"name": "n_2d", "op": "count", "window_days": 2},
    {"name": "n_halfday", "op": "count", "window_days": 0.5},
    {"name": "s", "op": "sum", "input": "v"},
    {"name": "s_2d", "op": "sum", "input": "v", "window_days": 2},
    {"name": "m", "op": "mean", "input": "v"},
    {"name": "m_2d", "op": "mean", "input": "v", "window_days": 2},
    {"name": "hi", "op": "max", "input": "v"},
    {"name": "lo_2d", "op": "min", "input": "v", "window_days": 2},
    {"name": "since", "op": "days_since_last"},
    {"name": "since_2d", "op": "days_since_last", "window_days": 2},
]
DAY_US = 86_400_000_000


def _frame(rng: np.random.Generator, n: int, entities: int, *, extreme: str | None = None,
           late_share: float = 0.1) -> pd.DataFrame:
    t0 = pd.Timestamp("2024-01-01", tz="UTC")
    micros = rng.integers(0, 6 * DAY_US // 3_600_000_000, size=n) * 3_600_000_000  # hours: many ties
    v = rng.lognormal(3, 2, size=n) * np.where(rng.random(n) < 0.1, -1, 1)
    v[rng.random(n) < 0.05] = np.nan
    v[rng.random(n) < 0.03] = -0.0
    v[rng.random(n) < 0.05] = 0.1  # 0.1 + 0.2 + ... rounds differently in every order
    v[rng.random(n) < 0.05] = 1e16
    if extreme == "huge":
        v[rng.integers(0, n, 3)] = 1.5e308
    elif extreme == "inf":
        v[rng.integers(0, n, 2)] = np.inf
    delay = rng.integers(0, 3_600_000_000, size=n)
    late = rng.random(n) < late_share
    delay[late] = rng.integers(DAY_US, 4 * DAY_US, size=int(late.sum()))  # known days later
    return pd.DataFrame({
        "who": [f"e{int(k)}" for k in rng.integers(0, entities, size=n)],
        "t": t0 + pd.to_timedelta(micros, unit="us"),
        "known": t0 + pd.to_timedelta(micros + delay, unit="us"),
        "v": v,
    })


def _both(h: PointInTimeHistory, run: object) -> tuple[pd.DataFrame, pd.DataFrame]:
    fast = run(h)  # type: ignore[operator]
    slow_h = PointInTimeHistory(**h.get_params())
    slow_h._fast = False
    slow_h.fit(h._fit_frame)  # type: ignore[attr-defined]
    return fast, run(slow_h)  # type: ignore[operator]


def _assert_bit_equal(fast: pd.DataFrame, slow: pd.DataFrame) -> None:
    for a in AGGS:
        x, y = fast[a["name"]].to_numpy(), slow[a["name"]].to_numpy()
        nan_x, nan_y = np.isnan(x), np.isnan(y)
        assert (nan_x == nan_y).all(), (a, np.flatnonzero(nan_x != nan_y)[:5])
        diff = np.flatnonzero(x[~nan_x].view(np.int64) != y[~nan_y].view(np.int64))
        assert len(diff) == 0, (a, x[~nan_x][diff[:5]], y[~nan_y][diff[:5]])


def _history(known: bool) -> PointInTimeHistory:
    h = PointInTimeHistory("who", "t", AGGS, known_time="known" if known else None)
    return h


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("known", [False, True])
def test_the_batch_path_is_bit_equal_to_the_per_row_rules(seed: int, known: bool) -> None:
    rng = np.random.default_rng(seed)
    frame = _frame(rng, n=int(rng.integers(1, 700)), entities=int(rng.choice([1, 3, 40, 400])),
                   late_share=float(rng.choice([0.0, 0.1, 0.6])))
    h = _history(known).fit(frame)
    h._fit_frame = frame  # type: ignore[attr-defined]
    fast, slow = _both(h, lambda est: est.transform(frame))
    _assert_bit_equal(fast, slow)


@pytest.mark.parametrize("extreme", ["huge", "inf"])
def test_huge_and_infinite_values_follow_the_per_row_rules(extreme: str) -> None:
    rng = np.random.default_rng(7)
    frame = _frame(rng, n=300, entities=5, extreme=extreme)
    if extreme == "huge":  # one entity's three events: the third row's history sums past the float range
        t0 = pd.Timestamp("2023-06-01", tz="UTC")
        frame.loc[[0, 1, 2], ["who", "v"]] = [["big", 1.5e308], ["big", 1.5e308], ["big", 1.0]]
        frame.loc[[0, 1, 2], "t"] = [t0, t0 + pd.Timedelta(hours=1), t0 + pd.Timedelta(hours=2)]
        frame.loc[[0, 1, 2], "known"] = frame.loc[[0, 1, 2], "t"]
    h = _history(True).fit(frame)
    h._fit_frame = frame  # type: ignore[attr-defined]
    fast, slow = _both(h, lambda est: est.transform(frame))
    _assert_bit_equal(fast, slow)
    if extreme == "huge":  # some exact sum overflows, and both paths say NaN there
        assert fast["s"].isna().any()


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("known_at", [None, "row_time", "array"])
def test_the_online_path_with_separate_events_is_bit_equal(seed: int, known_at: str | None) -> None:
    rng = np.random.default_rng(100 + seed)
    events = _frame(rng, n=500, entities=30, late_share=0.3)
    records = _frame(rng, n=60, entities=40)  # some entities have no events
    records["t"] = records["t"] + pd.Timedelta(days=1)
    h = _history(True).fit(records)
    h._fit_frame = records  # type: ignore[attr-defined]
    ka: object = known_at
    if known_at == "array":
        ka = records["t"] - pd.to_timedelta(rng.integers(0, 2 * DAY_US, size=len(records)), unit="us")
    fast, slow = _both(h, lambda est: est.transform_with_history(records, events, ka))
    _assert_bit_equal(fast, slow)


def test_an_empty_history_and_a_lone_row() -> None:
    frame = _frame(np.random.default_rng(1), n=1, entities=1)
    h = _history(True).fit(frame)
    h._fit_frame = frame  # type: ignore[attr-defined]
    fast, slow = _both(h, lambda est: est.transform_with_history(frame, frame.iloc[:0], None))
    _assert_bit_equal(fast, slow)
    assert fast["n"].tolist() == [0.0] and fast["s"].tolist() == [0.0] and np.isnan(fast["m"].iloc[0])
