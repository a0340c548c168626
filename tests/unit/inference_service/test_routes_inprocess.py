"""Every route, its success and its error paths, through the app in process: ``TestClient(create_app(...))``
on a copy of the session's trained store (the real model, the real SQLite store and prediction log) --
no subprocess, no port. The over-HTTP behaviour (uvicorn, slow clients, headers) stays in ``tests/e2e``."""

from __future__ import annotations

import io
import json
import re
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.helpers import copy_store, mlflow_uris_restored, raw_json_records

KEY = "inprocess-key-0123456789abcdefghijklmnop"


@pytest.fixture(scope="module")
def app(claims_store: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Any:
    from inference_service.app import create_app
    from inference_service.config import Settings
    from inference_service.guard import hash_key
    from shared.spec import load_spec

    s = copy_store(claims_store, tmp_path_factory.mktemp("routes") / "store")
    settings = Settings(spec=s["spec"], data_dir=s["data"], reload_interval_seconds=0, allowed_hosts="testserver",
                        api_keys=f"all:{hash_key(KEY)}:predict+read-predictions+read-model,"
                                 f"scorer:{hash_key(KEY[::-1])}:predict",
                        max_batch_rows=50, max_body_bytes=256 * 1024)
    with mlflow_uris_restored(), TestClient(create_app(settings), raise_server_exceptions=False) as client:
        deadline = time.monotonic() + 120
        while client.get("/health/ready").status_code != 200:
            assert time.monotonic() < deadline, client.get("/health/ready").text
            time.sleep(0.2)
        client.headers["X-API-Key"] = KEY
        spec = load_spec(s["spec"]).spec
        yield {"client": client, "spec": spec,
               "records": raw_json_records(s["spec"].parent / "raw" / "claims.csv", s["spec"])[:5]}


def _error(r: Any) -> dict[str, Any]:
    body = r.json()
    assert "X-Request-ID" in r.headers
    return body["error"] if "error" in body and isinstance(body["error"], dict) else body


# ------------------------------------------------------------------------------------------ probes


def test_probes_answer_without_a_key(app: dict[str, Any]) -> None:
    client = app["client"]
    for path in ("/health/live", "/health/ready", "/ping", "/health", "/version"):
        r = client.get(path, headers={"X-API-Key": ""})
        assert r.status_code == 200, (path, r.text)
    assert client.get("/health/ready").json()["status"] == "ready"


def test_everything_else_needs_a_key(app: dict[str, Any]) -> None:
    client = app["client"]
    for method, path in (("GET", "/model"), ("GET", "/metrics"), ("POST", "/predict"), ("POST", "/invocations"),
                         ("GET", "/docs"), ("GET", "/openapi.json"), ("GET", "/predictions/" + "0" * 32)):
        r = client.request(method, path, headers={"X-API-Key": ""})
        assert r.status_code == 401, (path, r.status_code)
        assert r.headers["WWW-Authenticate"].startswith("APIKey")
    # a key without the scope: 403
    r = client.get("/model", headers={"X-API-Key": KEY[::-1]})
    assert r.status_code == 403 and "scorer" in r.text


# ------------------------------------------------------------------------------------------ /predict


def test_predict_scores_and_logs(app: dict[str, Any]) -> None:
    client, records = app["client"], app["records"]
    r = client.post("/predict", json={"records": records})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["predictions"]) == len(records)
    assert r.headers["X-Model-Version"] == body["model_version"]
    for p in body["predictions"]:
        assert abs(sum(p["probabilities"].values()) - 1) < 1e-9
    pid = body["predictions"][0]["prediction_id"]
    deadline = time.monotonic() + 30
    while (got := client.get(f"/predictions/{pid}?recompute=false")).status_code == 404:
        assert time.monotonic() < deadline, "the prediction log never wrote the row"
        time.sleep(0.2)
    assert got.status_code == 200, got.text
    assert got.json()["prediction"]["prediction_id"] == pid


def test_predict_lists_every_bad_field(app: dict[str, Any]) -> None:
    client, records = app["client"], app["records"]
    numeric = next(c for c in app["spec"].raw_input_columns if app["spec"].columns[c].type.is_numeric)
    bad = [dict(records[0], **{numeric: "not a number"}), dict(records[1], **{numeric: "x"})]
    r = client.post("/predict", json={"records": bad})
    assert r.status_code == 400
    err = _error(r)
    assert err["code"] == "invalid_records"
    assert any(p.get("column") == numeric for p in err["problems"])


@pytest.mark.parametrize("body, ctype, status, code", [
    (b"{", "application/json", 400, None),
    (b'{"rows": []}', "application/json", 400, "bad_request"),
    (b'{"records": []}', "application/json", 400, "bad_request"),
    (b"a,b\n1,2\n", "text/csv", 415, None),
])
def test_predict_refuses_malformed_bodies(app: dict[str, Any], body: bytes, ctype: str, status: int,
                                          code: str | None) -> None:
    r = app["client"].post("/predict", content=body, headers={"Content-Type": ctype})
    assert r.status_code == status, r.text
    if code:
        assert _error(r)["code"] == code


def test_predict_limits(app: dict[str, Any]) -> None:
    client, rec = app["client"], app["records"][0]
    r = client.post("/predict", json={"records": [rec] * 51})
    assert r.status_code == 413 and _error(r)["code"] == "too_many_records"
    r = client.post("/predict", content=b" " * (256 * 1024 + 1), headers={"Content-Type": "application/json"})
    assert r.status_code == 413


# ------------------------------------------------------------------------------------------ /invocations


def test_invocations_all_json_layouts_and_csv_agree(app: dict[str, Any]) -> None:
    client, spec = app["client"], app["spec"]
    features = spec.model_features
    model = client.get("/model").json()
    assert model["model_version"]
    from inference_service.invocations import Signature

    def valid(col: Any) -> Any:  # inside the spec's bounds
        if col.is_bool:
            return True
        if col.numeric:
            return int(col.min) + 1 if col.min is not None else 1
        return "x"

    rows = [[valid(c) for c in Signature.from_spec(spec).columns]] * 2
    split = client.post("/invocations", json={"dataframe_split": {"columns": features, "data": rows}})
    assert split.status_code == 200, split.text
    records = client.post("/invocations", json={"dataframe_records": [dict(zip(features, r, strict=True))
                                                                      for r in rows]})
    csv = ",".join(features) + "\n" + "\n".join(",".join(str(v) for v in r) for r in rows) + "\n"
    as_csv = client.post("/invocations", content=csv.encode(), headers={"Content-Type": "text/csv"})
    assert split.json() == records.json() == as_csv.json()
    assert len(split.json()["predictions"]) == 2


def test_invocations_errors_name_the_column(app: dict[str, Any]) -> None:
    client, features = app["client"], app["spec"].model_features
    r = client.post("/invocations", json={"dataframe_split": {"columns": features[:-1],
                                                              "data": [[1] * (len(features) - 1)]}})
    assert r.status_code == 400
    assert r.json()["error_code"] == "INVALID_PARAMETER_VALUE" and features[-1] in r.text
    r = client.post("/invocations", content=b"x", headers={"Content-Type": "application/xml"})
    assert r.status_code == 415


# ------------------------------------------------------------------------------------------ the rest


def test_model_and_metrics(app: dict[str, Any]) -> None:
    client = app["client"]
    model = client.get("/model").json()
    assert model["model_name"] == app["spec"].model.name and model["features"]
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and "fti_requests_total" in metrics.text


def test_unknown_prediction_is_404(app: dict[str, Any]) -> None:
    r = app["client"].get("/predictions/" + "f" * 32)
    assert r.status_code == 404 and _error(r)["code"] == "prediction_not_found"


def test_docs_are_served_without_any_external_host(app: dict[str, Any]) -> None:
    client = app["client"]
    html = client.get("/docs")
    assert html.status_code == 200 and "swagger-ui" in html.text
    hosts = re.findall(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//([^/"' >]+)""", html.text)
    assert hosts == [], hosts
    assets = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html.text)
    assert assets, html.text
    for path in assets:
        r = client.get(path)
        assert r.status_code == 200 and len(r.content) > 100, path
    assert "://" not in json.dumps(re.findall(r"url:\s*'([^']+)'", html.text))
    openapi = client.get("/openapi.json")
    assert openapi.status_code == 200 and "/predict" in openapi.json()["paths"]
    assert client.get("/redoc").status_code == 404


def test_work_sent_off_the_event_loop_holds_the_cpu_slot(app: dict[str, Any]) -> None:
    """Parquet is always decoded in a worker thread: that decode, like batch scoring, holds the runtime's
    CPU slot (so probes compete with one busy thread at most), and /metrics counts bypasses."""
    import pandas as pd

    from inference_service.cpu_slot import CpuSlot
    from inference_service.invocations import Signature

    client, spec = app["client"], app["spec"]
    calls: list[str] = []

    class Recording(CpuSlot):
        def call(self, fn: Any, *args: Any) -> Any:
            calls.append(getattr(fn, "__name__", repr(fn)))
            return super().call(fn, *args)

    runtime = client.app.state.runtime
    old, runtime.cpu_slot = runtime.cpu_slot, Recording(1)
    try:
        cols = Signature.from_spec(spec).columns
        frame = pd.DataFrame([{c.name: (True if c.is_bool else (int(c.min) + 1 if c.min is not None else 1)
                                        if c.numeric else "x") for c in cols}] * 3)
        buf = io.BytesIO()
        frame.to_parquet(buf, index=False)
        r = client.post("/invocations", content=buf.getvalue(),
                        headers={"Content-Type": "application/vnd.apache.parquet"})
        assert r.status_code == 200, r.text
        assert len(r.json()["predictions"]) == 3
    finally:
        runtime.cpu_slot = old
    assert calls == ["_decode"]  # 3 rows are then scored inline, on the loop
    assert "fti_cpu_slot_bypassed_total 0.0" in client.get("/metrics").text
