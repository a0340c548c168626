"""``POST /predict`` (raw records) beside ``/invocations`` and ``mlflow models serve``, in one run.

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.predict [--rounds 3] [--duration 5] [--stores sqlite,postgresql]

For each feature store (the embedded SQLite file, a throwaway PostgreSQL server): generate the demo
data, build a feature version, train; start ``fti serve`` and ``mlflow models serve`` on the same
registered version; wait until fti's online fast path is verified; then drive, in interleaved
rounds with ``wrk``, three targets on the same records: fti ``/predict`` (raw records: history and
derived features computed online), fti ``/invocations`` and mlflow's ``/invocations`` (model inputs).
Scenarios: one record at c=1 and c=8, 100-record batches at c=8. Medians over the rounds.

Also measured: the memory of the online history (the served version's index, from ``/model``) and
of a 1M-row feature version's index built by the same code from a synthetic frame of the demo's
shape. Writes ``bench/results/predict.json`` and the section between the ``predict-bench`` markers
of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import loadgen
from bench.servers import ServerProcess, http_request
from bench.serving import (
    REPO,
    RESULTS_DIR,
    TMP_DIR,
    base_env,
    log,
    machine_description,
    prepare_model,
    resolve_model,
    target_configs,
)

SCENARIOS = (("single_c1", "one record, c=1", "single", 1, 1), ("single_c8", "one record, c=8", "single", 1, 8),
             ("batch100_c8", "100-record batch, c=8", "batch100", 100, 8))
TARGETS = ("fti /predict", "fti /invocations", "mlflow /invocations")
MARK_BEGIN, MARK_END = "<!-- predict-bench:begin -->", "<!-- predict-bench:end -->"


def bodies(spec_path: Path, db_url: str, work: Path, columns: list[str]) -> dict[str, Path]:
    """The same 100 stored records as raw records (/predict) and as model inputs (/invocations)."""
    import math

    from shared import feature_table as ft
    from shared.certificate import raw_records
    from shared.db import make_engine
    from shared.spec import load_spec

    spec = load_spec(spec_path).spec
    engine = make_engine(db_url)
    try:
        frame = ft.read_version(engine, spec, ft.get_version(engine, spec.name).version)
    finally:
        engine.dispose()
    rows = frame.iloc[sorted(random.Random(20260101).sample(range(len(frame)), 100))].reset_index(drop=True)
    records = raw_records(rows, spec)
    kinds = {c: spec.feature_kind(c) for c in columns}

    def cell(v: Any, kind: str) -> Any:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return None
        return float(v) + 0.0 if kind == "numeric" else str(v)

    data = [[cell(r[c], kinds[c]) for c in columns] for _, r in rows.iterrows()]
    out = {}
    for name, n in (("single", 1), ("batch100", 100)):
        for kind, body in (("predict", {"records": records[:n]}),
                           ("invocations", {"dataframe_split": {"columns": columns, "data": data[:n]}})):
            path = work / "bodies" / f"{kind}-{name}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(body, allow_nan=False, separators=(",", ":")))
            out[f"{kind}-{name}"] = path
    return out


def wait_online_fast(server: ServerProcess, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        code, raw = http_request(server.port, "GET", "/model", timeout=30)
        if code == 200:
            status = json.loads(raw)["online_features"]
            if status.get("mode") == "fast" or status.get("reason", "").startswith("refused"):
                return status
        time.sleep(0.5)
    return status


def index_memory_1m(rows: int = 1_000_000, entities: int = 250_000) -> dict[str, Any]:
    """The online history of a ``rows``-row feature version of the demo's shape, built by the serving code."""
    import numpy as np
    import pandas as pd

    from inference_service.online_fast import HistoryIndex
    from shared.spec import load_spec

    spec = load_spec(REPO / "specs" / "claims.yaml").spec
    rng = np.random.default_rng(0)
    start = np.datetime64("2024-01-01T00:00:00", "us").astype(np.int64)
    frame = pd.DataFrame({
        spec.entity_key: pd.Series([f"P{int(i):07d}" for i in rng.integers(0, entities, rows)], dtype=object),
        spec.event_time: pd.Series((start + rng.integers(0, 730 * 86_400_000_000, rows)).view("datetime64[us]"))
        .dt.tz_localize("UTC"),
        "claim_amount": rng.gamma(2.0, 1500.0, rows),
    })
    rss0 = _rss_mib()
    t0 = time.perf_counter()
    index = HistoryIndex.from_frame(frame, spec, 1)
    seconds = time.perf_counter() - t0
    del frame
    return {"rows": rows, "entities": len(index.spans), "index_bytes_estimate": index.nbytes,
            "rss_growth_mib_while_building": round(_rss_mib() - rss0, 1), "build_seconds": round(seconds, 2)}


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_store(store: str, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    work = root / store
    data_dir = work / "data"
    (work / "logs").mkdir(parents=True, exist_ok=True)
    env = base_env(data_dir, args.omp_threads)
    pg = None
    if store == "postgresql":
        from tests.infra.postgres import start_postgres

        pg = start_postgres("fti_bench")
        env["FTI_DATABASE_URL"] = pg.url
    db_url = env.get("FTI_DATABASE_URL") or f"sqlite:///{data_dir / 'features.db'}"
    servers: dict[str, ServerProcess] = {}
    try:
        setup = prepare_model(work, env, smoke=False, policyholders=args.policyholders, max_iter=None)
        spec_path = Path(setup["spec_path"])
        model = resolve_model(spec_path, env)
        files = bodies(spec_path, db_url, work, model["columns"])
        configs = target_configs(spec_path, model, env, stand_in=False)
        for name in ("fti", "mlflow"):
            servers[name] = ServerProcess(configs[name], work / "logs" / f"{name}.log")
            servers[name].start()
        for s in servers.values():
            s.wait_ready(timeout=240)
        online = wait_online_fast(servers["fti"])
        log(f"{store}: online features {online.get('mode')} ({online.get('reason', '')})")
        url = {"fti /predict": (servers["fti"], "/predict", "predict"),
               "fti /invocations": (servers["fti"], "/invocations", "invocations"),
               "mlflow /invocations": (servers["mlflow"], "/invocations", "invocations")}
        for target, (server, path, kind) in url.items():  # every target answers 200 before it is measured
            for name in ("single", "batch100"):
                code, raw = http_request(server.port, "POST", path, files[f"{kind}-{name}"].read_bytes(), timeout=120)
                if code != 200:
                    raise RuntimeError(f"{store} {target} {name}: {code} {raw[:300]!r}")
        runs = []
        load = [os.getloadavg()[0]]
        for r in range(args.rounds):
            for si, (sid, _, body, rows, conns) in enumerate(SCENARIOS):
                order = list(TARGETS) if (r + si) % 2 == 0 else list(TARGETS)[::-1]
                for target in order:
                    server, path, kind = url[target]
                    time.sleep(0.5)
                    res = loadgen.run_wrk(f"{server.url}{path}", files[f"{kind}-{body}"], connections=conns,
                                          threads=min(2, conns), duration_s=args.duration, timeout_s=30,
                                          log_path=work / "logs" / "wrk.log")
                    res.update({"round": r, "scenario": sid, "target": target, "rows_per_s": res["req_per_s"] * rows})
                    log(f"{store} round {r + 1} {sid:<12} {target:<20} {res['req_per_s']:9.1f} req/s  "
                        f"p50 {res['latency_ms']['p50']:7.2f} ms  p99 {res['latency_ms']['p99']:7.2f} ms  "
                        f"non-2xx {res['non_2xx']}")
                    runs.append(res)
            load.append(os.getloadavg()[0])
        return {"store": store, "setup": setup, "model": {k: model[k] for k in ("name", "version")},
                "online_features": online, "runs": runs, "load_avg_1m": load}
    finally:
        for s in servers.values():
            s.stop()
        if pg is not None:
            from tests.infra.postgres import stop_postgres

            stop_postgres(pg)


def summarise(stores: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for st in stores:
        for sid, title, _, n, conns in SCENARIOS:
            med: dict[str, dict[str, float]] = {}
            for target in TARGETS:
                rs = [r for r in st["runs"] if r["scenario"] == sid and r["target"] == target]
                med[target] = {"req_per_s": statistics.median(r["req_per_s"] for r in rs),
                               "rows_per_s": statistics.median(r["rows_per_s"] for r in rs),
                               "p50_ms": statistics.median(r["latency_ms"]["p50"] for r in rs),
                               "p99_ms": statistics.median(r["latency_ms"]["p99"] for r in rs),
                               "non_2xx": sum(r["non_2xx"] for r in rs)}
            ratio = med["fti /predict"]["rows_per_s"] / med["fti /invocations"]["rows_per_s"]
            rows.append({"store": st["store"], "scenario": sid, "title": title, "medians": med,
                         "predict_vs_invocations": round(ratio, 3),
                         "predict_vs_mlflow": round(med["fti /predict"]["rows_per_s"]
                                                    / med["mlflow /invocations"]["rows_per_s"], 2),
                         "target_50pct_met": ratio >= 0.5,
                         "target_p99_met": None if conns != 8 or n != 1 else med["fti /predict"]["p99_ms"] <= 20})
    return rows


def markdown(result: dict[str, Any]) -> str:
    lines = [MARK_BEGIN, "", "## `/predict` beside `/invocations` and `mlflow models serve`", "",
             f"Run {result['started_at']} (`{result['command']}`), {result['config']['rounds']} rounds x "
             f"{result['config']['duration_s']} s per target and scenario, interleaved; medians. "
             f"`OMP_NUM_THREADS={result['config']['omp_num_threads']}`. Raw numbers: `bench/results/predict.json`.",
             "", "| store | scenario | fti /predict | fti /invocations | mlflow | /predict ÷ /invocations | "
             "/predict p50 / p99 ms | target |", "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in result["summary"]:
        m = r["medians"]
        unit = "req/s" if r["scenario"].startswith("single") else "rows/s"
        key = "req_per_s" if unit == "req/s" else "rows_per_s"
        target = "≥ 50%: " + ("met" if r["target_50pct_met"] else "**not met**")
        if r["target_p99_met"] is not None:
            target += "; p99 ≤ 20 ms: " + ("met" if r["target_p99_met"] else "**not met**")
        lines.append(f"| {r['store']} | {r['title']} | {m['fti /predict'][key]:,.0f} {unit} | "
                     f"{m['fti /invocations'][key]:,.0f} | {m['mlflow /invocations'][key]:,.0f} | "
                     f"{r['predict_vs_invocations']:.0%} | {m['fti /predict']['p50_ms']:.2f} / "
                     f"{m['fti /predict']['p99_ms']:.2f} | {target} |")
    lines += ["", "Load average (1 min) during each store's rounds: " + "; ".join(
        f"{s['store']} {', '.join(f'{x:.2f}' for x in s['load_avg_1m'])}" for s in result["stores"]) + ".", ""]
    lines += ["Online history in memory: " + "; ".join(
        f"{s['store']} demo version {s['online_features'].get('index_rows', 0):,} rows, "
        f"{s['online_features'].get('index_bytes', 0) / 2**20:.1f} MiB (verified on "
        f"{s['online_features'].get('verified_records', 0)} records in {s['online_features'].get('seconds', 0)} s)"
        for s in result["stores"]) + "; a 1M-row version of the demo's shape "
        f"({result['index_1m']['entities']:,} entities): {result['index_1m']['index_bytes_estimate'] / 2**20:.0f} MiB "
        f"estimated, RSS +{result['index_1m']['rss_growth_mib_while_building']} MiB while building, "
        f"{result['index_1m']['build_seconds']} s.", "", MARK_END]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=int, default=5)
    p.add_argument("--stores", default="sqlite,postgresql")
    p.add_argument("--policyholders", type=int, default=4000)
    p.add_argument("--omp-threads", default="1")
    p.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "predict.json", help="the JSON results file")
    p.add_argument("--workdir", type=Path, default=None, help="default: bench/results/tmp/predict-<stamp>")
    args = p.parse_args(argv)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    root = args.workdir or TMP_DIR / f"predict-{stamp}-{os.getpid()}"
    result: dict[str, Any] = {"schema": "fti-bench-predict/1", "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
                              "command": " ".join([".venv/bin/python -m bench.predict", *(argv or [])]),
                              "config": {"rounds": args.rounds, "duration_s": args.duration,
                                         "omp_num_threads": args.omp_threads, "policyholders": args.policyholders},
                              "machine": machine_description(args.omp_threads)}
    result["stores"] = [run_store(s, args, root) for s in args.stores.split(",") if s]
    result["summary"] = summarise(result["stores"])
    result["index_1m"] = index_memory_1m()
    out = args.out
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    md = markdown(result)
    print(md)
    if not args.no_docs:
        from bench.report import update_benchmarks_doc

        update_benchmarks_doc(md, MARK_BEGIN, MARK_END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
