"""What ``fti train`` and ``fti predict-batch`` cost beyond the model's own work, in CPU seconds.

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.training_overhead [--rounds 3] [--policyholders 4000]

On the demo (generated source, one feature version), each round runs, as separate processes:

* ``fti train`` (a new model version each time; its alias gate and registry round trip included);
* a *bare fit*: a process that imports pandas and scikit-learn, reads the same feature version and fits
  the same pipeline (``training_pipeline.model.build_pipeline``) on the same split -- nothing logged;
* an *MLflow floor*: the bare fit plus the least any MLflow user pays to keep it -- import mlflow, one run
  on the same tracking store, one metric, ``mlflow.sklearn.log_model`` (skops, with the pip requirements
  given, as fti gives them, which skips MLflow's requirement inference: ~4 s more by default) -- and
  nothing fti adds (no plots, importance, datasets, registration, round trip, certificate or gate);
* ``fti predict-batch --replace`` on the whole feature version, beside a process that reads the same
  feature rows and calls the model's ``predict_proba`` in memory.

CPU is user + system time of each child (``resource.getrusage(RUSAGE_CHILDREN)`` deltas); medians over
rounds; the fit's own CPU is measured inside the bare process. Results: ``bench/results/
training_overhead.json`` and the ``training-overhead`` section of ``docs/benchmarks.md``. The issue's
target: ``fti train`` within 25% of the bare fit's CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.serving import REPO, RESULTS_DIR, TMP_DIR, base_env, log, machine_description, write_spec

MARK_BEGIN, MARK_END = "<!-- training-overhead:begin -->", "<!-- training-overhead:end -->"

BARE_FIT = """
import json, sys, time
t0 = time.process_time()
from shared.db import make_engine
from shared.spec import load_spec
from training_pipeline.config import Settings
from training_pipeline.data import load
from training_pipeline.model import build_pipeline
spec = load_spec(sys.argv[1]).spec
data = load(make_engine(Settings().feature_store_url), spec, None)
t1 = time.process_time()
build_pipeline(spec).fit(data.X_train, data.y_train)
t2 = time.process_time()
print(json.dumps({"import_and_read_cpu": t1 - t0, "fit_cpu": t2 - t1, "rows": len(data.X_train)}))
"""

MLFLOW_FLOOR = """
import os, sys, time
from pathlib import Path
from shared.db import make_engine
from shared.spec import load_spec
from training_pipeline.config import Settings
from training_pipeline.data import load
from training_pipeline.model import build_pipeline
from training_pipeline.register import pip_requirements
import mlflow
import skops.io
spec = load_spec(sys.argv[1]).spec
data = load(make_engine(Settings().feature_store_url), spec, None)
name = "bench-mlflow-floor"
if mlflow.get_experiment_by_name(name) is None:  # artifacts beside the store, not in ./mlruns
    mlflow.create_experiment(name, artifact_location=(Path(os.environ["FTI_DATA_DIR"]) / name).as_uri())
mlflow.set_experiment(name)
with mlflow.start_run():
    pipe = build_pipeline(spec).fit(data.X_train, data.y_train)
    mlflow.log_metric("rows", len(data.X_train))
    mlflow.sklearn.log_model(pipe, name="model", serialization_format="skops", pip_requirements=pip_requirements(),
                             skops_trusted_types=skops.io.get_untrusted_types(data=skops.io.dumps(pipe)))
"""

IN_PROCESS_SCORE = """
import json, sys, time
from shared import feature_table as ft
from shared.db import make_engine
from shared.spec import load_spec
from inference_service.batch import BatchSettings
from inference_service.model_loader import MlflowLoader
spec = load_spec(sys.argv[1]).spec
s = BatchSettings()
loader = MlflowLoader(s.tracking_uri, s.registry_uri, s.cache_dir, memory_limit_mb=0)
model = loader.load(spec, spec.model.name, "champion")
engine = make_engine(s.feature_store_url)
frame = ft.read_version(engine, spec, ft.get_version(engine, spec.name).version)
X = frame[model.features]
t0 = time.process_time(); w0 = time.perf_counter()
model.pipeline.predict_proba(X)
print(json.dumps({"rows": len(X), "score_cpu": time.process_time() - t0, "score_wall": time.perf_counter() - w0}))
"""


def _child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(cpu seconds, wall seconds, stdout) of one child process."""
    c0, w0 = _child_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return _child_cpu() - c0, time.perf_counter() - w0, proc.stdout


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--policyholders", type=int, default=4000)
    p.add_argument("--omp-threads", default="1")
    p.add_argument("--no-docs", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "training_overhead.json")
    a = p.parse_args(argv)

    work = TMP_DIR / f"training-overhead-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}"
    env = base_env(work / "data", a.omp_threads)
    spec = write_spec(work / "spec", smoke=False, max_iter=None)
    fti = str(Path(sys.executable).parent / "fti")
    py = sys.executable
    timed([fti, "data", "generate", "--spec", str(spec), "--policyholders", str(a.policyholders)], env)
    timed([fti, "features", "run", "--spec", str(spec)], env)
    load0 = os.getloadavg()[0]
    rounds = []
    for r in range(a.rounds):
        train_cpu, train_wall, _ = timed([fti, "train", "--spec", str(spec), "--promote", "always"], env)
        bare_cpu, bare_wall, out = timed([py, "-c", BARE_FIT, str(spec)], env)
        bare = json.loads(out.strip().splitlines()[-1])
        floor_cpu, _, _ = timed([py, "-c", MLFLOW_FLOOR, str(spec)], env)
        batch_cpu, batch_wall, _ = timed([fti, "predict-batch", "--spec", str(spec), "--replace"], env)
        score_cpu, score_wall, out = timed([py, "-c", IN_PROCESS_SCORE, str(spec)], env)
        score = json.loads(out.strip().splitlines()[-1])
        row = {"round": r, "train_cpu": train_cpu, "train_wall": train_wall, "bare_process_cpu": bare_cpu,
               "bare_wall": bare_wall, **bare, "mlflow_floor_cpu": floor_cpu, "predict_batch_cpu": batch_cpu, "predict_batch_wall": batch_wall,
               "in_process_score_cpu": score["score_cpu"], "in_process_score_wall": score["score_wall"],
               "score_process_cpu": score_cpu, "score_rows": score["rows"], "load_1m": round(os.getloadavg()[0], 2)}
        rounds.append(row)
        log(f"round {r}: train {train_cpu:.1f}s CPU, bare process {bare_cpu:.1f}s (fit {bare['fit_cpu']:.2f}s), "
            f"predict-batch {batch_cpu:.1f}s, in-process scoring {score['score_cpu']:.2f}s")

    def med(key: str) -> float:
        return statistics.median(x[key] for x in rounds)

    summary = {k: round(med(k), 3) for k in ("train_cpu", "train_wall", "bare_process_cpu", "fit_cpu", "mlflow_floor_cpu",
                                             "import_and_read_cpu", "predict_batch_cpu", "predict_batch_wall",
                                             "in_process_score_cpu", "score_process_cpu")}
    summary["train_over_bare_process"] = round(summary["train_cpu"] / summary["bare_process_cpu"], 2)
    summary["mlflow_floor_over_bare_process"] = round(summary["mlflow_floor_cpu"] / summary["bare_process_cpu"], 2)
    summary["train_over_mlflow_floor"] = round(summary["train_cpu"] / summary["mlflow_floor_cpu"], 2)
    summary["train_over_fit"] = round(summary["train_cpu"] / summary["fit_cpu"], 2)
    summary["predict_batch_over_score_process"] = round(summary["predict_batch_cpu"] / summary["score_process_cpu"], 2)
    summary["target_met"] = summary["train_over_bare_process"] <= 1.25
    result = {"finished_at": datetime.now(UTC).isoformat(timespec="seconds"), "rounds": rounds, "summary": summary,
              "rows": {"train": rounds[0]["rows"], "scored": rounds[0]["score_rows"]},
              "load_1m": [round(load0, 2), round(os.getloadavg()[0], 2)], "machine": machine_description(a.omp_threads)}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    section = render(result)
    if not a.no_docs:
        from bench.report import update_benchmarks_doc

        update_benchmarks_doc(section, MARK_BEGIN, MARK_END,
                              new_heading="## Training and batch-scoring overhead (`bench/training_overhead.py`)")
    print(section)
    return 0


def render(result: dict[str, Any]) -> str:
    s = result["summary"]
    return "\n".join([
        MARK_BEGIN, "",
        f"Run {result['finished_at']}, {len(result['rounds'])} rounds (medians), {result['rows']['train']} training "
        f"rows, load average {result['load_1m'][0]} -> {result['load_1m'][1]}. CPU = user + system of each process.",
        "",
        "| | CPU s | wall s |", "|---|---:|---:|",
        f"| `fti train` (log, register, round trip, certificate, gate) | {s['train_cpu']:.2f} | {s['train_wall']:.2f} |",
        f"| bare fit process (imports, read the version, fit) | {s['bare_process_cpu']:.2f} | - |",
        f"| of which the fit | {s['fit_cpu']:.2f} | - |",
        f"| MLflow floor process (bare fit + one run + `mlflow.sklearn.log_model`) | {s['mlflow_floor_cpu']:.2f} | - |",
        f"| `fti predict-batch --replace` ({result['rows']['scored']} rows) | {s['predict_batch_cpu']:.2f} | "
        f"{s['predict_batch_wall']:.2f} |",
        f"| in-process `predict_proba` process (load, read, score) | {s['score_process_cpu']:.2f} | - |",
        f"| of which `predict_proba` | {s['in_process_score_cpu']:.2f} | - |",
        "",
        f"`fti train` / bare fit process: **{s['train_over_bare_process']}x** (target <= 1.25x: "
        f"**{'met' if s['target_met'] else 'not met'}**); / the fit alone: {s['train_over_fit']}x. "
        f"MLflow's own floor / bare fit process: {s['mlflow_floor_over_bare_process']}x; `fti train` / that floor: "
        f"{s['train_over_mlflow_floor']}x. "
        f"`fti predict-batch` / in-process scoring process: {s['predict_batch_over_score_process']}x.",
        "", MARK_END])


if __name__ == "__main__":
    raise SystemExit(main())
