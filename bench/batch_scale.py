"""``fti predict-batch`` at scale (issue 14, acceptance point 4): a feature version of N rows scored as
users run it, against in-process ``predict_proba`` on the same rows.

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.batch_scale [--rows 1000000]

1. **A model**: the demo spec (``--policyholders`` policyholders, ~44k claims), ``fti features run`` and
   ``fti train`` into a throwaway PostgreSQL database and a local MLflow store.
2. **A feature version of N rows**: the demo's claims copied with new claim and policyholder ids until N
   rows (as ``bench/feature_scale.py``), published by ``fti features run --engine local``.
3. **The job, as users run it**: ``fti predict-batch --spec ... --feature-version V --json`` as a
   subprocess: wall time end to end (process start, model download and checks, every row read, scored,
   written with ``COPY`` and committed in one transaction), peak RSS of the process, and the job's own
   split (load, certificate, read, score, insert seconds, from the batch manifest).
4. **The in-process baseline**, in a fresh process: the same model loaded the same way, the version's rows
   read whole, then :func:`inference_service.scoring.predict_proba` on the whole frame (median of 3):
   rows/s. The job's scoring rows/s (rows / its score seconds) over that is the ratio the issue asks
   for (>= 0.8).

Writes ``bench/results/batch_scale.json`` and the ``batch-scale`` section of ``docs/benchmarks.md``.
``--smoke``: small sizes, a harness check (CI runs it); its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.feature_scale import write_source
from bench.servers import TreeRss
from bench.serving import TMP_DIR, VENV_BIN, base_env, log, machine_description

MARK_BEGIN, MARK_END = "<!-- batch-scale:begin -->", "<!-- batch-scale:end -->"
PYTHON = VENV_BIN / "python"


def fti(args: list[str], env: dict[str, str], log_path: Path) -> dict[str, Any]:
    """``fti ARGS`` as a subprocess: wall time, the process tree's peak RSS, stdout."""
    t0 = time.monotonic()
    with open(log_path, "w") as err:
        proc = subprocess.Popen([str(VENV_BIN / "fti"), *args], env=env, stdout=subprocess.PIPE, stderr=err)
        assert proc.stdout is not None
        with TreeRss(proc.pid) as rss:
            out = proc.stdout.read()
            code = proc.wait()
    if code != 0:
        raise RuntimeError(f"fti {' '.join(args)} failed ({code}):\n{log_path.read_text()[-3000:]}")
    return {"seconds": round(time.monotonic() - t0, 2), "peak_rss_mib": round(rss.peak_kib / 1024, 1),
            "stdout": out.decode()}


def baseline(spec_path: Path, version: int, repeats: int) -> dict[str, Any]:
    """In this process (started with the job's environment): the champion loaded as ``predict-batch`` loads
    it, the version's rows read whole, ``predict_proba`` on the whole frame ``repeats`` times."""
    from inference_service.batch import BatchSettings, load_model, parse_model_ref
    from inference_service.model_loader import MlflowLoader
    from inference_service.scoring import predict_proba
    from shared import feature_table as ft
    from shared.db import make_engine
    from shared.spec import load_spec

    spec = load_spec(spec_path).spec
    settings = BatchSettings()
    loader = MlflowLoader(settings.tracking_uri, settings.registry_uri, settings.cache_dir,
                          fast_path=settings.fast_path, fast_path_tree_rows=settings.fast_path_tree_rows)
    model = load_model(loader, spec, parse_model_ref(None, spec.model.name, settings.model_alias))
    engine = make_engine(settings.feature_store_url)
    try:
        t0 = time.perf_counter()
        frame = ft.read_version(engine, spec, version)
        read_seconds = time.perf_counter() - t0
        storage = storage_comparison(engine, spec, version, frame)
    finally:
        engine.dispose()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        predict_proba(model, frame)
        times.append(time.perf_counter() - t0)
    seconds = statistics.median(times)
    return {"rows": len(frame), "read_seconds": round(read_seconds, 2), "score_seconds": round(seconds, 3),
            "score_runs": [round(t, 3) for t in times], "rows_per_s": round(len(frame) / seconds, 1),
            "storage": storage}


def storage_comparison(engine: Any, spec: Any, version: int, frame: Any) -> dict[str, Any]:
    """What the version costs to read as stored (one JSON payload per row) against a columnar snapshot of
    the same frame (Parquet, pyarrow, written here): fetch and decode separately, bytes, and whether the
    snapshot reads back equal. The measure behind docs/features.md's storage decision."""
    import tempfile

    import pandas as pd
    from sqlalchemy import func, select

    from shared import feature_table as ft

    t = ft.feature_rows
    q = select(t.c.record_id, t.c.entity_key, t.c.event_time, t.c.payload).where(t.c.dataset == spec.name,
                                                                                  t.c.version == version)
    with engine.connect() as conn:
        t0 = time.perf_counter()
        rows = conn.execute(q).all()
        fetch = time.perf_counter() - t0
        payload_bytes = conn.execute(select(func.sum(func.length(t.c.payload))).where(
            t.c.dataset == spec.name, t.c.version == version)).scalar()
        table_bytes = conn.execute(select(func.pg_total_relation_size(t.name))).scalar() \
            if engine.dialect.name == "postgresql" else None
    t0 = time.perf_counter()
    ft.decode_frame(rows, spec)
    decode = time.perf_counter() - t0
    del rows
    with tempfile.TemporaryDirectory(prefix="fti-bench-") as tmp:
        path = Path(tmp) / "snapshot.parquet"
        t0 = time.perf_counter()
        frame.to_parquet(path, index=False)
        write = time.perf_counter() - t0
        t0 = time.perf_counter()
        back = pd.read_parquet(path)
        read = time.perf_counter() - t0
        size = path.stat().st_size
    n = len(frame)
    return {"json_fetch_seconds": round(fetch, 2), "json_decode_seconds": round(decode, 2),
            "json_rows_per_s": round(n / (fetch + decode), 1), "json_payload_bytes": int(payload_bytes or 0),
            "pg_table_bytes": table_bytes, "parquet_write_seconds": round(write, 2),
            "parquet_read_seconds": round(read, 2), "parquet_rows_per_s": round(n / read, 1),
            "parquet_bytes": size, "parquet_reads_back_equal": bool(back.equals(frame)),
            "parquet_values_equal": _values_equal(back, frame),
            "parquet_dtype_changes": {c: [str(frame[c].dtype), str(back[c].dtype)] for c in frame.columns
                                      if c in back.columns and str(frame[c].dtype) != str(back[c].dtype)}}


def _values_equal(a: Any, b: Any) -> bool:
    """Equal values and columns, whatever the dtypes (pyarrow reads text back as pandas' string dtype)."""
    import pandas as pd

    try:
        pd.testing.assert_frame_equal(a, b, check_dtype=False)
    except AssertionError:
        return False
    return True


def markdown(result: dict[str, Any]) -> str:
    j, b, t = result["job"], result["baseline"], result["job"]["timings"]
    st = b["storage"]
    lines = [MARK_BEGIN, "## `fti predict-batch` at scale (`bench/batch_scale.py`)", "",
             f"Run {result['started_at']} on {os.cpu_count()} CPUs, load average (1 min) "
             f"{result['load_avg_1m'][0]:.2f} at start and {result['load_avg_1m'][-1]:.2f} at the end; PostgreSQL "
             f"on the same machine. A feature version of {result['rows']:,} rows (the demo's claims copied with new "
             "ids), scored by the demo model as users run it.", "",
             "| measure | value | target |", "|---|---|---|",
             f"| `fti predict-batch` end to end (a subprocess: start, load, check, read, score, `COPY`, commit) | "
             f"{j['seconds']} s, {j['rows_per_s']:,.0f} rows/s | reported |",
             f"| ... of which: model load / certificate | {t.get('load_seconds', 0)} s / "
             f"{t.get('certificate_seconds', 0)} s | |",
             f"| ... read and decode / score / write | {t['read_seconds']} s / {t['score_seconds']} s / "
             f"{t['insert_seconds']} s | |",
             f"| ... peak RSS | {j['peak_rss_mib']:,.0f} MiB | |",
             f"| the job's scoring: rows / score seconds | {j['score_rows_per_s']:,.0f} rows/s | |",
             f"| in-process `predict_proba` on the whole frame (median of {len(b['score_runs'])}) | "
             f"{b['rows_per_s']:,.0f} rows/s | |",
             f"| ratio job scoring / in-process | {result['score_ratio']:.2f} | >= 0.80 |", "",
             f"Scorer: `{j['scorer']}`; chunks of {j['chunk_rows']:,} rows.", "",
             "Reading the version, as stored (one JSON payload a row) and as a columnar snapshot of the same frame:",
             "", "| | seconds | rows/s | bytes |", "|---|---|---|---|",
             f"| stored: fetch / decode the payloads | {st['json_fetch_seconds']} / {st['json_decode_seconds']} | "
             f"{st['json_rows_per_s']:,.0f} | {st['json_payload_bytes']:,} of payload |",
             f"| Parquet snapshot: read (written in {st['parquet_write_seconds']} s) | {st['parquet_read_seconds']} | "
             f"{st['parquet_rows_per_s']:,.0f} | {st['parquet_bytes']:,} |", "",
             f"The snapshot reads back equal to the decoded frame: {st['parquet_reads_back_equal']}; the same values "
             f"whatever the dtypes: {st.get('parquet_values_equal', 'not measured')}; dtypes that changed: "
             f"{st.get('parquet_dtype_changes', 'not measured')}.", MARK_END]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--policyholders", type=int, default=4000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", help="default: bench/results/batch_scale.json (smoke: in the work folder)")
    p.add_argument("--workdir")
    p.add_argument("--smoke", action="store_true", help="tiny: a harness check, numbers mean nothing")
    p.add_argument("--baseline", nargs=2, metavar=("SPEC", "VERSION"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.baseline:  # the in-process measure, in its own process
        print(json.dumps(baseline(Path(args.baseline[0]), int(args.baseline[1]), args.repeats)))
        return 0
    if args.smoke:
        args.rows, args.policyholders, args.repeats = 6_000, 300, 1
    from tests.infra.postgres import create_database, start_postgres, stop_postgres

    work = Path(args.workdir) if args.workdir else TMP_DIR / f"batch-scale-{int(time.time())}-{os.getpid()}"
    (work / "logs").mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    load = [os.getloadavg()[0]]
    server = start_postgres("fti_bench_batch")
    try:
        env = base_env(work / "data", os.environ.get("OMP_NUM_THREADS", "1"))
        env["FTI_DATABASE_URL"] = create_database(server.url, "fti_batch")
        env["FTI_FEATURE_WORK_DIR"] = str(work / "buckets")
        from tests.helpers import write_claims_spec

        spec_path = write_claims_spec(work / "src", n_policyholders=args.policyholders)
        spec = ["--spec", str(spec_path)]
        setup = {"features": fti(["features", "run", *spec], env, work / "logs" / "features-small.log")["seconds"],
                 "train": fti(["train", *spec], env, work / "logs" / "train.log")["seconds"]}
        log(f"model trained ({setup})")
        write_source(work / "src", args.rows, args.policyholders)
        built = fti(["features", "run", *spec, "--engine", "local"], env, work / "logs" / "features.log")
        found = re.search(r"feature version (\d+) of .*: created", built["stdout"])
        if found is None:
            raise RuntimeError(f"no new feature version: {built['stdout']}")
        version = int(found.group(1))
        setup["features_scaled"] = built["seconds"]
        log(f"feature version {version}: {args.rows:,}+ rows in {built['seconds']} s")
        job = fti(["predict-batch", *spec, "--feature-version", str(version), "--json"], env,
                  work / "logs" / "predict-batch.log")
        summary = json.loads(job.pop("stdout"))
        if summary["status"] != "written":
            raise RuntimeError(f"predict-batch did not write the batch: {summary}")
        details = summary["details"]
        rows = int(summary["row_count"])
        job.update(rows=rows, rows_per_s=round(rows / job["seconds"], 1), timings=details["timings"],
                   scorer=details["scorer"], chunk_rows=details["chunk_rows"], checksum=summary["checksum"],
                   score_rows_per_s=round(rows / details["timings"]["score_seconds"], 1))
        log(f"predict-batch: {rows:,} rows in {job['seconds']} s ({job['rows_per_s']:,.0f} rows/s), "
            f"timings {details['timings']}")
        out = subprocess.run([str(PYTHON), "-m", "bench.batch_scale", "--baseline", str(spec_path), str(version),
                              "--repeats", str(args.repeats)], env=env, capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent.parent)
        if out.returncode != 0:
            raise RuntimeError(f"the in-process baseline failed:\n{out.stderr[-3000:]}")
        base = json.loads(out.stdout.strip().splitlines()[-1])
        if base["rows"] != rows:
            raise RuntimeError(f"the baseline read {base['rows']} rows, the job scored {rows}")
        log(f"in-process predict_proba: {base['rows_per_s']:,.0f} rows/s")
    finally:
        stop_postgres(server)
    load.append(os.getloadavg()[0])
    result = {"started_at": started, "mode": "smoke" if args.smoke else "full", "rows": rows, "setup": setup,
              "job": job, "baseline": base, "score_ratio": job["score_rows_per_s"] / base["rows_per_s"],
              "load_avg_1m": load, "machine": machine_description(os.environ.get("OMP_NUM_THREADS", "1")),
              "targets": {"score_ratio": {"target": 0.8, "met": job["score_rows_per_s"] >= 0.8 * base["rows_per_s"]}},
              "spark": "not run: a Spark variant of predict-batch is not built"}
    from bench.report import publish_results

    publish_results(result, markdown(result), name="batch_scale", args=args, work=work, marks=(MARK_BEGIN, MARK_END),
                    summary_keys=("score_ratio", "targets"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
