"""The monitor at scale, and what it costs serving (issue 13, acceptance point 3).

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.monitoring [--rows 1000000] [--rounds 3] [--duration 10]

1. **Set-up** (throwaway folder): the demo data (4,000 policyholders), a feature version, a model.
2. **A real prediction log**: ``fti serve`` with the log on, fed 1,000-record ``POST /predict`` requests
   over HTTP (the demo's records, each pass with fresh claim ids; the last fifth with inflated claim
   amounts, so the monitor has drift to find) until ``--rows`` predictions are logged.
3. **One monitor pass** (``fti monitor run``, a subprocess with its default jobs: every window turned
   back into model inputs with history, drift on every feature, realized performance, reports written;
   windows of the spec's ``window_rows``, 1,000 for the demo): wall time and the peak summed RSS of the
   process and its worker processes (sampled from ``/proc``).
4. **Serving with and without**: single-record ``/predict`` at c=8 with ``wrk``, in interleaved rounds:
   *off* = ``FTI_PREDICTION_LOG=false`` and no monitor; *thread* = the log written from a thread of the server
   (``FTI_PREDICTION_LOG_PROCESS=false``); *log* = the log on (its writer process), no monitor; *on* = the log on
   and ``fti monitor serve`` beside the server (what compose runs; its default priority: niceness 10 and
   ``SCHED_IDLE``), a pass every ``--monitor-interval`` seconds (10; the service's default is 60, so every
   round holds passes over the rows it logged); *stress* = the same with a pass every second, where a
   pass's fixed cost is paid 60 times as often as by default; *idle* = the log off and, beside the server, a
   process that only spins a CPU under ``SCHED_IDLE``: no fti code, so it measures what the machine charges
   serving for background CPU at the lowest priority Linux has, the floor under *log* and *on*. p99 medians and
   ratios; the monitor's CPU seconds in each round (it and its worker processes).

Writes ``bench/results/monitoring.json`` and the ``monitoring-bench`` section of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import loadgen
from bench.servers import ServerProcess, TreeRss
from bench.serving import (
    TMP_DIR,
    VENV_BIN,
    base_env,
    log,
    machine_description,
    prepare_model,
    target_configs,
)

# log off / the log written from a thread of the server (FTI_PREDICTION_LOG_PROCESS=false) / the log on (its
# writer process: the default) / the log on and `fti monitor serve` beside the server, at --monitor-interval /
# the same, a pass every second / the log off and a CPU-bound process under SCHED_IDLE beside the server (what any
# background CPU costs serving on this machine, whatever its priority: the floor under "log" and "on")
MODES = ("off", "thread", "log", "on", "stress", "idle")
_SPINNER = "import os\nos.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\nwhile True:\n    pass\n"
MARK_BEGIN, MARK_END = "<!-- monitoring-bench:begin -->", "<!-- monitoring-bench:end -->"


def _records(spec_path: Path) -> list[dict[str, Any]]:
    from tests.helpers import raw_json_records

    return raw_json_records(spec_path.parent / "raw" / "claims.csv", spec_path)


def fill_log(url: str, records: list[dict[str, Any]], rows: int, *, workers: int = 2) -> dict[str, Any]:
    """``rows`` predictions through ``POST /predict`` (1,000 records per request), fresh ids per pass."""
    import httpx

    batches: list[list[dict[str, Any]]] = []
    total, rep = 0, 0
    while total < rows:
        shifted = total >= rows * 0.8
        for i in range(0, len(records), 1000):
            chunk = []
            for r in records[i:i + 1000][: rows - total]:
                r = dict(r, claim_id=f"{r['claim_id']}-{rep}")
                if shifted and r.get("claim_amount") is not None:
                    r["claim_amount"] = round(r["claim_amount"] * 1.5, 2)
                chunk.append(r)
            if chunk:
                batches.append(chunk)
                total += len(chunk)
            if total >= rows:
                break
        rep += 1
    lock = threading.Lock()
    failures: list[str] = []
    retries = [0]

    def work(part: list[list[dict[str, Any]]]) -> None:
        with httpx.Client(timeout=300) as c:
            for body in part:
                for _ in range(100):  # a 503 "overloaded" says when to retry (Retry-After), as a client would
                    r = c.post(f"{url}/predict", json={"records": body})
                    if r.status_code != 503:
                        break
                    with lock:
                        retries[0] += 1
                    time.sleep(float(r.headers.get("Retry-After", "1")) / 10)
                if r.status_code != 200:
                    with lock:
                        failures.append(f"{r.status_code} {r.text[:200]}")
    t0 = time.monotonic()
    threads = [threading.Thread(target=work, args=(batches[k::workers],)) for k in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise RuntimeError(f"{len(failures)} requests failed while filling the log: {failures[:3]}")
    return {"rows": total, "requests": len(batches), "retried_503": retries[0],
            "seconds": round(time.monotonic() - t0, 1)}


def logged_rows(data_dir: Path) -> int:
    from shared.db import make_engine
    from shared.prediction_table import count_predictions

    engine = make_engine(f"sqlite:///{data_dir / 'features.db'}")
    try:
        return count_predictions(engine)
    finally:
        engine.dispose()


def monitor_pass(spec_path: Path, env: dict[str, str], out: Path, log_path: Path) -> dict[str, Any]:
    """One ``fti monitor run`` subprocess (its default jobs): wall time, the peak summed RSS of it and its
    worker processes (sampled), its own peak RSS (wait4), its summary."""
    argv = [str(VENV_BIN / "fti"), "monitor", "run", "--spec", str(spec_path), "--json", "--out", str(out)]
    t0 = time.monotonic()
    with log_path.open("ab") as err:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=err)
        assert proc.stdout is not None
        with TreeRss(proc.pid) as tree:
            stdout = proc.stdout.read()
            _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"fti monitor run failed ({status}); see {log_path}")
    summary = json.loads(stdout)
    reports = summary["reports"]
    from shared.cpu_priority import usable_cpus

    return {"seconds": round(seconds, 2), "peak_rss_mib": round(max(tree.peak_kib, usage.ru_maxrss) / 1024, 1),
            "parent_peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
            "jobs": int(env.get("FTI_MONITOR_JOBS") or 0) or min(4, usable_cpus()),
            "windows": len(reports), "rows": sum(r["rows"] for r in reports),
            "drifted_windows": sum(1 for r in reports if r["drift"]),
            "new_reports": summary["new"]}


class MonitorService:
    """``fti monitor serve`` (what compose runs) on the bench's store, a pass every ``interval`` seconds,
    until stopped: each pass reads the log, reports the windows the load added, applies the retraining
    policy."""

    def __init__(self, spec_path: Path, env: dict[str, str], reports: Path, log_path: Path, interval: float):
        from bench.servers import free_port

        self.port = free_port()
        self.argv = [str(VENV_BIN / "fti"), "monitor", "serve", "--spec", str(spec_path), "--port", str(self.port)]
        self.env = dict(env, FTI_MONITOR_INTERVAL_SECONDS=str(interval), FTI_REPORTS_DIR=str(reports))
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def passes(self) -> int:
        import httpx

        try:
            return int(httpx.get(f"http://127.0.0.1:{self.port}/health/ready", timeout=5).json()["passes"])
        except Exception:  # noqa: BLE001 - not answering yet
            return 0

    def __enter__(self) -> MonitorService:
        out = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=out, start_new_session=True)
        deadline = time.monotonic() + 240
        while self.passes() < 1:  # the first pass done: the service is in its steady state
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"fti monitor serve did not complete a pass; see {self.log_path}")
            time.sleep(0.5)
        return self

    def cpu_seconds(self) -> float:
        from bench.servers import tree_cpu_seconds

        return tree_cpu_seconds(self.proc.pid) if self.proc is not None else 0.0

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=60)


def serving_rounds(spec_path: Path, model: dict[str, Any], env: dict[str, str], work: Path, *, rounds: int,
                   duration: int, body: Path, monitor_interval: float) -> list[dict[str, Any]]:
    runs = []
    for r in range(rounds):
        for mode in (MODES if r % 2 == 0 else MODES[::-1]):
            e = dict(env, FTI_PREDICTION_LOG="false" if mode in ("off", "idle") else "true",
                     FTI_RELOAD_INTERVAL_SECONDS="0",
                     FTI_PREDICTION_LOG_PROCESS="false" if mode == "thread" else "true")
            config = target_configs(spec_path, model, e, stand_in=False)["fti"]
            server = ServerProcess(config, work / "logs" / f"serve-{mode}-{r}.log")
            server.start()
            try:
                server.wait_ready(timeout=240)
                from bench.predict import wait_online_fast

                wait_online_fast(server)
                loadgen.run_wrk(f"{server.url}/predict", body, connections=8, threads=2, duration_s=2, timeout_s=30)
                loop = MonitorService(spec_path, env, work / "reports-loop", work / "logs" / "monitor-serve.log",
                                      monitor_interval if mode == "on" else 1.0) if mode in ("on", "stress") else None
                passes0 = loop.__enter__().passes() if loop is not None else 0
                cpu0 = loop.cpu_seconds() if loop is not None else 0.0
                spinner = subprocess.Popen([sys.executable, "-c", _SPINNER]) if mode == "idle" else None
                try:
                    load0 = os.getloadavg()[0]
                    res = loadgen.run_wrk(f"{server.url}/predict", body, connections=8, threads=2,
                                          duration_s=duration, timeout_s=30, log_path=work / "logs" / "wrk.log")
                    passes = loop.passes() - passes0 if loop is not None else 0
                    cpu = loop.cpu_seconds() - cpu0 if loop is not None else 0.0
                finally:
                    if spinner is not None:
                        spinner.kill()
                        spinner.wait()
                    if loop is not None:
                        loop.__exit__(None, None, None)
                res.update(round=r, mode=mode, load_avg_1m=[load0, os.getloadavg()[0]], monitor_passes=passes,
                           monitor_cpu_seconds=round(cpu, 2),
                           prediction_log=log_drained(server.url) if mode not in ("off", "idle") else None)
                log(f"round {r + 1} {mode:<6} {res['req_per_s']:8.1f} req/s  p50 {res['latency_ms']['p50']:6.2f} ms  "
                    f"p99 {res['latency_ms']['p99']:6.2f} ms  non-2xx {res['non_2xx']}  log {res['prediction_log']}")
                runs.append(res)
            finally:
                server.stop()
    return runs


def paired_ratios(runs: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Each mode's p99 over the same round's *off* p99, round by round: the spread says how much of a
    median ratio this machine can resolve (rounds are interleaved, so a pair shares the machine's state)."""
    off = {r["round"]: r["latency_ms"]["p99"] for r in runs if r["mode"] == "off"}
    return {mode: [round(r["latency_ms"]["p99"] / off[r["round"]], 3) for r in runs
                   if r["mode"] == mode and r["round"] in off] for mode in MODES if mode != "off"}


def log_drained(url: str, timeout: float = 60.0) -> dict[str, Any]:
    """The server's prediction-log counters once every accepted row is written (or ``timeout``): a mode that
    kept p99 low by dropping or deferring rows would show here."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        stats = httpx.get(f"{url}/health/ready", timeout=10).json()["prediction_log"]
        if stats["pending"] == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return {k: stats.get(k) for k in ("mode", "submitted", "written", "dropped", "failed", "pending",
                                      "writer_cpu_seconds")}


def markdown(result: dict[str, Any]) -> str:
    m, s = result["monitor"], result["serving"]
    lines = [MARK_BEGIN, "## Monitoring at scale (`bench/monitoring.py`)", "",
             f"Run {result['started_at']} on {os.cpu_count()} CPUs, load average (1 min) "
             f"{result['load_avg_1m'][0]:.2f} at start and {result['load_avg_1m'][-1]:.2f} at the end. "
             f"Prediction log filled over HTTP: {result['fill']['rows']:,} predictions in "
             f"{result['fill']['requests']:,} requests ({result['fill']['seconds']} s).", "",
             "| measure | value | target |", "|---|---|---|",
             f"| one `fti monitor run` over the whole log: wall time | {m['seconds']} s | <= 60 s |",
             f"| ... its peak RSS, its {m['jobs']} worker processes included (summed) | {m['peak_rss_mib']} MiB "
             "| <= 2048 MiB |",
             f"| ... windows reported (the spec's `window_rows` each) / with drift | {m['windows']} / {m['drifted_windows']} | |",
             f"| ... rows processed | {m['rows']:,} | |",
             f"| `/predict` one record, c=8, p99 median: log off, no monitor | {s['p99_off_ms']:.2f} ms | |",
             f"| ... log written from a thread of the server (`FTI_PREDICTION_LOG_PROCESS=false`) "
             f"| {s['p99_thread_ms']:.2f} ms (x{s['p99_thread_ratio']:.3f}) | |",
             f"| ... log on (its writer process, the default), no monitor | {s['p99_log_ms']:.2f} ms "
             f"(x{s['p99_log_ratio']:.3f}) | |",
             f"| ... log on and `fti monitor serve`, a pass every {s['monitor_interval']:g} s | {s['p99_on_ms']:.2f} ms "
             "| |",
             f"| ... ratio on / off | {s['p99_ratio']:.3f} | <= 1.05 |",
             "| ... on / off round by round (each against the same round's off) | "
             + ", ".join(f"{x:.2f}" for x in s["p99_ratio_rounds"]["on"]) + " | |",
             "| ... log / off round by round | " + ", ".join(f"{x:.2f}" for x in s["p99_ratio_rounds"]["log"])
             + " | |",
             f"| ... monitor passes / its CPU seconds per measured round (medians) | {s['monitor_passes']} / "
             f"{s['monitor_cpu_seconds']} | |",
             f"| ... stress: a pass every second | {s['p99_stress_ms']:.2f} ms (x{s['p99_stress_ratio']:.3f}); "
             f"{s['stress_passes']} passes, {s['stress_cpu_seconds']} CPU s a round | |",
             f"| ... log off, a CPU spinner under SCHED_IDLE beside the server (the machine's floor) | "
             f"{s['p99_idle_ms']:.2f} ms (x{s['p99_idle_ratio']:.3f}); round by round "
             + ", ".join(f"{x:.2f}" for x in s["p99_ratio_rounds"]["idle"]) + " | |",
             f"| ... throughput on / off | {s['rps_ratio']:.3f} | |",
             f"| ... throughput: thread / off, log / off | {s['rps_thread'] / s['rps_off']:.3f}, "
             f"{s['rps_log'] / s['rps_off']:.3f} | |",
             f"| ... rows logged in the measured rounds / dropped / failed / not written | {s['log_written']:,} / "
             f"{s['log_dropped']} / {s['log_failed']} / {s['log_pending']} | 0 lost |", "",
             "Serving and the monitor share the machine's 2 cores here (and with `wrk`); in compose the "
             "monitor is its own container, which a real deployment places on other cores or hosts.",
             MARK_END]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--policyholders", type=int, default=4000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=int, default=20)
    p.add_argument("--monitor-interval", type=float, default=10.0,
                   help="the 'on' mode's FTI_MONITOR_INTERVAL_SECONDS (the service's default: 60)")
    p.add_argument("--json", help="default: bench/results/monitoring.json (smoke: in the work folder)")
    p.add_argument("--workdir")
    p.add_argument("--smoke", action="store_true", help="tiny: a harness check, numbers mean nothing")
    args = p.parse_args(argv)
    if args.smoke:
        args.rows, args.policyholders, args.rounds, args.duration = min(args.rows, 12_000), 300, 1, 2
        args.monitor_interval = 1.0
    work = Path(args.workdir) if args.workdir else TMP_DIR / f"monitoring-{int(time.time())}-{os.getpid()}"
    (work / "logs").mkdir(parents=True, exist_ok=True)
    env = base_env(work / "data", os.environ.get("OMP_NUM_THREADS", "1"))
    started = datetime.now(UTC).isoformat(timespec="seconds")
    load = [os.getloadavg()[0]]
    setup = prepare_model(work, env, smoke=args.smoke, policyholders=args.policyholders, max_iter=None)
    spec_path = Path(setup["spec_path"])
    from bench.serving import resolve_model

    model = resolve_model(spec_path, env)
    records = _records(spec_path)
    config = target_configs(spec_path, model, dict(env, FTI_RELOAD_INTERVAL_SECONDS="0"), stand_in=False)["fti"]
    server = ServerProcess(config, work / "logs" / "fill.log")
    server.start()
    try:
        server.wait_ready(timeout=240)
        fill = fill_log(server.url, records, args.rows)
    finally:
        server.stop()
    n = logged_rows(work / "data")
    log(f"prediction log: {n:,} rows ({fill['seconds']} s to fill)")
    if n != fill["rows"]:
        raise RuntimeError(f"{fill['rows']} predictions answered, {n} logged")
    mon = monitor_pass(spec_path, env, work / "reports", work / "logs" / "monitor.log")
    log(f"monitor pass: {mon['seconds']} s, peak RSS {mon['peak_rss_mib']} MiB, {mon['windows']} windows, "
        f"{mon['drifted_windows']} with drift")
    body = work / "single.json"
    body.write_text(json.dumps({"records": [records[0]]}))
    runs = serving_rounds(spec_path, model, env, work, rounds=args.rounds, duration=args.duration, body=body,
                          monitor_interval=args.monitor_interval)
    load.append(os.getloadavg()[0])

    def med(mode: str, key: str) -> float:
        vals = [r["latency_ms"]["p99"] if key == "p99" else r["req_per_s"] for r in runs if r["mode"] == mode]
        return float(statistics.median(vals))

    logged = [r["prediction_log"] for r in runs if r["prediction_log"]]
    def med_of(mode: str, key: str) -> float:
        return float(statistics.median([r[key] for r in runs if r["mode"] == mode]))

    serving = {"p99_off_ms": med("off", "p99"), "p99_thread_ms": med("thread", "p99"), "p99_log_ms": med("log", "p99"),
               "p99_on_ms": med("on", "p99"), "p99_stress_ms": med("stress", "p99"), "p99_idle_ms": med("idle", "p99"),
               "rps_off": med("off", "rps"), "rps_thread": med("thread", "rps"),
               "rps_log": med("log", "rps"), "rps_on": med("on", "rps"), "rps_idle": med("idle", "rps"),
               **{f"log_{k}": sum(int(x[k] or 0) for x in logged) for k in ("written", "dropped", "failed", "pending")},
               "monitor_interval": args.monitor_interval, "monitor_passes": med_of("on", "monitor_passes"),
               "monitor_cpu_seconds": med_of("on", "monitor_cpu_seconds"),
               "stress_passes": med_of("stress", "monitor_passes"),
               "stress_cpu_seconds": med_of("stress", "monitor_cpu_seconds")}
    serving["p99_log_ratio"] = serving["p99_log_ms"] / serving["p99_off_ms"]
    serving["p99_thread_ratio"] = serving["p99_thread_ms"] / serving["p99_off_ms"]
    serving["p99_ratio_rounds"] = paired_ratios(runs)
    serving["p99_ratio"] = serving["p99_on_ms"] / serving["p99_off_ms"]
    serving["p99_stress_ratio"] = serving["p99_stress_ms"] / serving["p99_off_ms"]
    serving["p99_idle_ratio"] = serving["p99_idle_ms"] / serving["p99_off_ms"]
    serving["rps_ratio"] = serving["rps_on"] / serving["rps_off"]
    result = {"started_at": started, "mode": "smoke" if args.smoke else "full", "rows": args.rows,
              "setup": setup, "fill": fill, "monitor": mon, "serving": serving, "runs": runs,
              "load_avg_1m": load, "machine": machine_description(env["OMP_NUM_THREADS"]),
              "targets": {"monitor_seconds": {"target": 60, "met": mon["seconds"] <= 60},
                          "monitor_rss_mib": {"target": 2048, "met": mon["peak_rss_mib"] <= 2048},
                          "p99_ratio": {"target": 1.05, "met": serving["p99_ratio"] <= 1.05}}}
    from bench.report import publish_results

    publish_results(result, markdown(result), name="monitoring", args=args, work=work, marks=(MARK_BEGIN, MARK_END),
                    summary_keys=("monitor", "serving", "targets"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
