"""Acceptance: the service proves parity and environment before it takes traffic.

* A corrupted certificate output, or an online path that diverges (a changed
  ``shared`` transform, injected into the real server process), keeps the service
  not ready (503 on /health/ready and /predict) and /model names the records and fields.
* A fingerprint mismatch on scikit-learn refuses the load, listing the difference;
  FTI_ALLOW_ENV_MISMATCH=true overrides it, loudly logged.
"""

from __future__ import annotations

import json
import re
import shutil
import textwrap

import httpx
import pytest

from tests.helpers import Server, fti_env, raw_json_records, register_cache_edit, run_fti, write_claims_spec

pytestmark = [pytest.mark.e2e]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cert")
    spec = write_claims_spec(root / "spec", n_policyholders=300)
    env = fti_env(root / "data", OMP_NUM_THREADS="1")
    for args in (["features", "run", "--spec", str(spec)], ["train", "--spec", str(spec)]):
        res = run_fti(args, env)
        assert res.returncode == 0, res.stderr[-3000:]
    # A first start fills the model cache, which the tests then tamper with.
    server = Server(spec, env, root / "first.log")
    try:
        ready = server.wait_ready()
        model = httpx.get(f"{server.url}/model", timeout=10).json()
    finally:
        server.stop()
    cert = model["certificate"]
    cov = cert["coverage"]
    # 64 sampled evaluation rows, late arrivals (history the known-by rule changed), records built for each branch
    assert cert["passed"] is True and cov["sampled"] == 64 and cov["late_arrivals"] > 0 and cov["constructed"] > 30
    assert cert["checked"] == cov["sampled"] + cov["late_arrivals"] + cov["constructed"]
    return {"root": root, "spec": spec, "version": ready["model_version"], "name": ready["model_name"]}


def _copy(trained, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(trained["root"] / "data", data)
    extra = data / "model-cache" / trained["name"] / trained["version"] / "extra_files"
    assert (extra / "certificate.json").is_file()
    return data, extra


def _not_ready(server: Server, timeout: float = 60) -> dict:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.proc.poll() is None, server.log_path.read_text()[-3000:]
        try:
            r = httpx.get(f"{server.url}/health/ready", timeout=5)
        except httpx.ConnectError:  # not listening yet
            time.sleep(0.3)
            continue
        if r.status_code == 503 and r.json().get("attempts", 0) >= 1:
            assert r.headers.get("retry-after")
            return r.json()
        assert r.status_code == 503, r.text
        time.sleep(0.3)
    raise AssertionError("no failed load attempt reported")


def _predict_status(server: Server, trained) -> int:
    rec = raw_json_records(trained["spec"].parent / "raw" / "claims.csv", trained["spec"])[0]
    return httpx.post(f"{server.url}/predict", json={"records": [rec]}, timeout=10).status_code


def test_corrupted_certificate_output_refuses_readiness(trained, tmp_path):
    data, extra = _copy(trained, tmp_path)
    cert = json.loads((extra / "certificate.json").read_text())
    cert["expected"][3][1] = cert["expected"][3][1] + 1e-12
    (extra / "certificate.json").write_text(json.dumps(cert))
    register_cache_edit(f"sqlite:///{data / 'mlflow.db'}", data / "model-cache", trained["name"], trained["version"])
    server = Server(trained["spec"], fti_env(data, OMP_NUM_THREADS="1"), tmp_path / "server.log")
    try:
        ready = _not_ready(server)
        assert re.search(r"parity certificate FAILED: 1 of \d+ records differ \(max output", ready["reason"])
        assert _predict_status(server, trained) == 503
        model = httpx.get(f"{server.url}/model", timeout=10)
        assert model.status_code == 503
        report = model.json()["rejected"]["certificate"]
        assert report["differing"] == 1
        first = report["first_differences"][0]
        assert first["record_id"] == cert["records"][3]["claim_id"]
        assert first["fields"] == []  # the features agree: only the certified output was altered
    finally:
        server.stop()


def test_diverging_shared_transform_refuses_readiness(trained, tmp_path):
    """A changed ``shared`` transform in the serving process (injected via sitecustomize)."""
    data, _ = _copy(trained, tmp_path)
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(textwrap.dedent("""
        import numpy as np
        from shared import transformers

        _orig = transformers.DerivedFeatures._compute

        def _drifted(frame, op, inputs):
            out = _orig(frame, op, inputs)
            return out * (1 + 1e-9) if op == "ratio" else out

        transformers.DerivedFeatures._compute = staticmethod(_drifted)
    """))
    env = fti_env(data, OMP_NUM_THREADS="1", PYTHONPATH=str(inject))
    server = Server(trained["spec"], env, tmp_path / "server.log")
    try:
        ready = _not_ready(server)
        assert "parity certificate FAILED" in ready["reason"]
        assert _predict_status(server, trained) == 503
        report = httpx.get(f"{server.url}/model", timeout=10).json()["rejected"]["certificate"]
        assert report["differing"] >= 1
        fields = {f["field"] for d in report["first_differences"] for f in d["fields"]}
        assert fields == {"amount_to_premium"}
    finally:
        server.stop()


def test_fingerprint_mismatch_refused_then_overridden(trained, tmp_path):
    data, extra = _copy(trained, tmp_path)
    envfile = json.loads((extra / "environment.json").read_text())
    running = envfile["enforced"]["scikit-learn"]
    envfile["enforced"]["scikit-learn"] = "1.0.2"  # simulate a model trained with another scikit-learn
    (extra / "environment.json").write_text(json.dumps(envfile))
    register_cache_edit(f"sqlite:///{data / 'mlflow.db'}", data / "model-cache", trained["name"], trained["version"])

    server = Server(trained["spec"], fti_env(data, OMP_NUM_THREADS="1"), tmp_path / "refused.log")
    try:
        ready = _not_ready(server)
        assert f"scikit-learn: model 1.0.2, here {running}" in ready["reason"]
        assert "FTI_ALLOW_ENV_MISMATCH" in ready["reason"]
        assert _predict_status(server, trained) == 503
    finally:
        server.stop()

    env = fti_env(data, OMP_NUM_THREADS="1", FTI_ALLOW_ENV_MISMATCH="true")
    server = Server(trained["spec"], env, tmp_path / "override.log")
    try:
        server.wait_ready()
        model = httpx.get(f"{server.url}/model", timeout=10).json()
        assert model["environment_overridden"] == [f"scikit-learn: model 1.0.2, here {running}"]
        assert model["certificate"]["passed"] is True
        assert _predict_status(server, trained) == 200
    finally:
        server.stop()
    log = (tmp_path / "override.log").read_text()
    assert "ENVIRONMENT MISMATCH OVERRIDDEN" in log and "scikit-learn: model 1.0.2" in log
