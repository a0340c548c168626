"""Raw records -> the canonical typed frame: strict JSON records and CSV-like source frames."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest

from shared.raw import MAX_ROWS_LISTED, Problem, RawDataError, normalize_frame, normalize_records
from shared.spec import DatasetSpec

SPEC = DatasetSpec.model_validate({
    "name": "t",
    "source": {"format": "csv", "path": "x.csv", "ingestion_time": "ingested"},
    "record_id": "rid",
    "entity_key": "who",
    "event_time": "ts",
    "label": "label",
    "columns": {
        "rid": {"type": "string", "nullable": False},
        "who": {"type": "int", "nullable": False},
        "ts": {"type": "timestamp", "nullable": False},
        "ingested": {"type": "timestamp"},
        "amount": {"type": "float", "min": 0, "max": 1000},
        "n": {"type": "int", "min": 0},
        "flag": {"type": "bool"},
        "kind": {"type": "category", "max_length": 5},
        "note": {"type": "string"},
        "label": {"type": "int", "nullable": False, "min": 0, "max": 1},
    },
    "model": {"name": "m", "estimator": {"class": "sklearn.linear_model.LogisticRegression"}},
})
INPUT_COLUMNS = ["rid", "who", "ts", "amount", "n", "flag", "kind", "note"]
NUMERIC = ["amount", "n", "flag"]
TEXT = ["kind", "note"]
KEYS = ["rid", "who"]
TS_DTYPE = pd.DatetimeTZDtype("us", "UTC")


def record(**changes: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {"rid": "r1", "who": 7, "ts": "2024-03-05T14:22:31Z", "amount": 1.5, "n": 3,
                           "flag": True, "kind": "x", "note": "hello"}
    rec.update(changes)
    return rec


def ok(records: list[Any]) -> pd.DataFrame:
    frame, problems = normalize_records(records, SPEC)
    assert not problems, problems.items
    return frame


def problems_of(records: list[Any]) -> list[Problem]:
    frame, problems = normalize_records(records, SPEC)
    assert problems, "expected problems"
    return problems.items


def one_problem(records: list[Any]) -> Problem:
    (p,) = problems_of(records)
    return p


def assert_canonical_dtypes(frame: pd.DataFrame) -> None:
    assert list(frame.columns) == [c for c in INPUT_COLUMNS if c in frame.columns]
    for c in NUMERIC:
        assert frame[c].dtype == np.float64, c
    for c in TEXT + KEYS:
        assert frame[c].dtype == object, (c, frame[c].dtype)
        assert all(type(v) is str or (isinstance(v, float) and math.isnan(v)) for v in frame[c]), c
    assert frame["ts"].dtype == TS_DTYPE
    for c in KEYS:
        assert all(type(v) is str for v in frame[c]), c


# --------------------------------------------------------------------------- JSON records: the happy path


def test_valid_record_canonical_values() -> None:
    frame = ok([record()])
    assert_canonical_dtypes(frame)
    row = frame.iloc[0]
    assert row["rid"] == "r1" and row["who"] == "7"  # an int key becomes its text
    assert row["ts"] == pd.Timestamp("2024-03-05T14:22:31Z")
    assert (row["amount"], row["n"], row["flag"]) == (1.5, 3.0, 1.0)
    assert (row["kind"], row["note"]) == ("x", "hello")
    assert "label" not in frame.columns and "ingested" not in frame.columns


def test_label_and_ingestion_time_are_allowed_and_ignored() -> None:
    with_label = ok([record(label=1, ingested="2024-03-06T00:00:00Z")])
    pd.testing.assert_frame_equal(with_label, ok([record()]))
    assert "label" not in with_label.columns
    # even an invalid label value is ignored: serving does not know the label
    ok([record(label="not a number")])


def test_negative_zero_becomes_positive_zero() -> None:
    frame = ok([record(amount=-0.0, n=-0.0), record(rid="r2", amount=0.0, n=0)])
    for v in [*frame["amount"], *frame["n"]]:
        assert v == 0.0 and math.copysign(1.0, v) == 1.0


@pytest.mark.parametrize("blank", ["", " ", "\t\n "])
def test_empty_or_whitespace_strings_are_missing(blank: str) -> None:
    frame = ok([record(kind=blank, note=blank, amount=blank, n=blank, flag=blank)])
    for c in ["kind", "note", "amount", "n", "flag"]:
        assert isinstance(frame[c].iloc[0], float) and math.isnan(frame[c].iloc[0]), c
    assert frame["kind"].dtype == object and frame["amount"].dtype == np.float64


def test_blank_required_value_is_a_missing_value_problem() -> None:
    p = one_problem([record(rid="  ")])
    assert (p.code, p.column, p.rows, p.message) == ("missing_value", "rid", (0,), "a value is required")


def test_surrounding_spaces_of_text_are_kept() -> None:
    assert ok([record(kind=" x ")])["kind"].iloc[0] == " x "


def test_timezone_aware_times_are_converted_to_utc() -> None:
    frame = ok([
        record(rid="a", ts="2024-03-05T14:22:31+01:00"),
        record(rid="c", ts="2024-03-05T14:22:31-05:30"),
        record(rid="d", ts="2024-03-05T14:22:31.123456Z"),
    ])
    assert frame["ts"].dtype == TS_DTYPE
    assert frame["ts"].tolist() == [
        pd.Timestamp("2024-03-05T13:22:31Z"), pd.Timestamp("2024-03-05T19:52:31Z"),
        pd.Timestamp("2024-03-05T14:22:31.123456Z"),
    ]


def test_naive_times_alone_are_taken_as_utc() -> None:
    frame = ok([record(rid="b", ts="2024-03-05 14:22:31"), record(rid="e", ts="2024-03-06")])
    assert frame["ts"].tolist() == [pd.Timestamp("2024-03-05T14:22:31Z"), pd.Timestamp("2024-03-06T00:00:00Z")]


def test_naive_and_aware_times_mixed_are_refused_naming_the_rows() -> None:
    """A file mixing both would have its naive times silently read as UTC: the data says otherwise."""
    p = one_problem([record(rid="a", ts="2024-03-05T14:22:31+01:00"), record(rid="b", ts="2024-03-05 14:22:31"),
                     record(rid="c", ts="2024-03-05T14:22:31Z")])
    assert p.code == "mixed_timezones" and p.column == "ts" and list(p.rows) == [1]
    assert "with and without a UTC offset" in p.message


@pytest.mark.parametrize("ts", ["٢٠٢٤-03-05", "2024-03-0５", "２０２４-03-05T00:00:00Z", "2024-03-05T1٤:00:00"])
def test_timestamps_take_ascii_digits_only(ts: str) -> None:
    p = one_problem([record(ts=ts)])
    assert p.code == "invalid_timestamp" and p.column == "ts"


@pytest.mark.parametrize("text", ["1_000", "１０", "٣", "inf", "-Infinity", "0x10", "1e", "1.5.2", "", " ", "nan"])
def test_numeric_text_cells_take_plain_ascii_decimals_only(text: str) -> None:
    frame = source_frame(1, amount=[text])
    if not text.strip() or text == "nan":  # empty cells and "nan" are missing values
        assert math.isnan(normalize_frame(frame, SPEC)[0]["amount"].iloc[0])
        return
    _, problems, _ = normalize_frame(frame, SPEC)
    (p,) = problems.items
    assert p.column == "amount" and p.code == "invalid_type", p


def test_integers_beyond_the_float_range_are_a_named_problem_not_a_crash() -> None:
    p = one_problem([record(amount=10 ** 400)])
    assert p.code == "not_finite" and p.column == "amount" and list(p.rows) == [0]


def test_timestamps_one_record_or_many_same_dtype_and_values() -> None:
    alone = ok([record(ts="2024-03-05T14:22:31+01:00")])
    many = ok([record(ts="2024-03-05T14:22:31+01:00"), record(rid="r2", ts="2024-01-01T00:00:00Z")])
    assert alone["ts"].dtype == many["ts"].dtype == TS_DTYPE
    assert alone["ts"].iloc[0] == many["ts"].iloc[0]


# --------------------------------------------------------------------------- JSON records: strictness


@pytest.mark.parametrize(("column", "value", "message"), [
    ("amount", "1.5", "expected a number"),
    ("amount", "12", "expected a number"),
    ("n", "3", "expected an integer"),
    ("amount", True, "expected a number"),
    ("n", False, "expected an integer"),
    ("flag", 1, "expected true/false"),
    ("flag", "true", "expected true/false"),
    ("kind", 3, "expected a string"),
    ("kind", 3.5, "expected a string"),
    ("kind", True, "expected a string"),
    ("note", ["a"], "expected a string"),
    ("note", "\ud800", "expected a string"),
    ("amount", {"v": 1}, "expected a number"),
])
def test_strict_json_types(column: str, value: Any, message: str) -> None:
    p = one_problem([record(**{column: value})])
    assert (p.code, p.column, p.message, p.rows, p.row_count) == ("invalid_type", column, message, (0,), 1)


def test_fractional_int_is_rejected() -> None:
    p = one_problem([record(n=2.5)])
    assert (p.code, p.column, p.message) == ("invalid_type", "n", "expected an integer")
    assert ok([record(n=2.0)])["n"].iloc[0] == 2.0


def test_too_long_string() -> None:
    assert ok([record(kind="abcde")])["kind"].iloc[0] == "abcde"  # max_length 5 is inclusive
    p = one_problem([record(kind="abcdef")])
    assert (p.code, p.column, p.message, p.rows) == ("too_long", "kind", "longer than 5 characters", (0,))
    long_note = "é" * 257
    p = one_problem([record(note=long_note)])
    assert (p.code, p.column, p.message) == ("too_long", "note", "longer than 256 characters")


@pytest.mark.parametrize("value", [math.inf, -math.inf])
def test_infinity_is_rejected(value: float) -> None:
    (p,) = [p for p in problems_of([record(amount=value)]) if p.code == "not_finite"]
    assert (p.column, p.rows) == ("amount", (0,)) and p.message.startswith("infinite values")


@pytest.mark.parametrize(("column", "value", "message"), [
    ("amount", -0.01, "below the minimum 0"),
    ("amount", 1000.5, "above the maximum 1000"),
    ("n", -1, "below the minimum 0"),
])
def test_out_of_range(column: str, value: float, message: str) -> None:
    p = one_problem([record(**{column: value})])
    assert (p.code, p.column, p.message, p.rows) == ("out_of_range", column, message, (0,))


def test_bounds_are_inclusive() -> None:
    frame = ok([record(amount=0.0), record(rid="r2", amount=1000.0)])
    assert frame["amount"].tolist() == [0.0, 1000.0]


TS_MESSAGE = "expected an ISO 8601 timestamp between 1900 and 2200"


@pytest.mark.parametrize("value", [
    "2024-02-30",  # no such day
    "2023-02-29T00:00:00Z",  # not a leap year
    "2024-13-01",
    "1899-12-31T23:59:59Z",  # before the business bounds
    "2200-01-01T00:00:00Z",
    "yesterday",
    "not a time",
    1_709_648_551,  # epoch seconds: refused rather than guessed
    1_709_648_551_000,  # epoch milliseconds
    1.7e9,
    True,
])
def test_bad_timestamps(value: Any) -> None:
    p = one_problem([record(ts=value)])
    assert (p.code, p.column, p.message, p.rows) == ("invalid_timestamp", "ts", TS_MESSAGE, (0,))


@pytest.mark.parametrize("value", ["0001-01-01", "0001-01-01T00:00:00Z", "1000-06-01", "9999-12-31T23:59:59Z"])
def test_far_out_of_range_timestamps_are_reported_not_raised(value: str) -> None:
    p = one_problem([record(ts=value)])
    assert (p.code, p.column, p.message, p.rows) == ("invalid_timestamp", "ts", TS_MESSAGE, (0,))


@pytest.mark.parametrize("value", ["now", "today"])
def test_relative_words_are_not_timestamps(value: str) -> None:
    p = one_problem([record(ts=value)])
    assert (p.code, p.column) == ("invalid_timestamp", "ts")


def test_timestamp_business_bounds_are_inclusive_at_the_start() -> None:
    frame = ok([record(ts="1900-01-01T00:00:00Z"), record(rid="r2", ts="2199-12-31T23:59:59.999999Z")])
    assert frame["ts"].iloc[0] == pd.Timestamp("1900-01-01T00:00:00Z")


def test_missing_and_unknown_fields_are_listed_with_column_and_rows() -> None:
    r0 = record()
    del r0["note"]
    r2 = record(rid="r3", extra=1, Extra2="x")
    del r2["note"], r2["amount"]
    r3 = record(rid="r4", extra=None)
    problems = problems_of([r0, record(rid="r2"), r2, r3])
    summary = {(p.code, p.column): (p.rows, p.message) for p in problems}
    assert summary == {
        ("missing_field", "note"): ((0, 2), "field is absent (send null for a missing value)"),
        ("missing_field", "amount"): ((2,), "field is absent (send null for a missing value)"),
        ("unknown_field", "extra"): ((2, 3), "field is not part of the spec"),
        ("unknown_field", "Extra2"): ((2,), "field is not part of the spec"),
    }


def test_records_that_are_not_objects() -> None:
    problems = problems_of([record(), ["r1", 7], "x", None])
    (p,) = problems
    assert (p.code, p.column, p.rows, p.message) == ("invalid_record", None, (1, 2, 3),
                                                     "each record must be a JSON object")


def test_null_values_are_fine_where_nullable() -> None:
    frame = ok([record(amount=None, n=None, flag=None, kind=None, note=None)])
    assert_canonical_dtypes(frame)
    assert frame[["amount", "n", "flag", "kind", "note"]].isna().all(axis=None)


def test_every_problem_is_reported_at_once() -> None:
    records = [
        record(rid="a", amount="1", kind="too long"),
        record(rid="b", n=-2, flag="yes", ts="2024-02-30"),
        record(rid=None, amount=-1.0, kind=7),
        record(rid="d", who=None, n=1.5, note="\ud800", ts=12),
        record(rid="e", amount="x", kind="waytoolong", ts=None),
    ]
    problems = problems_of(records)
    got = {(p.code, p.column, p.rows) for p in problems}
    assert got == {
        ("missing_value", "rid", (2,)),
        ("missing_value", "who", (3,)),
        ("invalid_timestamp", "ts", (1, 3)),
        ("missing_value", "ts", (4,)),
        ("invalid_type", "amount", (0, 4)),
        ("out_of_range", "amount", (2,)),
        ("out_of_range", "n", (1,)),
        ("invalid_type", "n", (3,)),
        ("invalid_type", "flag", (1,)),
        ("invalid_type", "kind", (2,)),
        ("too_long", "kind", (0, 4)),
        ("invalid_type", "note", (3,)),
    }
    err = RawDataError(problems, row_label="record", context="request")
    text = str(err)
    assert text.startswith(f"request failed validation ({len(problems)} problem(s)):\n")
    assert "  - column 'amount': expected a number at records 0, 4" in text.splitlines()
    assert "  - column 'rid': a value is required at record 2" in text.splitlines()


def test_rows_listed_are_capped_but_counted() -> None:
    records = [record(rid=f"r{i}", amount="1") for i in range(MAX_ROWS_LISTED + 5)]
    p = one_problem(records)
    assert p.rows == tuple(range(MAX_ROWS_LISTED)) and p.row_count == MAX_ROWS_LISTED + 5
    assert p.describe("line", 2).endswith(f"at lines {', '.join(str(i + 2) for i in range(10))} (+5 more)")


# --------------------------------------------------------------------------- dtype contract


def test_dtypes_same_for_one_record_and_fifty_with_scattered_nulls() -> None:
    rng = np.random.default_rng(3)
    records = []
    for i in range(50):
        rec = record(rid=f"r{i}", who=i % 7, ts=f"2024-01-{1 + i % 28:02d}T{i % 24:02d}:00:00+02:00",
                     amount=float(i) / 3, n=i, flag=bool(i % 2), kind=f"k{i % 3}", note=f"note {i}")
        for c in ["amount", "n", "flag", "kind", "note"]:
            if rng.random() < 0.3:
                rec[c] = None
        records.append(rec)
    many = ok(records)
    assert_canonical_dtypes(many)
    for i in range(50):
        one = ok([records[i]])
        assert_canonical_dtypes(one)
        assert list(one.dtypes) == list(many.dtypes)
        pd.testing.assert_frame_equal(one, many.iloc[[i]].reset_index(drop=True), check_exact=True)
    # and a record whose nullable values are all null
    all_null = ok([record(amount=None, n=None, flag=None, kind=None, note=None)])
    assert list(all_null.dtypes) == list(many.dtypes)


# --------------------------------------------------------------------------- source frames (CSV-like text)


def source_frame(rows: int = 3, /, **overrides: list[Any]) -> pd.DataFrame:
    n = rows
    data: dict[str, list[Any]] = {
        "rid": [f"r{i}" for i in range(n)],
        "who": [str(i % 2) for i in range(n)],
        "ts": [f"2024-01-0{1 + i}T00:00:00Z" for i in range(n)],
        "ingested": [f"2024-01-0{1 + i}T01:00:00Z" for i in range(n)],
        "amount": ["1.5"] * n,
        "n": ["2"] * n,
        "flag": ["true"] * n,
        "kind": ["x"] * n,
        "note": [""] * n,
        "label": ["0"] * n,
    }
    data.update(overrides)
    return pd.DataFrame(data, dtype=object)


def test_source_frame_text_values_are_parsed() -> None:
    frame, problems, extra = normalize_frame(source_frame(
        amount=["1.5", " 2 ", "nan"], flag=["true", "No", ""], n=["2", "2.0", ""]), SPEC)
    assert not problems and extra == []
    assert frame["amount"].iloc[:2].tolist() == [1.5, 2.0] and math.isnan(frame["amount"].iloc[2])
    assert frame["flag"].iloc[:2].tolist() == [1.0, 0.0] and math.isnan(frame["flag"].iloc[2])
    assert frame["n"].iloc[:2].tolist() == [2.0, 2.0]
    assert frame["label"].tolist() == [0.0, 0.0, 0.0]
    assert frame["who"].tolist() == ["0", "1", "0"]
    assert frame["ingested"].dtype == TS_DTYPE
    assert frame["note"].isna().all() and frame["note"].dtype == object


@pytest.mark.parametrize("value", ["true", "TRUE", "t", "yes", "Y", "1", "false", "no", "N", "f", "0"])
def test_source_frame_bool_words(value: str) -> None:
    frame, problems, _ = normalize_frame(source_frame(1, flag=[value]), SPEC)
    assert not problems
    assert frame["flag"].iloc[0] == (1.0 if value.lower() in ("true", "t", "yes", "y", "1") else 0.0)


@pytest.mark.parametrize(("column", "value", "message"), [
    ("amount", "NA", "expected a number"),
    ("amount", "1,5", "expected a number"),
    ("flag", "maybe", "expected true/false"),
    ("flag", "2", "expected true/false"),
    ("n", "2.5", "expected an integer"),
])
def test_source_frame_invalid_text(column: str, value: str, message: str) -> None:
    _, problems, _ = normalize_frame(source_frame(2, **{column: ["1", value] if column != "flag" else
                                                        ["true", value]}), SPEC)
    (p,) = problems.items
    assert (p.code, p.column, p.message, p.rows) == ("invalid_type", column, message, (1,))


def test_source_frame_typed_values() -> None:
    # Parquet / SQL sources hold typed values: numbers, booleans, codes as numbers, timestamps
    src = pd.DataFrame({
        "rid": [1, 2], "who": [10, 11],
        "ts": pd.to_datetime(["2024-01-01T00:00:00+01:00", "2024-01-02"], utc=True, format="ISO8601"),
        "ingested": [pd.Timestamp("2024-01-03"), None],
        "amount": [1, 2.5], "n": [3, 4], "flag": [True, False], "kind": [7, 8.0], "note": ["a", None],
        "label": [0, 1],
    })
    frame, problems, _ = normalize_frame(src, SPEC)
    assert not problems
    assert frame["rid"].tolist() == ["1", "2"] and frame["who"].tolist() == ["10", "11"]
    assert frame["kind"].tolist() == ["7", "8"]
    assert frame["ts"].iloc[0] == pd.Timestamp("2023-12-31T23:00:00Z")
    assert frame["flag"].tolist() == [1.0, 0.0]


def test_source_frame_missing_column() -> None:
    frame, problems, extra = normalize_frame(source_frame().drop(columns=["amount", "kind"]), SPEC)
    (p,) = problems.items
    assert (p.code, p.column, p.rows) == ("missing_column", None, ())
    assert p.message == "required column is absent from the source: amount, kind"
    assert frame.empty and extra == []


def test_source_frame_missing_label_is_fine_without_require_label() -> None:
    frame, problems, _ = normalize_frame(source_frame().drop(columns=["label"]), SPEC, require_label=False)
    assert not problems and "label" not in frame.columns
    _, problems, _ = normalize_frame(source_frame().drop(columns=["label"]), SPEC)
    assert problems.items[0].message == "required column is absent from the source: label"


def test_source_frame_duplicate_column_names() -> None:
    src = source_frame()
    src = pd.concat([src, src[["amount", "note"]]], axis=1)
    frame, problems, _ = normalize_frame(src, SPEC)
    (p,) = problems.items
    assert (p.code, p.message) == ("duplicate_column", "column names appear more than once: amount, note")
    assert frame.empty


def test_source_frame_empty() -> None:
    frame, problems, _ = normalize_frame(source_frame(0), SPEC)
    (p,) = problems.items
    assert (p.code, p.message, p.column) == ("empty", "the source has no rows", None)
    frame, problems, _ = normalize_frame(pd.DataFrame(), SPEC)  # header-less file: every column missing
    assert problems.items[0].code == "missing_column"


def test_source_frame_extra_column_is_reported_not_a_problem() -> None:
    src = source_frame()
    src["surprise"] = "1"
    src["other"] = "2"
    frame, problems, extra = normalize_frame(src, SPEC)
    assert not problems
    assert extra == ["surprise", "other"]
    assert "surprise" not in frame.columns


def test_source_frame_every_problem_at_once_with_line_numbers() -> None:
    src = source_frame(4, amount=["1", "-5", "x", "1"], ts=["2024-01-01", "", "2024-02-30", "2024-01-01"],
                       flag=["true", "perhaps", "true", "true"], label=["0", "1", "2", ""])
    _, problems, _ = normalize_frame(src, SPEC)
    got = {(p.code, p.column, p.rows) for p in problems.items}
    assert got == {
        ("invalid_type", "amount", (2,)),
        ("out_of_range", "amount", (1,)),
        ("missing_value", "ts", (1,)),
        ("invalid_timestamp", "ts", (2,)),
        ("invalid_type", "flag", (1,)),
        ("out_of_range", "label", (2,)),
        ("missing_value", "label", (3,)),
    }
    text = str(RawDataError(problems.items, row_label="line", row_base=2, context="source x.csv"))
    assert "  - column 'amount': expected a number at line 4" in text.splitlines()
    assert "  - column 'ts': a value is required at line 3" in text.splitlines()


def test_source_frame_dtypes_match_records() -> None:
    frame, problems, _ = normalize_frame(source_frame(3, note=["a", "", "c"]), SPEC)
    assert not problems
    records = ok([record(rid=f"r{i}", who=i % 2, ts=f"2024-01-0{1 + i}T00:00:00Z", n=2, kind="x",
                         note=["a", None, "c"][i]) for i in range(3)])
    assert list(frame[INPUT_COLUMNS].dtypes) == list(records.dtypes)
    pd.testing.assert_frame_equal(frame[INPUT_COLUMNS], records, check_exact=True)


def test_the_missing_category_marker_is_refused_as_data_in_json_and_csv() -> None:
    """A category spelled like the caster's missing marker would silently mean "missing"."""
    raw = SPEC.model_dump(by_alias=True)
    raw["columns"]["kind"]["max_length"] = 64
    spec = DatasetSpec.model_validate(raw)
    _, problems = normalize_records([record(), record(rid="r2", kind="__missing__")], spec)
    (p,) = problems.items
    assert (p.code, p.column, p.rows) == ("reserved_value", "kind", (1,))
    assert "leave the cell empty if it means missing" in p.message
    frame = pd.DataFrame([{**{k: str(v) for k, v in record(kind="__missing__").items()}, "label": "1",
                           "ingested": ""}])
    _, problems, _ = normalize_frame(frame, spec)
    assert [q.code for q in problems.items] == ["reserved_value"]
    _, problems = normalize_records([record(kind="_missing_"), record(rid="r3", note="__missing__")], spec)
    assert not problems, problems.items  # other spellings, and free text (never a model input), are data
