"""Acceptance: a newly promoted champion is served without a restart, and a bad one never is.

Real ``fti features run`` / ``fti train`` subprocesses, a real ``fti serve`` polling its alias every
second (``FTI_RELOAD_INTERVAL_SECONDS=1``), client threads sending single-record ``/predict``
requests back to back for the whole run:

* a better model is trained and promoted while the clients run: within a bounded time every
  response comes from version 2; each client only ever sees the version move forward; the header,
  the body and the prediction log agree on the version that answered, and each (record, version)
  pair always gets the same probabilities (so the label is the model that really scored); zero
  non-200 responses;
* a registered version whose cached artifacts fail a check is promoted: first its environment
  fingerprint (another scikit-learn), then -- fixed and re-tagged -- its parity certificate; the
  old version keeps serving with zero failed requests, ``/model`` names the refused version and
  the reason (with the certificate report), the refused version is not reloaded on every poll,
  and once the artifacts are repaired and the version re-tagged it is served.
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from inference_service.model_loader import MlflowLoader
from shared.db import make_engine
from shared.prediction_table import predictions
from tests.helpers import Server, fti_env, raw_json_records, register_cache_edit, run_fti, write_claims_spec

pytestmark = [pytest.mark.e2e]

NAME = "claims-fraud"


def _setup(root: Path, *, extra_versions: int = 0) -> dict[str, Any]:
    """Features + one trained (promoted) version, plus ``extra_versions`` registered but not promoted."""
    spec = write_claims_spec(root / "spec", n_policyholders=300)
    data = root / "data"
    env = fti_env(data, OMP_NUM_THREADS="1")
    steps = [["features", "run", "--spec", str(spec)], ["train", "--spec", str(spec)]]
    steps += [["train", "--spec", str(spec), "--promote", "never"]] * extra_versions
    for args in steps:
        res = run_fti(args, env)
        assert res.returncode == 0, res.stderr[-3000:]
    records = raw_json_records(spec.parent / "raw" / "claims.csv", spec)
    uri = f"sqlite:///{data / 'mlflow.db'}"
    return {"root": root, "spec": spec, "data": data, "env": env, "records": records[:40], "mlflow_uri": uri,
            "serve_env": fti_env(data, OMP_NUM_THREADS="1", FTI_RELOAD_INTERVAL_SECONDS="1")}


class Client(threading.Thread):
    """Sends one single-record /predict after another until stopped; keeps every outcome."""

    def __init__(self, url: str, records: list[dict[str, Any]], offset: int):
        super().__init__(daemon=True)
        self.url, self.records, self.offset = url, records, offset
        self.stop = threading.Event()
        self.results: list[dict[str, Any]] = []

    def run(self) -> None:
        i = self.offset
        with httpx.Client(timeout=60) as client:
            while not self.stop.is_set():
                k = i % len(self.records)
                i += 1
                out: dict[str, Any] = {"record": k, "t": time.monotonic()}
                try:
                    r = client.post(f"{self.url}/predict", json={"records": [self.records[k]]})
                    out["status"] = r.status_code
                    if r.status_code == 200:
                        body = r.json()
                        out.update(header=r.headers.get("x-model-version"), body=body["model_version"],
                                   prediction_id=body["predictions"][0]["prediction_id"],
                                   probabilities=body["predictions"][0]["probabilities"])
                    else:
                        out["error"] = r.text[:300]
                except httpx.HTTPError as exc:
                    out.update(status=None, error=repr(exc))
                self.results.append(out)

    def versions(self) -> list[str]:
        return [r["header"] for r in self.results if r.get("status") == 200]


def _start_clients(url: str, records: list[dict[str, Any]], n: int = 2) -> list[Client]:
    clients = [Client(url, records, offset=17 * j) for j in range(n)]
    for c in clients:
        c.start()
    deadline = time.monotonic() + 60
    while any(len(c.results) < 5 for c in clients):  # every client is answered before anything changes
        assert time.monotonic() < deadline, "clients got no answers"
        time.sleep(0.1)
    return clients


def _stop_clients(clients: list[Client]) -> list[dict[str, Any]]:
    for c in clients:
        c.stop.set()
    for c in clients:
        c.join(timeout=90)
        assert not c.is_alive()
    return [r for c in clients for r in c.results]


def _assert_clients_healthy(clients: list[Client]) -> None:
    everything = [r for c in clients for r in c.results]
    failed = [r for r in everything if r.get("status") != 200]
    assert not failed, f"{len(failed)} of {len(everything)} requests failed: {failed[:3]}"
    for c in clients:
        assert all(r["header"] == r["body"] for r in c.results), "X-Model-Version differs from the body"
        seen = [int(v) for v in c.versions()]
        assert seen == sorted(seen), f"a client saw the version go backwards: {seen}"


def _wait_json(url: str, cond: Any, timeout: float, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: Any = None
    while time.monotonic() < deadline:
        r = httpx.get(url, timeout=10)
        body = r.json()
        if r.status_code == 200 and cond(body):
            return body
        time.sleep(0.2)
    raise AssertionError(f"{what} not reached in {timeout}s; last: {json.dumps(body)[:3000]}")


def _logged_versions(data: Path, ids: list[str], timeout: float = 20) -> dict[str, str]:
    engine = make_engine(f"sqlite:///{data / 'features.db'}")
    try:
        deadline = time.monotonic() + timeout
        while True:
            out: dict[str, str] = {}
            with engine.connect() as conn:
                for i in range(0, len(ids), 500):
                    q = select(predictions.c.prediction_id, predictions.c.model_version).where(
                        predictions.c.prediction_id.in_(ids[i:i + 500]))
                    for pid, version in conn.execute(q):
                        out[pid] = version
            if len(out) == len(ids) or time.monotonic() > deadline:
                return out
            time.sleep(0.2)
    finally:
        engine.dispose()


def test_promoted_champion_is_served_without_restart_and_without_failed_requests(tmp_path):
    s = _setup(tmp_path)
    # v2: same features (same feature definitions), another max_iter: a different, better model
    spec2 = write_claims_spec(tmp_path / "spec2", overrides={"model.estimator.params.max_iter": 90}, generate=False)
    server = Server(s["spec"], s["serve_env"], tmp_path / "server.log")
    try:
        ready = server.wait_ready()
        assert ready["model_version"] == "1" and ready["reload"]["enabled"] is True
        assert ready["reload"]["interval_seconds"] == 1
        clients = _start_clients(server.url, s["records"])

        res = run_fti(["train", "--spec", str(spec2), "--promote", "always"], s["env"])
        assert res.returncode == 0, res.stderr[-3000:]
        assert f"model {NAME} version 2" in res.stdout and "PROMOTED" in res.stdout, res.stdout
        trained_at = time.monotonic()

        ready = _wait_json(f"{server.url}/health/ready", lambda b: b["model_version"] == "2", 45, "version 2 served")
        switched_after = time.monotonic() - trained_at
        t_switch = time.monotonic()
        deadline = time.monotonic() + 30  # then every client gets answers from v2 (at least 5 each)
        while any(sum(1 for r in c.results if r["t"] > t_switch) < 5 for c in clients):
            assert time.monotonic() < deadline, "clients stopped getting answers after the switch"
            time.sleep(0.1)
        results = _stop_clients(clients)

        _assert_clients_healthy(clients)
        for c in clients:
            seen = c.versions()
            assert seen[0] == "1" and seen[-1] == "2"
            after = [r["header"] for r in c.results if r["t"] > t_switch]
            assert set(after) == {"2"}, "a request that started after the swap was answered by version 1"
        assert switched_after < 30, f"version 2 served {switched_after:.1f}s after it was promoted"

        # The version label is the model that scored: each (record, version) always has the same
        # probabilities, and the two versions really differ.
        by_pair: dict[tuple[int, str], set[str]] = {}
        for r in results:
            by_pair.setdefault((r["record"], r["header"]), set()).add(json.dumps(r["probabilities"], sort_keys=True))
        assert all(len(v) == 1 for v in by_pair.values()), "one version gave one record two answers"
        both = [k for k in {rec for rec, _ in by_pair} if (k, "1") in by_pair and (k, "2") in by_pair]
        assert both and any(by_pair[(k, "1")] != by_pair[(k, "2")] for k in both)

        reload = ready["reload"]
        assert reload["reloads"] == 1 and reload["in_sync"] is True and reload["last_reload_error"] is None
        assert reload["last_reload"]["from_version"] == "1" and reload["last_reload"]["to_version"] == "2"
        assert "parity certificate passed" in reload["last_reload"]["certificate"]
        model = httpx.get(f"{server.url}/model", timeout=10).json()
        assert model["model_version"] == "2" and model["certificate"]["passed"] is True
        assert model["lineage"]["validated"] == "true" and model["reload"]["served_version"] == "2"

        # the prediction log names the same version as the response, for every prediction
        logged = _logged_versions(s["data"], [r["prediction_id"] for r in results])
        assert logged == {r["prediction_id"]: r["body"] for r in results}
    finally:
        server.stop()
    log = (tmp_path / "server.log").read_text()
    assert f"hot reload: now serving {NAME} version 2 (was 1" in log
    print(f"\n{len(results)} requests, 0 failed; version 2 served {switched_after:.1f}s after `fti train` returned")


def _cache_entry(s: dict[str, Any], version: str) -> Path:
    """Fill the server's model cache for ``version`` exactly as the server would (before it does)."""
    loader = MlflowLoader(s["mlflow_uri"], s["mlflow_uri"], s["data"] / "model-cache")
    path = loader.fetch(NAME, version)
    assert (path / "extra_files" / "certificate.json").is_file()
    return path / "extra_files"


def test_refused_candidate_leaves_the_old_model_serving_until_it_is_fixed(tmp_path):
    from mlflow import MlflowClient

    s = _setup(tmp_path, extra_versions=1)  # v1 champion, v2 registered and validated, not promoted
    extra = _cache_entry(s, "2")
    env_file, cert_file = extra / "environment.json", extra / "certificate.json"
    env_orig, cert_orig = env_file.read_text(), cert_file.read_text()
    fingerprint = json.loads(env_orig)
    running = fingerprint["enforced"]["scikit-learn"]
    fingerprint["enforced"]["scikit-learn"] = "1.0.2"  # as if trained with another scikit-learn
    env_file.write_text(json.dumps(fingerprint))
    cache = s["data"] / "model-cache"
    register_cache_edit(s["mlflow_uri"], cache, NAME, "2")  # as if registered with these files
    registry = MlflowClient(tracking_uri=s["mlflow_uri"], registry_uri=s["mlflow_uri"])
    log_path = tmp_path / "server.log"

    def refusals() -> int:
        return log_path.read_text().count(f"hot reload: refused {NAME} version 2")

    server = Server(s["spec"], s["serve_env"], log_path)
    try:
        assert server.wait_ready()["model_version"] == "1"
        clients = _start_clients(server.url, s["records"])

        # 1. environment fingerprint mismatch
        registry.set_registered_model_alias(NAME, "champion", "2")
        model = _wait_json(f"{server.url}/model", lambda b: b["reload"]["last_reload_error"] is not None, 45,
                           "a refusal of version 2")
        err = model["reload"]["last_reload_error"]
        assert model["model_version"] == "1"
        assert err["model_version"] == "2" and err["kind"] == "refused" and err["certificate"] is None
        assert f"scikit-learn: model 1.0.2, here {running}" in err["reason"]
        time.sleep(3.5)  # three more polls: not loaded again
        model = httpx.get(f"{server.url}/model", timeout=10).json()
        reload = model["reload"]
        assert model["model_version"] == "1" and reload["last_outcome"] == "waiting"
        assert reload["alias_version"] == "2" and reload["in_sync"] is False and reload["reloads"] == 0
        assert reload["last_reload_error"]["failures"] == 1 and refusals() == 1
        ready = httpx.get(f"{server.url}/health/ready", timeout=10)
        assert ready.status_code == 200 and ready.json()["model_version"] == "1"
        assert ready.json()["reload"]["last_reload_error"]["model_version"] == "2"

        # 2. fingerprint repaired, certificate corrupted, version re-tagged: tried again, refused by parity
        cert = json.loads(cert_orig)
        cert["expected"][3][1] = cert["expected"][3][1] + 1e-12
        cert_file.write_text(json.dumps(cert))
        env_file.write_text(env_orig)
        register_cache_edit(s["mlflow_uri"], cache, NAME, "2")
        registry.set_model_version_tag(NAME, "2", "fti.recheck", "1")
        model = _wait_json(f"{server.url}/model",
                           lambda b: (b["reload"]["last_reload_error"] or {}).get("failures") == 2, 45,
                           "a second refusal of version 2")
        err = model["reload"]["last_reload_error"]
        assert model["model_version"] == "1" and err["model_version"] == "2"
        assert re.search(r"parity certificate FAILED: 1 of \d+ records differ", err["reason"])
        assert err["certificate"]["differing"] == 1
        first = err["certificate"]["first_differences"][0]
        assert first["record_id"] == cert["records"][3]["claim_id"] and first["fields"] == []
        time.sleep(2.5)
        assert refusals() == 2

        # 3. certificate repaired and re-tagged: version 2 goes in
        cert_file.write_text(cert_orig)
        register_cache_edit(s["mlflow_uri"], cache, NAME, "2")
        registry.set_model_version_tag(NAME, "2", "fti.recheck", "2")
        ready = _wait_json(f"{server.url}/health/ready", lambda b: b["model_version"] == "2", 45, "version 2 served")
        assert ready["reload"]["in_sync"] is True and ready["reload"]["reloads"] == 1
        t_switch = time.monotonic()
        deadline = time.monotonic() + 30
        while any(sum(1 for r in c.results if r["t"] > t_switch) < 3 for c in clients):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        _stop_clients(clients)

        _assert_clients_healthy(clients)
        for c in clients:
            seen = c.versions()
            assert seen[0] == "1" and seen[-1] == "2"
    finally:
        server.stop()
    log = log_path.read_text()
    assert refusals() == 2 and f"hot reload: now serving {NAME} version 2 (was 1" in log
    lines = [json.loads(x) for x in log.splitlines() if x.startswith("{")]  # JSON log lines (FTI_LOG_FORMAT)
    assert any(x["level"] == "error" and x["logger"] == "inference_service.runtime"
               and x["message"].startswith("hot reload: refused") for x in lines)
