"""The local engine (``feature_pipeline.buckets``) against the in-memory build: the same rows and the same
checksum for 1, 2 and 7 entity buckets and small source chunks -- on the demo source, on a source with
edits (one of them moving a claim to another policyholder), late arrivals and an as-of cutoff, on Parquet,
and on a generated source of 200k+ rows; the same problems, with the same source row numbers; and
``fti features run --engine local`` publishing the version the in-memory engine publishes. The Spark
engine (the same buckets as Spark tasks, ``local[2]``) gives the same rows and checksum."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from feature_pipeline import featureset
from feature_pipeline.buckets import build_bucketed
from feature_pipeline.extract import extract
from shared.raw import RawDataError
from shared.spec import load_spec
from tests.helpers import fti_env, run_fti, write_claims_spec

pytestmark = [pytest.mark.integration]

SPARK = "local[2]"


def _memory(spec_path: Path, as_of: pd.Timestamp | None = None) -> featureset.Built:
    loaded = load_spec(spec_path)
    return featureset.build(loaded, extract(loaded), as_of=as_of)


def _local(spec_path: Path, tmp: Path, buckets: int, chunk_rows: int, as_of: pd.Timestamp | None = None,
           spark_master: str | None = None, workers: int = 1
           ) -> tuple[str, list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    built = build_bucketed(load_spec(spec_path), as_of=as_of, buckets=buckets, chunk_rows=chunk_rows, workdir=tmp,
                           spark_master=spark_master, workers=workers)
    try:
        return built.checksum, list(built.rows()), built.manifest, built.stats
    finally:
        built.cleanup()
        assert not built.folder.exists()


def _assert_same(memory: featureset.Built, local: tuple[str, list[dict[str, Any]], dict[str, Any], dict[str, Any]],
                 buckets: int, engine: dict[str, Any] | None = None) -> None:
    checksum, rows, manifest, stats = local
    assert checksum == memory.checksum
    assert rows == memory.rows  # every row, in record-id order, byte for byte
    for key in ("row_count", "as_of", "source_sha256", "columns", "spec_hash", "source_format"):
        assert manifest[key] == memory.manifest[key], key
    details = dict(manifest["details"])
    assert details.pop("engine") == (engine or {"name": "local", "buckets": buckets})
    assert details == memory.manifest["details"]
    assert stats == memory.stats


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_claims_spec(tmp_path_factory.mktemp("bucketed") / "spec", n_policyholders=300)


@pytest.mark.parametrize("buckets", [1, 2, 7])
def test_the_demo_source_gives_the_in_memory_rows_and_checksum(demo: Path, tmp_path: Path, buckets: int) -> None:
    """Three reruns of each, computed in this process and by 2 and 3 worker processes: the same rows and
    checksum every time (nothing depends on a run's state, or on which worker computed a bucket when)."""
    memory = _memory(demo)
    for workers in (1, 2, 3):
        _assert_same(memory, _local(demo, tmp_path, buckets, chunk_rows=997, workers=workers), buckets)
    assert _memory(demo).checksum == memory.checksum


def test_edits_late_arrivals_and_a_cutoff_give_the_in_memory_rows(demo: Path, tmp_path: Path) -> None:
    """Edits appended with later ingestion times (one moving a claim to another policyholder, so its rows
    sit in two entity buckets), and a cutoff in the middle of the source."""
    folder = tmp_path / "spec"
    spec_path = write_claims_spec(folder, n_policyholders=300)
    csv = folder / "raw" / "claims.csv"
    frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    ingested = pd.to_datetime(frame["ingested_at"], utc=True)
    last = ingested.max()
    edits = []
    for i, row in enumerate(frame.sample(40, random_state=1).to_dict(orient="records")):
        edit = {**row, "claim_amount": f"{float(row['claim_amount'] or 0) + 1 + i:.2f}",
                "ingested_at": (last + pd.Timedelta(hours=1 + i)).strftime("%Y-%m-%dT%H:%M:%SZ")}
        if i == 0:
            edit["policyholder_id"] = frame["policyholder_id"].iloc[-1]  # the edit moves the claim
        edits.append(edit)
    pd.concat([frame, pd.DataFrame(edits)], ignore_index=True).to_csv(csv, index=False)
    for as_of in (None, (ingested.median() + pd.Timedelta(seconds=1)).floor("s"), last + pd.Timedelta(hours=20)):
        memory = _memory(spec_path, as_of)
        assert memory.stats["superseded"] > 0 or as_of is not None
        for buckets, workers in ((1, 1), (2, 1), (7, 1), (7, 2)):  # workers: the cutoff and edits in processes
            _assert_same(memory, _local(spec_path, tmp_path / "work", buckets, chunk_rows=503, as_of=as_of,
                                        workers=workers), buckets)


def test_a_parquet_source_gives_the_in_memory_rows(demo: Path, tmp_path: Path) -> None:
    import yaml

    folder = tmp_path / "spec"
    spec_path = write_claims_spec(folder, n_policyholders=200)
    frame = pd.read_csv(folder / "raw" / "claims.csv", dtype=str, keep_default_na=False)
    frame.to_parquet(folder / "raw" / "claims.parquet", row_group_size=333)
    data = yaml.safe_load(spec_path.read_text())
    data["source"] = {**data["source"], "format": "parquet", "path": "raw/claims.parquet"}
    spec_path.write_text(yaml.safe_dump(data))
    memory = _memory(spec_path)
    for buckets in (1, 7):
        _assert_same(memory, _local(spec_path, tmp_path / "work", buckets, chunk_rows=250), buckets)


def test_problems_are_the_in_memory_problems_with_the_same_source_lines(tmp_path: Path) -> None:
    """Bad values spread over several chunks, then duplicate record ids over several buckets: the same
    problems, listing the same source lines, as the in-memory build, in one process or with workers."""
    folder = tmp_path / "spec"
    spec_path = write_claims_spec(folder, n_policyholders=200)
    csv = folder / "raw" / "claims.csv"
    frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    n = len(frame)
    bad = frame.copy()
    for i in (3, n // 2, n // 2 + 1, n - 2, n - 1):
        bad.loc[i, "customer_age"] = "forty"
    bad.loc[n // 3, "claim_ts"] = "not a time"
    bad.to_csv(csv, index=False)

    def both() -> tuple[str, str]:
        with pytest.raises(RawDataError) as mem:
            _memory(spec_path)
        with pytest.raises(RawDataError) as loc:
            _local(spec_path, tmp_path / "work", 7, chunk_rows=300)
        with pytest.raises(RawDataError) as pooled:  # chunks partitioned by worker processes, gathered in order
            _local(spec_path, tmp_path / "work", 7, chunk_rows=300, workers=2)
        assert str(pooled.value) == str(loc.value)
        return str(mem.value), str(loc.value)

    mem, loc = both()
    assert mem == loc
    assert "customer_age" in loc and "claim_ts" in loc and f"line {n // 3 + 2}" in loc
    dup = frame.copy()
    dup.loc[[10, n // 2, n - 1], "claim_id"] = dup.loc[5, "claim_id"]
    dup.loc[[11, n // 2 + 1, n - 2], "ingested_at"] = dup.loc[12, "ingested_at"]
    dup.loc[[11, n // 2 + 1, n - 2], "claim_id"] = dup.loc[12, "claim_id"]
    dup.to_csv(csv, index=False)
    mem, loc = both()
    assert mem == loc and "duplicate" in loc
    assert not list((tmp_path / "work").glob("fti-buckets-*"))  # the failed builds left nothing behind


@pytest.mark.slow
def test_a_generated_source_of_200k_rows_gives_the_in_memory_checksum(tmp_path_factory: pytest.TempPathFactory
                                                                      ) -> None:
    folder = tmp_path_factory.mktemp("bucketed200k") / "spec"
    spec_path = write_claims_spec(folder, n_policyholders=int(os.environ.get("FTI_TEST_BIG_POLICYHOLDERS", "45000")))
    memory = _memory(spec_path)
    assert memory.manifest["row_count"] >= 200_000, memory.manifest["row_count"]
    for buckets, workers in ((1, 1), (2, 2), (7, 1), (7, 3)):
        checksum, rows, manifest, _ = _local(spec_path, folder.parent / "work", buckets, chunk_rows=50_000,
                                             workers=workers)
        assert checksum == memory.checksum and manifest["row_count"] == memory.manifest["row_count"]
        assert rows == memory.rows
    if importlib.util.find_spec("pyspark") is not None:  # the spark extra (CI installs every extra)
        checksum, rows, manifest, _ = _local(spec_path, folder.parent / "work", 7, chunk_rows=50_000,
                                             spark_master=SPARK)
        assert manifest["details"]["engine"] == {"name": "spark", "buckets": 7, "master": SPARK}
        assert checksum == memory.checksum and rows == memory.rows


@pytest.fixture(scope="module")
def spark() -> Any:
    """One Spark session (``local[2]``) for the module's Spark builds, stopped at the end."""
    pytest.importorskip("pyspark", reason="the spark extra is not installed (uv sync --extra spark)")
    from feature_pipeline.spark_engine import session

    s = session(SPARK)
    yield s
    s.stop()


def test_spark_local2_gives_the_in_memory_rows_and_checksum_in_three_reruns(demo: Path, tmp_path: Path,
                                                                            spark: Any) -> None:
    """The Spark engine: the same buckets through ``groupBy(bucket).applyInPandas`` -- every row and the
    checksum are the in-memory build's for 1, 2 and 7 buckets, and three reruns give the same."""
    memory = _memory(demo)
    for buckets in (1, 2, 7):
        _assert_same(memory, _local(demo, tmp_path / "work", buckets, chunk_rows=500, spark_master=SPARK), buckets,
                     {"name": "spark", "buckets": buckets, "master": SPARK})
    for _ in range(2):
        assert _local(demo, tmp_path / "work", 2, chunk_rows=500, spark_master=SPARK)[0] == memory.checksum


def test_features_run_with_the_local_engine_publishes_the_in_memory_version(demo: Path, tmp_path: Path) -> None:
    env = fti_env(tmp_path / "data", OMP_NUM_THREADS="1")
    local = run_fti(["features", "run", "--spec", str(demo), "--engine", "local", "--buckets", "3"], env)
    assert local.returncode == 0, local.stderr[-3000:]
    assert "feature version 1" in local.stdout and "created" in local.stdout
    assert "bucket 3/3" in local.stderr  # progress, per bucket
    memory = run_fti(["features", "run", "--spec", str(demo)], env)
    assert memory.returncode == 0, memory.stderr[-3000:]
    assert "feature version 1" in memory.stdout and "unchanged (identical content already published)" in memory.stdout
    shown = run_fti(["features", "show", "--spec", str(demo), "--verify"], env)
    assert shown.returncode == 0 and '"engine"' in shown.stdout, shown.stdout[-2000:]


def test_a_second_dataset_brought_by_spec_gives_the_in_memory_rows(tmp_path: Path) -> None:
    """The churn dataset (``tests/data/churn``: another domain, one row per customer) in chunks of 97 rows."""
    from tests.helpers import REPO

    spec_path = REPO / "tests" / "data" / "churn" / "spec.yaml"
    memory = _memory(spec_path)
    for buckets in (1, 2, 7):
        _assert_same(memory, _local(spec_path, tmp_path / "work", buckets, chunk_rows=97), buckets)
