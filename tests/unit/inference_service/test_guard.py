"""The guard in front of every route: trusted hosts, API keys and scopes, the concurrency limit and the
deadline -- in process (the app with ``TestClient``, no model needed: the guard answers first)."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from inference_service.config import Settings
from inference_service.guard import Guard, GuardConfigError, hash_key, parse_key_entries, scope_for
from tests.helpers import write_claims_spec

PREDICT_KEY, READER_KEY, ADMIN_KEY = "k-predict-0123456789", "k-reader-0123456789", "k-admin-0123456789"
ENTRIES = ",".join([f"scorer:{hash_key(PREDICT_KEY)}:predict", f"auditor:{hash_key(READER_KEY)}:read-predictions",
                    f"ops:{hash_key(ADMIN_KEY)}:predict+read-predictions+read-model"])


def _settings(tmp_path: Path, **kw: Any) -> Settings:
    spec = write_claims_spec(tmp_path / "spec", generate=False)
    base: dict[str, Any] = {"spec": spec, "data_dir": tmp_path / "data", "tracking_uri": "http://127.0.0.1:9",
                            "registry_uri": "http://127.0.0.1:9", "load_retry_seconds": 60,
                            "start_from_cache": False, "prediction_log": False}
    base.update(kw)
    return Settings(**base)


@pytest.fixture
def client(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> Any:
    from inference_service.app import create_app

    app = create_app(_settings(tmp_path, api_keys=ENTRIES, allowed_hosts="testserver,api.example"))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def test_probes_are_open_and_everything_else_needs_a_key(client: TestClient) -> None:
    for path in ("/health/live", "/version"):
        assert client.get(path).status_code == 200, path
    assert client.get("/health/ready").status_code == 503  # open, but no model loaded
    for method, path in (("GET", "/model"), ("GET", "/metrics"), ("GET", "/openapi.json"), ("POST", "/predict"),
                         ("POST", "/invocations"), ("GET", "/predictions/abc"), ("GET", "/no/such/path")):
        r = client.request(method, path, json={})
        assert r.status_code == 401, (method, path, r.text)
        assert r.headers["www-authenticate"].startswith("APIKey")
        assert r.headers["x-request-id"] and r.headers["content-type"] == "application/json"
    body = client.post("/predict", json={}).json()
    assert body == {"error": {"code": "unauthorized",
                              "message": "an API key is required: send it in the X-API-Key header"}}
    mlflow = client.post("/invocations", json={}).json()  # MLflow's error shape on MLflow's endpoint
    assert mlflow["error_code"] == "UNAUTHENTICATED"


@pytest.mark.parametrize("headers", [{"X-API-Key": "wrong"}, {"X-API-Key": ""}, {"Authorization": "Bearer nope"},
                                     {"Authorization": f"Basic {PREDICT_KEY}"}, {"X-Api-Token": PREDICT_KEY},
                                     {"X-API-Key": PREDICT_KEY + " "}, {"X-API-Key": hash_key(PREDICT_KEY)}])
def test_wrong_empty_or_misplaced_keys_get_401(client: TestClient, headers: dict[str, str]) -> None:
    r = client.post("/predict", json={"records": []}, headers=headers)
    assert r.status_code == 401 and "www-authenticate" in r.headers


def test_scopes(client: TestClient) -> None:
    scorer, auditor, ops = ({"X-API-Key": k} for k in (PREDICT_KEY, READER_KEY, ADMIN_KEY))
    # past the guard: no model loaded yet, so scoring answers 503 -- never 401/403
    assert client.post("/predict", json={"records": [{}]}, headers=scorer).status_code == 503
    assert client.post("/predict", json={"records": [{}]},
                       headers={"Authorization": f"Bearer {PREDICT_KEY}"}).status_code == 503
    assert client.post("/invocations", json={}, headers=scorer).status_code == 503
    r = client.get("/predictions/abc", headers=scorer)
    assert r.status_code == 403 and "lacks the 'read-predictions' scope" in r.json()["error"]["message"]
    assert "scorer" in r.json()["error"]["message"]
    assert client.get("/model", headers=scorer).status_code == 403
    assert client.post("/predict", json={"records": [{}]}, headers=auditor).status_code == 403
    assert client.get("/predictions/abc", headers=auditor).status_code not in (401, 403)
    assert client.get("/model", headers=ops).status_code == 503
    assert client.get("/openapi.json", headers=ops).status_code == 200


def test_the_key_is_never_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                 capfd: pytest.CaptureFixture[str]) -> None:
    from inference_service.app import create_app

    caplog.set_level(logging.DEBUG)
    app = create_app(_settings(tmp_path, api_keys=ENTRIES, allowed_hosts="testserver", log_request_bodies=True))
    with TestClient(app, raise_server_exceptions=False) as c:
        for key in (PREDICT_KEY, "a-wrong-key-123456"):
            c.post("/predict", json={"records": [{}]}, headers={"X-API-Key": key})
            c.get("/model", headers={"Authorization": f"Bearer {key}"})
        app.state.obs.flush_access_log()
    out, err = capfd.readouterr()
    logged = caplog.text + out + err
    assert "POST /predict" in logged  # the access log did run
    for key in (PREDICT_KEY, "a-wrong-key-123456"):
        assert key not in logged


def test_untrusted_host_is_refused_but_probes_answer(client: TestClient) -> None:
    key = {"X-API-Key": ADMIN_KEY}
    assert client.get("/model", headers={**key, "Host": "evil.example"}).status_code == 400
    assert client.get("/model", headers={**key, "Host": "evil.example"}).json()["error"]["code"] == "invalid_host"
    assert client.get("/model", headers={**key, "Host": "api.example:8443"}).status_code == 503
    assert client.get("/health/live", headers={"Host": "evil.example"}).status_code == 200


def test_key_entries_are_validated_with_a_way_out() -> None:
    with pytest.raises(GuardConfigError, match="never in clear"):
        parse_key_entries("ci:plaintextkey:predict", "FTI_API_KEYS")
    with pytest.raises(GuardConfigError, match="unknown scope"):
        parse_key_entries(f"ci:{hash_key('x')}:admin", "FTI_API_KEYS")
    with pytest.raises(GuardConfigError, match="ID:SHA256:SCOPES"):
        parse_key_entries("just-a-key", "FTI_API_KEYS")
    keys = parse_key_entries(f"# comment\nci:{hash_key('x')}:predict+read-model\n\n", "file")
    assert keys[0].key_id == "ci" and keys[0].scopes == {"predict", "read-model"}


def test_listening_beyond_loopback_without_keys_refuses_to_start(tmp_path: Path) -> None:
    with pytest.raises(GuardConfigError, match="no API key is configured"):
        Guard.from_settings(_settings(tmp_path, host="0.0.0.0"))
    assert Guard.from_settings(_settings(tmp_path, host="0.0.0.0", auth="off")).auth is False
    assert Guard.from_settings(_settings(tmp_path, host="127.0.0.1")).auth is False  # the loopback default
    with pytest.raises(GuardConfigError, match="FTI_AUTH=required"):
        Guard.from_settings(_settings(tmp_path, auth="required"))
    keyfile = tmp_path / "keys"
    keyfile.write_text(f"ci:{hash_key('x')}:predict\n")
    guard = Guard.from_settings(_settings(tmp_path, host="0.0.0.0", api_keys_file=keyfile, allowed_hosts="fti"))
    assert guard.auth and guard.status()["allowed_hosts"] == ["fti"]


def test_scope_table() -> None:
    assert scope_for("GET", "/health/live") is None and scope_for("GET", "/ping") is None
    assert scope_for("POST", "/predict") == "predict" and scope_for("POST", "/invocations") == "predict"
    assert scope_for("GET", "/predictions/x") == "read-predictions"
    assert scope_for("GET", "/invocations") == "read-model" and scope_for("GET", "/docs") == "read-model"


def _guard(**kw: Any) -> Guard:
    base: dict[str, Any] = {"keys": [], "auth": False, "allowed_hosts": ["*"], "max_concurrent": 1,
                            "timeout_seconds": 0.05}
    base.update(kw)
    return Guard(**base)


def _scope(path: str = "/predict", method: str = "POST") -> dict[str, Any]:
    return {"type": "http", "path": path, "method": method, "headers": [(b"host", b"x")]}


def test_beyond_the_concurrency_limit_a_503_comes_at_once_and_probes_are_never_limited() -> None:
    guard = _guard(max_concurrent=2)
    guard.in_flight = 2
    status, body, headers = guard.admit(_scope())  # type: ignore[misc]
    assert status == 503 and headers == {"Retry-After": "1"}
    assert json.loads(body)["error"]["code"] == "overloaded"
    assert guard.admit(_scope("/health/live", "GET")) is None
    guard.in_flight = 1
    assert guard.admit(_scope()) is None


def test_a_request_past_its_deadline_gets_504_and_frees_its_slot() -> None:
    guard = _guard(timeout_seconds=0.05)
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def slow(out: Any) -> None:
        await asyncio.sleep(5)

    asyncio.run(guard.run(_scope(), slow, send))
    assert sent[0]["status"] == 504 and guard.in_flight == 0 and guard.timed_out == 1
    assert json.loads(sent[1]["body"])["error"]["code"] == "timeout"

    async def quick(out: Any) -> None:
        await out({"type": "http.response.start", "status": 200, "headers": []})
        await out({"type": "http.response.body", "body": b"{}"})

    sent.clear()
    asyncio.run(guard.run(_scope(), quick, send))
    assert sent[0]["status"] == 200 and guard.in_flight == 0


def test_large_bodies_have_their_own_smaller_limit() -> None:
    guard = _guard(max_concurrent=8, max_concurrent_large=1)
    small = {**_scope(), "headers": [(b"host", b"x"), (b"content-length", b"900")]}
    large = {**_scope(), "headers": [(b"host", b"x"), (b"content-length", b"900000")]}
    chunked = {**_scope(), "headers": [(b"host", b"x"), (b"transfer-encoding", b"chunked")]}
    guard.large_in_flight = 1
    guard.in_flight = 1
    assert guard.admit(small) is None
    for scope in (large, chunked):
        status, body, _ = guard.admit(scope)  # type: ignore[misc]
        assert status == 503 and b"FTI_MAX_CONCURRENT_LARGE_REQUESTS" in body
    guard.large_in_flight = 0
    assert guard.admit(large) is None


def test_every_4xx_is_json_with_a_request_id(tmp_path: Path) -> None:
    from inference_service.app import create_app

    app = create_app(_settings(tmp_path, allowed_hosts="testserver", max_body_bytes=4096))
    big = b'{"records": [' + b'{"a": 1},' * 1000 + b'{"a": 1}]}'

    def chunks() -> Any:
        for i in range(0, len(big), 1000):
            yield big[i:i + 1000]

    with TestClient(app, raise_server_exceptions=False) as c:
        cases = [
            c.post("/predict", content=big, headers={"Content-Type": "application/json"}),  # declared length
            c.post("/predict", content=chunks(), headers={"Content-Type": "application/json"}),  # chunked
            c.post("/invocations", content=chunks(), headers={"Content-Type": "application/json"}),
            c.put("/model", content=big),
            c.get("/no/such/path"),
            c.put("/predict", json={}),
            c.get("/model", headers={"Host": "evil.example"}),
        ]
    for r in cases:
        assert 400 <= r.status_code < 500, (r.request.method, r.request.url, r.status_code)
        assert r.headers["content-type"].startswith("application/json"), (r.request.url, r.text[:100])
        assert r.headers.get("x-request-id"), r.request.url
    assert [r.status_code for r in cases[:4]] == [413, 413, 413, 413]
