"""Time travel: ``fti features run --as-of T`` rebuilds the same feature version from a grown source.

The source is append-only with an ingestion time (``ingested_at``): new rows, late arrivals (event
before T, ingested after T) and edits (a claim appended again with changed values and a later
ingestion time) do not change what was known at T. Rewriting history in place does, and fti
detects it (the rebuild's checksum differs, and the changed record is named). Without an
ingestion-time column a late arrival cannot be told apart, so it changes the as-of rebuild.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from tests.helpers import fti_env, run_fti, write_claims_spec

pytestmark = pytest.mark.integration

N_POLICYHOLDERS = 300
CLI_TIMEOUT = 180
_RUN_LINE = re.compile(r"feature version (?P<version>\d+) of '(?P<dataset>\w+)': (?P<state>created|unchanged)"
                       r".*?; (?P<rows>\d+) rows, checksum (?P<checksum>[0-9a-f]{16})")


def _explain(res: subprocess.CompletedProcess[str]) -> str:
    return f"exit {res.returncode}\n--- stdout ---\n{res.stdout[-3000:]}\n--- stderr ---\n{res.stderr[-5000:]}"


def _iso(ts: pd.Timestamp) -> str:
    return ts.tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%SZ")


def _features_run(spec: Path, env: dict[str, str], *extra: str) -> dict[str, str]:
    res = run_fti(["features", "run", "--spec", str(spec), *extra], env, timeout=CLI_TIMEOUT)
    assert res.returncode == 0, _explain(res)
    m = _RUN_LINE.search(res.stdout)
    assert m, f"unexpected `fti features run` output: {res.stdout!r}"
    return m.groupdict()


def _rebuild(spec: Path, as_of: pd.Timestamp) -> Any:
    """The pure build (what `fti reproduce` runs), in-process: nothing is published."""
    from feature_pipeline import featureset
    from feature_pipeline.extract import extract
    from shared.spec import load_spec

    loaded = load_spec(spec)
    return featureset.build(loaded, extract(loaded), as_of=as_of)


def _rows_by_id(built: Any) -> dict[str, tuple[str, str, str]]:
    from fti.reproduce import rows_by_id

    return rows_by_id(built.rows)


@pytest.fixture
def source(tmp_path: Path) -> tuple[Path, Path, pd.DataFrame, pd.Timestamp]:
    spec = write_claims_spec(tmp_path / "spec", n_policyholders=N_POLICYHOLDERS)
    csv = spec.parent / "raw" / "claims.csv"
    frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    # A cutoff inside the data: the median ingestion time, to the second.
    cutoff = pd.to_datetime(frame["ingested_at"], utc=True).median().floor("s")
    return spec, csv, frame, cutoff


def _grow(frame: pd.DataFrame, cutoff: pd.Timestamp) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Append new rows, late arrivals and one edit, all ingested after ``cutoff``."""
    claim_ts = pd.to_datetime(frame["claim_ts"], utc=True)
    ingested = pd.to_datetime(frame["ingested_at"], utc=True)
    known = frame[(claim_ts <= cutoff) & (ingested <= cutoff)]
    templates = known.sample(6, random_state=3)
    rows = []
    for i, (_, t) in enumerate(templates.iloc[:3].iterrows()):  # new claims, after the cutoff
        rows.append({**t, "claim_id": f"N{i:07d}", "claim_ts": _iso(cutoff + pd.Timedelta(days=2 + i)),
                     "ingested_at": _iso(cutoff + pd.Timedelta(days=2 + i, hours=3))})
    for i, (_, t) in enumerate(templates.iloc[3:].iterrows()):  # late: happened before, known after
        rows.append({**t, "claim_id": f"L{i:07d}", "claim_ts": _iso(cutoff - pd.Timedelta(days=10 + i)),
                     "ingested_at": _iso(cutoff + pd.Timedelta(days=5 + i))})
    edited = known.iloc[len(known) // 2]  # an edit of a claim known at T, appended with a later ingestion time
    new_amount = f"{float(edited['claim_amount']) * 2 + 1:.2f}"
    rows.append({**edited, "claim_amount": new_amount, "ingested_at": _iso(cutoff + pd.Timedelta(days=1))})
    grown = pd.concat([frame, pd.DataFrame(rows, columns=frame.columns)], ignore_index=True)
    return grown, {"new": [f"N{i:07d}" for i in range(3)], "late": [f"L{i:07d}" for i in range(3)],
                   "edited": edited["claim_id"], "new_amount": float(new_amount)}


def test_as_of_rebuild_of_a_grown_append_only_source_is_unchanged(
        source: tuple[Path, Path, pd.DataFrame, pd.Timestamp], tmp_path: Path) -> None:
    from feature_pipeline.config import Settings
    from feature_pipeline.pipeline import run
    from shared import feature_table as ft
    from shared.db import make_engine
    from shared.spec import load_spec

    spec, csv, frame, cutoff = source
    env = fti_env(tmp_path / "data")
    # Version 1 as of T: in-process, the function `fti features run --as-of T` calls (saves a CLI start-up).
    settings = Settings(data_dir=tmp_path / "data", database_url=f"sqlite:///{tmp_path / 'data' / 'features.db'}")
    result = run(load_spec(spec), settings, as_of=_iso(cutoff))
    first = {"state": "created" if result.published.created else "unchanged", "version": str(result.info.version),
             "rows": str(result.info.row_count), "checksum": result.info.checksum[:16]}
    assert first["state"] == "created" and first["version"] == "1"
    assert 0 < int(first["rows"]) < len(frame)

    grown, added = _grow(frame, cutoff)
    grown.to_csv(csv, index=False)
    again = _features_run(spec, env, "--as-of", _iso(cutoff))
    assert again["state"] == "unchanged" and again["version"] == "1", again
    assert again["checksum"] == first["checksum"] and again["rows"] == first["rows"]

    latest = _features_run(spec, env)  # no --as-of: everything known now
    assert latest["state"] == "created" and latest["version"] == "2", latest
    assert int(latest["rows"]) == len(frame) + len(added["new"]) + len(added["late"])  # the edit replaced a row

    loaded = load_spec(spec)
    engine = make_engine(f"sqlite:///{tmp_path / 'data' / 'features.db'}")
    try:
        versions = ft.list_versions(engine, "claims")
        v1 = ft.read_version(engine, loaded.spec, 1).set_index("claim_id")
        v2 = ft.read_version(engine, loaded.spec, 2).set_index("claim_id")
        assert ft.stored_checksum(engine, "claims", 1)[0] == versions[0].checksum
    finally:
        engine.dispose()
    assert [v.version for v in versions] == [1, 2]
    assert ft.iso_utc(versions[0].as_of).startswith(_iso(cutoff)[:19])
    edited = added["edited"]
    assert v2.loc[edited, "claim_amount"] == added["new_amount"] != v1.loc[edited, "claim_amount"]
    assert set(added["new"] + added["late"]) <= set(v2.index) and not set(added["new"] + added["late"]) & set(v1.index)

    # The in-process rebuild as of T (what `fti reproduce` runs) agrees, and says what the cutoff dropped.
    built = _rebuild(spec, cutoff)
    assert built.checksum == versions[0].checksum
    assert built.stats["late_arrivals"] >= len(added["late"]) + 1  # + the edit (its claim happened before T)


def test_rewriting_history_in_place_is_detected(source: tuple[Path, Path, pd.DataFrame, pd.Timestamp]) -> None:
    from fti.reproduce import diff_rows

    spec, csv, frame, cutoff = source
    before = _rebuild(spec, cutoff)
    claim_ts = pd.to_datetime(frame["claim_ts"], utc=True)
    ingested = pd.to_datetime(frame["ingested_at"], utc=True)
    row = frame[(claim_ts <= cutoff) & (ingested <= cutoff)].index[0]
    record_id = frame.loc[row, "claim_id"]
    edited = frame.copy()
    edited.loc[row, "claim_amount"] = f"{float(frame.loc[row, 'claim_amount']) + 500:.2f}"  # same ingested_at
    edited.to_csv(csv, index=False)

    after = _rebuild(spec, cutoff)
    assert after.checksum != before.checksum
    assert after.manifest["source_sha256"] != before.manifest["source_sha256"]
    d = diff_rows(_rows_by_id(before), _rows_by_id(after), set(frame.columns))
    assert [e["record_id"] for e in d["changed_raw"]] == [record_id]
    assert "claim_amount" in d["changed_raw"][0]["fields"]
    assert d["added"] == [] and d["removed"] == []


def test_without_ingestion_time_late_arrivals_change_the_as_of_rebuild(
        source: tuple[Path, Path, pd.DataFrame, pd.Timestamp]) -> None:
    from fti.reproduce import diff_rows

    spec_path, csv, frame, cutoff = source
    data = yaml.safe_load(spec_path.read_text())
    del data["source"]["ingestion_time"]
    del data["columns"]["ingested_at"]  # the column is then ignored (with a warning)
    spec = spec_path.with_name("no-ingestion.yaml")
    spec.write_text(yaml.safe_dump(data, sort_keys=False))
    before = _rebuild(spec, cutoff)
    assert before.stats["ingestion_time"] is None and before.stats["late_arrivals"] == 0

    grown, added = _grow(frame, cutoff)
    grown = grown[~grown.index.isin([len(grown) - 1])]  # without ingestion time an edit would be a duplicate id
    grown.to_csv(csv, index=False)
    after = _rebuild(spec, cutoff)
    assert after.checksum != before.checksum  # fti cannot tell the late arrivals were unknown at T ...
    d = diff_rows(_rows_by_id(before), _rows_by_id(after), set(frame.columns))
    assert set(d["added"]) == set(added["late"])  # ... but names exactly what changed
