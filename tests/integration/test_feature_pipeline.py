"""The feature pipeline through the real ``fti`` CLI on real SQLite and PostgreSQL stores.

Every behaviour under test goes through ``fti features ...`` subprocesses with
``FTI_DATABASE_URL`` pointing at the backend. Preconditions ("a version already
exists") are set up with the same pipeline in-process (``feature_pipeline.pipeline.run``),
which is equally real but saves a CLI start-up (~5 s of imports) per test.
Results are checked independently with SQLAlchemy and ``shared.feature_table``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from tests.helpers import REPO, fti_env, run_fti, write_claims_spec

pytestmark = pytest.mark.integration

DATASET = "claims"
N_POLICYHOLDERS = 300
CLI_TIMEOUT = 120


# --------------------------------------------------------------------------- helpers


def _env(tmp_path: Path, url: str) -> dict[str, str]:
    return fti_env(tmp_path / "data", FTI_DATABASE_URL=url)


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_fti(args, env, timeout=CLI_TIMEOUT)


def _cli_concurrently(calls: list[tuple[list[str], dict[str, str]]]) -> list[subprocess.CompletedProcess[str]]:
    """Start every ``fti`` call at once, then wait for all (each bounded by CLI_TIMEOUT)."""
    exe = Path(sys.executable).parent / "fti"
    procs = [subprocess.Popen([str(exe), *args], env=env, cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for args, env in calls]
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=CLI_TIMEOUT)
            results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
    return results


def _explain(res: subprocess.CompletedProcess[str]) -> str:
    return f"exit {res.returncode}\n--- stdout ---\n{res.stdout[-4000:]}\n--- stderr ---\n{res.stderr[-4000:]}"


def _engine(url: str) -> sa.Engine:
    from shared.db import make_engine

    return make_engine(url)


def _counts(url: str) -> tuple[int, int]:
    """(manifest rows, feature rows) of the dataset; a table that does not exist counts 0."""
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            insp = sa.inspect(conn)
            out = []
            for table in ("fti_feature_versions", "fti_feature_rows"):
                if not insp.has_table(table):
                    out.append(0)
                    continue
                out.append(conn.execute(sa.text(f"SELECT count(*) FROM {table} WHERE dataset = :d"),
                                        {"d": DATASET}).scalar_one())
            return out[0], out[1]
    finally:
        engine.dispose()


def _stored(url: str, version: int) -> tuple[int, str, int]:
    """(rows counted with SQL, checksum recomputed from stored rows, rows hashed)."""
    from shared import feature_table as ft

    engine = _engine(url)
    try:
        with engine.connect() as conn:
            n = conn.execute(sa.text("SELECT count(*) FROM fti_feature_rows WHERE dataset = :d AND version = :v"),
                             {"d": DATASET, "v": version}).scalar_one()
        checksum, hashed = ft.stored_checksum(engine, DATASET, version)
    finally:
        engine.dispose()
    return n, checksum, hashed


def _versions(url: str) -> list[dict[str, Any]]:
    from shared import feature_table as ft

    engine = _engine(url)
    try:
        return [v.as_dict() for v in ft.list_versions(engine, DATASET)]
    finally:
        engine.dispose()


def _publish_in_process(spec: Path, url: str, tmp_path: Path, as_of: str | None = None,
                        caught: list[warnings.WarningMessage] | None = None) -> dict[str, Any]:
    """Precondition: publish a version with the real pipeline, in-process.

    Warnings are recorded (into ``caught`` if given) rather than raised: they are the
    subject of ``test_pipeline_emits_no_deprecation_warnings``, not of the callers.
    """
    from feature_pipeline.config import Settings
    from feature_pipeline.pipeline import run
    from shared.spec import load_spec

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = run(load_spec(spec), Settings(database_url=url, data_dir=tmp_path / "data"), as_of=as_of)
    if caught is not None:
        caught.extend(record)
    assert result.published.created
    return result.info.as_dict()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


_RUN_LINE = re.compile(r"feature version (\d+) of 'claims': (created|unchanged)")


def _run_line(stdout: str) -> tuple[int, str]:
    m = _RUN_LINE.search(stdout)
    assert m, f"unexpected `fti features run` output: {stdout!r}"
    return int(m.group(1)), m.group(2)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(params=["sqlite", "postgres"])
def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], str]]:
    """Makes fresh, empty feature stores of the backend (PostgreSQL databases are dropped after)."""
    made: list[str] = []

    def make() -> str:
        n = len(made)
        if request.param == "sqlite":
            url = f"sqlite:///{tmp_path / f'store{n}' / 'features.db'}"
        else:
            from tests.infra.postgres import create_database

            url = create_database(request.getfixturevalue("postgres_url"), f"fti_t_{uuid.uuid4().hex[:16]}")
        made.append(url)
        return url

    yield make
    if request.param == "postgres":
        from sqlalchemy.engine import make_url

        from tests.infra.postgres import drop_database

        for url in made:
            drop_database(request.getfixturevalue("postgres_url"), make_url(url).database)


@pytest.fixture
def store_url(new_store: Callable[[], str]) -> str:
    """A fresh, empty feature store of each backend."""
    return new_store()


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    return write_claims_spec(tmp_path / "spec", n_policyholders=N_POLICYHOLDERS)


def _csv(spec: Path) -> Path:
    return spec.parent / "raw" / "claims.csv"


# --------------------------------------------------------------------------- tests


def test_manifest_matches_stored_rows(store_url: str, spec: Path, tmp_path: Path) -> None:
    from shared.spec import load_spec

    env = _env(tmp_path, store_url)
    res = _cli(["features", "run", "--spec", str(spec)], env)
    assert res.returncode == 0, _explain(res)
    assert _run_line(res.stdout) == (1, "created")
    # PostgreSQL: the rows went through COPY (and are verified below as the inserts' rows are on SQLite)
    assert ("rows (COPY)" in res.stderr) == store_url.startswith("postgresql"), res.stderr[-2000:]

    res = _cli(["features", "show", "--spec", str(spec), "--verify"], env)
    assert res.returncode == 0, _explain(res)
    manifest = json.loads(res.stdout)
    assert manifest["verified"] is True
    assert manifest["dataset"] == DATASET and manifest["version"] == 1

    n_sql, checksum, n_hashed = _stored(store_url, 1)
    assert manifest["row_count"] == n_sql == n_hashed
    assert checksum == manifest["checksum"]
    # No cutoff: the default as-of is the newest ingestion time, so every claim is in.
    source = pd.read_csv(_csv(spec), dtype=str)
    assert manifest["row_count"] == source["claim_id"].nunique()
    assert manifest["as_of"] == pd.Timestamp(source["ingested_at"].max()).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    assert manifest["spec_hash"] == load_spec(spec).hash
    assert manifest["source_sha256"] == _sha256(_csv(spec))
    assert manifest["source_location"] == str(_csv(spec).resolve())
    assert manifest["code_commit"] and manifest["code_commit"] != "unknown"
    assert _counts(store_url) == (1, n_sql)


def test_rerun_on_same_source_is_idempotent(store_url: str, spec: Path, tmp_path: Path) -> None:
    before = _publish_in_process(spec, store_url, tmp_path)
    counts = _counts(store_url)
    env = _env(tmp_path, store_url)

    res = _cli(["features", "run", "--spec", str(spec)], env)
    assert res.returncode == 0, _explain(res)
    assert _run_line(res.stdout) == (1, "unchanged")
    assert "unchanged" in res.stdout

    res = _cli(["features", "list", "--spec", str(spec), "--json"], env)
    assert res.returncode == 0, _explain(res)
    listed = json.loads(res.stdout)
    assert len(listed) == 1
    assert listed[0]["version"] == 1
    assert listed[0]["checksum"] == before["checksum"]
    assert listed[0]["created_at"] == before["created_at"]  # the manifest row was not rewritten
    assert _counts(store_url) == counts


def test_new_data_makes_a_new_version_and_keeps_the_old(store_url: str, spec: Path, tmp_path: Path) -> None:
    v1 = _publish_in_process(spec, store_url, tmp_path)
    v1_rows = _counts(store_url)[1]
    old_sha = _sha256(_csv(spec))
    # Same spec, new source content (another seed).
    write_claims_spec(spec.parent, n_policyholders=N_POLICYHOLDERS, seed=8)
    assert _sha256(_csv(spec)) != old_sha

    env = _env(tmp_path, store_url)
    res = _cli(["features", "run", "--spec", str(spec)], env)
    assert res.returncode == 0, _explain(res)
    assert _run_line(res.stdout) == (2, "created")

    versions = _versions(store_url)
    assert [v["version"] for v in versions] == [1, 2]
    assert versions[0] == v1  # version 1's manifest is untouched
    n1, checksum1, _ = _stored(store_url, 1)
    assert (n1, checksum1) == (v1["row_count"], v1["checksum"])
    n2, checksum2, _ = _stored(store_url, 2)
    assert (n2, checksum2) == (versions[1]["row_count"], versions[1]["checksum"])
    assert checksum2 != checksum1
    assert versions[1]["source_sha256"] == _sha256(_csv(spec))
    assert _counts(store_url) == (2, v1_rows + n2)


def _drop_column(path: Path, column: str) -> None:
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df.drop(columns=[column]).to_csv(path, index=False)


BAD_ROW = 10  # 0-based data row; the CSV line is BAD_ROW + 2 (line 1 is the header)


def _bad_amount(path: Path) -> None:
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df.loc[BAD_ROW, "claim_amount"] = "abc"
    df.to_csv(path, index=False)


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _header_only(path: Path) -> None:
    header = path.read_text(encoding="utf-8").splitlines()[0]
    path.write_text(header + "\n", encoding="utf-8")


BAD_SOURCES = {
    # case: (corrupt, a version already exists?, fragments stderr must contain)
    "missing_column": (lambda p: _drop_column(p, "claim_amount"), False,
                       ["claim_amount", "absent"]),
    "wrong_type": (_bad_amount, True, ["'claim_amount'", "expected a number", f"line {BAD_ROW + 2}"]),
    "empty_file": (_empty, False, []),
    "header_only": (_header_only, True, ["no rows"]),
}


def test_bad_sources_fail_before_writing(new_store: Callable[[], str], tmp_path: Path) -> None:
    """Each bad source -> exit 3, a message naming the problem, nothing written.

    The four cases run as concurrent CLI processes (start-up dominates their cost):
    ``fresh`` ones on a store without any table, the others on a store that already
    holds version 1, whose manifest and rows must stay exactly as they were.
    """
    fresh_url, existing_url = new_store(), new_store()
    cases: dict[str, tuple[Path, str]] = {}
    for i, (case, (_, existing, _)) in enumerate(BAD_SOURCES.items()):
        # Neutral folder names: the message quotes the source path, which must not satisfy the checks.
        cases[case] = (write_claims_spec(tmp_path / f"source{i}", n_policyholders=N_POLICYHOLDERS),
                       existing_url if existing else fresh_url)
    # Every case's source is the same seeded file until corrupted: publish it once.
    _publish_in_process(next(spec for spec, url in cases.values() if url == existing_url), existing_url,
                        tmp_path)
    before = {url: (_counts(url), _versions(url) if url == existing_url else []) for url in (fresh_url,
                                                                                             existing_url)}
    assert before[fresh_url][0] == (0, 0) and before[existing_url][0][0] == 1
    for case, (spec_path, _) in cases.items():
        BAD_SOURCES[case][0](_csv(spec_path))

    results = _cli_concurrently([(["features", "run", "--spec", str(spec_path)], _env(tmp_path, url))
                                 for spec_path, url in cases.values()])

    failures = []
    for (case, (_, _, fragments)), res in zip(BAD_SOURCES.items(), results, strict=True):
        err = res.stderr.replace(str(_csv(cases[case][0]).resolve()), "<source>")
        problems = []
        if res.returncode != 3:
            problems.append(f"exit code {res.returncode}, expected 3")
        if "fti: error:" not in err or "Traceback" in err:
            problems.append("stderr is not a one-line-style `fti: error:` message")
        problems += [f"stderr lacks {f!r}" for f in fragments if f not in err]
        if case == "empty_file" and not re.search(r"empty|no rows|no header|no data", err, re.IGNORECASE):
            problems.append("a 0-byte file must be reported as empty / without rows, not only as "
                            "'required column is absent' for every column")
        if problems:
            failures.append(f"[{case}] " + "; ".join(problems) + f"\n{_explain(res)}")
    for url, (counts, versions) in before.items():
        store = "fresh store" if url == fresh_url else "store with version 1"
        if _counts(url) != counts:
            failures.append(f"{store}: (manifests, rows) changed from {counts} to {_counts(url)}")
        elif versions and _versions(url) != versions:
            failures.append(f"{store}: version 1's manifest changed")
    assert not failures, "\n\n".join(failures)


def test_as_of_cutoff_gives_fewer_rows(store_url: str, spec: Path, tmp_path: Path) -> None:
    full = _publish_in_process(spec, store_url, tmp_path)
    source = pd.read_csv(_csv(spec), dtype=str)
    claim_ts = pd.to_datetime(source["claim_ts"], utc=True)
    ingested = pd.to_datetime(source["ingested_at"], utc=True)
    cutoff = pd.Timestamp("2024-06-30T00:00:00Z")
    expected = int(((claim_ts <= cutoff) & (ingested <= cutoff)).sum())
    assert 0 < expected < full["row_count"]

    env = _env(tmp_path, store_url)
    res = _cli(["features", "run", "--spec", str(spec), "--as-of", "2024-06-30T00:00:00Z"], env)
    assert res.returncode == 0, _explain(res)
    assert _run_line(res.stdout) == (2, "created")

    versions = _versions(store_url)
    assert [v["version"] for v in versions] == [1, 2]
    v2 = versions[1]
    assert v2["row_count"] == expected < full["row_count"]
    assert v2["as_of"] == "2024-06-30T00:00:00.000000Z"
    n2, checksum2, _ = _stored(store_url, 2)
    assert (n2, checksum2) == (expected, v2["checksum"])
    # Point in time: nothing stored happened after the cutoff.
    engine = _engine(store_url)
    try:
        with engine.connect() as conn:
            latest = conn.execute(sa.text("SELECT max(event_time) FROM fti_feature_rows "
                                          "WHERE dataset = :d AND version = 2"), {"d": DATASET}).scalar_one()
    finally:
        engine.dispose()
    assert pd.Timestamp(latest).tz_localize(None) <= cutoff.tz_localize(None)


@pytest.mark.parametrize("engine", ["memory", "local"])
def test_concurrent_runs_publish_one_version(store_url: str, spec: Path, tmp_path: Path, engine: str) -> None:
    """Three runs at once, with either engine: one version, and the same rows."""
    env = {**_env(tmp_path, store_url), "FTI_FEATURE_ENGINE": engine, "FTI_FEATURE_BUCKETS": "3",
           "FTI_FEATURE_WORKERS": "1"}
    results = _cli_concurrently([(["features", "run", "--spec", str(spec)], env)] * 3)

    for res in results:
        assert res.returncode == 0, _explain(res)
    states = sorted(_run_line(r.stdout) for r in results)
    assert states == [(1, "created"), (1, "unchanged"), (1, "unchanged")], states

    versions = _versions(store_url)
    assert len(versions) == 1
    n, checksum, _ = _stored(store_url, 1)
    assert (n, checksum) == (versions[0]["row_count"], versions[0]["checksum"])
    assert _counts(store_url) == (1, n)


def test_pipeline_emits_no_deprecation_warnings(spec: Path, tmp_path: Path) -> None:
    """The project's own code must not call deprecated APIs (pytest turns them into errors
    for project modules; in production they are silent until the library removes the API)."""
    caught: list[warnings.WarningMessage] = []
    _publish_in_process(spec, f"sqlite:///{tmp_path / 'features.db'}", tmp_path, caught=caught)
    ours = [w for w in caught
            if issubclass(w.category, (DeprecationWarning, FutureWarning))
            and Path(w.filename).resolve().is_relative_to(REPO)
            and ".venv" not in Path(w.filename).parts]
    assert not ours, "\n".join(f"{w.filename}:{w.lineno}: {w.category.__name__}: {w.message}" for w in ours)


KILL_POINTS = {  # a line of the job's log -> kill it right there (the process, with SIGKILL)
    "memory": ["read ", "computed ", "writing version"],
    "local": ["partitioned ", "bucket 1/", "writing version"],
}


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["memory", "local"])
def test_sigkill_at_any_phase_leaves_nothing_and_the_next_run_publishes(store_url: str, tmp_path: Path,
                                                                          engine: str) -> None:
    """``fti features run`` killed (SIGKILL) while reading, computing and writing: no version and no feature
    row is left (the publish is one transaction), the local engine's working folder is cleaned by the next
    run, and that run publishes the version a clean build gives."""
    import os
    import signal

    spec = write_claims_spec(tmp_path / "killspec", n_policyholders=6000)
    work = tmp_path / "work"
    env = {**_env(tmp_path, store_url), "FTI_FEATURE_ENGINE": engine, "FTI_FEATURE_WORK_DIR": str(work),
           "FTI_FEATURE_CHUNK_ROWS": "4000", "FTI_FEATURE_BUCKETS": "3", "FTI_LOG_LEVEL": "INFO"}
    exe = Path(sys.executable).parent / "fti"
    for marker in KILL_POINTS[engine]:
        proc = subprocess.Popen([str(exe), "features", "run", "--spec", str(spec)], env=env, cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        seen: list[str] = []
        children: dict[int, str] = {}
        try:
            assert proc.stderr is not None
            for line in proc.stderr:
                seen.append(line)
                if marker in line:
                    children = _children(proc.pid)
                    os.kill(proc.pid, signal.SIGKILL)
                    break
        finally:
            if proc.poll() is None and not any(marker in s for s in seen):
                proc.kill()
            proc.wait(timeout=CLI_TIMEOUT)
        assert proc.returncode == -signal.SIGKILL, (marker, "".join(seen)[-3000:])
        assert _counts(store_url) == (0, 0), f"killed at {marker!r}: a partial version is left"
        if marker == "bucket 1/":  # killed while its worker processes compute the other buckets: they die too
            assert children, "the local engine's worker processes were running"
            _assert_none_left(children)
    if engine == "local":
        assert list(work.glob("fti-buckets-*")), "the killed runs' folders are there before the next run"
    res = _cli(["features", "run", "--spec", str(spec)], env)
    assert res.returncode == 0, _explain(res)
    assert _run_line(res.stdout) == (1, "created")
    assert not list(work.glob("fti-buckets-*")), "the next run removed the killed runs' folders and its own"
    (version,) = _versions(store_url)
    n, checksum, hashed = _stored(store_url, 1)
    assert n == hashed == version["row_count"] and checksum == version["checksum"]
    from feature_pipeline import featureset
    from feature_pipeline.extract import extract
    from shared.spec import load_spec

    loaded = load_spec(spec)
    assert checksum == featureset.build(loaded, extract(loaded)).checksum


def _children(pid: int) -> dict[int, str]:
    """The descendants of ``pid`` (pid -> command line)."""
    from bench.servers import process_tree

    found: dict[int, str] = {}
    for child in process_tree(pid):
        with contextlib.suppress(OSError):
            if child != pid:
                found[child] = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return found


def _assert_none_left(children: dict[int, str], timeout: float = 60.0) -> None:
    """None of a killed job's processes keeps running (it may take a moment to notice)."""
    deadline = time.monotonic() + timeout
    while (left := {pid: cmd for pid, cmd in children.items() if _running(pid)}) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"processes of the killed job still running: {left}"


def _running(pid: int) -> bool:
    """Alive and not a zombie (a zombie's parent, init here, has yet to reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("engine", ["local", "spark"])
def test_sigkill_mid_write_at_a_million_rows_leaves_nothing_and_the_next_run_publishes(
        pg_database: str, tmp_path: Path, engine: str) -> None:
    """At scale (>= 1M source rows, into PostgreSQL): ``fti features run`` killed with SIGKILL once half the
    rows are in the publishing ``COPY`` leaves no version and no row, and the next run publishes a version
    whose stored rows give its manifest's checksum. The same kill at 27k rows, in every phase and on both
    backends, is the test above. The bounded-memory local engine is the one meant for this scale; the
    in-memory path publishes through the same ``feature_pipeline.load.publish`` (it passed this test at
    1M rows too, in 150 s of CI time, now spent elsewhere). The Spark engine (``local[2]``) also leaves no
    Spark process behind: its JVM, a child of the killed job, exits when the job's end of its pipe closes."""
    import os
    import signal

    from tests.helpers import copy_claims_source

    spec = write_claims_spec(tmp_path / "bigspec", n_policyholders=4000)
    rows = copy_claims_source(spec.parent / "raw" / "claims.csv", 1_000_000)
    assert rows >= 1_000_000
    work = tmp_path / "work"
    if engine == "spark":
        pytest.importorskip("pyspark", reason="the spark extra is not installed (uv sync --extra spark)")
    env = {**_env(tmp_path, pg_database), "FTI_FEATURE_ENGINE": engine, "FTI_FEATURE_WORK_DIR": str(work),
           "FTI_LOG_LEVEL": "INFO", "FTI_SPARK_MASTER": "local[2]"}
    exe = Path(sys.executable).parent / "fti"
    marker = re.compile(r"writing version 1: (\d+)/(\d+) rows")
    proc = subprocess.Popen([str(exe), "features", "run", "--spec", str(spec)], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen: list[str] = []
    killed_at = None
    children: dict[int, str] = {}
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            seen.append(line)
            found = marker.search(line)
            if found and int(found.group(1)) * 2 >= int(found.group(2)):
                children = _children(proc.pid)
                os.kill(proc.pid, signal.SIGKILL)
                killed_at = (int(found.group(1)), int(found.group(2)))
                break
    finally:
        if proc.poll() is None and killed_at is None:
            proc.kill()
        proc.wait(timeout=600)
    assert proc.returncode == -signal.SIGKILL and killed_at is not None, "".join(seen)[-3000:]
    assert _counts(pg_database) == (0, 0), f"killed at {killed_at[0]:,}/{killed_at[1]:,} rows: a partial version"
    if engine == "spark":
        assert any("java" in cmd for cmd in children.values()), children  # the Spark JVM was running
    _assert_none_left(children)
    res = run_fti(["features", "run", "--spec", str(spec)], env, timeout=900)
    assert res.returncode == 0, _explain(res)
    assert _run_line(res.stdout) == (1, "created")
    assert not list(work.glob("fti-buckets-*")), "the next run removed the killed run's folder and its own"
    (version,) = _versions(pg_database)
    n, checksum, hashed = _stored(pg_database, 1)
    assert n == hashed == version["row_count"] == killed_at[1] and checksum == version["checksum"]
    assert (version["details"].get("engine") or {"name": "memory"})["name"] == engine
