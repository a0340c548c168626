"""Serving benchmark: fti's inference service vs ``mlflow models serve`` on the SAME registered model version.

    .venv/bin/python -m bench.serving [--smoke] [--rounds N] [--duration S] [--out PATH] [--json PATH]

Builds a throwaway data dir (``fti data generate`` -> ``fti features run`` -> ``fti train``, embedded
SQLite feature store + local MLflow store), starts both servers on fresh loopback ports, checks that
they return identical predictions for the benchmark bodies (parity gate), then drives them with
``wrk`` in interleaved rounds, measures ready time over restarts and the memory of each process
tree, and writes a JSON file with every raw number plus a Markdown report. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from bench import loadgen, report
from bench.servers import ServerError, ServerProcess, TargetConfig, http_request, machine_busy_seconds, start_ready

REPO = Path(__file__).resolve().parent.parent
DEMO_SPEC = REPO / "specs" / "claims.yaml"
RESULTS_DIR = REPO / "bench" / "results"
TMP_DIR = RESULTS_DIR / "tmp"  # gitignored
VENV_BIN = Path(sys.executable).parent
SCHEMA = "fti-bench-serving/1"
TARGET_NAMES = ("fti", "mlflow")
PYCACHE_DIR = TMP_DIR / "pycache"
# Average cores used by processes other than the two servers and wrk during a run above which the
# run is flagged as disturbed (this machine may be shared).
BUSY_BACKGROUND_CORES = 0.25


@dataclass(frozen=True)
class Scenario:
    id: str
    title: str
    body: str          # key into the request bodies
    rows: int          # rows per request
    connections: int


SCENARIOS = (
    Scenario("single_c1", "single row, concurrency 1", "single", 1, 1),
    Scenario("single_c8", "single row, concurrency 8", "single", 1, 8),
    Scenario("batch100_c8", "100-row batch, concurrency 8", "batch100", 100, 8),
)

# From the issue. Each is evaluated from measured numbers only.
TARGETS = (
    {"id": "single_c8_throughput_ratio", "title": "single-row throughput at c8 >= 10x mlflow",
     "threshold": 10.0, "op": ">="},
    {"id": "fti_single_c8_p99_ms", "title": "fti p99 latency at c8 (single row) <= 10 ms",
     "threshold": 10.0, "op": "<="},
    {"id": "batch100_rows_per_s_ratio", "title": "100-row batch rows/s at c8 >= 10x mlflow",
     "threshold": 10.0, "op": ">="},
    {"id": "fti_ready_s", "title": "fti ready time (cached model) <= 2 s", "threshold": 2.0, "op": "<="},
    {"id": "rss_ratio", "title": "fti RSS <= 60% of mlflow's", "threshold": 0.6, "op": "<="},
)

_live: list[ServerProcess] = []


def log(msg: str) -> None:
    print(f"[bench {datetime.now().strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- setup

def write_spec(folder: Path, *, smoke: bool, max_iter: int | None) -> Path:
    """The demo spec with its source moved into ``folder`` (so nothing touches ./data);
    the smoke run also trains fewer boosting iterations."""
    data = yaml.safe_load(DEMO_SPEC.read_text())
    data["source"]["path"] = "raw/claims.csv"
    if max_iter is not None:
        data["model"]["estimator"]["params"]["max_iter"] = max_iter
    elif smoke:
        data["model"]["estimator"]["params"]["max_iter"] = 20
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "claims.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def base_env(data_dir: Path, omp_threads: str) -> dict[str, str]:
    """The environment of every fti/mlflow process: no inherited FTI_*/MLFLOW_* settings, the local
    stores in ``data_dir``, the venv first on PATH (mlflow models serve execs ``uvicorn``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FTI_", "MLFLOW_"))}
    store = f"sqlite:///{data_dir / 'mlflow.db'}"
    env.update({
        "FTI_DATA_DIR": str(data_dir),
        "MLFLOW_TRACKING_URI": store,
        "MLFLOW_REGISTRY_URI": store,
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "OMP_NUM_THREADS": omp_threads,
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        "PYTHONUNBUFFERED": "1",
        # Byte-code cache of our own: the venv may ship without .pyc files and the environment may say
        # PYTHONDONTWRITEBYTECODE; then every start would recompile mlflow, sklearn, pandas...
        "PYTHONPYCACHEPREFIX": str(PYCACHE_DIR),
    })
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def run_step(argv: list[str], env: dict[str, str], log_path: Path, timeout: float = 1800) -> float:
    log(f"$ {' '.join(Path(argv[0]).name if i == 0 else a for i, a in enumerate(argv))}")
    t0 = time.monotonic()
    with log_path.open("ab") as out:
        out.write(f"\n$ {' '.join(argv)}\n".encode())
        out.flush()
        res = subprocess.run(argv, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, timeout=timeout,
                             stdin=subprocess.DEVNULL)
    seconds = time.monotonic() - t0
    if res.returncode != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{' '.join(argv)} exited with {res.returncode} after {seconds:.1f}s:\n{tail}")
    return seconds


def prepare_model(work: Path, env: dict[str, str], *, smoke: bool, policyholders: int,
                  max_iter: int | None) -> dict[str, Any]:
    spec_path = write_spec(work / "spec", smoke=smoke, max_iter=max_iter)
    fti = str(VENV_BIN / "fti")
    setup_log = work / "logs" / "setup.log"
    steps = []
    for argv in ([fti, "data", "generate", "--spec", str(spec_path), "--policyholders", str(policyholders)],
                 [fti, "features", "run", "--spec", str(spec_path)],
                 [fti, "train", "--spec", str(spec_path)]):
        steps.append({"command": argv[1:3], "seconds": round(run_step(argv, env, setup_log), 3)})
    return {"spec_path": str(spec_path), "steps": steps, "policyholders": policyholders}


def resolve_model(spec_path: Path, env: dict[str, str]) -> dict[str, Any]:
    """The version the alias ``champion`` points at (what fti serves) and its signature columns."""
    import mlflow
    from mlflow import MlflowClient

    from shared.spec import load_spec

    spec = load_spec(spec_path).spec
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"], registry_uri=env["MLFLOW_REGISTRY_URI"])
    mv = client.get_model_version_by_alias(spec.model.name, "champion")
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    mlflow.set_registry_uri(env["MLFLOW_REGISTRY_URI"])
    info = mlflow.models.get_model_info(f"models:/{spec.model.name}/{mv.version}")
    columns = info.signature.inputs.input_names() if info.signature is not None else list(spec.model_features)
    if list(columns) != list(spec.model_features):
        raise RuntimeError(f"signature columns {columns} differ from the spec's model features {spec.model_features}")
    return {"name": spec.model.name, "version": str(mv.version), "alias": "champion", "run_id": mv.run_id,
            "columns": list(columns), "tags": {k: v for k, v in (mv.tags or {}).items() if k.startswith("fti.")}}


def build_bodies(spec_path: Path, data_dir: Path, columns: list[str], *, seed: int = 20260101,
                 batch_rows: int = 100) -> dict[str, Any]:
    """Request bodies in MLflow's ``dataframe_split`` format from the feature table's rows
    (missing values as JSON null, never NaN)."""
    from shared import feature_table as ft
    from shared.db import make_engine
    from shared.spec import load_spec

    spec = load_spec(spec_path).spec
    engine = make_engine(f"sqlite:///{data_dir / 'features.db'}")
    try:
        info = ft.get_version(engine, spec.name)
        frame = ft.read_version(engine, spec, info.version)
    finally:
        engine.dispose()
    if len(frame) < batch_rows:
        raise RuntimeError(f"feature version {info.version} has {len(frame)} rows; the batch needs {batch_rows}")
    picks = random.Random(seed).sample(range(len(frame)), batch_rows)
    kinds = {c: spec.feature_kind(c) for c in columns}

    def cell(value: Any, kind: str) -> Any:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        return float(value) + 0.0 if kind == "numeric" else str(value)

    rows = []
    for i in picks:
        rec = frame.iloc[i]
        rows.append([cell(rec[c], kinds[c]) for c in columns])
    bodies = {"single": {"dataframe_split": {"columns": columns, "data": rows[:1]}},
              "batch100": {"dataframe_split": {"columns": columns, "data": rows}}}
    nulls = sum(v is None for r in rows for v in r)
    return {"feature_version": info.version, "feature_rows": len(frame), "bodies": bodies,
            "record_ids": [str(frame.iloc[i][spec.record_id]) for i in picks], "null_cells_in_batch": nulls}


def target_configs(spec_path: Path, model: dict[str, Any], env: dict[str, str], *,
                   stand_in: bool) -> dict[str, TargetConfig]:
    mlflow_argv = [str(VENV_BIN / "mlflow"), "models", "serve", "-m", f"models:/{model['name']}/{model['version']}",
                   "--env-manager", "local", "--host", "127.0.0.1", "--port", "{port}", "--workers", "1"]
    fti_argv = [str(VENV_BIN / "fti"), "serve", "--spec", str(spec_path), "--host", "127.0.0.1", "--port", "{port}"]
    mlflow = TargetConfig("mlflow", mlflow_argv, env, ("/ping",), REPO,
                          "mlflow models serve (FastAPI + uvicorn, 1 worker), --env-manager local")
    if stand_in:
        fti = TargetConfig("fti", mlflow_argv, env, ("/ping",), REPO,
                           "STAND-IN: a second `mlflow models serve` in place of fti (harness self-test)")
    else:
        fti = TargetConfig("fti", fti_argv, env, ("/ping", "/health/ready"), REPO,
                           "fti serve (FastAPI + uvicorn, 1 worker), alias champion")
    return {"fti": fti, "mlflow": mlflow}


# ----------------------------------------------------------------------------- phases

def check_served_version(server: ServerProcess, expected: str) -> str | None:
    """fti serves the alias; make sure it resolved to the version mlflow was started with
    (``/health/ready`` names it; None when the target has no such endpoint, e.g. the stand-in)."""
    status, raw = http_request(server.port, "GET", "/health/ready", timeout=30)
    if status == 404:
        return None
    try:
        version = str(json.loads(raw)["model_version"])
    except (ValueError, KeyError, TypeError):
        raise RuntimeError(f"fti /health/ready answered {status} without a model_version: {raw[:300]!r}") from None
    if version != expected:
        raise RuntimeError(f"fti serves version {version} but mlflow serves {expected}: not the same model")
    return version


def parity_gate(servers: dict[str, ServerProcess], body_files: dict[str, Path],
                row_counts: dict[str, int]) -> dict[str, Any]:
    checks = []
    for name, path in body_files.items():
        payload = path.read_bytes()
        answers: dict[str, Any] = {}
        check: dict[str, Any] = {"body": name, "rows": row_counts[name]}
        for target, server in servers.items():
            status, raw = http_request(server.port, "POST", "/invocations", payload, timeout=120)
            check[f"{target}_status"] = status
            try:
                answers[target] = json.loads(raw)
            except ValueError:
                answers[target] = None
            if status != 200:
                check[f"{target}_error"] = raw[:500].decode(errors="replace")
        preds = {t: (a.get("predictions") if isinstance(a, dict) else None) for t, a in answers.items()}
        shape_ok = all(isinstance(p, list) and len(p) == row_counts[name] and
                       all(isinstance(r, list) and len(r) == len(p[0]) for r in p) for p in preds.values())
        check["shape_ok"] = shape_ok
        identical = shape_ok and preds["fti"] == preds["mlflow"]
        check["identical"] = bool(identical)
        if shape_ok and not identical and len(preds["fti"]) == len(preds["mlflow"]):
            diffs = [abs(a - b) for ra, rb in zip(preds["fti"], preds["mlflow"], strict=True)
                     for a, b in zip(ra, rb, strict=False)]
            check["max_abs_diff"] = max(diffs) if diffs else None
            check["differing_rows"] = sum(ra != rb for ra, rb in zip(preds["fti"], preds["mlflow"], strict=True))
        if shape_ok:
            check["first_prediction"] = preds["mlflow"][0]
        checks.append(check)
    return {"passed": all(c["identical"] for c in checks), "comparison": "exact float equality of `predictions`",
            "checks": checks}


def load_rounds(servers: dict[str, ServerProcess], body_files: dict[str, Path], runs: list[dict[str, Any]], *,
                rounds: int, duration: int, warmup: int, wrk_threads: int, wrk_timeout: int, logs: Path) -> None:
    """wrk runs, appended to ``runs`` as they finish (an interrupted run keeps what it measured)."""
    wrk_log = logs / "wrk.log"
    if warmup > 0:
        for target, server in servers.items():
            for sc in SCENARIOS:
                log(f"warm-up {target} {sc.id} {warmup}s")
                loadgen.run_wrk(f"{server.url}/invocations", body_files[sc.body], connections=sc.connections,
                                threads=wrk_threads, duration_s=warmup, timeout_s=wrk_timeout, log_path=wrk_log)
    for r in range(rounds):
        for si, sc in enumerate(SCENARIOS):
            order = TARGET_NAMES if (r + si) % 2 == 0 else TARGET_NAMES[::-1]
            for position, target in enumerate(order):
                time.sleep(0.5)  # let the previous run's connections close
                before = _cpu_snapshot(servers)
                res = loadgen.run_wrk(f"{servers[target].url}/invocations", body_files[sc.body],
                                      connections=sc.connections, threads=wrk_threads, duration_s=duration,
                                      timeout_s=wrk_timeout, log_path=wrk_log)
                res["cpu_cores"] = _cpu_cores(before, _cpu_snapshot(servers), target)
                res.update({"round": r, "scenario": sc.id, "target": target, "position": position,
                            "rows_per_request": sc.rows, "rows_per_s": res["req_per_s"] * sc.rows})
                flag = "  ERRORS" if res["has_errors"] else ""
                if res["cpu_cores"]["background"] > BUSY_BACKGROUND_CORES:
                    flag += f"  (background load {res['cpu_cores']['background']:.2f} cores)"
                log(f"round {r + 1}/{rounds} {sc.id:<12} {target:<6} {res['req_per_s']:9.1f} req/s  "
                    f"p50 {res['latency_ms']['p50']:8.2f} ms  p99 {res['latency_ms']['p99']:8.2f} ms  "
                    f"non-2xx {res['non_2xx']}{flag}")
                runs.append(res)


def _cpu_snapshot(servers: dict[str, ServerProcess]) -> dict[str, float]:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk is a waited-for child of this process
    return {"t": time.monotonic(), "machine": machine_busy_seconds(), "children": ru.ru_utime + ru.ru_stime,
            **{f"server:{t}": s.cpu_seconds() for t, s in servers.items()}}


def _cpu_cores(a: dict[str, float], b: dict[str, float], target: str) -> dict[str, float]:
    """Average cores used during one run: the server under test, wrk, the idle other server, and
    everything else on the machine (other people's processes: a sign the numbers are disturbed)."""
    wall = b["t"] - a["t"]
    d = {k: (b[k] - a[k]) / wall for k in a if k != "t"}
    other_server = sum(v for k, v in d.items() if k.startswith("server:") and k != f"server:{target}")
    server, wrk = d[f"server:{target}"], d["children"]
    return {"machine_busy": d["machine"], "server": server, "wrk": wrk, "other_server": other_server,
            "background": max(0.0, d["machine"] - server - wrk - other_server)}


def ready_restarts(configs: dict[str, TargetConfig], restarts: int, logs: Path) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {t: [] for t in TARGET_NAMES}
    for i in range(restarts):
        order = TARGET_NAMES if i % 2 == 0 else TARGET_NAMES[::-1]
        for target in order:
            server = start_ready(configs[target], logs / f"{target}.log")
            _live.append(server)
            try:
                out[target].append({"restart": i, "seconds": server.ready_seconds, "path": server.ready_path})
                log(f"ready {target}: {server.ready_seconds:.3f}s (restart {i + 1}/{restarts}, {server.ready_path})")
            finally:
                server.stop()
                _live.remove(server)
    return out


# ----------------------------------------------------------------------------- summary

def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b not in (None, 0) else None


def summarise(results: dict[str, Any]) -> None:
    runs = results.get("runs", [])
    scen: dict[str, Any] = {}
    for sc in SCENARIOS:
        entry: dict[str, Any] = {"title": sc.title, "rows_per_request": sc.rows, "connections": sc.connections}
        for target in TARGET_NAMES:
            rs = [r for r in runs if r["scenario"] == sc.id and r["target"] == target]
            entry[target] = {
                "runs": len(rs),
                "runs_with_errors": sum(r["has_errors"] for r in rs),
                "non_2xx_total": sum(r["non_2xx"] for r in rs),
                "req_per_s_median": _median([r["req_per_s"] for r in rs]),
                "rows_per_s_median": _median([r["rows_per_s"] for r in rs]),
                "p50_ms_median": _median([r["latency_ms"]["p50"] for r in rs]),
                "p99_ms_median": _median([r["latency_ms"]["p99"] for r in rs]),
                "req_per_s_rounds": [r["req_per_s"] for r in rs],
                "server_cores_median": _median([r["cpu_cores"]["server"] for r in rs if "cpu_cores" in r]),
                "background_cores_median": _median([r["cpu_cores"]["background"] for r in rs if "cpu_cores" in r]),
            }
        for key in ("req_per_s_median", "rows_per_s_median", "p50_ms_median", "p99_ms_median"):
            entry[f"ratio_{key}"] = _ratio(entry["fti"][key], entry["mlflow"][key])
        scen[sc.id] = entry
    ready = results.get("ready", {})
    ready_summary = {t: _median([x["seconds"] for x in ready.get(t, [])]) for t in TARGET_NAMES}
    rss = results.get("memory", {})
    rss_summary = {t: (rss.get(t) or {}).get("rss_bytes") for t in TARGET_NAMES}
    pss_summary = {t: (rss.get(t) or {}).get("pss_bytes") for t in TARGET_NAMES}
    results["summary"] = {
        "scenarios": scen,
        "ready_s_median": ready_summary, "ratio_ready_s": _ratio(ready_summary["fti"], ready_summary["mlflow"]),
        "rss_bytes": rss_summary, "ratio_rss": _ratio(rss_summary["fti"], rss_summary["mlflow"]),
        "pss_bytes": pss_summary, "ratio_pss": _ratio(pss_summary["fti"], pss_summary["mlflow"]),
    }
    results["runs_with_errors"] = sum(r["has_errors"] for r in runs)
    results["runs_disturbed"] = sum(r.get("cpu_cores", {}).get("background", 0.0) > BUSY_BACKGROUND_CORES
                                    for r in runs)
    results["targets"] = evaluate_targets(results)


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    s = results["summary"]
    sc = s["scenarios"]

    def clean(*ids: str) -> bool:
        return all(sc[i][t]["runs"] > 0 and sc[i][t]["runs_with_errors"] == 0 for i in ids for t in TARGET_NAMES)

    measured = {
        "single_c8_throughput_ratio": (sc["single_c8"]["ratio_req_per_s_median"], clean("single_c8"),
                                       f"fti {_fmt(sc['single_c8']['fti']['req_per_s_median'])} req/s vs mlflow "
                                       f"{_fmt(sc['single_c8']['mlflow']['req_per_s_median'])} req/s"),
        "fti_single_c8_p99_ms": (sc["single_c8"]["fti"]["p99_ms_median"], clean("single_c8"),
                                 f"median over rounds of wrk's p99; mlflow "
                                 f"{_fmt(sc['single_c8']['mlflow']['p99_ms_median'])} ms"),
        "batch100_rows_per_s_ratio": (sc["batch100_c8"]["ratio_rows_per_s_median"], clean("batch100_c8"),
                                      f"fti {_fmt(sc['batch100_c8']['fti']['rows_per_s_median'])} rows/s vs mlflow "
                                      f"{_fmt(sc['batch100_c8']['mlflow']['rows_per_s_median'])} rows/s"),
        "fti_ready_s": (s["ready_s_median"]["fti"], s["ready_s_median"]["fti"] is not None,
                        f"median of {len(results.get('ready', {}).get('fti', []))} restart(s); mlflow "
                        f"{_fmt(s['ready_s_median']['mlflow'])} s"),
        "rss_ratio": (s["ratio_rss"], s["ratio_rss"] is not None,
                      f"fti {_mib(s['rss_bytes']['fti'])} MiB vs mlflow {_mib(s['rss_bytes']['mlflow'])} MiB"),
    }
    out = []
    for t in TARGETS:
        value, valid, detail = measured[t["id"]]
        if value is None or not valid:
            met = None
        else:
            met = value >= t["threshold"] if t["op"] == ">=" else value <= t["threshold"]
        out.append({**t, "measured": value, "met": met, "detail": detail,
                    "status": "met" if met else ("not met" if met is False else "not evaluated (missing data or errors)")})
    return out


def _fmt(v: float | None, nd: int = 1) -> str:
    return "n/a" if v is None else f"{v:,.{nd}f}"


def _mib(v: float | None) -> str:
    return "n/a" if v is None else f"{v / 2**20:,.0f}"


# ----------------------------------------------------------------------------- machine

def machine_description(omp_threads: str) -> dict[str, Any]:
    import platform
    from importlib import metadata

    def version(pkg: str) -> str | None:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    cpu = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_total = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total = int(line.split()[1]) * 1024
    except OSError:
        pass
    lscpu = shutil.which("lscpu")
    lscpu_model = None
    if lscpu:
        res = subprocess.run([lscpu], capture_output=True, text=True, timeout=10)
        for line in res.stdout.splitlines():
            if line.startswith("Model name:"):
                lscpu_model = line.split(":", 1)[1].strip()
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                                capture_output=True, text=True).stdout.strip())
    return {
        "cpu_model": cpu or lscpu_model, "lscpu_model_name": lscpu_model, "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)), "memory_total_bytes": mem_total,
        "kernel": platform.release(), "platform": platform.platform(), "python": platform.python_version(),
        "packages": {p: version(p) for p in ("mlflow", "mlflow-skinny", "fastapi", "starlette", "uvicorn",
                                            "uvloop", "httptools", "scikit-learn", "numpy", "pandas", "skops",
                                            "fti")},
        "omp_num_threads": omp_threads,
        "openblas_env": {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ},
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
        "wrk": loadgen.wrk_version(), "repo_commit": commit or None, "repo_dirty": dirty,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


# ----------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.serving", description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny model and data, 1 round x 1 s, 1 restart (CI)")
    p.add_argument("--rounds", type=int, help="load rounds (default: 5; smoke 1)")
    p.add_argument("--duration", type=int, help="seconds per wrk run (default: 10; smoke 1)")
    p.add_argument("--warmup", type=int, help="seconds of wrk warm-up per target and scenario (default: 2; smoke 0)")
    p.add_argument("--restarts", type=int, help="restarts for the ready time (default: 3; smoke 1)")
    p.add_argument("--out", type=Path, help="Markdown report (default: bench/results/serving.md; "
                                            "smoke: bench/results/tmp/serving-smoke.md)")
    p.add_argument("--json", type=Path, help="JSON results (default: bench/results/serving.json; "
                                             "smoke: bench/results/tmp/serving-smoke.json)")
    p.add_argument("--workdir", type=Path, help="throwaway data dir and logs (default: a new folder under "
                                                "bench/results/tmp/)")
    p.add_argument("--keep-workdir", action="store_true", help="keep the workdir after a successful run")
    p.add_argument("--policyholders", type=int, help="demo data size (default: 4000; smoke 300)")
    p.add_argument("--max-iter", type=int, help="override the spec's max_iter (default: as is; smoke 20)")
    p.add_argument("--omp-threads", default="1", help="OMP_NUM_THREADS for both servers (default: 1)")
    p.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (capped at connections; default 1)")
    p.add_argument("--wrk-timeout", type=int, default=10, help="wrk per-request timeout in s (default 10)")
    p.add_argument("--stand-in-mlflow-for-fti", action="store_true",
                   help="HARNESS SELF-TEST ONLY: run a second `mlflow models serve` as the 'fti' target")
    args = p.parse_args(argv)
    smoke = args.smoke
    args.rounds = args.rounds or (1 if smoke else 5)
    args.duration = args.duration or (1 if smoke else 10)
    args.warmup = args.warmup if args.warmup is not None else (0 if smoke else 2)
    args.restarts = args.restarts or (1 if smoke else 3)
    args.policyholders = args.policyholders or (300 if smoke else 4000)
    default_stem = TMP_DIR / "serving-smoke" if smoke else RESULTS_DIR / "serving"
    args.out = args.out or default_stem.with_suffix(".md")
    args.json = args.json or default_stem.with_suffix(".json")
    return args


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        loadgen.wrk_path()  # fail before the slow set-up when wrk is missing
    except loadgen.WrkError as exc:
        raise SystemExit(f"bench.serving: {exc}") from None
    PYCACHE_DIR.mkdir(parents=True, exist_ok=True)
    sys.pycache_prefix = str(PYCACHE_DIR)  # this process imports mlflow and pandas too
    sys.dont_write_bytecode = False
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    work = (args.workdir or TMP_DIR / f"serving-{stamp}-{os.getpid()}").resolve()
    if work.exists() and any(work.iterdir()):
        raise SystemExit(f"workdir {work} is not empty")
    data_dir, logs = work / "data", work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = base_env(data_dir, args.omp_threads)
    t_start = time.monotonic()
    results: dict[str, Any] = {
        "schema": SCHEMA, "mode": "smoke" if args.smoke else "full",
        "stand_in": ("the 'fti' target is a second `mlflow models serve` (harness self-test, NOT a measurement "
                     "of fti)") if args.stand_in_mlflow_for_fti else None,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python -m bench.serving", *(argv if argv is not None else sys.argv[1:])]),
        "config": {"rounds": args.rounds, "duration_s": args.duration, "warmup_s": args.warmup,
                   "ready_restarts": args.restarts, "omp_num_threads": args.omp_threads,
                   "wrk_threads": args.wrk_threads, "wrk_timeout_s": args.wrk_timeout,
                   "scenarios": [sc.__dict__ for sc in SCENARIOS], "policyholders": args.policyholders,
                   "max_iter": args.max_iter, "workdir": str(work), "pycache_prefix": str(PYCACHE_DIR),
                   "busy_background_cores": BUSY_BACKGROUND_CORES},
        "machine": machine_description(args.omp_threads),
    }
    log(f"{results['mode']} run in {work}" + (" [STAND-IN: mlflow as 'fti']" if results["stand_in"] else ""))
    exit_code = 0
    try:
        results["setup"] = prepare_model(work, env, smoke=args.smoke, policyholders=args.policyholders,
                                         max_iter=args.max_iter)
        spec_path = Path(results["setup"]["spec_path"])
        model = resolve_model(spec_path, env)
        results["model"] = model
        bodies = build_bodies(spec_path, data_dir, model["columns"])
        body_files = {}
        for name, body in bodies.pop("bodies").items():
            path = work / "bodies" / f"{name}.json"
            path.parent.mkdir(exist_ok=True)
            path.write_text(json.dumps(body, allow_nan=False, separators=(",", ":")))
            body_files[name] = path
        results["bodies"] = bodies | {"files": {k: str(v) for k, v in body_files.items()},
                                      "bytes": {k: v.stat().st_size for k, v in body_files.items()}}
        log(f"model {model['name']}/{model['version']}; bodies {results['bodies']['bytes']} bytes")
        configs = target_configs(spec_path, model, env, stand_in=args.stand_in_mlflow_for_fti)
        results["targets_config"] = {t: {"argv": c.argv_template, "ready_paths": list(c.ready_paths),
                                         "description": c.description} for t, c in configs.items()}

        # Load phase: both servers up (fti's first start also fills its model cache).
        servers: dict[str, ServerProcess] = {}
        try:
            # Started together (this start is not a measurement): saves a start-up's worth of time.
            for target in TARGET_NAMES:
                servers[target] = ServerProcess(configs[target], logs / f"{target}.log")
                servers[target].start()
                _live.append(servers[target])
            for target in TARGET_NAMES:
                try:
                    servers[target].wait_ready(timeout=180)
                except ServerError:
                    if "address already in use" not in servers[target].log_tail().lower():
                        raise
                    servers[target].stop()  # lost a port race: once more, alone
                    _live.remove(servers[target])
                    servers[target] = start_ready(configs[target], logs / f"{target}.log")
                    _live.append(servers[target])
                log(f"{target} up on {servers[target].url} in {servers[target].ready_seconds:.2f}s "
                    f"(first start, both together; {servers[target].ready_path})")
            results["first_start"] = {t: {"seconds": s.ready_seconds, "path": s.ready_path, "port": s.port,
                                          "ready_body": s.ready_body} for t, s in servers.items()}
            results["fti_served_version"] = check_served_version(servers["fti"], model["version"])
            results["parity"] = parity_gate(servers, body_files, {"single": 1, "batch100": 100})
            log(f"parity gate: {'PASSED' if results['parity']['passed'] else 'FAILED'}")
            if not results["parity"]["passed"]:
                exit_code = 3
                for c in results["parity"]["checks"]:
                    log(f"  {c}")
            else:
                results["runs"] = []
                load_rounds(servers, body_files, results["runs"], rounds=args.rounds, duration=args.duration,
                            warmup=args.warmup, wrk_threads=args.wrk_threads, wrk_timeout=args.wrk_timeout,
                            logs=logs)
                results["memory"] = {t: s.memory() for t, s in servers.items()}
                for t, m in results["memory"].items():
                    log(f"memory {t}: RSS {m['rss_bytes'] / 2**20:.0f} MiB over {len(m['processes'])} process(es)")
        finally:
            for s in servers.values():
                s.stop()
                if s in _live:
                    _live.remove(s)
        if exit_code == 0:
            results["ready"] = ready_restarts(configs, args.restarts, logs)
    except Exception as exc:  # recorded in the results, then a non-zero exit
        results["error"] = f"{type(exc).__name__}: {exc}"
        log(f"ERROR: {results['error']}")
        exit_code = 2
    except BaseException as exc:  # SIGTERM/SIGINT: stop the servers, write what we have, re-raise
        results["error"] = f"interrupted: {type(exc).__name__}"
        exit_code = 130
        raise
    finally:
        for s in list(_live):
            s.stop()
        results["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        results["duration_s"] = round(time.monotonic() - t_start, 1)
        summarise(results)
        results["ok"] = exit_code == 0 and results["runs_with_errors"] == 0
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, allow_nan=False) + "\n")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report.render(results, json_path=args.json, md_path=args.out))
        log(f"wrote {args.json} and {args.out}")
    print(report.console_summary(results), flush=True)
    if exit_code == 0 and not args.keep_workdir:
        shutil.rmtree(work, ignore_errors=True)
    elif exit_code != 0:
        log(f"logs kept in {logs}")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
