"""The hostile-load benchmark (``bench/hardening.py``) runs end to end in CI.

One short round of every scenario: the probes answered 200 throughout (no probe failed), the server
answered no 5xx other than the limiter's 503, the flood met 503s and still got 200s. It never asserts
the probe latencies or whether the targets were met (that is the committed full run's job).
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
def test_hardening_benchmark_smoke_run(tmp_path):
    out = tmp_path / "hardening.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FTI_", "MLFLOW_"))}
    res = subprocess.run([sys.executable, "-m", "bench.hardening", "--rounds", "1", "--duration", "2",
                          "--policyholders", "400", "--no-docs", "--out", str(out), "--workdir", str(tmp_path / "w")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=840)
    assert res.returncode == 0, f"--- stdout\n{res.stdout[-6000:]}\n--- stderr\n{res.stderr[-4000:]}"
    result = json.loads(out.read_text())
    by = {s["scenario"]: s for s in result["summary"]}
    assert set(by) == {"idle", "big_json", "parquet_bomb", "flood", "all", "hammer"}
    for s in by.values():
        assert s["probe_errors"] == 0 and s["server_errors"] == 0, s
    assert by["parquet_bomb"]["statuses"].get("413", 0) > 0
    assert by["big_json"]["statuses"].get("413", 0) > 0  # the 20,000-record /predict, refused while parsing
    assert by["flood"]["statuses"].get("503", 0) > 0 and by["flood"]["statuses"].get("200", 0) > 0
    assert result["machine"] and result["load_1m"]
