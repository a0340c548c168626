"""Acceptance (hardening, model files): every crafted model of ``tests/malicious_models.py``, registered
behind the alias by someone with registry write access, is refused before any of its code runs -- on
every path that loads a model -- while the genuine model keeps serving over real HTTP.

The attacker here is as strong as a registry writer can be: each crafted version carries every tag of the
genuine version (``fti.validated``, the feature spec hash, the environment) and a *correct*
``fti.artifact_sha256`` for its own files, so only the allow-list stands between it and the service.
Each payload tries to create a marker file; the unit tests show each one does so under a naive load.

Paths: the serving process (hot reload, over HTTP; a fresh start on a crafted alias), the lineage
recompute (``GET /predictions/{id}`` of a prediction logged under the crafted version), batch scoring
(``inference_service.batch.load_model`` and the ``fti predict-batch`` CLI), ``fti reproduce``, and
training's gate (the champion it compares with).
"""

from __future__ import annotations

import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import insert, select

from shared.db import make_engine
from shared.prediction_table import predictions
from shared.registry_contract import Tag
from tests.helpers import Server, copy_store, mlflow_uris_restored, raw_json_records, run_fti
from tests.malicious_models import CATALOGUE, write_model_dir

pytestmark = [pytest.mark.e2e]

NAME = "claims-fraud"


def _register(uri: str, genuine_dir: Path, crafted: Any, marker: Path, tags: dict[str, str], work: Path) -> str:
    """Register the crafted file as a new version with the genuine version's tags and its own digest."""
    import mlflow
    from mlflow import MlflowClient

    from shared.model_file import artifact_digest

    genuine_skops = (genuine_dir / "model.skops").read_bytes()
    model_dir = write_model_dir(genuine_dir, work / crafted.name, crafted.build(genuine_skops, marker))
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if mlflow.get_experiment_by_name("attacker") is None:
        mlflow.create_experiment("attacker", artifact_location=(work / "artifacts").as_uri())
    mlflow.set_experiment("attacker")
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(model_dir), "model")
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    # the version claims the genuine training run: its lineage (spec, params, feature version) is the real one
    genuine_run = tags[Tag.RUN_ID]
    mv = client.create_model_version(NAME, source=f"{run.info.artifact_uri}/model", run_id=genuine_run)
    with tempfile.TemporaryDirectory() as tmp:
        registered = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{NAME}/{mv.version}", dst_path=tmp)
        digest = artifact_digest(registered)
    for key, value in {**tags, Tag.ARTIFACT_SHA256: digest}.items():
        client.set_model_version_tag(NAME, str(mv.version), key, value)
    return str(mv.version)


@pytest.fixture(scope="module")
def store(claims_store: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from mlflow import MlflowClient

    from inference_service.model_loader import MlflowLoader

    root = tmp_path_factory.mktemp("malicious")
    s = copy_store(claims_store, root / "store")
    uri = s["uri"]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    genuine = client.get_model_version(NAME, "1")
    markers = root / "markers"
    markers.mkdir()
    versions = {}
    with mlflow_uris_restored():  # the loader and mlflow.register set mlflow's global URIs
        genuine_dir = MlflowLoader(uri, uri, root / "attacker-cache").fetch(NAME, "1")
        for crafted in CATALOGUE:
            versions[crafted.name] = _register(uri, genuine_dir, crafted, markers / crafted.name,
                                               dict(genuine.tags), root / "crafted")
    records = raw_json_records(s["spec"].parent / "raw" / "claims.csv", s["spec"])[:20]
    return {**s, "root": root, "versions": versions, "markers": markers, "records": records}


def _no_marker(store: dict[str, Any]) -> None:
    made = sorted(p.name for p in store["markers"].iterdir())
    assert made == [], f"payload ran: {made}"


def _set_alias(store: dict[str, Any], version: str) -> None:
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=store["uri"], registry_uri=store["uri"]).set_registered_model_alias(
        NAME, "champion", version)


class _Client(threading.Thread):
    def __init__(self, url: str, records: list[dict[str, Any]]):
        super().__init__(daemon=True)
        self.url, self.records = url, records
        self.results: list[tuple[int, str | None]] = []
        self.ids: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=20) as http:
            i = 0
            while not self.stop.is_set():
                r = http.post(f"{self.url}/predict", json={"records": [self.records[i % len(self.records)]]})
                self.results.append((r.status_code, r.headers.get("x-model-version")))
                if r.status_code == 200:
                    self.ids.extend(p["prediction_id"] for p in r.json()["predictions"])
                i += 1
                time.sleep(0.05)


def test_hot_reload_refuses_every_crafted_model_while_the_genuine_one_serves(store):
    env = {**store["env"], "FTI_RELOAD_INTERVAL_SECONDS": "1"}
    server = Server(store["spec"], env, store["root"] / "hot-reload.log")
    client = None
    try:
        assert server.wait_ready()["model_version"] == "1"
        client = _Client(server.url, store["records"])
        client.start()
        for name, version in store["versions"].items():
            _set_alias(store, version)
            deadline = time.monotonic() + 60
            while True:
                body = httpx.get(f"{server.url}/model", timeout=10).json()
                err = body["reload"]["last_reload_error"] or {}
                if err.get("model_version") == version:
                    break
                assert time.monotonic() < deadline, f"{name}: no refusal of version {version}: {body['reload']}"
                time.sleep(0.3)
            assert body["model_version"] == "1", name
            assert err["kind"] == "refused", (name, err)
            assert "refused" in err["reason"], (name, err["reason"])
            _no_marker(store)
        ready = httpx.get(f"{server.url}/health/ready", timeout=10)
        assert ready.status_code == 200 and ready.json()["model_version"] == "1"

        # lineage recompute of a prediction logged under each crafted version: refused, nothing runs
        engine = make_engine(f"sqlite:///{store['data'] / 'features.db'}")
        deadline = time.monotonic() + 30
        while not client.ids:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        time.sleep(1.0)  # the log writer flushes every 0.2 s
        with engine.connect() as conn:
            row = conn.execute(select(predictions).where(predictions.c.prediction_id == client.ids[0])).mappings().one()
        for name, version in store["versions"].items():
            pid = uuid.uuid4().hex
            with engine.begin() as conn:
                conn.execute(insert(predictions).values({**row, "prediction_id": pid, "model_version": version}))
            lineage = httpx.get(f"{server.url}/predictions/{pid}", timeout=60).json()
            step = lineage["recomputation"]
            assert step["equal"] is False and "refused" in step["error"], (name, step)
            _no_marker(store)
    finally:
        if client is not None:
            client.stop.set()
            client.join(timeout=30)
        _set_alias(store, "1")
        server.stop()
    statuses = {s for s, _ in client.results} if client else set()
    served = {v for _, v in client.results} if client else set()
    assert client is not None and len(client.results) > 20
    assert statuses == {200} and served == {"1"}, (statuses, served)
    assert "Traceback" not in (store["root"] / "hot-reload.log").read_text()  # refusals are reasons, not crashes
    _no_marker(store)


def test_a_fresh_start_on_a_crafted_alias_stays_not_ready_and_runs_nothing(store):
    version = store["versions"]["numpy-runstring"]
    _set_alias(store, version)
    env = {**store["env"], "FTI_MODEL_CACHE_DIR": str(store["root"] / "fresh-cache")}
    server = Server(store["spec"], env, store["root"] / "fresh.log")
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.proc.poll() is None, server.log_path.read_text()[-3000:]
            try:
                r = httpx.get(f"{server.url}/health/ready", timeout=5)
                if r.status_code == 503 and r.json().get("attempts", 0) >= 1:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "no refused load reported"
            time.sleep(0.3)
        body = r.json()
        assert "not in fti's model allow-list" in body["reason"] or "no fti pipeline needs" in body["reason"], body
        assert httpx.post(f"{server.url}/predict", json={"records": store["records"][:1]}, timeout=10
                          ).status_code == 503
        _no_marker(store)
    finally:
        _set_alias(store, "1")
        server.stop()


def test_batch_scoring_reproduce_and_the_training_gate_refuse_every_crafted_model(store, monkeypatch):
    from inference_service.batch import BatchError, load_model
    from inference_service.model_loader import MlflowLoader, ModelLoadError
    from shared.model_file import ModelFileRefused
    from shared.model_ref import parse
    from shared.spec import load_spec
    from training_pipeline import register as reg

    spec = load_spec(store["spec"]).spec
    loader = MlflowLoader(store["uri"], store["uri"], store["root"] / "batch-cache")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", store["uri"])
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store["uri"], registry_uri=store["uri"])
    for version in store["versions"].values():
        with pytest.raises((ModelLoadError, BatchError), match="refused"):
            load_model(loader, spec, parse(f"{NAME}/{version}"))
        with pytest.raises(ModelFileRefused, match="refused"):
            reg.load_registered(NAME, version, dict(client.get_model_version(NAME, version).tags), 512)
        _no_marker(store)

    # the real CLIs, on two of them (one refused from the file alone, one only once built)
    for name in ("builtins-exec", "tree-out-of-bounds"):
        version = store["versions"][name]
        res = run_fti(["predict-batch", "--spec", str(store["spec"]), "--model", f"{NAME}/{version}"], store["env"])
        assert res.returncode != 0 and "refused" in res.stderr, (name, res.stderr[-2000:])
        res = run_fti(["reproduce", f"{NAME}/{version}"], store["env"])
        assert res.returncode != 0 and "refused" in res.stderr, (name, res.stderr[-2000:])
        assert "Traceback" not in res.stderr
        _no_marker(store)

    # the gate: the champion is a crafted model; a new training run neither loads it nor is promoted over it
    _set_alias(store, store["versions"]["posix-system"])
    try:
        res = run_fti(["train", "--spec", str(store["spec"])], store["env"])
        assert res.returncode == 0, res.stderr[-3000:]
        text = res.stdout + res.stderr
        assert "cannot be loaded safely" in text and "refused" in text, text[-3000:]
        champion = client.get_model_version_by_alias(NAME, "champion")
        assert str(champion.version) == store["versions"]["posix-system"]
        _no_marker(store)
    finally:
        _set_alias(store, "1")
