"""Acceptance (issue 13, point 4, embedded default): the drift scenario end to end, on real components --
``fti data generate`` (drift scenario), ``fti features run``, ``fti train``, a real ``fti serve`` over HTTP
under continuous client load, ``fti monitor run --retrain`` and ``fti rollback`` as subprocesses, SQLite
stores and the MLflow registry on SQLite.

champion v1 trained on 2023-2025 -> 2026 traffic (channel mix change, claim-amount inflation) is served
-> its windows drift -> the retraining policy fires once: the fire drill's candidate (shuffled labels)
is refused by the gate -> new drifted windows -> fires again: a good candidate is promoted and served
after its certificate -> cooldown: no third retraining -> ``fti rollback`` brings the old champion back,
served within 10 s; no client request failed at any point.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from fti.demo_data import generate_claims, to_csv_bytes
from shared.db import make_engine
from shared.monitor_table import retrain_decisions
from tests.e2e.test_hot_reload import _start_clients, _stop_clients, _wait_json
from tests.helpers import Server, fti_env, raw_json_records, run_fti, write_claims_spec

pytestmark = [pytest.mark.e2e, pytest.mark.alone]  # its rollback is timed: run with nothing beside it

NAME = "claims-fraud"
SCENARIO = ["--policyholders", "700", "--seed", "11", "--end", "2026-06-30", "--drift-from", "2026-01-01"]
MONITORING = {"window_rows": 150, "min_rows": 150,
              "retrain": {"drift_windows": 2, "of_last": 3, "cooldown": "1D", "margin": 0.02, "min_rows": 200}}


def _ok(res: Any) -> str:
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-3000:])
    return str(res.stdout)


def _drifted_records(root: Path, spec: Path) -> list[dict[str, Any]]:
    """The 2026 claims of the scenario's timeline, as a client sends them."""
    import pandas as pd

    frame = generate_claims(n_policyholders=700, seed=11, end="2026-06-30", drift_from="2026-01-01")
    later = frame[frame["claim_ts"] >= pd.Timestamp("2026-01-01", tz="UTC")]
    path = root / "traffic.csv"
    path.write_bytes(to_csv_bytes(later))
    return raw_json_records(path, spec)


def _decisions(data: Path) -> list[dict[str, Any]]:
    engine = make_engine(f"sqlite:///{data / 'features.db'}")
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(retrain_decisions).order_by(retrain_decisions.c.created_at)).all()
        return [dict(r._mapping) for r in rows if r.action != "lock"]
    finally:
        engine.dispose()


def _monitor(spec: Path, env: dict[str, str], *extra: str) -> dict[str, Any]:
    out = _ok(run_fti(["monitor", "run", "--spec", str(spec), "--retrain", "--json", *extra], env, timeout=900))
    return dict(json.loads(out))


def test_drift_retrain_gate_promote_cooldown_rollback(tmp_path: Path) -> None:
    spec = write_claims_spec(tmp_path / "spec", generate=False, overrides={"monitoring": MONITORING})
    data = tmp_path / "data"
    env = fti_env(data, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", FTI_RELOAD_INTERVAL_SECONDS="1")
    # the source as it stood at the end of 2025: train the first champion on it
    _ok(run_fti(["data", "generate", "--spec", str(spec), *SCENARIO, "--known-at", "2025-12-31"], env))
    _ok(run_fti(["features", "run", "--spec", str(spec)], env))
    assert "PROMOTED" in _ok(run_fti(["train", "--spec", str(spec)], env))
    traffic = _drifted_records(tmp_path, spec)
    assert len(traffic) >= 400

    server = Server(spec, env, tmp_path / "server.log")
    try:
        assert server.wait_ready()["model_version"] == "1"
        clients = _start_clients(server.url, traffic, n=2)
        try:
            deadline = time.monotonic() + 120
            first: dict[str, Any] = {}
            while time.monotonic() < deadline:  # served windows of drifted traffic pile up
                time.sleep(3)
                # the labels of 2026 arrive: the source as it stands at the end of June
                _ok(run_fti(["data", "generate", "--spec", str(spec), *SCENARIO], env))
                first = _monitor(spec, env, "--negative-control")
                if first["decision"]["action"] != "none":
                    break
            drifted = [r for r in first["reports"] if r["drift"]]
            assert len(drifted) >= 2, first["reports"]
            seen = {f for r in drifted for f in r["drifted"]}  # what the scenario shifted is what drifted
            assert "channel" in seen and seen & {"claim_amount", "log_claim_amount", "amount_to_premium"}, seen
            d1 = first["decision"]
            assert d1["action"] == "refused", d1  # the fire drill: shuffled labels
            assert d1["details"]["negative_control"] is True
            assert d1["candidate_score"] < d1["champion_score"] - MONITORING["retrain"]["margin"], d1
            assert server_version(server) == "1"

            deadline = time.monotonic() + 120
            second: dict[str, Any] = {}
            while time.monotonic() < deadline:  # new drifted windows after the refused attempt
                time.sleep(3)
                second = _monitor(spec, env)
                if second["decision"]["action"] != "none":
                    break
            d2 = second["decision"]
            assert d2["action"] == "retrained", d2
            assert d2["candidate_score"] >= d2["champion_score"] - MONITORING["retrain"]["margin"]
            new = d2["candidate_version"]
            ready = _wait_json(f"{server.url}/health/ready", lambda b: b["model_version"] == new, 60,
                               f"version {new} served")
            assert ready["reload"]["in_sync"] is True

            time.sleep(3)
            third = _monitor(spec, env)  # more windows, within the cooldown of the promotion
            assert third["decision"]["action"] in ("none", "cooldown"), third["decision"]

            t0 = time.monotonic()
            out = _ok(run_fti(["rollback", NAME, "--dataset", "claims"], env))
            assert f"version {new} -> 1" in out, out
            command_took = time.monotonic() - t0
            _wait_json(f"{server.url}/health/ready", lambda b: b["model_version"] == "1", 10, "version 1 back")
            rolled_back_in = time.monotonic() - t0
        finally:
            results = _stop_clients(clients)
    finally:
        server.stop()

    failed = [r for r in results if r.get("status") != 200]
    assert not failed, failed[:5]
    assert len(results) > 100
    assert rolled_back_in <= 10, (command_took, rolled_back_in)
    decisions = _decisions(data)
    assert [d["action"] for d in decisions if d["action"] in ("retrained", "refused")] == ["refused", "retrained"]
    assert decisions[-1]["action"] == "rollback"
    for d in decisions[:2]:
        assert d["report_ids"] and d["trigger"].get("drift"), d


def server_version(server: Server) -> str:
    import httpx

    return str(httpx.get(f"{server.url}/health/ready", timeout=10).json()["model_version"])
