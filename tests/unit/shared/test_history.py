"""PointInTimeHistory against a naive reference, and the online == batch property."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.transformers import PointInTimeHistory

US_PER_DAY = 86_400_000_000
US_PER_S = 1_000_000
BASE = pd.Timestamp("2024-01-01T00:00:00Z")
OPS_WITH_INPUT = ("sum", "mean", "max", "min")
OPS = ("count", *OPS_WITH_INPUT, "days_since_last")
WINDOWS = (None, 0.25, 1.0, 1.5, 3.0)


# --------------------------------------------------------------------------- the reference


def reference(queries: list[dict[str, Any]], events: list[dict[str, Any]], agg: dict[str, Any]) -> list[float]:
    """Plain loops: for each query, the same entity's events with window_start <= time < t."""
    out = []
    window = agg.get("window_days")
    for q in queries:
        t = q["sec"] * US_PER_S
        lo = t - int(round(window * US_PER_DAY)) if window else None
        prior = [e for e in events
                 if str(e["who"]) == str(q["who"]) and e["sec"] * US_PER_S < t
                 and (lo is None or e["sec"] * US_PER_S >= lo)]
        op = agg["op"]
        if op == "count":
            value = float(len(prior))
        elif op == "days_since_last":
            value = (t - max(e["sec"] for e in prior) * US_PER_S) / US_PER_DAY if prior else math.nan
        else:
            vals = [e["v"] for e in prior if e["v"] is not None and not math.isnan(e["v"])]
            if not vals:
                value = 0.0 if op == "sum" else math.nan
            elif op == "sum":
                value = math.fsum(vals)
            elif op == "mean":
                value = math.fsum(vals) / len(vals)
            elif op == "max":
                value = max(vals)
            else:
                value = min(vals)
        out.append(value + 0.0)
    return out


def frame_of(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame({
        "rid": pd.Series([f"r{i}" for i in range(len(rows))], dtype=object),
        "who": pd.Series([r["who"] for r in rows], dtype=object),
        "t": pd.Series(pd.DatetimeIndex([BASE + pd.Timedelta(seconds=r["sec"]) for r in rows])
                       .astype("datetime64[us, UTC]")),
        "v": np.array([np.nan if r["v"] is None else r["v"] for r in rows], dtype=np.float64),
    })


def same(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


def assert_matches(out: pd.DataFrame, expected: dict[str, list[float]]) -> None:
    for name, want in expected.items():
        got = out[name].tolist()
        assert out[name].dtype == np.float64
        bad = [(i, g, w) for i, (g, w) in enumerate(zip(got, want, strict=True)) if not same(g, w)]
        assert not bad, f"{name}: (row, got, expected) {bad[:5]}"


# --------------------------------------------------------------------------- strategies

values = st.one_of(
    st.none(),
    st.just(math.nan),
    st.floats(min_value=-1e9, max_value=1e9, allow_nan=False, allow_infinity=False),
    st.sampled_from([0.1, 0.2, 0.3, -0.0, 0.0, 5e-324, 1e-300, 1e16, -1e16, 1.0]),
)


@st.composite
def event_tables(draw: st.DrawFn) -> list[dict[str, Any]]:
    scale = draw(st.sampled_from([1, 3600, 21_600, 43_200, 86_400]))  # ticks: exact window edges happen
    n = draw(st.integers(1, 25))
    return [{"who": draw(st.sampled_from(["a", "b", "c", "7"])),
             "sec": draw(st.integers(0, 10)) * scale,  # few distinct times: many ties
             "v": draw(values)} for _ in range(n)]


@st.composite
def aggregation_lists(draw: st.DrawFn) -> list[dict[str, Any]]:
    aggs = []
    for i, op in enumerate(draw(st.lists(st.sampled_from(OPS), min_size=1, max_size=6))):
        agg: dict[str, Any] = {"name": f"f{i}", "op": op}
        if op in OPS_WITH_INPUT:
            agg["input"] = "v"
        window = draw(st.sampled_from(WINDOWS))
        if window is not None:
            agg["window_days"] = window
        aggs.append(agg)
    return aggs


# database=None: no .hypothesis/ folder in the repository
PROPERTY = settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------- properties


@PROPERTY
@given(rows=event_tables(), aggs=aggregation_lists())
def test_batch_transform_equals_reference(rows: list[dict[str, Any]], aggs: list[dict[str, Any]]) -> None:
    out = PointInTimeHistory("who", "t", aggs).fit_transform(frame_of(rows))
    assert_matches(out, {a["name"]: reference(rows, rows, a) for a in aggs})


@PROPERTY
@given(rows=event_tables(), aggs=aggregation_lists(), data=st.data())
def test_online_equals_batch_for_rows_in_the_events(rows: list[dict[str, Any]], aggs: list[dict[str, Any]],
                                                     data: st.DataObject) -> None:
    frame = frame_of(rows)
    est = PointInTimeHistory("who", "t", aggs)
    batch = est.fit_transform(frame)
    picked = data.draw(st.lists(st.integers(0, len(rows) - 1), min_size=1, max_size=len(rows), unique=True))
    queries = frame.iloc[picked].reset_index(drop=True)
    # events arrive in any order and carry extra rows; queries are a subset of them
    events = frame.sample(frac=1.0, random_state=data.draw(st.integers(0, 2**16))).reset_index(drop=True)
    online = est.transform_with_history(queries, events)
    names = [a["name"] for a in aggs]
    pd.testing.assert_frame_equal(online[names], batch.iloc[picked][names].reset_index(drop=True),
                                  check_exact=True)


@PROPERTY
@given(rows=event_tables(), aggs=aggregation_lists(), seed=st.integers(0, 2**16))
def test_row_order_does_not_change_a_rows_values(rows: list[dict[str, Any]], aggs: list[dict[str, Any]],
                                                  seed: int) -> None:
    frame = frame_of(rows)
    est = PointInTimeHistory("who", "t", aggs)
    batch = est.fit_transform(frame).set_index("rid")
    shuffled = est.fit_transform(frame.sample(frac=1.0, random_state=seed)).set_index("rid")
    pd.testing.assert_frame_equal(shuffled.loc[batch.index], batch, check_exact=True)


@PROPERTY
@given(rows=event_tables(), aggs=aggregation_lists(), new=event_tables())
def test_queries_never_see_each_other(rows: list[dict[str, Any]], aggs: list[dict[str, Any]],
                                      new: list[dict[str, Any]]) -> None:
    events = frame_of(rows)
    queries = frame_of(new)
    est = PointInTimeHistory("who", "t", aggs).fit(queries)
    together = est.transform_with_history(queries, events)
    assert_matches(together, {a["name"]: reference(new, rows, a) for a in aggs})
    for i in range(len(new)):
        alone = est.transform_with_history(queries.iloc[[i]], events)
        for a in aggs:
            assert same(alone[a["name"]].iloc[0], together[a["name"]].iloc[i])


# --------------------------------------------------------------------------- examples


AGGS = [
    {"name": "n", "op": "count"},
    {"name": "n_1d", "op": "count", "window_days": 1},
    {"name": "s", "op": "sum", "input": "v"},
    {"name": "m", "op": "mean", "input": "v"},
    {"name": "hi", "op": "max", "input": "v"},
    {"name": "lo", "op": "min", "input": "v"},
    {"name": "since", "op": "days_since_last"},
    {"name": "since_1d", "op": "days_since_last", "window_days": 1},
]


def test_events_at_exactly_the_rows_time_are_excluded() -> None:
    rows = [{"who": "a", "sec": 0, "v": 1.0}, {"who": "a", "sec": 100, "v": 2.0},
            {"who": "a", "sec": 100, "v": 4.0}, {"who": "a", "sec": 101, "v": 8.0}]
    out = PointInTimeHistory("who", "t", AGGS).fit_transform(frame_of(rows))
    assert out["n"].tolist() == [0.0, 1.0, 1.0, 3.0]  # the tie at 100 s does not count itself nor its twin
    assert out["s"].tolist() == [0.0, 1.0, 1.0, 7.0]
    assert out["since"].tolist()[1:] == [100 / 86_400, 100 / 86_400, 1 / 86_400]
    assert math.isnan(out["since"].iloc[0]) and math.isnan(out["m"].iloc[0]) and math.isnan(out["hi"].iloc[0])


def test_window_start_is_inclusive_and_days_since_last_respects_the_window() -> None:
    day = 86_400
    rows = [{"who": "a", "sec": 0, "v": 1.0}, {"who": "a", "sec": day, "v": 2.0},
            {"who": "a", "sec": 3 * day, "v": 4.0}]
    out = PointInTimeHistory("who", "t", AGGS).fit_transform(frame_of(rows))
    assert out["n_1d"].tolist() == [0.0, 1.0, 0.0]  # t - 1 day <= time < t: the event a day before counts
    assert out["since"].tolist()[1:] == [1.0, 2.0]
    assert math.isnan(out["since_1d"].iloc[2])  # the latest earlier event is older than the window
    assert out["since_1d"].iloc[1] == 1.0


def test_missing_inputs_are_skipped() -> None:
    rows = [{"who": "a", "sec": 0, "v": None}, {"who": "a", "sec": 1, "v": 3.0},
            {"who": "a", "sec": 2, "v": math.nan}, {"who": "a", "sec": 3, "v": 1.0}]
    out = PointInTimeHistory("who", "t", AGGS).fit_transform(frame_of(rows))
    assert out["n"].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert out["s"].tolist() == [0.0, 0.0, 3.0, 3.0]
    assert math.isnan(out["m"].iloc[1]) and out["m"].iloc[3] == 3.0


def test_sum_is_exact_and_order_independent() -> None:
    rows = [{"who": "a", "sec": s, "v": v} for s, v in enumerate([1e16, 1.0, -1e16, 0.1, 0.2])]
    rows.append({"who": "a", "sec": 99, "v": 0.0})
    out = PointInTimeHistory("who", "t", AGGS).fit_transform(frame_of(rows))
    assert out["s"].iloc[-1] == math.fsum([1e16, 1.0, -1e16, 0.1, 0.2]) == 1.3
    assert sum([1e16, 1.0, -1e16, 0.1, 0.2]) != 1.3  # a naive left-to-right sum loses the 1.0
    reversed_out = PointInTimeHistory("who", "t", AGGS).fit_transform(frame_of(rows[::-1]))
    assert reversed_out["s"].iloc[0] == out["s"].iloc[-1]


def test_new_records_of_one_entity_in_one_call_do_not_count_each_other() -> None:
    events = frame_of([{"who": "a", "sec": 0, "v": 5.0}, {"who": "b", "sec": 0, "v": 7.0}])
    queries = frame_of([{"who": "a", "sec": 10, "v": 1.0}, {"who": "a", "sec": 20, "v": 2.0},
                        {"who": "z", "sec": 30, "v": 3.0}])
    est = PointInTimeHistory("who", "t", AGGS).fit(queries)
    out = est.transform_with_history(queries, events)
    assert out["n"].tolist() == [1.0, 1.0, 0.0]  # the later record does not see the earlier one
    assert out["s"].tolist() == [5.0, 5.0, 0.0]
    assert math.isnan(out["hi"].iloc[2]) and math.isnan(out["since"].iloc[2])  # an entity with no history
    pd.testing.assert_frame_equal(out.drop(columns=[a["name"] for a in AGGS]), queries)


def test_online_ignores_events_at_or_after_the_query_time() -> None:
    events = frame_of([{"who": "a", "sec": 0, "v": 1.0}, {"who": "a", "sec": 10, "v": 2.0},
                       {"who": "a", "sec": 11, "v": 4.0}])
    queries = frame_of([{"who": "a", "sec": 10, "v": 0.0}])
    out = PointInTimeHistory("who", "t", AGGS).fit(queries).transform_with_history(queries, events)
    assert (out["n"].iloc[0], out["s"].iloc[0]) == (1.0, 1.0)


def test_online_with_no_events_at_all() -> None:
    queries = frame_of([{"who": "a", "sec": 10, "v": 1.0}])
    est = PointInTimeHistory("who", "t", AGGS).fit(queries)
    out = est.transform_with_history(queries, queries.iloc[:0])
    assert out["n"].tolist() == [0.0] and out["s"].tolist() == [0.0] and math.isnan(out["since"].iloc[0])


def test_online_events_missing_a_column() -> None:
    queries = frame_of([{"who": "a", "sec": 10, "v": 1.0}])
    est = PointInTimeHistory("who", "t", AGGS).fit(queries)
    with pytest.raises(ValueError, match=r"history events lack columns \['v'"):
        est.transform_with_history(queries, queries.drop(columns="v"))


def test_entity_keys_compare_as_text() -> None:
    # record ids and entity keys are strings after normalisation; stored rows may come back as either
    events = frame_of([{"who": 7, "sec": 0, "v": 1.0}])
    queries = frame_of([{"who": "7", "sec": 5, "v": 1.0}])
    out = PointInTimeHistory("who", "t", AGGS).fit(queries).transform_with_history(queries, events)
    assert out["n"].iloc[0] == 1.0


def test_timezones_do_not_matter() -> None:
    rows = [{"who": "a", "sec": s, "v": 1.0} for s in (0, 3600, 7200)]
    utc = frame_of(rows)
    other = utc.assign(t=utc["t"].dt.tz_convert("Asia/Kolkata"))
    est = PointInTimeHistory("who", "t", AGGS)
    pd.testing.assert_frame_equal(est.fit_transform(other).drop(columns="t"),
                                  est.fit_transform(utc).drop(columns="t"), check_exact=True)


def test_without_entity_and_time_all_rows_are_one_entity_in_row_order() -> None:
    X = pd.DataFrame({"v": [1.0, 2.0, 4.0]})
    out = PointInTimeHistory(aggregations=[{"name": "s", "op": "sum", "input": "v"}]).fit_transform(X)
    assert out["s"].tolist() == [0.0, 1.0, 3.0]
    assert PointInTimeHistory().fit_transform(X)["prior_count"].tolist() == [0.0, 1.0, 2.0]
