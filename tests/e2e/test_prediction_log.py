"""Acceptance: the prediction log and lineage, over real HTTP to real ``fti serve`` processes.

* every served prediction is a row in ``fti_predictions`` (model version, feature version, the
  request id of the response header, the exact outputs); ``GET /predictions/{id}`` and the real
  ``fti lineage`` CLI reach the source hash and the code commit and recompute the prediction
  bit for bit;
* SIGTERM in the middle of concurrent load: every prediction a client received a 200 for is in
  the log after the process exits, complete;
* an unknown id is a 404 error; ``FTI_PREDICTION_LOG=false`` logs nothing; a store that cannot be
  reached keeps readiness at 503 with the reason instead of crashing.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import threading
import time
import uuid

import httpx
import pytest
from sqlalchemy import select

from shared import feature_table as ft
from shared.db import make_engine
from shared.prediction_table import predictions
from shared.spec import load_spec
from tests.helpers import Server, fti_env, raw_json_records, run_fti, write_claims_spec

pytestmark = [pytest.mark.e2e]

# uvicorn re-raises the SIGTERM it handled once shutdown is complete, so a graceful exit is -15.
GRACEFUL = (0, -signal.SIGTERM)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("predlog")
    spec_path = write_claims_spec(root / "spec", n_policyholders=300)
    env = fti_env(root / "data", OMP_NUM_THREADS="1")
    for args in (["features", "run", "--spec", str(spec_path)], ["train", "--spec", str(spec_path)]):
        res = run_fti(args, env)
        assert res.returncode == 0, res.stderr[-3000:]
    records = raw_json_records(root / "spec" / "raw" / "claims.csv", spec_path)
    engine = make_engine(f"sqlite:///{root / 'data' / 'features.db'}")
    try:
        yield {"root": root, "spec_path": spec_path, "env": env, "records": records, "engine": engine,
               "spec": load_spec(spec_path)}
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def server(trained):
    srv = Server(trained["spec_path"], trained["env"], trained["root"] / "server.log")
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def _rows(engine, ids) -> dict[str, dict]:
    out: dict[str, dict] = {}
    ids = list(ids)
    with engine.connect() as conn:
        for i in range(0, len(ids), 500):
            for r in conn.execute(select(predictions).where(predictions.c.prediction_id.in_(ids[i:i + 500]))):
                out[r.prediction_id] = dict(r._mapping)
    return out


def _all_ids(engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(select(predictions.c.prediction_id)).scalars())


def _wait_logged(engine, ids, timeout: float = 15.0) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while True:
        rows = _rows(engine, ids)
        if len(rows) == len(set(ids)) or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def _post(url: str, records: list[dict], client: httpx.Client | None = None) -> httpx.Response:
    return (client or httpx).post(f"{url}/predict", json={"records": records}, timeout=60)


def test_every_prediction_is_logged_with_lineage_and_recomputes(trained, server):
    spec = trained["spec"].spec
    rng = random.Random(5)
    records = trained["records"]
    before = _all_ids(trained["engine"])
    new = dict(records[3])  # a record the feature table has never seen: its entity's latest history
    new.update({spec.record_id: "NEW-LOG-1", spec.event_time: "2031-06-01T12:00:00Z", "claim_amount": 1234.5})
    requests = [rng.sample(records, 25)] + [[r] for r in rng.sample(records, 6)] + [[new]]
    served: dict[str, tuple[dict, dict, httpx.Headers]] = {}
    for batch in requests:
        r = _post(server.url, batch)
        assert r.status_code == 200, r.text
        body = r.json()
        assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])
        assert r.headers["x-model-name"] == spec.model.name == body["model_name"]
        assert r.headers["x-model-version"] == body["model_version"]
        for p in body["predictions"]:
            served[p["prediction_id"]] = (p, body, r.headers)

    rows = _wait_logged(trained["engine"], served)
    assert len(served) == 32 and len(rows) == len(served)
    assert _all_ids(trained["engine"]) - before == set(served)  # one row per prediction, nothing else
    for pid, (p, body, headers) in served.items():
        row = rows[pid]
        assert row["request_id"] == headers["x-request-id"]
        assert row["model_name"] == body["model_name"] and row["model_version"] == body["model_version"]
        assert row["feature_version"] == body["feature_version"] == 1
        assert row["record_id"] == p["record_id"] and row["dataset"] == spec.name
        assert json.loads(row["outputs"]) == {"prediction": p["prediction"], "probabilities": p["probabilities"]}
        assert json.loads(row["inputs"])[spec.record_id] == p["record_id"]

    manifest = ft.get_version(trained["engine"], spec.name, 1)
    model_info = httpx.get(f"{server.url}/model", timeout=10).json()
    new_id = next(pid for pid, (p, _, _) in served.items() if p["record_id"] == "NEW-LOG-1")
    for pid in (next(iter(served)), new_id):
        p = served[pid][0]
        r = httpx.get(f"{server.url}/predictions/{pid}", timeout=120)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["prediction"]["prediction_id"] == pid and out["prediction"]["outputs"]["probabilities"] == \
            p["probabilities"]
        assert out["model"]["version"] == model_info["model_version"] and out["model"]["is_alias_now"] is True
        assert out["training_run"]["run_id"] == model_info["run_id"]
        assert out["features"]["trained_on"]["version"] == 1
        assert out["features"]["trained_on"]["checksum"] == manifest.checksum
        assert out["features"]["trained_on"]["manifest_matches_model_tags"] is True
        assert out["features"]["history_read_from"]["version"] == 1
        assert out["source"]["sha256"] == manifest.source_sha256 and len(manifest.source_sha256) == 64
        assert out["spec"]["hash"] == trained["spec"].hash
        assert out["code"]["commit"] == model_info["lineage"]["code_commit"] and out["code"]["commit"]
        assert out["environment"]["python"] and out["environment"]["lock_sha256"]
        assert out["recomputed"] is True, out
        assert out["recomputation"]["probabilities"] == p["probabilities"]
        assert out["recomputation"]["prediction"] == p["prediction"]
        assert out["problems"] == []

    # The real CLI, in a separate process: with the spec, and with the spec training logged with the run.
    for extra, origin in ((["--spec", str(trained["spec_path"])], "--spec"), ([], "training run artifact")):
        res = run_fti(["lineage", new_id, "--json", *extra], trained["env"])
        assert res.returncode == 0, res.stderr[-3000:] + res.stdout[-3000:]
        out = json.loads(res.stdout)
        assert out["recomputed"] is True and out["recomputation"]["spec"]["origin"] == origin
        assert out["recomputation"]["model_loaded_from"].startswith("the registry")
        assert out["recomputation"]["probabilities"] == served[new_id][0]["probabilities"]
        assert out["source"]["sha256"] == manifest.source_sha256
        assert out["code"]["commit"] == model_info["lineage"]["code_commit"]
    res = run_fti(["lineage", new_id], trained["env"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert "recomputed   YES" in res.stdout and manifest.source_sha256 in res.stdout


def test_unknown_prediction_id_is_a_404_error(trained, server):
    for pid in (uuid.uuid4().hex, "not-an-id", "A" * 32):
        r = httpx.get(f"{server.url}/predictions/{pid}", timeout=10)
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "prediction_not_found"
    res = run_fti(["lineage", uuid.uuid4().hex, "--spec", str(trained["spec_path"])], trained["env"])
    assert res.returncode == 3 and "no logged prediction has id" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("flush_seconds", ["0.25", "60"], ids=["default-flush", "all-still-queued-at-sigterm"])
def test_sigterm_under_load_loses_no_prediction(trained, tmp_path, flush_seconds):
    # With a 60 s flush interval nothing reaches the database before SIGTERM (batches are 500 rows, the
    # load stops after ~400): every logged row is written by the flush at shutdown.
    env = {**trained["env"], "FTI_PREDICTION_LOG_FLUSH_SECONDS": flush_seconds,
           "FTI_PREDICTION_LOG_PROCESS_FLUSH_SECONDS": flush_seconds}
    srv = Server(trained["spec_path"], env, tmp_path / "server.log")
    records = trained["records"]
    got: list[tuple[float, str, dict]] = []  # (time answered, prediction id, prediction)
    lock = threading.Lock()
    stop = threading.Event()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                batch = rng.sample(records, rng.randint(1, 5))
                try:
                    r = _post(srv.url, batch, http)
                except httpx.HTTPError:
                    if srv.proc.poll() is not None:
                        return
                    time.sleep(0.01)
                    continue
                if r.status_code == 200:
                    now = time.monotonic()
                    with lock:
                        got.extend((now, p["prediction_id"], p) for p in r.json()["predictions"])

    try:
        srv.wait_ready()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while len(got) < 400 and time.monotonic() < deadline:
            time.sleep(0.05)
        killed_at = time.monotonic()
        os.killpg(srv.proc.pid, signal.SIGTERM)  # graceful: uvicorn finishes in-flight requests, then lifespan
        assert srv.proc.wait(timeout=60) in GRACEFUL
        stop.set()
        for t in threads:
            t.join(30)
    finally:
        stop.set()
        srv.stop()
    log_text = (tmp_path / "server.log").read_text()
    ids = {pid for _, pid, _ in got}
    assert len(ids) == len(got) >= 400
    rows = _rows(trained["engine"], ids)
    missing = ids - set(rows)
    assert not missing, f"{len(missing)} of {len(ids)} answered predictions are not logged; log: {log_text[-3000:]}"
    for _, pid, p in got:  # complete rows, with exactly what the client received
        row = rows[pid]
        assert all(row[c] is not None for c in ("request_id", "created_at", "model_name", "model_version",
                                                "feature_version", "record_id", "entity_key", "inputs"))
        assert json.loads(row["outputs"]) == {"prediction": p["prediction"], "probabilities": p["probabilities"]}
        assert json.loads(row["inputs"])["claim_id"] == p["record_id"]
    after_kill = sum(1 for t, _, _ in got if t >= killed_at)
    assert "Application shutdown complete" in log_text
    closing = re.search(r"prediction log closed: (\d+) row\(s\) written .*?, (\d+) dropped", log_text)
    assert closing and closing.group(2) == "0", log_text[-3000:]
    queued = re.search(r"closing; writing the (\d+) row\(s\) not yet written", log_text)
    assert queued, log_text[-3000:]
    if flush_seconds == "60":
        assert int(queued.group(1)) > 0
    print(f"\n{len(ids)} predictions answered, {after_kill} of them after SIGTERM, {queued.group(1)} rows not yet "
          f"written when the lifespan shutdown began; all logged ({closing.group(0)})")


def test_prediction_log_off_logs_nothing(trained, tmp_path):
    env = {**trained["env"], "FTI_PREDICTION_LOG": "false"}
    srv = Server(trained["spec_path"], env, tmp_path / "server.log")
    try:
        ready = srv.wait_ready()
        assert ready["prediction_log"] == {"enabled": False}
        before = _all_ids(trained["engine"])
        ids = []
        for rec in trained["records"][:5]:
            r = _post(srv.url, [rec])
            assert r.status_code == 200 and r.headers["x-request-id"]
            ids.append(r.json()["predictions"][0]["prediction_id"])
        time.sleep(1.0)  # longer than the writer's flush interval, were one running
        assert _all_ids(trained["engine"]) == before
        r = httpx.get(f"{srv.url}/predictions/{ids[0]}", timeout=10)
        assert r.status_code == 404 and r.json()["error"]["code"] == "prediction_not_found"
    finally:
        assert srv.stop() in GRACEFUL


def test_unreachable_store_keeps_readiness_503_with_the_reason(trained, tmp_path):
    from tests.infra.ports import free_port

    url = f"postgresql+psycopg://fti@127.0.0.1:{free_port()}/fti"  # nothing listens there
    env = {**trained["env"], "FTI_DATABASE_URL": url, "FTI_LOAD_RETRY_SECONDS": "0.5"}
    srv = Server(trained["spec_path"], env, tmp_path / "server.log")
    try:
        deadline = time.monotonic() + 60
        body = None
        while time.monotonic() < deadline:
            try:
                r = httpx.get(f"{srv.url}/health/ready", timeout=5)
            except httpx.HTTPError:
                time.sleep(0.2)
                continue
            body = r.json()
            if r.status_code == 503 and "prediction log" in (body.get("reason") or ""):
                break
            time.sleep(0.2)
        assert body is not None and "cannot prepare the prediction log" in body["reason"], body
        assert "127.0.0.1" in body["reason"]
        time.sleep(1.5)  # several retries later: still alive, still saying why
        assert srv.proc.poll() is None
        r = httpx.get(f"{srv.url}/health/ready", timeout=5)
        assert r.status_code == 503 and r.headers["retry-after"]
        assert httpx.post(f"{srv.url}/predict", json={"records": trained["records"][:1]}, timeout=10).status_code == 503
    finally:
        assert srv.stop() in GRACEFUL
