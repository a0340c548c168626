"""Acceptance (hardening, over real HTTP): keys, slow clients, huge headers, deadline, concurrency limit,
stalls, tampering and registry recovery -- ``fti serve`` (uvicorn + httptools) on a copy of the session's
trained store, probed with raw sockets where the HTTP client library would hide the behaviour.

Timings are recorded and printed, never asserted here except where the issue states a bound as
behaviour (a 503 beyond the limit must not queue; ready again soon after the registry returns);
``bench/hardening.py`` measures the probe latencies under load.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from inference_service.guard import hash_key
from tests.helpers import Server, copy_store, raw_json_records

pytestmark = [pytest.mark.e2e]

OPS_KEY, SCORER_KEY = "ops-key-for-tests-0123456789", "scorer-key-for-tests-0123456789"
KEYS = f"ops:{hash_key(OPS_KEY)}:predict+read-predictions+read-model,scorer:{hash_key(SCORER_KEY)}:predict"
OPS, SCORER = {"X-API-Key": OPS_KEY}, {"X-API-Key": SCORER_KEY}


def _server(store: dict[str, Any], log_name: str, **env: str) -> Server:
    full = {**store["env"], "FTI_API_KEYS": KEYS, "FTI_ALLOWED_HOSTS": "127.0.0.1,localhost",
            "FTI_MAX_CONCURRENT_REQUESTS": "2", "FTI_REQUEST_TIMEOUT_SECONDS": "3", "FTI_HEADER_TIMEOUT_SECONDS": "2",
            "FTI_BODY_TIMEOUT_SECONDS": "20", "FTI_MAX_HEADER_BYTES": "16384", "FTI_FEATURE_REFRESH_SECONDS": "0.5",
            "FTI_RELOAD_INTERVAL_SECONDS": "1", **env}
    server = Server(store["spec"], full, store["root"] / log_name)
    server.wait_ready()
    return server


@pytest.fixture(scope="module")
def store(claims_store: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    s = copy_store(claims_store, tmp_path_factory.mktemp("hardening") / "store")
    s["records"] = raw_json_records(s["spec"].parent / "raw" / "claims.csv", s["spec"])[:50]
    return s


@pytest.fixture(scope="module")
def server(store: dict[str, Any]) -> Any:
    srv = _server(store, "server.log")
    yield srv
    srv.stop()


def _raw(port: int, data: bytes, *, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Send bytes, read the whole answer (the server closes); (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused part-way: the answer is already there
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            chunks.append(chunk)
    return _parse(b"".join(chunks))


def _parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and lines[0].startswith("HTTP/") else 0
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
    return status, headers, body


def _live_ms(url: str) -> float:
    t0 = time.perf_counter()
    assert httpx.get(f"{url}/health/live", timeout=10).status_code == 200
    return (time.perf_counter() - t0) * 1000


# ---------------------------------------------------------------------------- keys


def test_api_keys_over_http_and_the_key_is_never_logged(server: Server, store: dict[str, Any]) -> None:
    url, rec = server.url, store["records"][0]
    r = httpx.post(f"{url}/predict", json={"records": [rec]}, timeout=10)
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("APIKey") and r.headers["x-request-id"]
    r = httpx.post(f"{url}/predict", json={"records": [rec]}, headers=SCORER, timeout=10)
    assert r.status_code == 200, r.text
    pid = r.json()["predictions"][0]["prediction_id"]
    assert httpx.get(f"{url}/predictions/{pid}", headers=SCORER, timeout=10).status_code == 403
    time.sleep(1.0)  # the prediction log flushes every 0.2 s
    lineage = httpx.get(f"{url}/predictions/{pid}", headers=OPS, timeout=60)
    assert lineage.status_code == 200 and lineage.json()["prediction_id"] == pid
    assert httpx.get(f"{url}/model", headers={"Authorization": f"Bearer {OPS_KEY}"}, timeout=10).status_code == 200
    assert httpx.get(f"{url}/health/ready", timeout=10).status_code == 200  # probes open
    r = httpx.get(f"{url}/model", headers={**OPS, "Host": "evil.example"}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_host"
    log = (store["root"] / "server.log").read_text()
    assert OPS_KEY not in log and SCORER_KEY not in log and hash_key(OPS_KEY) not in log


def test_a_model_response_shows_no_cache_path_or_internal_url(server: Server, store: dict[str, Any]) -> None:
    text = httpx.get(f"{server.url}/model", headers=OPS, timeout=10).text
    assert str(store["root"]) not in text and "model-cache" not in text and "sqlite:" not in text


# ---------------------------------------------------------------------------- below the app


def test_headers_beyond_the_limit_get_431_json_with_a_request_id(server: Server) -> None:
    for size in (20_000, 16 * 1024 * 1024):
        big = b"X-Filler: " + b"a" * size + b"\r\n"
        status, headers, body = _raw(server.port, b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n" + big + b"\r\n")
        assert status == 431, (size, status)
        assert headers["content-type"] == "application/json" and headers["x-request-id"]
        assert json.loads(body)["error"]["code"] == "headers_too_large"
    assert _live_ms(server.url) < 10_000  # still serving


def test_slow_loris_connections_are_closed_after_the_header_timeout(server: Server) -> None:
    socks = []
    for _ in range(50):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=15)
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        socks.append(s)
    t0 = time.monotonic()
    drip = threading.Event()

    def dripping() -> None:  # one byte per half second on every connection, until just before the timeout
        while not drip.is_set() and time.monotonic() - t0 < 1.5:
            for s in socks:
                try:
                    s.send(b"a")
                except OSError:
                    pass
            time.sleep(0.5)

    thread = threading.Thread(target=dripping, daemon=True)
    thread.start()
    try:
        live = [_live_ms(server.url) for _ in range(5)]
        answers = []
        for s in socks:
            data = b""
            while True:
                try:
                    chunk = s.recv(65536)
                except OSError:
                    break
                if not chunk:
                    break
                data += chunk
            answers.append(_parse(data)[0])
        closed_after = time.monotonic() - t0
    finally:
        drip.set()
        for s in socks:
            s.close()
    assert answers == [408] * 50, answers
    print(f"\n50 slow-loris connections closed with 408 after {closed_after:.1f}s (header timeout 2s); "
          f"/health/live meanwhile {max(live):.1f} ms max")
    assert closed_after < 12  # closed by the timeout, not by the client giving up (15 s)


def test_a_request_past_its_deadline_gets_504_and_the_next_one_succeeds(server: Server, store: dict[str, Any]
                                                                        ) -> None:
    body = json.dumps({"records": store["records"][:1]}).encode()
    head = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {SCORER_KEY}\r\nContent-Type: "
            f"application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(head + body[:5])  # the rest never comes: the app waits for it past the deadline
        data = b""
        while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < int(
                _parse(data)[1].get("content-length", "0") or 0):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        status, headers, answer = _parse(data)
    elapsed = time.monotonic() - t0
    assert status == 504 and json.loads(answer)["error"]["code"] == "timeout" and headers["x-request-id"]
    assert 2.5 < elapsed < 3.5 + 5, elapsed  # the 3 s deadline (FTI_REQUEST_TIMEOUT_SECONDS)
    r = httpx.post(f"{server.url}/predict", json={"records": store["records"][:1]}, headers=SCORER, timeout=10)
    assert r.status_code == 200


def test_beyond_the_concurrency_limit_a_503_comes_at_once_while_probes_answer(server: Server,
                                                                              store: dict[str, Any]) -> None:
    body = json.dumps({"records": store["records"][:1]}).encode()
    head = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {SCORER_KEY}\r\nContent-Type: "
            f"application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    held = []
    for _ in range(2):  # the limit: two requests in flight, each waiting for the rest of its body
        s = socket.create_connection(("127.0.0.1", server.port), timeout=20)
        s.sendall(head + body[:5])
        held.append(s)
    try:
        time.sleep(0.5)
        t0 = time.perf_counter()
        r = httpx.post(f"{server.url}/predict", json={"records": store["records"][:1]}, headers=SCORER, timeout=10)
        busy_ms = (time.perf_counter() - t0) * 1000
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and r.json()["error"]["code"] == "overloaded"
        inv = httpx.post(f"{server.url}/invocations", json={"inputs": []}, headers=SCORER, timeout=10)
        assert inv.status_code == 503 and inv.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
        with httpx.Client(timeout=10) as keep_alive:  # a refused large body, then the same connection again
            big = json.dumps({"records": store["records"][:1] * 900}).encode()
            assert keep_alive.post(f"{server.url}/predict", content=big, headers={
                **SCORER, "Content-Type": "application/json"}).status_code == 503
            assert keep_alive.get(f"{server.url}/health/live").status_code == 200  # not 431: the rest was body
        assert httpx.get(f"{server.url}/health/ready", timeout=10).status_code == 200
        print(f"\n503 beyond the limit in {busy_ms:.1f} ms")
        assert busy_ms < 2000  # answered at once, not after the held requests (3 s deadline)
    finally:
        for s in held:
            s.close()
    time.sleep(0.5)
    r = httpx.post(f"{server.url}/predict", json={"records": store["records"][:1]}, headers=SCORER, timeout=10)
    assert r.status_code == 200


def _parquet_bomb() -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # 100 strings of 1 MiB that compress to almost nothing: a few KB on the wire, 100 MB decompressed
    table = pa.table({"amount": [1.0] * 100, "note": ["x" * (1 << 20) + str(i) for i in range(100)]})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def test_big_bodies_and_a_parquet_bomb_never_stall_the_probes_or_give_5xx(server: Server,
                                                                          store: dict[str, Any]) -> None:
    rec = dict(store["records"][0])
    big_predict = json.dumps({"records": [rec] * 20_000}).encode()  # ~8 MB, 20x the record limit
    assert 6e6 < len(big_predict) <= 8 * 1024 * 1024
    bomb = _parquet_bomb()
    assert len(bomb) < 100_000
    stop = threading.Event()
    probes: list[float] = []

    def probe() -> None:
        while not stop.is_set():
            probes.append(_live_ms(server.url))
            time.sleep(0.02)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    statuses: list[int] = []
    try:
        with httpx.Client(timeout=60) as http:
            r = http.post(f"{server.url}/predict", content=big_predict, headers={**SCORER,
                                                                                 "Content-Type": "application/json"})
            assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_records", r.text[:300]
            r = http.post(f"{server.url}/invocations", content=bomb,
                          headers={**SCORER, "Content-Type": "application/vnd.apache.parquet"})
            assert r.status_code == 413 and "decompresses to" in r.json()["message"], r.text[:300]

        def one(_: int) -> int:
            with httpx.Client(timeout=60) as http:
                return http.post(f"{server.url}/predict", json={"records": [rec] * 1000}, headers=SCORER).status_code

        with ThreadPoolExecutor(24) as pool:
            statuses = list(pool.map(one, range(24)))
    finally:
        stop.set()
        thread.join(timeout=10)
    # 504 is possible for an admitted request on a loaded machine (3 s deadline); never a 500
    assert set(statuses) <= {200, 503, 504} and 503 in statuses and 200 in statuses, statuses
    p99 = statistics.quantiles(probes, n=100)[98] if len(probes) >= 100 else max(probes)
    print(f"\n/health/live during an 8 MB body, a Parquet bomb and 24 parallel 1,000-record requests: "
          f"{len(probes)} probes, p50 {statistics.median(probes):.1f} ms, p99 {p99:.1f} ms, max {max(probes):.1f} ms; "
          f"{statuses.count(503)} of 24 got 503")


# ---------------------------------------------------------------------------- tampering


def _wait(cond: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} not seen in {timeout}s"
        time.sleep(0.2)


def _not_ready_reason(url: str) -> str | None:
    r = httpx.get(f"{url}/health/ready", timeout=10)
    return r.json().get("reason") if r.status_code == 503 else None


def test_feature_rows_deleted_while_serving_make_the_service_not_ready(store: dict[str, Any],
                                                                       tmp_path: Path) -> None:
    s = copy_store(store, tmp_path / "store")
    srv = _server(s, "rows.log")
    try:
        rec = s["records"][0]
        assert httpx.post(f"{srv.url}/predict", json={"records": [rec]}, headers=SCORER, timeout=10).status_code == 200
        with sqlite3.connect(s["data"] / "features.db") as conn:
            conn.execute("DELETE FROM fti_feature_rows WHERE rowid IN (SELECT rowid FROM fti_feature_rows LIMIT 7)")
        reason = _wait(lambda: _not_ready_reason(srv.url), 15, "not ready after the rows were deleted")
        assert "holds" in reason and "manifest records" in reason and "changed outside fti" in reason, reason
        r = httpx.post(f"{srv.url}/predict", json={"records": [rec]}, headers=SCORER, timeout=10)
        assert r.status_code == 503 and r.json()["error"]["code"] == "feature_store_changed"
    finally:
        srv.stop()


@pytest.mark.parametrize("how", ["replaced", "deleted"])
def test_the_store_file_replaced_or_deleted_is_detected_and_no_log_row_is_miscounted(
        store: dict[str, Any], tmp_path: Path, how: str) -> None:
    s = copy_store(store, tmp_path / "store")
    srv = _server(s, f"file-{how}.log")
    db = s["data"] / "features.db"
    try:
        rec = s["records"][0]
        for _ in range(5):
            assert httpx.post(f"{srv.url}/predict", json={"records": [rec]}, headers=SCORER,
                              timeout=10).status_code == 200
        before = _wait(lambda: (lambda p: p if p["pending"] == 0 and p["written"] >= 5 else None)(
            httpx.get(f"{srv.url}/health/ready", timeout=10).json()["prediction_log"]), 20, "the log flushed")
        if how == "replaced":
            shutil.copy(db, tmp_path / "other.db")
            os.replace(tmp_path / "other.db", db)
        else:
            db.unlink()
        statuses = [httpx.post(f"{srv.url}/predict", json={"records": [rec]}, headers=SCORER, timeout=10).status_code
                    for _ in range(5)]
        reason = _wait(lambda: _not_ready_reason(srv.url), 15, f"not ready after the file was {how}")
        # a deleted file may be recreated (empty) by a new connection: then it reads as replaced
        said = ("was replaced",) if how == "replaced" else ("was deleted", "was replaced")
        assert any(f"{w} while serving" in reason for w in said) and str(s["root"]) not in reason, reason
        time.sleep(1.5)  # a few writer attempts
        plog = httpx.get(f"{srv.url}/health/ready", timeout=10).json()["prediction_log"]
        accepted = statuses.count(200)
        assert plog["written"] == before["written"], plog  # nothing counted into the old file
        assert plog["submitted"] == before["submitted"] + accepted and plog["pending"] == accepted, plog
        if accepted:  # rows were accepted after the change: the writer tried, and said why it would not
            assert plog["last_error"] and any(w in plog["last_error"] for w in said), plog
    finally:
        srv.stop()
    out = (s["root"] / f"file-{how}.log").read_text()
    if accepted:
        assert "NOT written" in out or "not written" in out  # shutdown reports the held rows, honestly


def test_a_swapped_model_cache_is_detected_named_and_fetched_again(store: dict[str, Any], tmp_path: Path) -> None:
    s = copy_store(store, tmp_path / "store")
    srv = _server(s, "warm.log")  # fills the cache
    srv.stop()
    version_dir = next(p for p in (s["data"] / "model-cache" / s["name"]).iterdir() if p.is_dir())
    cert = version_dir / "extra_files" / "certificate.json"
    data = json.loads(cert.read_text())
    data["expected"][0][0] = 0.5  # a swapped certificate that would hide a swapped model
    cert.write_text(json.dumps(data))
    srv = _server(s, "swapped.log")
    try:
        body = httpx.get(f"{srv.url}/model", headers=OPS, timeout=10).json()
        assert body["certificate"]["passed"] is True
    finally:
        srv.stop()
    log = (s["root"] / "swapped.log").read_text()
    assert "differ from what the registry recorded at training" in log
    assert json.loads(cert.read_text())["expected"][0][0] != 0.5  # the genuine copy is back


# ---------------------------------------------------------------------------- registry outage


def _mlflow(root: Path, port: int) -> subprocess.Popen[bytes]:
    from tests.infra.mlflow_server import mlflow_server_command

    log = open(root / "mlflow.log", "ab")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(mlflow_server_command(root, port), cwd=root, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
                            start_new_session=True)


def test_ready_soon_after_the_registry_comes_back(store: dict[str, Any], tmp_path: Path) -> None:
    from tests.infra.mlflow_server import is_healthy, terminate_process_group
    from tests.infra.ports import free_port

    s = copy_store(store, tmp_path / "store")
    reg = tmp_path / "registry"
    reg.mkdir()
    shutil.copy(s["data"] / "mlflow.db", reg / "mlflow.db")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**s["env"], "MLFLOW_TRACKING_URI": url, "MLFLOW_REGISTRY_URI": url, "FTI_START_FROM_CACHE": "false",
           "FTI_MODEL_CACHE_DIR": str(tmp_path / "empty-cache")}
    srv = Server(s["spec"], {**env, "FTI_API_KEYS": KEYS}, tmp_path / "outage.log")
    mlflow = None
    try:
        first = _wait(lambda: (lambda r: r if r.status_code == 503 and r.json().get("attempts", 0) >= 2 else None)(
            httpx.get(f"{srv.url}/health/ready", timeout=10)) if _up(srv.url) else None, 60, "failed attempts")
        reason = first.json()["reason"]
        assert url not in reason and "127.0.0.1" not in reason and "Max retries" not in reason, reason
        time.sleep(8)  # a long outage: the back-off must not have grown past its cap meanwhile
        mlflow = _mlflow(reg, port)
        _wait(lambda: is_healthy(url), 120, "the registry back")
        back = time.monotonic()
        _wait(lambda: httpx.get(f"{srv.url}/health/ready", timeout=10).status_code == 200, 60, "ready")
        after = time.monotonic() - back
        print(f"\nready {after:.1f}s after the registry answered again")
        assert after <= 10, after
    finally:
        srv.stop()
        if mlflow is not None:
            terminate_process_group(mlflow)


def _up(url: str) -> bool:
    try:
        httpx.get(f"{url}/health/live", timeout=2)
        return True
    except httpx.HTTPError:
        return False
