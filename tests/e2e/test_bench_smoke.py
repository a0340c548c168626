"""The serving benchmark harness (``bench/serving.py --smoke``) runs end to end in CI.

A real run on a tiny model: throwaway data dir, ``fti serve`` and ``mlflow models serve`` on the same
registered version, parity gate, one short ``wrk`` round per scenario, one restart for the ready time,
memory of both process trees, JSON + Markdown written. It checks that every number the report needs
was measured and that no request failed, and never asserts timings or whether a target was met (a
2-core CI machine shared with the rest of the suite says nothing about those). Needs Debian's ``wrk``
(``.ci/run`` installs it when missing).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SCENARIOS = ("single_c1", "single_c8", "batch100_c8")
TARGETS = ("fti", "mlflow")


@pytest.mark.timeout(600)
def test_serving_benchmark_smoke_run(tmp_path):
    out_md, out_json = tmp_path / "serving.md", tmp_path / "serving.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FTI_", "MLFLOW_"))}
    res = subprocess.run(
        [sys.executable, "-m", "bench.serving", "--smoke", "--workdir", str(tmp_path / "work"),
         "--out", str(out_md), "--json", str(out_json)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=540)
    output = f"--- stdout\n{res.stdout[-6000:]}\n--- stderr\n{res.stderr[-4000:]}"
    assert res.returncode == 0, output
    results = json.loads(out_json.read_text())

    assert results["mode"] == "smoke"
    assert results["stand_in"] is None, "the smoke test must measure fti itself"
    assert "error" not in results, results.get("error")
    assert results["fti_served_version"] == results["model"]["version"]

    parity = results["parity"]
    assert parity["passed"] is True, parity
    assert {c["body"] for c in parity["checks"]} == {"single", "batch100"}
    assert all(c["identical"] and c["fti_status"] == c["mlflow_status"] == 200 for c in parity["checks"]), parity

    runs = results["runs"]
    for scenario in SCENARIOS:
        for target in TARGETS:
            mine = [r for r in runs if r["scenario"] == scenario and r["target"] == target]
            assert mine, f"no wrk run for {scenario} / {target}"
            for r in mine:
                assert r["requests"] > 0 and r["req_per_s"] > 0 and r["rows_per_s"] > 0, r
                assert r["latency_ms"]["p50"] > 0 and r["latency_ms"]["p99"] > 0, r
            summary = results["summary"]["scenarios"][scenario][target]
            assert summary["req_per_s_median"] > 0, summary
    bad = [(r["scenario"], r["target"], r["non_2xx"], r["first_bad_status"], r["socket_errors"])
           for r in runs if r["non_2xx"] or any(r["socket_errors"].values())]
    assert not bad, f"wrk runs with non-2xx responses or socket errors: {bad}"
    assert results["runs_with_errors"] == 0

    for target in TARGETS:
        assert results["ready"][target] and all(x["seconds"] > 0 for x in results["ready"][target])
        assert results["memory"][target]["rss_bytes"] > 0
    # mlflow's CLI parent stays alive next to its uvicorn child: the whole tree is measured.
    assert len(results["memory"]["mlflow"]["processes"]) >= 2

    # Every target is evaluated from the measurements (its verdict is not the test's business).
    assert [t["id"] for t in results["targets"]] == [
        "single_c8_throughput_ratio", "fti_single_c8_p99_ms", "batch100_rows_per_s_ratio", "fti_ready_s", "rss_ratio"]
    assert all(t["measured"] is not None and t["met"] in (True, False) for t in results["targets"]), results["targets"]
    for key in ("cpu_model", "nproc", "memory_total_bytes", "kernel", "python", "wrk", "omp_num_threads"):
        assert results["machine"][key], key

    report = out_md.read_text()
    assert "| Metric | fti | mlflow models serve | fti / mlflow | Target | Met? |" in report
    assert "## Machine" in report and "## How to reproduce" in report


def _smoke_run(module: str, tmp_path: Path) -> dict[str, Any]:
    """``python -m bench.<module> --smoke`` in a clean environment (no FTI_/MLFLOW_ variables of the test
    session): its results JSON, after checking it exited 0."""
    out_json = tmp_path / f"{module}.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FTI_", "MLFLOW_"))}
    res = subprocess.run([sys.executable, "-m", f"bench.{module}", "--smoke", "--workdir", str(tmp_path / "work"),
                          "--json", str(out_json)], cwd=REPO, env=env, capture_output=True, text=True, timeout=540)
    assert res.returncode == 0, f"--- stdout\n{res.stdout[-6000:]}\n--- stderr\n{res.stderr[-4000:]}"
    return json.loads(out_json.read_text())


@pytest.mark.timeout(600)
def test_monitoring_benchmark_smoke_run(tmp_path):
    """``bench/monitoring.py --smoke``: a log filled over HTTP, one ``fti monitor run`` (its worker
    processes' memory summed), ``/predict`` rounds with the log off, written from a thread, from its process, and that beside
    ``fti monitor serve``, and with a SCHED_IDLE CPU spinner beside the server.
    Checks every number was measured and no request failed; asserts no timing and no target."""
    results = _smoke_run("monitoring", tmp_path)
    assert results["mode"] == "smoke"
    assert results["fill"]["rows"] == results["rows"]
    mon = results["monitor"]
    assert mon["rows"] == results["rows"] and mon["windows"] > 0 and mon["new_reports"] == mon["windows"], mon
    assert mon["seconds"] > 0 and mon["peak_rss_mib"] >= mon["parent_peak_rss_mib"] > 0, mon
    modes = [r["mode"] for r in results["runs"]]
    assert sorted(modes) == ["idle", "log", "off", "on", "stress", "thread"], modes
    for r in results["runs"]:
        assert r["requests"] > 0 and r["non_2xx"] == 0 and r["latency_ms"]["p99"] > 0, r
        if r["mode"] not in ("off", "idle"):  # every answered prediction logged, by the writer the mode names
            plog = r["prediction_log"]
            assert plog["written"] == plog["submitted"] > 0 and plog["dropped"] == plog["failed"] == 0, r
            assert plog["mode"] == ("thread" if r["mode"] == "thread" else "process"), r
    serving = results["serving"]
    assert serving["p99_off_ms"] > 0 and serving["p99_log_ms"] > 0 and serving["p99_on_ms"] > 0, serving
    assert serving["p99_idle_ms"] > 0 and len(serving["p99_ratio_rounds"]["idle"]) == 1, serving
    assert serving["p99_thread_ms"] > 0 and serving["log_written"] > 0 and serving["log_pending"] == 0, serving


@pytest.mark.timeout(600)
def test_feature_scale_benchmark_smoke_run(tmp_path):
    """``bench/feature_scale.py --smoke``: sources of two sizes, ``fti features run`` with the local and the
    memory engine (and Spark on the smaller one) into a throwaway PostgreSQL, bare COPYs of the same rows (into the
    feature table and into a LIKE copy), the local engine's phases. Checks every number was
    measured and the engines' checksums agree; asserts no timing."""
    results = _smoke_run("feature_scale", tmp_path)
    assert results["mode"] == "smoke" and results["checksums_equal"] is True
    assert [s["rows"] for s in results["sizes"]] == sorted(s["rows"] for s in results["sizes"])
    spark = importlib.util.find_spec("pyspark") is not None
    if spark:
        assert results["spark"] == "local[2]"
    for i, size in enumerate(results["sizes"]):
        expected = {"local", "memory"} | ({"spark"} if spark and i == 0 else set())  # spark: the smaller size
        assert {j["engine"] for j in size["jobs"]} == expected, size
        for job in size["jobs"]:
            assert job["rows"] == size["rows"] and job["seconds"] > 0 and job["peak_rss_mib"] > 0, job
            assert job["details"].get("engine", {"name": "memory"})["name"] == job["engine"], job
        assert size["copy"]["rows"] == size["rows"] and size["copy"]["rows_per_s"] > 0, size
        assert size["copy"]["like"]["rows"] == size["rows"] and size["copy"]["like"]["rows_per_s"] > 0, size
        local = next(j for j in size["jobs"] if j["engine"] == "local")
        assert set(local["phases"]) == {"partition_s", "features_s", "publish_s"}, local
    assert results["linearity"] > 0


@pytest.mark.timeout(600)
def test_batch_scale_benchmark_smoke_run(tmp_path):
    """``bench/batch_scale.py --smoke``: a model, a copied source published by the local engine into a
    throwaway PostgreSQL, ``fti predict-batch`` on it as a subprocess, the in-process baseline and the
    storage comparison. Checks every number was measured and the batch holds every row; asserts no timing."""
    results = _smoke_run("batch_scale", tmp_path)
    job, base = results["job"], results["baseline"]
    assert results["mode"] == "smoke" and job["rows"] == base["rows"] == results["rows"] >= 6_000, results
    assert job["seconds"] > 0 and job["score_rows_per_s"] > 0 and base["rows_per_s"] > 0, results
    assert set(job["timings"]) >= {"load_seconds", "read_seconds", "score_seconds", "insert_seconds"}, job
    storage = base["storage"]
    assert storage["parquet_values_equal"] is True and storage["json_payload_bytes"] > 0, storage
    assert results["score_ratio"] > 0
