"""The feature-table contract: canonical payloads, checksums, typed decoding, schema on SQLite."""

from __future__ import annotations

import json
import math
import struct
from collections import namedtuple
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import insert, inspect, text
from sqlalchemy.engine import Engine

from shared import feature_table as ft
from shared.db import make_engine, redact
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
    "features": {"derived": [{"name": "log_amount", "op": "log1p", "inputs": ["amount"]}],
                 "history": [{"name": "prior", "op": "count"}]},
    "model": {"name": "m", "estimator": {"class": "sklearn.linear_model.LogisticRegression"}},
})
Row = namedtuple("Row", "record_id entity_key event_time payload")
TS_DTYPE = pd.DatetimeTZDtype("us", "UTC")


def bits(x: float) -> int:
    return struct.unpack("<q", struct.pack("<d", x))[0]


# --------------------------------------------------------------------------- encoding


def test_payload_is_canonical_json() -> None:
    frame = pd.DataFrame({"b": [1.5], "a": pd.Series(["é"], dtype=object), "c": [np.nan],
                          "d": pd.Series([None], dtype=object), "e": [np.int64(3)]})
    (payload,) = ft.encode_payloads(frame, ["b", "a", "c", "d", "e"])
    assert payload == '{"a":"é","b":1.5,"c":null,"d":null,"e":3}'  # sorted keys, no spaces, UTF-8, null


@pytest.mark.parametrize("value", [math.inf, -math.inf])
def test_infinity_cannot_be_stored(value: float) -> None:
    with pytest.raises(ValueError, match="infinite values cannot be stored in the feature table"):
        ft.encode_payloads(pd.DataFrame({"x": [1.0, value]}), ["x"])


FLOATS = [0.1 + 0.2, 0.1, 1 / 3, 5e-324, 2.2250738585072014e-308 / 3, 1.7976931348623157e308, -2.5e-310,
          123456789.123456789, 2.0**53 + 2, -1e-7, math.pi, 1e23, 9007199254740993.0]


def test_floats_round_trip_bit_exactly() -> None:
    frame = pd.DataFrame({"x": FLOATS})
    decoded = [json.loads(p)["x"] for p in ft.encode_payloads(frame, ["x"])]
    assert [bits(v) for v in decoded] == [bits(v) for v in FLOATS]
    assert decoded[0] == 0.30000000000000004


def test_negative_zero_is_stored_as_zero() -> None:
    (payload,) = ft.encode_payloads(pd.DataFrame({"x": [-0.0]}), ["x"])
    assert payload == '{"x":0.0}'


def test_timestamps_are_iso_utc_with_z() -> None:
    frame = pd.DataFrame({
        "aware": pd.Series(pd.to_datetime(["2024-03-05T14:22:31.5+01:00"], utc=True)).dt.tz_convert("Europe/Paris"),
        "utc": pd.Series(pd.to_datetime(["2024-03-05T13:22:31.5Z"], utc=True)).astype("datetime64[us, UTC]"),
        "naive": pd.Series([pd.Timestamp("2024-03-05 13:22:31.5")]),
        "missing": pd.Series([pd.NaT], dtype="datetime64[us, UTC]"),
    })
    (payload,) = ft.encode_payloads(frame, list(frame.columns))
    assert json.loads(payload) == {"aware": "2024-03-05T13:22:31.500000Z", "utc": "2024-03-05T13:22:31.500000Z",
                                   "naive": "2024-03-05T13:22:31.500000Z", "missing": None}
    assert ft.iso_utc(datetime(2024, 1, 1)) == "2024-01-01T00:00:00.000000Z"
    assert ft.naive_utc(pd.Timestamp("2024-01-01T01:00:00+01:00")) == datetime(2024, 1, 1)


def test_iso_utc_of_a_plain_datetime_equals_the_pandas_rendering() -> None:
    """The direct path for ``datetime`` (what drivers return) gives the text ``pd.Timestamp`` gives: naive,
    aware at several offsets (DST included), microseconds, years before 1000 and at 9999."""
    import random
    from datetime import timedelta, timezone
    from zoneinfo import ZoneInfo

    def by_pandas(ts: Any) -> str:
        t = pd.Timestamp(ts)
        t = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
        return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    rng = random.Random(5)
    zones = [None, UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=11)),
             ZoneInfo("Europe/Paris"), ZoneInfo("America/New_York")]
    cases = [datetime(1970, 1, 1), datetime(2024, 3, 31, 2, 30), datetime(2024, 10, 27, 2, 30, 0, 1),
             datetime(1677, 9, 22), datetime(2262, 4, 11, 23, 47, 16, 854775)]
    cases += [datetime(1900, 1, 1) + timedelta(microseconds=rng.randrange(0, 4_000_000_000_000_000))
              for _ in range(300)]
    for base in cases:
        for tz in zones:
            ts = base if tz is None else base.replace(tzinfo=tz)
            assert ft.iso_utc(ts) == by_pandas(ts), ts
    assert ft.iso_utc(datetime(999, 1, 2, 3, 4, 5, 6)) == datetime(999, 1, 2, 3, 4, 5, 6).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _rows(n: int = 6) -> tuple[list[str], list[str], list[str | None], list[str]]:
    rids = [f"r{i:02d}" for i in range(n)]
    ents = [f"e{i % 2}" for i in range(n)]
    times: list[str | None] = [ft.iso_utc(pd.Timestamp("2024-01-01", tz="UTC") + pd.Timedelta(hours=i))
                               for i in range(n)]
    payloads = ft.encode_payloads(pd.DataFrame({"x": np.arange(n) / 7}), ["x"])
    return rids, ents, times, payloads


def test_checksum_is_independent_of_row_order() -> None:
    rids, ents, times, payloads = _rows()
    expected, n = ft.checksum_lines(rids, ents, times, payloads)
    assert n == 6 and len(expected) == 64
    perm = np.random.default_rng(0).permutation(6)
    shuffled = [[col[i] for i in perm] for col in (rids, ents, times, payloads)]
    assert ft.checksum_lines(*shuffled) == (expected, 6)


@pytest.mark.parametrize("column", range(4))
def test_checksum_changes_with_any_field(column: int) -> None:
    cols = [list(c) for c in _rows()]
    base = ft.checksum_lines(*cols)[0]
    cols[column][3] = "changed" if column != 3 else '{"x":0.4285714285714286}'
    assert ft.checksum_lines(*cols)[0] != base


def test_checksum_missing_time_differs_from_a_time() -> None:
    rids, ents, times, payloads = _rows(1)
    assert ft.checksum_lines(rids, ents, [None], payloads)[0] != ft.checksum_lines(rids, ents, times, payloads)[0]


def test_checksum_lengths_must_agree() -> None:
    rids, ents, times, payloads = _rows(3)
    with pytest.raises(ValueError):
        ft.checksum_lines(rids, ents, times, payloads[:2])


# --------------------------------------------------------------------------- decoding


def _canonical_frame() -> pd.DataFrame:
    return pd.DataFrame({
        "rid": pd.Series(["a", "b", "c"], dtype=object),
        "who": pd.Series(["1", "1", "2"], dtype=object),
        "ts": pd.Series(pd.to_datetime(["2024-01-01T00:00:00Z", "2024-01-02T12:00:00.25Z", "2024-01-03T00:00:00Z"],
                                       utc=True, format="ISO8601")).astype("datetime64[us, UTC]"),
        "seen": pd.Series(pd.to_datetime(["2024-02-01T00:00:00Z", None, "2024-02-03T00:00:00.000001Z"],
                                         utc=True, format="ISO8601")).astype("datetime64[us, UTC]"),
        "amount": [0.1 + 0.2, np.nan, 5e-324],
        "n": [1.0, 2.0, np.nan],
        "flag": [1.0, np.nan, 0.0],
        "kind": pd.Series(["x", np.nan, "7"], dtype=object),
        "label": pd.Series(["yes", "no", "yes"], dtype=object),
        "log_amount": [math.log1p(0.3), np.nan, 5e-324],
        "prior": [0.0, 1.0, 0.0],
    })


def _stored(frame: pd.DataFrame) -> list[Row]:
    payloads = ft.encode_payloads(frame, SPEC.stored_columns)
    return [Row(r, e, ft.naive_utc(t), p) for r, e, t, p in
            zip(frame["rid"], frame["who"], frame["ts"], payloads, strict=True)]


def test_stored_columns_exclude_the_keys() -> None:
    assert SPEC.stored_columns == ["seen", "amount", "n", "flag", "kind", "label", "log_amount", "prior"]
    assert ft.frame_columns(SPEC) == [["seen", "timestamp"], ["amount", "float"], ["n", "int"], ["flag", "bool"],
                                      ["kind", "category"], ["label", "category"], ["log_amount", "float"],
                                      ["prior", "float"]]


def test_decode_frame_restores_values_and_spec_dtypes() -> None:
    frame = _canonical_frame()
    decoded = ft.decode_frame(_stored(frame), SPEC)
    assert list(decoded.columns) == ["rid", "who", "ts", *SPEC.stored_columns]
    for c in ["amount", "n", "flag", "log_amount", "prior"]:
        assert decoded[c].dtype == np.float64, c
    for c in ["rid", "who", "kind", "label"]:
        assert decoded[c].dtype == object, c
    assert decoded["ts"].dtype == TS_DTYPE and decoded["seen"].dtype == TS_DTYPE
    pd.testing.assert_frame_equal(decoded, frame[decoded.columns], check_exact=True)
    assert [bits(v) for v in decoded["amount"].dropna()] == [bits(0.1 + 0.2), bits(5e-324)]


def test_decode_of_one_row_has_the_same_dtypes_as_many() -> None:
    rows = _stored(_canonical_frame())
    many = ft.decode_frame(rows, SPEC)
    for i in range(len(rows)):
        one = ft.decode_frame(rows[i:i + 1], SPEC)
        assert list(one.dtypes) == list(many.dtypes)
    empty = ft.decode_frame([], SPEC)
    assert list(empty.columns) == list(many.columns) and len(empty) == 0


def test_decode_is_the_inverse_of_encode() -> None:
    rows = _stored(_canonical_frame())
    again = _stored(ft.decode_frame(rows, SPEC))
    assert again == rows


# --------------------------------------------------------------------------- schema (SQLite file)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = make_engine(f"sqlite:///{tmp_path / 'sub' / 'features.db'}")  # the folder is created
    yield eng
    eng.dispose()


def test_check_schema_on_an_empty_database_says_what_to_run(engine: Engine) -> None:
    with pytest.raises(ft.FeatureStoreError) as info:
        ft.check_schema(engine)
    assert "has no fti tables yet: run `fti features run --spec ...` first" in str(info.value)
    assert ft.schema_revision(engine) is None


def test_upgrade_creates_the_tables_and_is_idempotent(engine: Engine) -> None:
    ft.upgrade(engine)
    tables = set(inspect(engine).get_table_names())
    assert {"fti_feature_versions", "fti_feature_rows", ft.VERSION_TABLE} <= tables
    assert ft.schema_revision(engine) == ft.SCHEMA_HEAD
    ft.check_schema(engine)
    ft.upgrade(engine)  # again: nothing to do, nothing breaks
    assert ft.schema_revision(engine) == ft.SCHEMA_HEAD
    cols = {c["name"] for c in inspect(engine).get_columns("fti_feature_rows")}
    assert cols == {"dataset", "version", "record_id", "entity_key", "event_time", "payload"}
    assert ft.list_versions(engine, "t") == []


def test_check_schema_on_another_revision(engine: Engine) -> None:
    ft.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE {ft.VERSION_TABLE} SET version_num = '0000'"))
    with pytest.raises(ft.FeatureStoreError, match="schema is at revision 0000, which this fti version does not "
                       "know"):
        ft.check_schema(engine)


def test_a_store_at_0001_still_serves_feature_readers(engine: Engine) -> None:
    """Training and `fti features list/show` read only feature tables: a store not yet migrated to the
    prediction-log revision keeps working for them; prediction-log readers are told to migrate."""
    ft.upgrade(engine, "0001")
    assert ft.schema_revision(engine) == "0001"
    assert "fti_predictions" not in inspect(engine).get_table_names()
    assert ft.check_schema(engine) == "0001"
    assert ft.list_versions(engine, "t") == []
    with pytest.raises(ft.FeatureStoreError, match="revision 0001, this needs 0002 or later: run `fti features "
                       "migrate`"):
        ft.check_schema(engine, minimum="0002")
    ft.upgrade(engine)  # 0001 -> head keeps the feature tables and adds the log and the batch tables
    assert ft.schema_revision(engine) == ft.SCHEMA_HEAD == "0005"
    assert ft.check_schema(engine, minimum="0002") == "0005"
    cols = {c["name"] for c in inspect(engine).get_columns("fti_predictions")}
    assert {"prediction_id", "request_id", "model_name", "model_version", "feature_version", "inputs",
            "outputs"} <= cols
    indexes = {i["name"]: i["column_names"] for i in inspect(engine).get_indexes("fti_predictions")}
    assert indexes["ix_fti_predictions_model_time"] == ["model_name", "model_version", "created_at", "prediction_id"]
    assert "ix_fti_predictions_model" not in indexes  # 0005: replaced by the one above, its prefix
    assert indexes["ix_fti_predictions_created_at"] == ["created_at"]


def test_get_version_before_any_version(engine: Engine) -> None:
    ft.upgrade(engine)
    with pytest.raises(ft.FeatureStoreError, match=r"dataset 't' has no feature version yet: run `fti features run"):
        ft.get_version(engine, "t")


def _manifest(checksum: str, n: int, version: int) -> dict[str, Any]:
    return {"dataset": "t", "version": version, "checksum": checksum, "row_count": n, "spec_hash": "s" * 64,
            "shared_version": "0.1.0", "code_commit": "unknown", "source_format": "csv",
            "source_location": "x.csv", "source_sha256": "0" * 64, "as_of": datetime(2024, 2, 1),
            "columns": ft.frame_columns(SPEC), "details": {"k": [1, 2]}, "created_at": datetime(2024, 2, 2)}


def test_written_rows_read_back_identically(engine: Engine) -> None:
    ft.upgrade(engine)
    frame = _canonical_frame()
    rows = _stored(frame)
    checksum, n = ft.checksum_lines([r.record_id for r in rows], [r.entity_key for r in rows],
                                    [ft.iso_utc(r.event_time) for r in rows], [r.payload for r in rows])
    with engine.begin() as conn:
        conn.execute(insert(ft.feature_versions).values(**_manifest(checksum, n, 1)))
        conn.execute(insert(ft.feature_rows), [{**r._asdict(), "dataset": "t", "version": 1} for r in rows[::-1]])
    info = ft.get_version(engine, "t")
    assert (info.version, info.checksum, info.row_count, info.details) == (1, checksum, 3, {"k": [1, 2]})
    assert info.as_dict()["as_of"] == "2024-02-01T00:00:00.000000Z"
    assert ft.stored_checksum(engine, "t", 1) == (checksum, 3)
    pd.testing.assert_frame_equal(ft.read_version(engine, SPEC, 1), frame[ft.read_version(engine, SPEC, 1).columns],
                                  check_exact=True)
    history = ft.read_history(engine, SPEC, 1, ["1"], before=pd.Timestamp("2024-01-02T12:00:00.25Z"))
    assert history["rid"].tolist() == ["a"]  # strictly before
    assert ft.read_records(engine, SPEC, 1, ["c", "zz"])["rid"].tolist() == ["c"]
    with pytest.raises(ft.FeatureStoreError, match="has no feature version 2"):
        ft.get_version(engine, "t", 2)


def test_redact_hides_the_password() -> None:
    assert redact("postgresql+psycopg://u:secret@h:5432/db") == "postgresql+psycopg://u:***@h:5432/db"
    assert redact("/just/a/path") == "/just/a/path"
