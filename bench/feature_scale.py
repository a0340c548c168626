"""The feature job at scale (issue 14): rows/s, peak memory and cost per row, against a bare COPY.

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.feature_scale [--rows 1000000 10000000] [--memory-max 1000000]

1. **A source of N rows**: the demo generator's claims for ``--policyholders`` policyholders, copied with
   renamed claim and policyholder ids until N rows (each copy its own policyholders, so every entity's
   history is as the generator makes it), written as one CSV.
2. **The job, as users run it**: ``fti features run --spec ... --engine local`` (``--engine memory`` up to
   ``--memory-max`` rows, ``--engine spark`` on ``local[2]`` up to ``--spark-max`` rows) as a subprocess into a
   throwaway PostgreSQL database: wall time, rows/s end to end, and the peak RSS of the process tree (sampled
   from ``/proc`` every 0.2 s; for Spark: the driver, its JVM and its Python workers). The versions'
   checksums are compared across engines.
3. **A bare COPY of the finished feature rows** in the same run and server: the version's rows read back
   into memory (not timed), then ``COPY ... FROM STDIN`` in one transaction, as the job does: into the
   feature table itself as another version (its keys, index and foreign key: the write the job cannot
   avoid, the yardstick of ``job / COPY``), and into a table made ``LIKE`` it (indexes, no foreign key,
   which costs about a third of the write: measured 9.7 s against 14.2 s at 1M rows). rows/s of each.
4. **Phases** of the local engine, from its log's timestamps: start-up and partition, the cutoff and features,
   the publish (with the checksum's pass, which runs beside the ``COPY``).

Writes ``bench/results/feature_scale.json`` and the ``feature-scale`` section of ``docs/benchmarks.md``.
``--smoke``: small sizes, a harness check (CI runs it); its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.servers import TreeRss
from bench.serving import TMP_DIR, VENV_BIN, base_env, log, machine_description

MARK_BEGIN, MARK_END = "<!-- feature-scale:begin -->", "<!-- feature-scale:end -->"


def write_source(folder: Path, rows: int, policyholders: int) -> tuple[Path, int]:
    """The demo spec in ``folder`` with a source of at least ``rows`` rows (whole copies of the base)."""
    from tests.helpers import copy_claims_source, write_claims_spec

    spec_path = write_claims_spec(folder, n_policyholders=policyholders)
    csv = folder / "raw" / "claims.csv"
    t0 = time.monotonic()
    n = copy_claims_source(csv, rows)
    log(f"source: {n:,} rows in {time.monotonic() - t0:.0f} s, "
        f"{csv.stat().st_size / 2**20:.0f} MiB")
    return spec_path, n


def run_job(spec_path: Path, env: dict[str, str], engine: str, log_path: Path) -> dict[str, Any]:
    cmd = [str(VENV_BIN / "fti"), "features", "run", "--spec", str(spec_path), "--engine", engine]
    t0 = time.monotonic()
    wall0 = time.time()
    with open(log_path, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        with TreeRss(proc.pid) as rss:
            code = proc.wait()
    seconds = time.monotonic() - t0
    text = log_path.read_text()
    if code != 0:
        raise RuntimeError(f"fti features run --engine {engine} failed ({code}):\n{text[-3000:]}")
    return {"engine": engine, "seconds": round(seconds, 2), "peak_rss_mib": round(rss.peak_kib / 1024, 1),
            "phases": phases(text, wall0, wall0 + seconds),
            "summary": [line for line in text.splitlines() if line.startswith("feature version")][-1]}


def latest_version(url: str) -> dict[str, Any]:
    from shared import feature_table as ft
    from shared.db import make_engine

    engine = make_engine(url)
    try:
        info = ft.get_version(engine, "claims")
        return {"version": info.version, "rows": info.row_count, "checksum": info.checksum,
                "details": info.details}
    finally:
        engine.dispose()


def bare_copy(conninfo: str, version: int) -> dict[str, Any]:
    """The version's rows, read back in record-id order (not timed; keys in order are the cheapest for the
    primary key's index, and the job writes them so), then ``COPY``'d twice, each in one transaction with its
    commit:

    * **into the feature table itself**, as a new version (a copy of the version's row under another number),
      with its primary key, index and foreign key to the versions table -- the write the job must make,
      so the yardstick of the job's own cost; removed afterwards (not timed);
    * into a table made ``LIKE`` the feature table (indexes, no foreign key): the rows alone (``like``).
    """
    import psycopg

    cols = ", ".join(COPY_COLUMNS)
    with psycopg.connect(conninfo) as conn:
        with conn.cursor() as cur:
            cur.execute(f"SELECT {cols} FROM fti_feature_rows WHERE version = %s ORDER BY record_id COLLATE \"C\"",
                        (version,))
            rows = cur.fetchall()
        conn.execute("DROP TABLE IF EXISTS bench_copy")
        conn.execute("CREATE TABLE bench_copy (LIKE fti_feature_rows INCLUDING ALL)")
        conn.commit()
        like = _timed_copy(conn, "bench_copy", rows)
        conn.execute("DROP TABLE bench_copy")
        conn.commit()

        other = version + 1_000_000
        names = [r[0] for r in conn.execute("SELECT column_name FROM information_schema.columns WHERE table_name = "
                                            "'fti_feature_versions' ORDER BY ordinal_position").fetchall()]
        picked = ", ".join("%(v)s" if n == "version" else "'bench-' || left(checksum, 50)" if n == "checksum" else n
                           for n in names)
        t0 = time.monotonic()
        conn.execute(f"INSERT INTO fti_feature_versions ({', '.join(names)}) SELECT {picked} FROM "
                     "fti_feature_versions WHERE version = %(old)s", {"v": other, "old": version})
        table = _timed_copy(conn, "fti_feature_rows", [(r[0], other, *r[2:]) for r in rows], t0=t0)
        conn.execute("DELETE FROM fti_feature_rows WHERE version = %s", (other,))
        conn.execute("DELETE FROM fti_feature_versions WHERE version = %s", (other,))
        conn.commit()
    return {**table, "like": like}


COPY_COLUMNS = ("dataset", "version", "record_id", "entity_key", "event_time", "payload")


def _timed_copy(conn: Any, table: str, rows: list[Any], t0: float | None = None) -> dict[str, Any]:
    start = time.monotonic() if t0 is None else t0
    with conn.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(COPY_COLUMNS)}) FROM STDIN") as copy:
        for r in rows:
            copy.write_row(r)
    conn.commit()
    seconds = time.monotonic() - start
    return {"rows": len(rows), "seconds": round(seconds, 2), "rows_per_s": round(len(rows) / seconds, 1)}


def phases(log_text: str, started: float, ended: float) -> dict[str, float]:
    """Where the local engine's time went, from its log's timestamps: start-up and partition (to the last
    ``partitioned`` line), the cutoff and features (to ``built``), then the publish with the checksum's pass
    (to the job's end)."""
    def stamp(line: str) -> float:
        return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").replace(tzinfo=UTC).timestamp()

    lines = log_text.splitlines()
    parted = [stamp(x) for x in lines if " partitioned " in x]
    built = [stamp(x) for x in lines if " built " in x and "feature rows" in x]
    if not parted or not built:
        return {}
    return {"partition_s": round(parted[-1] - started, 1), "features_s": round(built[-1] - parted[-1], 1),
            "publish_s": round(ended - built[-1], 1)}


def markdown(result: dict[str, Any]) -> str:
    lines = [MARK_BEGIN, "## The feature job at scale (`bench/feature_scale.py`)", "",
             f"Run {result['started_at']} on {os.cpu_count()} CPUs, load average (1 min) "
             f"{result['load_avg_1m'][0]:.2f} at start and {result['load_avg_1m'][-1]:.2f} at the end; PostgreSQL "
             "on the same machine. The source is the demo's claims copied with new claim and policyholder ids. "
             "Bare `COPY` of the same rows, each in one transaction: into the feature table as a new version (its "
             "keys, index and foreign key: the write the job makes), and into a `LIKE` copy without the foreign "
             "key.", "",
             "| source rows | engine | wall time | rows/s end to end | peak RSS | partition / features / publish | "
             "bare `COPY` into the feature table | job / that `COPY` | into the `LIKE` copy | job / that |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for size in result["sizes"]:
        copy = size["copy"]
        like = copy.get("like") or copy
        for job in size["jobs"]:
            ph = job.get("phases") or {}
            split = f"{ph['partition_s']} / {ph['features_s']} / {ph['publish_s']} s" if ph else ""
            lines.append(f"| {size['rows']:,} | {job['engine']} | {job['seconds']} s | {job['rows_per_s']:,.0f} | "
                         f"{job['peak_rss_mib']:,.0f} MiB | {split} | {copy['rows_per_s']:,.0f} rows/s | "
                         f"{job['rows_per_s'] / copy['rows_per_s']:.2f} | {like['rows_per_s']:,.0f} rows/s | "
                         f"{job['rows_per_s'] / like['rows_per_s']:.2f} |")
    lines += ["", f"Checksums equal across engines at every size: {result['checksums_equal']}. "
              f"Cost per row of the local engine, largest size / smallest: {result['linearity']:.2f} "
              "(1.00 = linear). Phases are the local engine's, from its log: start-up and partition, the cutoff and "
              "features, then the publishing transaction (with the checksum's pass, which runs beside the `COPY`).",
              MARK_END]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    p.add_argument("--memory-max", type=int, default=1_000_000, help="run --engine memory up to this many rows")
    p.add_argument("--spark-max", type=int, default=10**9, help="run --engine spark (local[2]) up to this many rows "
                   "(when pyspark is installed)")
    p.add_argument("--policyholders", type=int, default=4000)
    p.add_argument("--json", help="default: bench/results/feature_scale.json (smoke: in the work folder)")
    p.add_argument("--workdir")
    p.add_argument("--smoke", action="store_true", help="tiny: a harness check, numbers mean nothing")
    args = p.parse_args(argv)
    if args.smoke:
        args.rows, args.policyholders, args.memory_max, args.spark_max = [3_000, 9_000], 300, 10_000, 3_000
    import importlib.util

    spark = importlib.util.find_spec("pyspark") is not None
    from tests.infra.postgres import create_database, start_postgres, stop_postgres, to_conninfo

    work = Path(args.workdir) if args.workdir else TMP_DIR / f"feature-scale-{int(time.time())}-{os.getpid()}"
    (work / "logs").mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    load = [os.getloadavg()[0]]
    server = start_postgres("fti_bench")
    sizes = []
    try:
        for target in args.rows:
            spec_path, n = write_source(work / f"src-{target}", target, args.policyholders)
            jobs = []
            engines = ["local"] + (["memory"] if target <= args.memory_max else []) \
                + (["spark"] if spark and target <= args.spark_max else [])
            for engine in engines:
                url = create_database(server.url, f"fti_{engine}_{target}")
                env = base_env(work / f"data-{engine}-{target}", os.environ.get("OMP_NUM_THREADS", "1"))
                env["FTI_DATABASE_URL"] = url
                env["FTI_FEATURE_WORK_DIR"] = str(work / "buckets")
                env["FTI_SPARK_MASTER"] = "local[2]"
                job = run_job(spec_path, env, engine, work / "logs" / f"{engine}-{target}.log")
                job.update(latest_version(url), rows_per_s=round(n / job["seconds"], 1))
                log(f"{n:,} rows, {engine}: {job['seconds']} s, {job['rows_per_s']:,.0f} rows/s, peak RSS "
                    f"{job['peak_rss_mib']} MiB")
                jobs.append(job)
                if engine == "local":
                    copy = bare_copy(to_conninfo(url), job["version"])
                    log(f"{n:,} rows, bare COPY into the feature table: {copy['seconds']} s, {copy['rows_per_s']:,.0f} "
                        f"rows/s; into a LIKE copy: {copy['like']['seconds']} s, {copy['like']['rows_per_s']:,.0f} rows/s")
            sizes.append({"rows": n, "jobs": jobs, "copy": copy})
            shutil.rmtree(work / f"src-{target}", ignore_errors=True)
    finally:
        stop_postgres(server)
    load.append(os.getloadavg()[0])
    local = [next(j for j in s["jobs"] if j["engine"] == "local") for s in sizes]
    per_row = [j["seconds"] / s["rows"] for j, s in zip(local, sizes, strict=True)]
    result = {"started_at": started, "mode": "smoke" if args.smoke else "full", "sizes": sizes,
              "checksums_equal": all(len({j["checksum"] for j in s["jobs"]}) == 1 for s in sizes),
              "linearity": per_row[-1] / per_row[0], "load_avg_1m": load,
              "machine": machine_description(os.environ.get("OMP_NUM_THREADS", "1")),
              "spark": "local[2]" if spark else "not run: pyspark is not installed (uv sync --extra spark)"}
    from bench.report import publish_results

    publish_results(result, markdown(result), name="feature_scale", args=args, work=work, marks=(MARK_BEGIN, MARK_END),
                    summary_keys=("checksums_equal", "linearity"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
