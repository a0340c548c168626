"""Probes under hostile load: ``/health/live`` latency while big bodies, decompression bombs and a flood of
maximum-size requests hit ``fti serve`` -- and how fast the flood beyond the concurrency limit is refused.

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.hardening [--rounds 3] [--duration 8]

Setup: the demo data, a feature version and a trained model (as ``bench.predict``); ``fti serve`` with
its defaults (``FTI_MAX_CONCURRENT_REQUESTS=64``, large bodies limited to the CPU count, 30 s deadline) and an API key, as a user runs it.
Scenarios, each ``--duration`` seconds per round, rounds interleaved:

* ``idle`` -- probes only (the baseline);
* ``big_json`` -- 8 MB bodies back to back: ``/invocations`` with 10,000 rows valid under the spec's bounds (scored: 200) and
  ``/predict`` with 20,000 records (refused at the 1,001st);
* ``parquet_bomb`` -- a 40 KB Parquet body that decompresses to 100 MB, back to back;
* ``flood`` -- 24 parallel clients sending 1,000-record ``/predict`` requests back to back, each
  waiting as ``Retry-After`` says when it gets a 503 (what an HTTP client with retries does);
* ``all`` -- the three at once (the issue's acceptance scenario);
* ``hammer`` -- the flood's 24 clients ignoring ``Retry-After`` (abuse: ~700 refused 370 KB requests a
  second on this machine), reported beside the rest, not a target.

``/health/live`` is probed from a separate process (``bench.probe``, one keep-alive connection, every
10 ms) so the load generator's own GIL is not in the figure. The 503 latency is measured by the flood's
clients (an upper bound: their process is busy). Results: ``bench/results/hardening.json`` and the
``hardening-bench`` section of ``docs/benchmarks.md``. Targets (from the issue): probe p99 <= 50 ms in
``all``; a 503 beyond the limit in < 50 ms.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.serving import REPO, RESULTS_DIR, TMP_DIR, base_env, log, machine_description, prepare_model

SCENARIOS = ("idle", "big_json", "parquet_bomb", "flood", "all", "hammer")
MARK_BEGIN, MARK_END = "<!-- hardening-bench:begin -->", "<!-- hardening-bench:end -->"
KEY = "bench-key-0123456789abcdefghij"


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def bodies(spec_path: Path) -> dict[str, bytes]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from shared.spec import load_spec
    from tests.helpers import raw_json_records

    spec = load_spec(spec_path).spec
    rec = raw_json_records(spec_path.parent / "raw" / "claims.csv", spec_path)[0]
    feats = spec.model_features
    # 10,000 valid rows padded to ~8 MB with long (unknown) category values: real scoring work
    from inference_service.invocations import Signature

    def valid(col: Any) -> Any:  # a number inside the column's bounds; long unknown text within its limit
        if col.is_bool:
            return True
        if col.numeric:
            return int(col.min) if col.min is not None else 1
        return "c" * min(170, col.max_length or 170)

    row = [valid(c) for c in Signature.from_spec(spec).columns]
    inv_rows = 10_000
    invocations = json.dumps({"dataframe_split": {"columns": feats, "data": [row] * inv_rows}}).encode()
    predict_big = json.dumps({"records": [rec] * 20_000}).encode()
    flood = json.dumps({"records": [rec] * 1000}).encode()
    table = pa.table({"note": ["x" * (1 << 20) + str(i) for i in range(100)]})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return {"invocations_8mb": invocations, "predict_8mb": predict_big, "flood": flood, "bomb": buf.getvalue()}


class Load:
    """Background senders for one scenario; counts statuses and the latency of each 503."""

    def __init__(self, url: str, files: dict[str, bytes], scenario: str):
        self.url, self.files, self.scenario = url, files, scenario
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.statuses: dict[str, int] = {}
        self.busy_ms: list[float] = []
        self.threads: list[threading.Thread] = []

    def _send(self, http: httpx.Client, path: str, body: bytes, ctype: str) -> float:
        """One request; returns how long to wait before the next (Retry-After, if honoured)."""
        t0 = time.perf_counter()
        wait = 0.0
        try:
            r = http.post(f"{self.url}{path}", content=body, headers={"Content-Type": ctype, "X-API-Key": KEY})
            code = str(r.status_code)
            if r.status_code == 503 and self.scenario != "hammer":
                wait = float(r.headers.get("retry-after", "1"))
        except httpx.HTTPError as exc:
            code = type(exc).__name__
        ms = (time.perf_counter() - t0) * 1000
        with self.lock:
            self.statuses[code] = self.statuses.get(code, 0) + 1
            if code == "503":
                self.busy_ms.append(ms)
        return wait

    def _loop(self, jobs: list[tuple[str, bytes, str]]) -> None:
        with httpx.Client(timeout=120) as http:
            i = 0
            while not self.stop.is_set():
                wait = self._send(http, *jobs[i % len(jobs)])
                i += 1
                if wait:
                    self.stop.wait(wait)

    def start(self) -> None:
        big = [("/invocations", self.files["invocations_8mb"], "application/json"),
               ("/predict", self.files["predict_8mb"], "application/json")]
        bomb = [("/invocations", self.files["bomb"], "application/vnd.apache.parquet")]
        flood = [("/predict", self.files["flood"], "application/json")]
        plan: list[list[tuple[str, bytes, str]]] = []
        if self.scenario in ("big_json", "all"):
            plan.append(big)
        if self.scenario in ("parquet_bomb", "all"):
            plan.append(bomb)
        if self.scenario in ("flood", "all", "hammer"):
            plan += [flood] * 24
        for jobs in plan:
            t = threading.Thread(target=self._loop, args=(jobs,), daemon=True)
            t.start()
            self.threads.append(t)

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=180)


def run_scenario(url: str, files: dict[str, bytes], scenario: str, seconds: float, work: Path) -> dict[str, Any]:
    out = work / f"probe-{scenario}-{time.time_ns()}.json"
    prober = subprocess.Popen([sys.executable, "-m", "bench.probe", url, str(seconds), str(out)], cwd=REPO)
    load = Load(url, files, scenario)
    time.sleep(0.3)  # the prober's first probes see the scenario starting
    load_before = os.getloadavg()[0]
    load.start()
    prober.wait(timeout=seconds + 60)
    load.finish()
    probes = json.loads(out.read_text())
    lat = probes["latencies_ms"]
    return {"scenario": scenario, "probes": len(lat), "probe_errors": probes["errors"],
            "probe_statuses": probes["statuses"],
            "probe_ms": {"p50": round(_pct(lat, 0.5), 2), "p99": round(_pct(lat, 0.99), 2),
                         "max": round(max(lat), 2) if lat else None},
            "statuses": dict(sorted(load.statuses.items())),
            "busy_503_ms": {"n": len(load.busy_ms), "p50": round(_pct(load.busy_ms, 0.5), 2) if load.busy_ms else None,
                            "p99": round(_pct(load.busy_ms, 0.99), 2) if load.busy_ms else None},
            "load_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)]}


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for scenario in SCENARIOS:
        mine = [r for r in runs if r["scenario"] == scenario]
        if not mine:
            continue
        p99 = statistics.median(r["probe_ms"]["p99"] for r in mine)
        busy = [r["busy_503_ms"]["p50"] for r in mine if r["busy_503_ms"]["p50"] is not None]
        statuses: dict[str, int] = {}
        for r in mine:
            for k, v in r["statuses"].items():
                statuses[k] = statuses.get(k, 0) + v
        out.append({"scenario": scenario, "rounds": len(mine),
                    "probe_p50_ms": statistics.median(r["probe_ms"]["p50"] for r in mine), "probe_p99_ms": p99,
                    "probe_max_ms": max(r["probe_ms"]["max"] or 0 for r in mine),
                    "probe_errors": sum(r["probe_errors"] for r in mine),
                    "busy_503_p50_ms": statistics.median(busy) if busy else None, "statuses": statuses,
                    "server_errors": sum(v for k, v in statuses.items() if k.startswith("5") and k != "503"),
                    "target_probe_p99_met": (p99 <= 50.0) if scenario == "all" else None,
                    "target_503_met": (statistics.median(busy) < 50.0) if busy and scenario in ("flood", "all")
                    else None})
    return out


def render(result: dict[str, Any]) -> str:
    lines = [MARK_BEGIN, "", f"Run {result['finished_at']} on {result['machine'].get('cpu_model', '?')} "
             f"({result['machine'].get('nproc', '?')} CPUs), {result['rounds']} round(s) x {result['duration_s']} s per "
             f"scenario, load average {result['load_1m'][0]} -> {result['load_1m'][1]}. "
             "`/health/live` probed every 10 ms from its own process; medians over rounds.", "",
             "| scenario | probe p50 ms | probe p99 ms | probe max ms | 503 p50 ms (flood's view) | responses |",
             "|---|---:|---:|---:|---:|---|"]
    for s in result["summary"]:
        resp = ", ".join(f"{k}: {v}" for k, v in s["statuses"].items()) or "-"
        busy = "-" if s["busy_503_p50_ms"] is None else f"{s['busy_503_p50_ms']:.1f}"
        lines.append(f"| {s['scenario']} | {s['probe_p50_ms']:.1f} | {s['probe_p99_ms']:.1f} | {s['probe_max_ms']:.1f} "
                     f"| {busy} | {resp} |")
    allrow = next((s for s in result["summary"] if s["scenario"] == "all"), None)
    if allrow is not None:
        lines += ["", f"Targets: probe p99 <= 50 ms under `all`: **{'met' if allrow['target_probe_p99_met'] else 'not met'}**"
                  f" ({allrow['probe_p99_ms']:.1f} ms); 503 beyond the limit < 50 ms: "
                  f"**{'met' if allrow['target_503_met'] else 'not met'}**."]
    lines += ["", MARK_END]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated subset to run")
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--policyholders", type=int, default=1500)
    p.add_argument("--omp-threads", default="1")
    p.add_argument("--no-docs", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "hardening.json")
    p.add_argument("--workdir", type=Path, default=None)
    a = p.parse_args(argv)
    work = a.workdir or TMP_DIR / f"hardening-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}"
    (work / "logs").mkdir(parents=True, exist_ok=True)
    env = base_env(work / "data", a.omp_threads)
    setup = prepare_model(work, env, smoke=True, policyholders=a.policyholders, max_iter=60)
    spec_path = Path(setup["spec_path"])
    from inference_service.guard import hash_key
    from tests.infra.ports import free_port

    port = free_port()
    serve_env = {**env, "FTI_API_KEYS": f"bench:{hash_key(KEY)}:predict", "FTI_ALLOWED_HOSTS": "127.0.0.1",
                 "FTI_PREDICTION_LOG": "true"}
    log_file = (work / "logs" / "serve.log").open("wb")
    server = subprocess.Popen([str(Path(sys.executable).parent / "fti"), "serve", "--spec", str(spec_path), "--port",
                               str(port)], env=serve_env, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT,
                              start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                if httpx.get(f"{url}/health/ready", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"fti serve not ready: {(work / 'logs' / 'serve.log').read_text()[-3000:]}")
            time.sleep(0.5)
        files = bodies(spec_path)
        log("bodies: " + ", ".join(f"{k} {len(v) / 1e6:.2f} MB" for k, v in files.items()))
        load0 = os.getloadavg()[0]
        runs = []
        for r in range(a.rounds):
            chosen = [s for s in SCENARIOS if s in a.scenarios.split(",")]
            order = chosen if r % 2 == 0 else chosen[::-1]
            for scenario in order:
                res = run_scenario(url, files, scenario, a.duration, work)
                res["round"] = r
                runs.append(res)
                log(f"round {r} {scenario}: probe p99 {res['probe_ms']['p99']} ms, statuses {res['statuses']}")
                time.sleep(1.0)
        result = {"finished_at": datetime.now(UTC).isoformat(timespec="seconds"), "rounds": a.rounds,
                  "duration_s": a.duration, "machine": machine_description(a.omp_threads),
                  "load_1m": [round(load0, 2), round(os.getloadavg()[0], 2)], "setup": setup,
                  "body_bytes": {k: len(v) for k, v in files.items()}, "runs": runs, "summary": summarise(runs)}
    finally:
        server.terminate()
        try:
            server.wait(timeout=40)
        except subprocess.TimeoutExpired:
            server.kill()
        log_file.close()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    if not a.no_docs:
        from bench.report import update_benchmarks_doc

        update_benchmarks_doc(render(result), MARK_BEGIN, MARK_END,
                              new_heading="## Probes under hostile load (`bench/hardening.py`)")
    print(render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
