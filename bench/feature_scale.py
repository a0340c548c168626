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
   into memory (not timed), then ``COPY ... FROM STDIN`` into a table made ``LIKE`` the feature table
   (its indexes included) in one transaction, as the job does: rows/s.

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
    with open(log_path, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        with TreeRss(proc.pid) as rss:
            code = proc.wait()
    seconds = time.monotonic() - t0
    text = log_path.read_text()
    if code != 0:
        raise RuntimeError(f"fti features run --engine {engine} failed ({code}):\n{text[-3000:]}")
    return {"engine": engine, "seconds": round(seconds, 2), "peak_rss_mib": round(rss.peak_kib / 1024, 1),
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
    """The version's rows, read back, then COPY'd into a table like the feature table, in one transaction."""
    import psycopg

    with psycopg.connect(conninfo) as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT dataset, version, record_id, entity_key, event_time, payload FROM fti_feature_rows "
                        "WHERE version = %s", (version,))
            rows = cur.fetchall()
        conn.execute("DROP TABLE IF EXISTS bench_copy")
        conn.execute("CREATE TABLE bench_copy (LIKE fti_feature_rows INCLUDING ALL)")
        conn.commit()
        t0 = time.monotonic()
        with conn.cursor() as cur, cur.copy("COPY bench_copy (dataset, version, record_id, entity_key, event_time, "
                                            "payload) FROM STDIN") as copy:
            for r in rows:
                copy.write_row(r)
        conn.commit()
        seconds = time.monotonic() - t0
        conn.execute("DROP TABLE bench_copy")
        conn.commit()
    return {"rows": len(rows), "seconds": round(seconds, 2), "rows_per_s": round(len(rows) / seconds, 1)}


def markdown(result: dict[str, Any]) -> str:
    lines = [MARK_BEGIN, "## The feature job at scale (`bench/feature_scale.py`)", "",
             f"Run {result['started_at']} on {os.cpu_count()} CPUs, load average (1 min) "
             f"{result['load_avg_1m'][0]:.2f} at start and {result['load_avg_1m'][-1]:.2f} at the end; PostgreSQL "
             "on the same machine. The source is the demo's claims copied with new claim and policyholder ids.", "",
             "| source rows | engine | wall time | rows/s end to end | peak RSS | bare `COPY` of the same rows | "
             "job / `COPY` |", "|---|---|---|---|---|---|---|"]
    for size in result["sizes"]:
        for job in size["jobs"]:
            lines.append(f"| {size['rows']:,} | {job['engine']} | {job['seconds']} s | {job['rows_per_s']:,.0f} | "
                         f"{job['peak_rss_mib']:,.0f} MiB | {size['copy']['rows_per_s']:,.0f} rows/s | "
                         f"{job['rows_per_s'] / size['copy']['rows_per_s']:.2f} |")
    lines += ["", f"Checksums equal across engines at every size: {result['checksums_equal']}. "
              f"Cost per row of the local engine, largest size / smallest: {result['linearity']:.2f} "
              "(1.00 = linear).", MARK_END]
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
                    log(f"{n:,} rows, bare COPY: {copy['seconds']} s, {copy['rows_per_s']:,.0f} rows/s")
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
