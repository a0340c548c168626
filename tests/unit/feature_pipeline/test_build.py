"""feature_pipeline.pipeline.build(): source -> validated rows + manifest, without a database."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from feature_pipeline.pipeline import StrictSchemaError, build, parse_as_of
from shared import feature_table as ft
from shared.raw import RawDataError
from shared.spec import LoadedSpec, load_spec
from tests.helpers import write_claims_spec

MANIFEST_FIELDS = set(ft.VersionInfo.__dataclass_fields__) - {"version"}


@pytest.fixture(autouse=True)
def _fixed_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    # provenance would otherwise shell out to git for every build
    monkeypatch.setenv("FTI_CODE_COMMIT", "test-commit")


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("claims")
    write_claims_spec(folder, n_policyholders=150)
    return folder


@pytest.fixture
def spec_dir(source_dir: Path, tmp_path: Path) -> Iterator[Path]:
    """A private copy of the generated source, so a test may edit its CSV."""
    (tmp_path / "raw").mkdir()
    (tmp_path / "claims.yaml").write_bytes((source_dir / "claims.yaml").read_bytes())
    (tmp_path / "raw" / "claims.csv").write_bytes((source_dir / "raw" / "claims.csv").read_bytes())
    yield tmp_path


def loaded(folder: Path) -> LoadedSpec:
    return load_spec(folder / "claims.yaml")


def read_csv(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "raw" / "claims.csv", dtype=str, keep_default_na=False)


def write_csv(folder: Path, frame: pd.DataFrame) -> None:
    frame.to_csv(folder / "raw" / "claims.csv", index=False)


def payloads_by_id(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["record_id"]: json.loads(r["payload"]) for r in rows}


def raw_error(folder: Path) -> RawDataError:
    with pytest.raises(RawDataError) as info:
        build(loaded(folder))
    return info.value


# --------------------------------------------------------------------------- the happy path


def test_manifest_and_rows(spec_dir: Path) -> None:
    spec = loaded(spec_dir)
    manifest, rows, warnings = build(spec)
    src = read_csv(spec_dir)
    assert set(manifest) == MANIFEST_FIELDS
    assert warnings == []
    assert manifest["dataset"] == "claims" and manifest["spec_hash"] == spec.hash
    assert manifest["source_format"] == "csv"
    assert manifest["source_location"] == str(spec_dir / "raw" / "claims.csv")
    assert len(manifest["source_sha256"]) == 64 and manifest["code_commit"] == "test-commit"
    assert manifest["columns"] == ft.frame_columns(spec.spec)
    assert manifest["details"] == {"source_rows": len(src), "ignored_columns": [], "warnings": [], "unlabeled_rows": 0}
    # default as-of: the latest ingestion time, so every row is in
    assert manifest["as_of"] == ft.naive_utc(pd.Timestamp(src["ingested_at"].max()))
    assert manifest["row_count"] == len(rows) == src["claim_id"].nunique() == len(src)
    assert [r["record_id"] for r in rows] == sorted(src["claim_id"])
    assert set(rows[0]) == {"record_id", "entity_key", "event_time", "payload"}
    first = rows[0]
    assert set(json.loads(first["payload"])) == set(spec.spec.stored_columns)
    assert first["event_time"].tzinfo is None  # stored naive UTC


def test_checksum_equals_the_one_recomputed_from_rows(spec_dir: Path) -> None:
    manifest, rows, _ = build(loaded(spec_dir))
    checksum, n = ft.checksum_lines([r["record_id"] for r in rows], [r["entity_key"] for r in rows],
                                    [ft.iso_utc(r["event_time"]) for r in rows], [r["payload"] for r in rows])
    assert (checksum, n) == (manifest["checksum"], manifest["row_count"])


def test_build_twice_gives_the_same_checksum_and_rows(spec_dir: Path) -> None:
    m1, rows1, _ = build(loaded(spec_dir))
    m2, rows2, _ = build(loaded(spec_dir))
    assert m1["checksum"] == m2["checksum"] and rows1 == rows2


def test_source_row_order_does_not_change_the_checksum(spec_dir: Path) -> None:
    before = build(loaded(spec_dir))[0]
    write_csv(spec_dir, read_csv(spec_dir).sample(frac=1.0, random_state=1))
    after = build(loaded(spec_dir))[0]
    assert after["checksum"] == before["checksum"]
    assert after["source_sha256"] != before["source_sha256"]


def test_rows_decode_to_the_canonical_frame(spec_dir: Path) -> None:
    spec = loaded(spec_dir).spec
    _, rows, _ = build(loaded(spec_dir))
    frame = ft.decode_frame([type("R", (), r)() for r in rows], spec)
    assert len(frame) == len(rows)
    assert frame["claim_amount"].dtype == "float64" and frame["region"].dtype == object
    assert frame["prior_claims"].min() == 0.0


# --------------------------------------------------------------------------- as-of and ingestion time


def test_earlier_as_of_gives_fewer_rows(spec_dir: Path) -> None:
    src = read_csv(spec_dir)
    cutoff = pd.Timestamp("2024-06-30T00:00:00Z")
    manifest, rows, _ = build(loaded(spec_dir), as_of=cutoff)
    full = build(loaded(spec_dir))[0]
    kept = src[(pd.to_datetime(src["claim_ts"], utc=True) <= cutoff)
               & (pd.to_datetime(src["ingested_at"], utc=True) <= cutoff)]
    assert 0 < manifest["row_count"] == len(kept) < full["row_count"]
    assert {r["record_id"] for r in rows} == set(kept["claim_id"])
    assert all(r["event_time"] <= ft.naive_utc(cutoff) for r in rows)
    assert manifest["as_of"] == ft.naive_utc(cutoff)
    assert manifest["checksum"] != full["checksum"]


def test_rows_ingested_after_the_cutoff_are_excluded(spec_dir: Path) -> None:
    src = read_csv(spec_dir)
    claim_ts = pd.to_datetime(src["claim_ts"], utc=True)
    ingested = pd.to_datetime(src["ingested_at"], utc=True)
    late = src[(ingested - claim_ts) > pd.Timedelta(days=14)]
    assert len(late), "the generator makes ~2% of rows arrive weeks late"
    row = late.iloc[0]
    cutoff = pd.Timestamp(row["claim_ts"]) + pd.Timedelta(days=1)  # happened before, known after
    assert pd.Timestamp(row["ingested_at"]) > cutoff
    _, rows, _ = build(loaded(spec_dir), as_of=cutoff)
    ids = {r["record_id"] for r in rows}
    assert row["claim_id"] not in ids
    # and it does not count as history of the policyholder's later claims either
    _, rows_after, _ = build(loaded(spec_dir), as_of=pd.Timestamp(row["ingested_at"]))
    assert row["claim_id"] in {r["record_id"] for r in rows_after}


def test_an_edit_replaces_the_earlier_row_within_the_cutoff(spec_dir: Path) -> None:
    src = read_csv(spec_dir)
    original = src.iloc[5].copy()
    edit_time = pd.Timestamp(src["ingested_at"].max()) + pd.Timedelta(days=2)
    edit = original.copy()
    edit["claim_amount"] = "4321.5"
    edit["ingested_at"] = edit_time.strftime("%Y-%m-%dT%H:%M:%SZ")
    write_csv(spec_dir, pd.concat([src, edit.to_frame().T], ignore_index=True))

    manifest, rows, _ = build(loaded(spec_dir))  # default as-of: the edit's ingestion time
    assert manifest["row_count"] == len(src)  # still one row per claim id
    assert payloads_by_id(rows)[original["claim_id"]]["claim_amount"] == 4321.5

    _, rows_before, _ = build(loaded(spec_dir), as_of=edit_time - pd.Timedelta(seconds=1))
    assert payloads_by_id(rows_before)[original["claim_id"]]["claim_amount"] == float(original["claim_amount"])


def test_an_edit_ingested_earlier_in_the_file_order_still_wins_by_time(spec_dir: Path) -> None:
    src = read_csv(spec_dir)
    original = src.iloc[7].copy()
    edit = original.copy()
    edit["claim_amount"] = "99.25"
    edit["ingested_at"] = (pd.Timestamp(original["ingested_at"]) + pd.Timedelta(hours=1)).strftime(
        "%Y-%m-%dT%H:%M:%SZ")
    write_csv(spec_dir, pd.concat([edit.to_frame().T, src], ignore_index=True))  # the edit is the first line
    _, rows, _ = build(loaded(spec_dir))
    assert payloads_by_id(rows)[original["claim_id"]]["claim_amount"] == 99.25


def test_as_of_before_every_row(spec_dir: Path) -> None:
    with pytest.raises(RawDataError, match="no rows as of 2000-01-01T00:00:00.000000Z"):
        build(loaded(spec_dir), as_of=pd.Timestamp("2000-01-01T00:00:00Z"))


def test_parse_as_of() -> None:
    assert parse_as_of(None) is None
    assert parse_as_of("2025-06-30") == pd.Timestamp("2025-06-30T00:00:00Z")
    assert parse_as_of("2025-06-30T02:00:00+02:00") == pd.Timestamp("2025-06-30T00:00:00Z")
    with pytest.raises(ValueError, match="--as-of 'soon' is not an ISO 8601 timestamp"):
        parse_as_of("soon")


# --------------------------------------------------------------------------- bad sources


def test_non_numeric_amount_names_column_and_csv_line(spec_dir: Path) -> None:
    src = read_csv(spec_dir)
    src.loc[3, "claim_amount"] = "12O.5"  # letter O
    src.loc[40, "claim_amount"] = "abc"
    write_csv(spec_dir, src)
    err = raw_error(spec_dir)
    (p,) = err.problems
    assert (p.code, p.column, p.rows) == ("invalid_type", "claim_amount", (3, 40))
    assert (err.row_label, err.row_base) == ("line", 2)
    assert "column 'claim_amount': expected a number at lines 5, 42" in str(err)
    assert str(err).startswith(f"source {spec_dir / 'raw' / 'claims.csv'} failed validation (1 problem(s))")


def test_every_problem_in_the_source_is_reported(spec_dir: Path) -> None:
    src = read_csv(spec_dir)
    src.loc[0, "customer_age"] = "7"
    src.loc[1, "claim_ts"] = "2024-02-30T00:00:00Z"
    src.loc[2, "police_report"] = "maybe"
    src.loc[2, "claim_id"] = ""
    write_csv(spec_dir, src)
    text = str(raw_error(spec_dir))
    assert "column 'customer_age': below the minimum 16 at line 2" in text
    assert "column 'claim_ts': expected an ISO 8601 timestamp between 1900 and 2200 at line 3" in text
    assert "column 'police_report': expected true/false at line 4" in text
    assert "column 'claim_id': a value is required at line 4" in text


def test_missing_required_column(spec_dir: Path) -> None:
    write_csv(spec_dir, read_csv(spec_dir).drop(columns=["claim_amount"]))
    err = raw_error(spec_dir)
    (p,) = err.problems
    assert (p.code, p.message) == ("missing_column", "required column is absent from the source: claim_amount")


def test_header_only_file(spec_dir: Path) -> None:
    write_csv(spec_dir, read_csv(spec_dir).iloc[:0])
    err = raw_error(spec_dir)
    (p,) = err.problems
    assert (p.code, p.message) == ("empty", "the source has no rows")
    assert "the source has no rows" in str(err)


@pytest.mark.parametrize("where", ["appended", "next_line"])
def test_duplicate_record_and_ingestion_time_pairs_name_their_lines(spec_dir: Path, where: str) -> None:
    src = read_csv(spec_dir)
    if where == "appended":
        dup_src, dup_pos = pd.concat([src, src.iloc[[10]]], ignore_index=True), len(src)
    else:
        dup_src, dup_pos = pd.concat([src.iloc[:11], src.iloc[[10]], src.iloc[11:]], ignore_index=True), 11
    write_csv(spec_dir, dup_src)
    err = raw_error(spec_dir)
    (p,) = err.problems
    assert (p.code, p.column) == ("duplicate_key", "claim_id")
    assert p.message == "duplicate (claim_id, ingested_at) pairs"
    assert sorted(p.rows) == [10, dup_pos]  # positions in the source file
    assert f"at lines 12, {dup_pos + 2}" in str(err)


def test_duplicate_record_ids_without_ingestion_time_name_their_lines(tmp_path: Path) -> None:
    folder = tmp_path / "no_ingestion"
    write_claims_spec(folder, n_policyholders=20, overrides={"source.ingestion_time": None})
    src = read_csv(folder)  # ingested_at stays a declared column, it is just not the ingestion time
    write_csv(folder, pd.concat([src.iloc[:4], src.iloc[[1]], src.iloc[4:]], ignore_index=True))
    err = raw_error(folder)
    (p,) = err.problems
    assert (p.code, p.column, p.message) == ("duplicate_key", "claim_id", "duplicate claim_id values")
    assert sorted(p.rows) == [1, 4]
    assert "at lines 3, 6" in str(err)


def test_extra_source_column_is_a_warning_or_strict_error(spec_dir: Path) -> None:
    src = read_csv(spec_dir)
    src["adjuster_notes"] = "n/a"
    write_csv(spec_dir, src)
    manifest, _, warnings = build(loaded(spec_dir))
    assert warnings == ["source columns not in the spec are ignored: adjuster_notes"]
    assert manifest["details"]["ignored_columns"] == ["adjuster_notes"]
    assert "adjuster_notes" not in manifest["columns"]
    with pytest.raises(StrictSchemaError, match="adjuster_notes"):
        build(loaded(spec_dir), strict=True)
