"""Acceptance: from a fresh clone, the README's demo command ends with the API serving,
and ``/predict`` answers a demo record.

The clone is made from this repository's committed HEAD, so the test sees exactly
what a user would get; it runs ``bash scripts/demo.sh`` as the README says.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import REPO
from tests.infra.ports import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _readme_demo_command() -> str:
    text = (REPO / "README.md").read_text()
    m = re.search(r"<!-- demo-command -->\s*```(?:bash|sh)?\n(.+?)\n```", text, re.S)
    assert m, "README.md must mark its demo command with <!-- demo-command -->"
    return m.group(1).strip()


def test_demo_command_from_fresh_clone_serves_predictions(tmp_path):
    command = _readme_demo_command()
    assert command == "bash scripts/demo.sh"
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True, timeout=120)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FTI_", "MLFLOW_", "VIRTUAL_ENV"))}
    env.update({"FTI_PORT": str(port), "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"})
    log_path = tmp_path / "demo.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(["bash", "-c", command], cwd=clone, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 600
            while "fti demo: API ready" not in log_path.read_text(errors="replace"):
                assert proc.poll() is None, f"demo exited {proc.returncode}:\n{log_path.read_text()[-4000:]}"
                assert time.monotonic() < deadline, log_path.read_text()[-4000:]
                time.sleep(1)
            out = log_path.read_text()
            assert '"predictions"' in out and "curl -s -X POST" in out
            assert (clone / "data" / "features.db").is_file() and (clone / "data" / "mlflow.db").is_file()
            record = {"claim_id": "T-1", "policyholder_id": "P00001", "claim_ts": "2026-02-01T10:00:00Z",
                      "customer_age": 51, "policy_tenure_months": 120, "annual_premium": 1200.0, "vehicle_age": 3,
                      "claim_amount": 800.0, "incident_type": "glass", "incident_severity": "minor",
                      "region": "south", "channel": "agent", "police_report": True, "witnesses": 1,
                      "days_to_report": 1}
            r = httpx.post(f"http://127.0.0.1:{port}/predict", json={"records": [record]}, timeout=30)
            assert r.status_code == 200, r.text
            pred = r.json()["predictions"][0]
            assert pred["record_id"] == "T-1" and set(pred["probabilities"]) == {"0", "1"}
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
    assert Path(clone / "uv.lock").is_file()
