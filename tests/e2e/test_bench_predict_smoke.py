"""The /predict benchmark (``bench/predict.py``) runs end to end in CI, on SQLite and PostgreSQL.

One short round per scenario and target (fti ``/predict``, fti ``/invocations``, ``mlflow models
serve``) on a small demo model: every target answered, no request failed, the online fast path was
verified before it was measured, and the memory of the online history was measured. It never asserts
timings or whether a target was met (a 2-core CI machine shared with the suite says nothing of those).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.mark.timeout(900)
def test_predict_benchmark_smoke_run(tmp_path):
    out = tmp_path / "predict.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FTI_", "MLFLOW_"))}
    res = subprocess.run(
        [sys.executable, "-m", "bench.predict", "--rounds", "1", "--duration", "1", "--policyholders", "400",
         "--no-docs", "--out", str(out), "--workdir", str(tmp_path / "work")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=840)
    assert res.returncode == 0, f"--- stdout\n{res.stdout[-6000:]}\n--- stderr\n{res.stderr[-4000:]}"
    result = json.loads(out.read_text())
    assert [s["store"] for s in result["stores"]] == ["sqlite", "postgresql"]
    for store in result["stores"]:
        assert store["online_features"]["mode"] == "fast", store["online_features"]
        assert store["online_features"]["index_rows"] > 0 and store["online_features"]["index_bytes"] > 0
        seen = {(r["scenario"], r["target"]) for r in store["runs"]}
        assert len(seen) == 9, seen
        for r in store["runs"]:
            assert r["requests"] > 0 and r["non_2xx"] == 0 and r["latency_ms"]["p99"] > 0, r
    assert len(result["summary"]) == 6
    assert result["index_1m"]["rows"] == 1_000_000 and result["index_1m"]["index_bytes_estimate"] > 0
