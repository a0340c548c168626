"""The known-by rule: a row's history holds only events that happened before it *and* were known by then.

Checked against a naive reference on generated event tables with late arrivals, ties and
edits (several versions of one record id, the latest known one kept), on the batch path
(``transform``), the replay path (``transform_with_history(..., "row_time")``), the live
path (``known_at=None``: everything stored is known) and through the whole feature build.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feature_pipeline import featureset
from feature_pipeline.extract import Extracted
from shared.features import compute_online
from shared.spec import load_spec
from shared.transformers import PointInTimeHistory
from tests.unit.shared.test_history import (
    BASE,
    aggregation_lists,
    assert_matches,
    reference,
    same,
    values,
)

PROPERTY = settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def known_reference(queries: list[dict[str, Any]], events: list[dict[str, Any]], agg: dict[str, Any],
                    known_at: list[int] | None) -> list[float]:
    """The reference of ``test_history`` over the events known at each query's ``known_at`` (seconds)."""
    out = []
    for i, q in enumerate(queries):
        pool = events if known_at is None else [e for e in events if e["known"] <= known_at[i]]
        out.extend(reference([q], pool, agg))
    return out


@st.composite
def late_tables(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Events with few distinct times (ties), each known at, or some ticks after, its time (late)."""
    scale = draw(st.sampled_from([1, 3600, 21_600, 86_400]))
    n = draw(st.integers(1, 25))
    rows = []
    for _ in range(n):
        sec = draw(st.integers(0, 10)) * scale
        delay = draw(st.sampled_from([0, 0, 0, 1, scale, 3 * scale, 10 * scale]))  # 0: on time; else late
        rows.append({"who": draw(st.sampled_from(["a", "b", "7"])), "sec": sec, "known": sec + delay,
                     "v": draw(values)})
    return rows


def frame_known(rows: list[dict[str, Any]]) -> pd.DataFrame:
    def ts(secs: list[int]) -> pd.Series:
        return pd.Series(pd.DatetimeIndex([BASE + pd.Timedelta(seconds=s) for s in secs]).astype("datetime64[us, UTC]"))

    return pd.DataFrame({
        "rid": pd.Series([f"r{i}" for i in range(len(rows))], dtype=object),
        "who": pd.Series([r["who"] for r in rows], dtype=object),
        "t": ts([r["sec"] for r in rows]),
        "k": ts([r["known"] for r in rows]),
        "v": np.array([np.nan if r["v"] is None else r["v"] for r in rows], dtype=np.float64),
    })


@PROPERTY
@given(rows=late_tables(), aggs=aggregation_lists())
def test_batch_uses_only_events_known_at_each_rows_time(rows: list[dict[str, Any]],
                                                          aggs: list[dict[str, Any]]) -> None:
    out = PointInTimeHistory("who", "t", aggs, known_time="k").fit_transform(frame_known(rows))
    assert_matches(out, {a["name"]: known_reference(rows, rows, a, [r["sec"] for r in rows]) for a in aggs})


@PROPERTY
@given(rows=late_tables(), aggs=aggregation_lists(), data=st.data())
def test_replay_equals_batch_and_live_sees_everything(rows: list[dict[str, Any]], aggs: list[dict[str, Any]],
                                                       data: st.DataObject) -> None:
    frame = frame_known(rows)
    est = PointInTimeHistory("who", "t", aggs, known_time="k")
    batch = est.fit_transform(frame)
    picked = data.draw(st.lists(st.integers(0, len(rows) - 1), min_size=1, max_size=len(rows), unique=True))
    queries = frame.iloc[picked].reset_index(drop=True)
    events = frame.sample(frac=1.0, random_state=data.draw(st.integers(0, 2**16))).reset_index(drop=True)
    names = [a["name"] for a in aggs]
    replay = est.transform_with_history(queries, events, "row_time")
    pd.testing.assert_frame_equal(replay[names], batch.iloc[picked][names].reset_index(drop=True), check_exact=True)
    live = est.transform_with_history(queries, events, None)
    chosen = [rows[i] for i in picked]
    assert_matches(live, {a["name"]: known_reference(chosen, rows, a, None) for a in aggs})
    # an explicit known-at instant per row: what a server running then had seen
    later = [r["sec"] + 5 * 3600 for r in chosen]
    at = est.transform_with_history(queries, events, [BASE + pd.Timedelta(seconds=s) for s in later])
    assert_matches(at, {a["name"]: known_reference(chosen, rows, a, later) for a in aggs})


def test_the_late_arrival_example() -> None:
    # an event of 03-05 ingested 03-25 is not in the history of a row at 03-10, but is in one at 03-30
    rows = pd.DataFrame({
        "who": ["p", "p", "p"], "v": [100.0, 1.0, 2.0],
        "t": pd.to_datetime(["2025-03-05", "2025-03-10", "2025-03-30"], utc=True).astype("datetime64[us, UTC]"),
        "k": pd.to_datetime(["2025-03-25", "2025-03-10", "2025-03-30"], utc=True).astype("datetime64[us, UTC]"),
    })
    aggs = [{"name": "n", "op": "count"}, {"name": "s", "op": "sum", "input": "v"}]
    known = PointInTimeHistory("who", "t", aggs, known_time="k").fit_transform(rows)
    naive = PointInTimeHistory("who", "t", aggs).fit_transform(rows)
    assert known["n"].tolist() == [0.0, 0.0, 2.0] and known["s"].tolist() == [0.0, 0.0, 101.0]
    assert naive["n"].tolist() == [0.0, 1.0, 2.0]  # event time alone: the 03-10 row would see the future


def test_an_event_known_exactly_at_the_rows_time_counts() -> None:
    rows = frame_known([{"who": "a", "sec": 0, "known": 10, "v": 1.0}, {"who": "a", "sec": 10, "known": 10, "v": 2.0},
                        {"who": "a", "sec": 9, "known": 11, "v": 4.0}])
    out = PointInTimeHistory("who", "t", [{"name": "s", "op": "sum", "input": "v"}], known_time="k").fit_transform(rows)
    assert out["s"].tolist() == [0.0, 1.0, 0.0]


# --------------------------------------------------------------------------- the whole build, with edits

SPEC = """
spec_version: 1
name: known
source: {format: csv, path: x.csv, ingestion_time: k}
record_id: rid
entity_key: who
event_time: t
label: y
columns:
  rid: {type: string, nullable: false}
  who: {type: string, nullable: false}
  t: {type: timestamp, nullable: false}
  k: {type: timestamp, nullable: false}
  v: {type: float}
  y: {type: int, nullable: false, min: 0, max: 1}
features:
  history:
    - {name: n, op: count}
    - {name: n_1d, op: count, window_days: 1}
    - {name: s, op: sum, input: v}
    - {name: hi, op: max, input: v}
    - {name: since, op: days_since_last}
model:
  name: known-model
  estimator: {class: sklearn.linear_model.LogisticRegression}
"""


@st.composite
def edited_sources(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Source rows: records (some late), some edited later (same id, later ingestion, new time/value)."""
    n = draw(st.integers(1, 18))
    rows: list[dict[str, Any]] = []
    for i in range(n):
        sec = draw(st.integers(0, 8)) * 21_600
        known = sec + draw(st.sampled_from([0, 0, 3600, 86_400, 5 * 86_400]))
        rows.append({"rid": f"r{i:02d}", "who": draw(st.sampled_from(["a", "b"])), "sec": sec, "known": known,
                     "v": draw(st.one_of(st.none(), st.sampled_from([0.1, 0.2, 1.0, 1e16, -3.5])))})
        for j in range(draw(st.integers(0, 2))):  # edits of this record
            edit = dict(rows[-1])
            edit["known"] = rows[-1]["known"] + (j + 1) * draw(st.sampled_from([1, 3600, 86_400]))
            edit["sec"] = draw(st.sampled_from([rows[-1]["sec"], draw(st.integers(0, 8)) * 21_600]))
            edit["v"] = draw(st.sampled_from([None, 2.0, 7.0]))
            rows.append(edit)
    return rows


def _iso(sec: int) -> str:
    return (BASE + pd.Timedelta(seconds=sec)).strftime("%Y-%m-%dT%H:%M:%SZ")


@PROPERTY
@given(rows=edited_sources(), cut=st.one_of(st.none(), st.integers(0, 12 * 86_400)), data=st.data())
def test_feature_build_with_edits_equals_the_reference(tmp_path_factory: Any, rows: list[dict[str, Any]],
                                                       cut: int | None, data: st.DataObject) -> None:
    folder: Path = tmp_path_factory.mktemp("known")
    (folder / "spec.yaml").write_text(SPEC)
    loaded = load_spec(folder / "spec.yaml")
    spec = loaded.spec
    source = pd.DataFrame({"rid": [r["rid"] for r in rows], "who": [r["who"] for r in rows],
                           "t": [_iso(r["sec"]) for r in rows], "k": [_iso(r["known"]) for r in rows],
                           "v": ["" if r["v"] is None else repr(r["v"]) for r in rows], "y": ["0"] * len(rows)})
    as_of = None if cut is None else BASE + pd.Timedelta(seconds=cut)
    # the reference: keep rows known at the cutoff, the latest edit per record id, then the known-by rule
    limit = max(r["known"] for r in rows) if cut is None else cut
    alive = {}
    for r in sorted((r for r in rows if r["known"] <= limit and r["sec"] <= limit), key=lambda r: r["known"]):
        alive[r["rid"]] = r
    if not alive:
        return
    try:
        built = featureset.build(loaded, Extracted(source, "mem", "0" * 64, 2, "line"), as_of=as_of)
    except Exception as exc:  # (record id, ingestion time) pairs must be unique: an edit at the same instant
        assert "unique" in str(exc).lower() or "duplicate" in str(exc).lower(), exc
        return
    frame = featureset.rows_frame(built.rows, spec)
    events = sorted(alive.values(), key=lambda r: r["rid"])
    assert frame["rid"].tolist() == [r["rid"] for r in events]
    for h in spec.features.history:
        agg = h.model_dump(mode="json", exclude_none=True)
        want = known_reference(events, events, agg, [r["sec"] for r in events])
        got = frame[h.name].tolist()
        bad = [(events[i]["rid"], g, w) for i, (g, w) in enumerate(zip(got, want, strict=True)) if not same(g, w)]
        assert not bad, f"{h.name}: {bad[:5]}"
    # the replay of any subset of stored rows from the stored rows gives the stored values
    picked = data.draw(st.lists(st.integers(0, len(frame) - 1), min_size=1, max_size=len(frame), unique=True))
    names = [h.name for h in spec.features.history]
    records = frame.iloc[picked].drop(columns=names).reset_index(drop=True)
    replay = compute_online(records, frame, spec, replay=True)
    pd.testing.assert_frame_equal(replay[names], frame.iloc[picked][names].reset_index(drop=True), check_exact=True)
    assert all(not math.isinf(v) for v in frame["since"].dropna())
