"""Acceptance for `docker compose up`, on the real stack built from this repository.

Base images come from scripts/build-base-images.sh (no registry here), service images from
scripts/build-images.sh (the one lockfile, through a host-built wheelhouse). Each test session
uses its own compose project name and published port, and removes everything with `down -v`.
Skipped (loudly) only where no Docker Engine answers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import REPO, raw_json_records
from tests.infra.ports import free_port

pytestmark = [pytest.mark.compose, pytest.mark.slow, pytest.mark.timeout(3600)]

SERVICES = ["postgres", "mlflow", "demo-data", "feature-pipeline", "training-pipeline", "inference", "monitor",
            "feature-worker", "training-worker"]
JOBS = {"demo-data", "feature-pipeline", "training-pipeline"}
SPEC = "/app/specs/claims.yaml"
KEY = {"X-API-Key": "fti-local-key"}  # the documented local key (docker-compose.yml, README)


class Stack:
    def __init__(self, project: str, port: int, env: dict[str, str]):
        self.project, self.port, self.env = project, port, env
        self.url = f"http://127.0.0.1:{port}"

    def compose(self, *args: str, timeout: float = 900, check: bool = True,
                input: str | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["docker", "compose", "-p", self.project, *args], cwd=REPO, env=self.env,
                              capture_output=True, text=True, timeout=timeout, input=input)
        if check and proc.returncode != 0:
            logs = subprocess.run(["docker", "compose", "-p", self.project, "logs", "--tail", "40"], cwd=REPO,
                                  env=self.env, capture_output=True, text=True, timeout=60).stdout
            raise AssertionError(f"docker compose {' '.join(args)} exited {proc.returncode}\n{proc.stderr[-3000:]}"
                                 f"\n--- logs ---\n{logs[-6000:]}")
        return proc

    def ps(self) -> list[dict]:
        out = self.compose("ps", "--all", "--format", "json", timeout=60).stdout.strip()
        if out.startswith("["):
            return json.loads(out)
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def ready(self, timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                r = httpx.get(f"{self.url}/health/ready", timeout=5)
                if r.status_code == 200:
                    return r.json()
                last = r.text
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(1)
        raise AssertionError(f"inference not ready after {timeout}s: {last}")


def _docker_available() -> str | None:
    if shutil.which("docker") is None:
        return "no docker CLI"
    try:
        proc = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "docker info timed out"
    return None if proc.returncode == 0 else f"docker info failed: {proc.stderr.strip()[-200:]}"


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    reason = _docker_available()
    if reason:
        pytest.skip(f"no Docker Engine on this machine ({reason}); the compose stack cannot run")
    env = dict(os.environ)
    # The local stand-ins for the public python / postgres images (see docker/README.md):
    # this machine has no registry, so the tests build and use them.
    env.setdefault("FTI_BASE_IMAGE", "fti-local/python:3.11-bookworm")
    env.setdefault("FTI_POSTGRES_IMAGE", "fti-local/postgres:15")
    # The README's one preparation command (compose v2, base images, wheelhouse, images, .env)
    proc = subprocess.run(["bash", "scripts/docker-prepare.sh", "--local-base-images"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=3000)
    assert proc.returncode == 0, f"docker-prepare.sh failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    dotenv = dict(line.split("=", 1) for line in (REPO / ".env").read_text().splitlines() if "=" in line)
    assert dotenv["FTI_BASE_IMAGE"] == env["FTI_BASE_IMAGE"] and dotenv["FTI_POSTGRES_IMAGE"] == env["FTI_POSTGRES_IMAGE"]
    return env


@pytest.fixture(scope="module")
def stack(images: dict[str, str], tmp_path_factory) -> Iterator[Stack]:
    env = {**images, "FTI_INFERENCE_PORT": str(free_port()), "FTI_MLFLOW_PORT": str(free_port()),
           "FTI_RELOAD_INTERVAL_SECONDS": "2", "FTI_MONITOR_INTERVAL_SECONDS": "3",
           # A small first dataset, so the full one trained later yields a better model.
           "FTI_DEMO_POLICYHOLDERS": "250"}
    env.pop("COMPOSE_PROJECT_NAME", None)
    s = Stack(f"fti-test-{uuid.uuid4().hex[:8]}", int(env["FTI_INFERENCE_PORT"]), env)
    try:
        s.compose("up", "-d", "--wait", "--wait-timeout", "900", "--no-build", timeout=1200)
        yield s
    finally:
        s.compose("down", "-v", "--remove-orphans", timeout=300, check=False)


def _records(stack: Stack, tmp_path: Path, n_policyholders: int, count: int) -> list[dict]:
    """The demo source is deterministic: regenerate it on the host to pick raw records."""
    from fti.demo_data import generate_claims, to_csv_bytes
    from tests.helpers import CLAIMS_SPEC

    csv = tmp_path / "claims.csv"
    csv.write_bytes(to_csv_bytes(generate_claims(n_policyholders=n_policyholders)))
    return raw_json_records(csv, CLAIMS_SPEC)[-count:]


def _expected_in_container(stack: Stack, version: str, records: list[dict]) -> dict[str, dict]:
    """predict_proba of the registered version, computed inside the inference container, per record:
    ``batch`` on its stored feature row (the batch path), ``live`` on features recomputed from the raw
    record against the whole version (what a live request sees), and whether a late arrival made the
    two differ (the known-by rule: the stored row counts only events known at its time)."""
    script = f"""
import json, sys, mlflow
from shared import feature_table as ft
from shared.certificate import late_arrival_rows
from shared.db import make_engine
from shared.features import compute_online
from shared.raw import normalize_records
from shared.settings import MlflowSettings
from shared.spec import load_spec
records = json.loads(sys.stdin.read())
s = MlflowSettings(); spec = load_spec("{SPEC}").spec
engine = make_engine(s.feature_store_url)
info = ft.get_version(engine, spec.name)
frame = ft.read_version(engine, spec, info.version)
ids = [str(r[spec.record_id]) for r in records]
rows = frame.set_index(spec.record_id, drop=False).loc[ids]
late = set(late_arrival_rows(rows.reset_index(drop=True), frame, spec)[spec.record_id])
norm, problems = normalize_records(records, spec)
live = compute_online(norm, frame, spec)
from shared.model_file import load_model_dir
import mlflow.artifacts
pipe = load_model_dir(mlflow.artifacts.download_artifacts("models:/{{}}/{version}".format(spec.model.name)),
                      memory_limit_mb=0)
batch = pipe.predict_proba(rows[spec.model_features]).tolist()
online = pipe.predict_proba(live[spec.model_features]).tolist()
print(json.dumps({{rid: {{"batch": b, "live": o, "late": rid in late}} for rid, b, o in zip(ids, batch, online)}}))
"""
    out = stack.compose("exec", "-T", "inference", "python3", "-c", script, timeout=300,
                        input=json.dumps(records)).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_fresh_up_serves_correct_predictions_on_the_published_port(stack: Stack, tmp_path: Path):
    ready = stack.ready()
    assert ready["model_version"] == "1"
    records = _records(stack, tmp_path, 250, 20)
    r = httpx.post(f"{stack.url}/predict", json={"records": records}, headers=KEY, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    expected = _expected_in_container(stack, "1", records)
    for p in body["predictions"]:
        want = expected[p["record_id"]]
        got = [p["probabilities"]["0"], p["probabilities"]["1"]]
        assert got == want["live"]
        if not want["late"]:  # no late arrival in its history: the live answer is the batch path's
            assert got == want["batch"]
    assert sum(not w["late"] for w in expected.values()) >= 10
    states = {c["Service"]: c for c in stack.ps()}
    for job in JOBS:
        assert states[job]["State"] == "exited" and states[job]["ExitCode"] == 0, states[job]


def test_only_inference_and_the_mlflow_ui_are_published_on_loopback_all_have_healthchecks_and_run_non_root(
        stack: Stack):
    published = {}
    for c in stack.ps():
        ports = [p for p in (c.get("Publishers") or []) if p.get("PublishedPort")]
        if ports:
            published[c["Service"]] = ports
    assert set(published) == {"inference", "mlflow"}
    for service in published:
        assert {p["URL"] for p in published[service]} <= {"127.0.0.1"}, published[service]
    # The MLflow UI answers on its loopback port for a registry user, and refuses anonymous requests.
    ui = f"http://127.0.0.1:{stack.env['FTI_MLFLOW_PORT']}"
    admin = ("fti-admin", "fti-admin-local")  # docker-compose.yml's documented local defaults
    r = httpx.get(f"{ui}/", auth=admin, timeout=30)
    assert r.status_code == 200 and "<html" in r.text.lower(), (r.status_code, r.text[:300])
    r = httpx.get(f"{ui}/api/2.0/mlflow/registered-models/search", auth=admin, timeout=30)
    assert r.status_code == 200, r.text[:300]
    assert httpx.get(f"{ui}/", timeout=30).status_code == 401

    ids = {c["Service"]: c["ID"] for c in stack.ps()}
    for service in SERVICES:
        info = json.loads(subprocess.run(["docker", "inspect", ids[service]], capture_output=True, text=True,
                                         timeout=60, check=True).stdout)[0]
        assert info["Config"].get("Healthcheck", {}).get("Test"), f"{service} has no healthcheck"
        if service in JOBS:
            assert info["Config"]["User"] == "fti", service
        else:  # running services: the main process's real uid, read from the host
            pid = info["State"]["Pid"]
            uid = int(Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[0])
            assert uid != 0, f"{service} runs as root"


def test_the_api_needs_its_key_and_the_registry_refuses_anonymous_and_inference_writes(stack: Stack):
    assert httpx.post(f"{stack.url}/predict", json={"records": []}, timeout=30).status_code == 401
    assert httpx.get(f"{stack.url}/model", timeout=30).status_code == 401
    script = """
import json, os
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
out = {}
def attempt(name, fn):
    try:
        fn()
        out[name] = "allowed"
    except MlflowException as exc:  # the auth app answers in plain text: the status is in the message
        text = str(exc)
        code = next((c for c in ("401", "403") if f"error code {c}" in text or f" {c} " in text), "other")
        out[name] = f"{code} {text[:160]}"
    except Exception as exc:
        out[name] = f"{type(exc).__name__}: {str(exc)[:120]}"
reader = MlflowClient()
attempt("inference_reads", lambda: reader.get_model_version_by_alias("claims-fraud", "champion"))
attempt("inference_moves_alias", lambda: reader.set_registered_model_alias("claims-fraud", "champion", "1"))
attempt("inference_tags_version", lambda: reader.set_model_version_tag("claims-fraud", "1", "fti.validated", "x"))
attempt("inference_registers_version", lambda: reader.create_model_version("claims-fraud", "mlflow-artifacts:/x"))
attempt("inference_creates_model", lambda: reader.create_registered_model("intruder"))
attempt("inference_creates_experiment", lambda: reader.create_experiment("intruder"))
attempt("inference_searches", lambda: reader.search_experiments())
for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
    os.environ.pop(var)
anonymous = MlflowClient()
attempt("anonymous_registers", lambda: anonymous.create_registered_model("intruder"))
attempt("anonymous_reads", lambda: anonymous.get_model_version_by_alias("claims-fraud", "champion"))
print(json.dumps(out))
"""
    out = json.loads(stack.compose("exec", "-T", "inference", "python3", "-c", script, timeout=300
                                   ).stdout.strip().splitlines()[-1])
    assert out["inference_reads"] == out["inference_searches"] == "allowed", out
    for name in ("inference_moves_alias", "inference_tags_version", "inference_registers_version",
                 "inference_creates_model", "inference_creates_experiment"):
        assert out[name].startswith("403"), out
    for name in ("anonymous_registers", "anonymous_reads"):
        assert out[name].startswith("401"), out
    env = stack.compose("exec", "-T", "inference", "env", timeout=60).stdout
    assert "MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false" in env


def test_parity_certificate_from_the_training_container_passes_in_inference(stack: Stack):
    model = httpx.get(f"{stack.url}/model", headers=KEY, timeout=30).json()
    cert = model["certificate"]
    cov = cert["coverage"]
    assert cert["passed"] is True and cov["sampled"] == 64 and cov["late_arrivals"] > 0 and cov["constructed"] > 30
    assert cert["checked"] == cov["sampled"] + cov["late_arrivals"] + cov["constructed"]
    assert model["environment_overridden"] == []
    lineage = model["lineage"]
    assert lineage["env.image"] == "fti/training-pipeline"  # trained in another image ...
    env = stack.compose("exec", "-T", "inference", "printenv", "FTI_IMAGE", "FTI_LOCK_SHA256", timeout=60).stdout.split()
    assert env[0] == "fti/inference"  # ... served from this one, both from the same lock
    assert lineage["env.lock_sha256"] == env[1]


def test_new_data_and_training_move_champion_with_zero_failed_requests(stack: Stack, tmp_path: Path):
    stack.ready()
    record = _records(stack, tmp_path, 250, 1)[0]
    seen: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                try:
                    r = http.post(f"{stack.url}/predict", json={"records": [record]}, headers=KEY)
                    seen.append((r.status_code, r.headers.get("x-model-version")))
                except httpx.HTTPError as exc:
                    seen.append((0, repr(exc)))
                time.sleep(0.2)  # one record over and over: fewer than the 2 drifted windows of 1,000 the
                # monitor's policy needs, so the monitor stays out of this test (the next one is its own)

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    try:
        stack.compose("run", "--rm", "--no-deps", "demo-data", "data", "generate", "--spec", SPEC, "--policyholders", "4000")
        out = stack.compose("run", "--rm", "--no-deps", "feature-pipeline", "features", "run", "--spec", SPEC).stdout
        assert "feature version 2 of 'claims': created" in out
        out = stack.compose("run", "--rm", "--no-deps", "training-pipeline", "train", "--spec", SPEC).stdout
        assert "model claims-fraud version 2" in out and "PROMOTED" in out, out
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(v == "2" for _, v in seen[-5:]):
            time.sleep(1)
        time.sleep(3)
    finally:
        stop.set()
        thread.join(timeout=30)
    failures = [s for s in seen if s[0] != 200]
    assert not failures, failures[:5]
    versions = [v for _, v in seen]
    assert versions[0] == "1" and versions[-1] == "2"
    assert versions == sorted(versions, key=int)  # only ever moves forward
    assert stack.ready()["model_version"] == "2"


def _monitor_state(stack: Stack) -> dict:
    """The monitor service's /health/ready, from inside its container (it publishes no port)."""
    script = ("import json, urllib.request\n"
              "try:\n    r = urllib.request.urlopen('http://127.0.0.1:8001/health/ready', timeout=10)\n"
              "except urllib.error.HTTPError as e:\n    r = e\nprint(r.read().decode())")
    out = stack.compose("exec", "-T", "monitor", "python3", "-c", script, timeout=120).stdout
    return json.loads(out.strip().splitlines()[-1])


def _decisions(stack: Stack) -> list[dict]:
    script = """
import json
from shared.db import make_engine
from shared.monitor_table import list_decisions
from shared.settings import CommonSettings
engine = make_engine(CommonSettings().feature_store_url)
rows = list_decisions(engine, "claims-fraud", limit=100)
print(json.dumps([{k: d[k] for k in ("action", "verdict", "candidate_version", "champion_version",
                                     "candidate_score", "champion_score", "report_ids", "trigger")}
                  for d in rows], default=str))
"""
    out = stack.compose("exec", "-T", "monitor", "python3", "-c", script, timeout=120).stdout
    return list(json.loads(out.strip().splitlines()[-1]))


def test_drift_is_watched_and_retraining_goes_through_the_workers_and_the_gate(stack: Stack, tmp_path: Path):
    """Issue 13 in compose: drifted traffic -> the monitor service's windows drift -> it requests one
    retraining -> the feature worker builds and checks a version, the training worker trains and gates it
    -> promoted and served after its certificate; the cooldown holds; a shuffled-label candidate is refused;
    ``fti rollback`` brings the champion back -- no request fails."""
    import pandas as pd

    from fti.demo_data import generate_claims, to_csv_bytes
    from tests.helpers import CLAIMS_SPEC

    before = stack.ready()["model_version"]
    drift = ["--policyholders", "4000", "--end", "2026-06-30", "--drift-from", "2026-01-01"]
    stack.compose("run", "--rm", "--no-deps", "demo-data", "data", "generate", "--spec", SPEC, *drift)
    frame = generate_claims(n_policyholders=4000, end="2026-06-30", drift_from="2026-01-01")
    csv = tmp_path / "traffic.csv"
    csv.write_bytes(to_csv_bytes(frame[frame["claim_ts"] >= pd.Timestamp("2026-01-01", tz="UTC")]))
    traffic = raw_json_records(csv, CLAIMS_SPEC)
    seen: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=30) as http:
            k = 0
            while not stop.is_set():
                try:
                    r = http.post(f"{stack.url}/predict", json={"records": [traffic[k % len(traffic)]]}, headers=KEY)
                    seen.append((r.status_code, r.headers.get("x-model-version")))
                except httpx.HTTPError as exc:
                    seen.append((0, repr(exc)))
                k += 1
                time.sleep(0.02)

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    try:
        retrained: list[dict] = []
        deadline = time.monotonic() + 600
        i = 0
        with httpx.Client(timeout=120) as http:
            while time.monotonic() < deadline and not retrained:
                for _ in range(5):  # drifted traffic in 100-record batches
                    body = [traffic[(i + j) % len(traffic)] for j in range(100)]
                    i += 100
                    r = http.post(f"{stack.url}/predict", json={"records": body}, headers=KEY)
                    assert r.status_code == 200, r.text[:300]
                time.sleep(3)
                retrained = [d for d in _decisions(stack) if d["action"] in ("retrained", "refused", "failed")]
        assert retrained, (_monitor_state(stack), _decisions(stack))
        d = retrained[0]
        assert d["action"] == "retrained", d
        assert d["trigger"].get("drift") and d["report_ids"], d
        new = d["candidate_version"]
        deadline = time.monotonic() + 120
        while stack.ready()["model_version"] != new:
            assert time.monotonic() < deadline, stack.ready()
            time.sleep(1)
        time.sleep(15)  # more windows, within the cooldown
        finals = [x for x in _decisions(stack) if x["action"] in ("retrained", "refused", "failed", "requested")]
        assert len(finals) == 1, finals
        state = _monitor_state(stack)
        assert state["status"] == "ready" and state["passes"] >= 3, state

        out = stack.compose("run", "--rm", "--no-deps", "training-pipeline", "train", "--spec", SPEC,
                            "--negative-control").stdout
        assert "not promoted" in out and "worse than" in out, out

        t0 = time.monotonic()
        out = stack.compose("run", "--rm", "--no-deps", "training-pipeline", "rollback", "claims-fraud").stdout
        assert f"version {new} -> {before}" in out, out
        moved = time.monotonic()
        while stack.ready()["model_version"] != before:
            assert time.monotonic() - moved < 10, stack.ready()
            time.sleep(0.2)
        print(f"rollback: command {moved - t0:.1f}s, then served in {time.monotonic() - moved:.1f}s")
    finally:
        stop.set()
        thread.join(timeout=30)
    failures = [x for x in seen if x[0] != 200]
    assert not failures, failures[:5]
    assert len(seen) > 100


def test_down_then_up_keeps_versions_and_down_v_removes_everything(stack: Stack):
    stack.compose("down", timeout=300)
    stack.compose("up", "-d", "--wait", "--wait-timeout", "900", "--no-build", timeout=1200)
    ready = stack.ready()
    assert ready["model_version"] == "2"  # the champion the rollback restored
    out = stack.compose("run", "--rm", "--no-deps", "feature-pipeline", "features", "list", "--spec", SPEC, "--json").stdout
    versions = [v["version"] for v in json.loads(out[out.index("["):])]
    assert versions == [1, 2, 3]  # the third: the retraining's
    logs = stack.compose("logs", "--no-log-prefix", "training-pipeline", timeout=60).stdout
    assert "skipped" in logs  # the re-up trained nothing new

    stack.compose("down", "-v", timeout=300)
    volumes = subprocess.run(["docker", "volume", "ls", "-q", "--filter",
                              f"label=com.docker.compose.project={stack.project}"],
                             capture_output=True, text=True, timeout=60, check=True).stdout.split()
    assert volumes == []
    assert stack.ps() == []
