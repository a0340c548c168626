"""``fti monitor`` over a real prediction log: the session's trained claims model served in process
(``TestClient(create_app(...))``, the real SQLite store and prediction log, the real MLflow registry
on SQLite), then the monitor reading it back.

* the demo's own records give no drift; the same records with inflated claim amounts and a channel
  mix change drift on exactly the features they touch (and those derived from them);
* the same window gives byte-identical JSON, a second pass adds no row, the HTML references no
  external host and holds no record;
* realized performance, once labels are in the feature store, equals ``sklearn.metrics`` on the same
  rows;
* a window under ``min_rows`` says "insufficient data"; period windows cut by ``created_at``.
"""

from __future__ import annotations

import json
import re
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient
from sklearn import metrics as skm

from tests.helpers import copy_store, mlflow_uris_restored, raw_json_records

SHIFTED = {"amount_to_premium", "channel", "claim_amount", "log_claim_amount"}


def _shift(records: list[dict[str, Any]], tag: str) -> list[dict[str, Any]]:
    out = []
    for i, r in enumerate(records):
        r = dict(r, claim_id=f"{r['claim_id']}-{tag}")
        if r.get("claim_amount") is not None:
            r["claim_amount"] = round(r["claim_amount"] * 1.6, 2)
        if r.get("channel") == "agent" and i % 2 == 0:
            r["channel"] = "online"
        out.append(r)
    return out


@pytest.fixture(scope="module")
def served(claims_store: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The original records (labels known: they are the feature version's rows), then a shifted copy."""
    from inference_service.app import create_app
    from inference_service.config import Settings
    from shared.db import make_engine
    from shared.spec import load_spec

    s = copy_store(claims_store, tmp_path_factory.mktemp("monitor") / "store")
    records = raw_json_records(s["spec"].parent / "raw" / "claims.csv", s["spec"])
    data = yaml.safe_load(s["spec"].read_text())  # one window per served batch of records
    data["monitoring"] = {"window_rows": len(records), "min_rows": 500}
    s["spec"].write_text(yaml.safe_dump(data, sort_keys=False))
    settings = Settings(spec=s["spec"], data_dir=s["data"], reload_interval_seconds=0, allowed_hosts="testserver")
    with mlflow_uris_restored(), TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 120
        while client.get("/health/ready").status_code != 200:
            assert time.monotonic() < deadline, client.get("/health/ready").text
            time.sleep(0.2)
        for batch in (records, _shift(records, "a")):
            for i in range(0, len(batch), 500):
                r = client.post("/predict", json={"records": batch[i:i + 500]})
                assert r.status_code == 200, r.text[:300]
    engine = make_engine(f"sqlite:///{s['data'] / 'features.db'}")
    try:
        yield {**s, "records": records, "engine": engine, "loaded": load_spec(s["spec"])}
    finally:
        engine.dispose()


def _pass(served: dict[str, Any], out: Path | None, **kw: Any) -> Any:
    from mlflow import MlflowClient

    from monitoring_service.monitor import run_pass

    return run_pass(served["engine"], served["loaded"].spec, MlflowClient(served["uri"], served["uri"]),
                    out_dir=out, tracking_uri=served["uri"], **kw)


@pytest.fixture(scope="module")
def first(served: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Any:
    out = tmp_path_factory.mktemp("reports")
    with mlflow_uris_restored():
        return _pass(served, out), out


def test_drift_only_on_the_shifted_window(first: Any) -> None:
    result, _ = first
    assert [r["status"] for r in result.reports] == ["ok", "ok"]
    same, shifted = result.reports
    assert same["drift"] is False and same["drifted"] == [], same
    assert shifted["drift"] is True
    assert set(shifted["drifted"]) == SHIFTED, shifted["drifted"]


def test_same_window_same_bytes_and_no_new_row(served: dict[str, Any], first: Any, tmp_path: Path) -> None:
    from shared import monitor_table as mt

    result, out = first
    with mlflow_uris_restored():
        again = _pass(served, tmp_path, recompute=True)
    assert again.new == 0 and again.unchanged == 0
    assert [r["report_id"] for r in again.reports] == [r["report_id"] for r in result.reports]
    for r in result.reports:
        a = (out / "claims-fraud" / r["model_version"] / f"{r['report_id']}.json").read_bytes()
        b = (tmp_path / "claims-fraud" / r["model_version"] / f"{r['report_id']}.json").read_bytes()
        assert a == b
        stored = mt.get_report(served["engine"], r["report_id"])
        assert stored is not None and stored["report"].encode() == a
        assert mt.report_id(a.decode()) == r["report_id"]
    assert len(mt.list_reports(served["engine"], "claims-fraud")) == len(result.reports)


def test_a_window_reported_with_the_same_labels_is_not_computed_again(served: dict[str, Any], first: Any) -> None:
    result, _ = first
    with mlflow_uris_restored():
        again = _pass(served, None)
    assert (again.new, again.unchanged, again.reports) == (0, len(result.reports), [])


def test_a_window_is_computed_again_when_its_labels_may_have_changed(served: dict[str, Any], first: Any) -> None:
    """The stored reports say their labels came from another feature version: the pass computes them again
    (and, the labels being in fact the same, writes no new row)."""
    from sqlalchemy import update

    from shared import monitor_table as mt

    result, _ = first
    engine = served["engine"]
    t = mt.drift_reports
    with engine.begin() as conn:
        before = {r.report_id: r.performance for r in conn.execute(t.select())}
        for rid, performance in before.items():
            conn.execute(update(t).where(t.c.report_id == rid)
                         .values(performance={**performance, "labels_from_feature_version": -1}))
    try:
        with mlflow_uris_restored():
            again = _pass(served, None)
    finally:
        with engine.begin() as conn:
            for rid, performance in before.items():
                conn.execute(update(t).where(t.c.report_id == rid).values(performance=performance))
    assert again.unchanged == 0 and again.new == 0
    assert [r["report_id"] for r in again.reports] == [r["report_id"] for r in result.reports]


def test_the_pass_starts_past_the_reported_prefix_only_when_the_log_agrees(served: dict[str, Any], first: Any) -> None:
    """A stored window end that no longer matches the log (as after a late row): the pass reads the whole
    log again and recomputes just that window (its report comes out the same: no new row)."""
    from sqlalchemy import update

    from shared import monitor_table as mt

    result, _ = first
    engine = served["engine"]
    t = mt.drift_reports
    last = result.reports[-1]["report_id"]
    with engine.begin() as conn:
        end = conn.execute(t.select().where(t.c.report_id == last)).first().window_end
        conn.execute(update(t).where(t.c.report_id == last).values(window_end=end - timedelta(seconds=1)))
    try:
        with mlflow_uris_restored():
            again = _pass(served, None)
    finally:
        with engine.begin() as conn:
            conn.execute(update(t).where(t.c.report_id == last).values(window_end=end))
    assert again.unchanged == len(result.reports) - 1 and again.new == 0
    assert [r["report_id"] for r in again.reports] == [last]


def test_blocks_and_worker_processes_give_the_same_reports(served: dict[str, Any], first: Any) -> None:
    """A window computed alone, in a block with others, or in a pool process: the same bytes."""
    result, _ = first
    expected = [r["report_id"] for r in result.reports]
    with mlflow_uris_restored():
        alone = _pass(served, None, recompute=True, block_rows=1)
        pooled = _pass(served, None, recompute=True, jobs=2, block_rows=1)
    assert [r["report_id"] for r in alone.reports] == expected
    assert [r["report_id"] for r in pooled.reports] == expected


def test_html_is_self_contained_and_holds_no_record(served: dict[str, Any], first: Any) -> None:
    result, out = first
    for r in result.reports:
        text = (out / "claims-fraud" / r["model_version"] / f"{r['report_id']}.html").read_text()
        assert "<svg" in text and "<table" in text
        assert not re.search(r"https?:|//[a-z0-9]|<script|<link|@import|url\(", text, re.I), \
            re.findall(r".{30}(?:https?:|//|<script|<link|@import|url\().{30}", text, re.I)
        for rec in served["records"][:200]:
            assert rec["claim_id"] not in text and rec["policyholder_id"] not in text


def test_realized_performance_matches_sklearn(served: dict[str, Any], first: Any) -> None:
    """The first window served the feature version's own records: their labels are known."""
    from sqlalchemy import select

    from shared import feature_table as ft
    from shared.prediction_table import predictions

    result, out = first
    report = json.loads((out / "claims-fraud" / "1" / f"{result.reports[0]['report_id']}.json").read_text())
    perf = report["performance"]
    spec = served["loaded"].spec
    assert perf["status"] == "ok" and perf["labeled_rows"] == len(served["records"])
    with served["engine"].connect() as conn:
        rows = conn.execute(select(predictions.c.record_id, predictions.c.outputs)
                            .order_by(predictions.c.created_at, predictions.c.prediction_id)
                            .limit(len(served["records"]))).all()
    truth_frame = ft.read_version(served["engine"], spec, 1).set_index(spec.record_id)
    y = np.asarray([int(truth_frame.loc[r.record_id, spec.label]) for r in rows])
    outs = [json.loads(r.outputs) for r in rows]
    score = np.asarray([o["probabilities"]["1"] for o in outs])
    decided = np.asarray([int(o["prediction"]) for o in outs])
    assert perf["roc_auc"] == skm.roc_auc_score(y, score)
    assert perf["average_precision"] == skm.average_precision_score(y, score)
    assert perf["brier"] == skm.brier_score_loss(y, score)
    assert perf["accuracy"] == skm.accuracy_score(y, decided)
    assert perf["recall"] == skm.recall_score(y, decided, zero_division=0)
    assert perf["precision"] == skm.precision_score(y, decided, zero_division=0)
    both = np.asarray([[o["probabilities"]["0"], o["probabilities"]["1"]] for o in outs])
    assert perf["log_loss"] == skm.log_loss(y.astype(str), both, labels=["0", "1"])
    assert perf["positive_rate"] == y.mean()
    # the shifted copies have new record ids: no label has arrived for them
    shifted = json.loads((out / "claims-fraud" / "1" / f"{result.reports[1]['report_id']}.json").read_text())
    assert shifted["performance"] == {"labeled_rows": 0, "status": "no labels yet", "labels_from_feature_version": 1}


def test_small_window_is_insufficient_data(served: dict[str, Any]) -> None:
    from monitoring_service import drift
    from monitoring_service import log_reader as lr
    from monitoring_service.monitor import Reference, window_report

    window = next(lr.windows(served["engine"], "claims-fraud", "1", rows=100, period=None))
    ref = Reference("1", {"features": {}, "score": {}}, {})
    report = window_report(served["engine"], served["loaded"].spec, ref, window, drift.Thresholds(min_rows=500))
    assert report["drift"]["status"] == "insufficient data" and "at least 500" in report["drift"]["message"]


def test_period_windows_follow_created_at(served: dict[str, Any]) -> None:
    from monitoring_service import log_reader as lr

    wins = list(lr.windows(served["engine"], "claims-fraud", "1", rows=None, period="1s", include_partial=True))
    assert sum(w.n for w in wins) == 2 * len(served["records"])
    for a, b in zip(wins, wins[1:], strict=False):
        assert a.end < b.start
    import pandas as pd

    for w in wins:
        assert len({pd.Timestamp(r[1]).floor("1s") for r in w.rows}) == 1


def test_data_quality_gate(served: dict[str, Any]) -> None:
    from feature_pipeline.quality import check
    from shared.spec import RetrainSpec

    spec = served["loaded"].spec
    ok = check(served["engine"], spec, 1, RetrainSpec(min_rows=100, label_rate=(0.01, 0.3)))
    assert ok["passed"] and ok["labeled_rows"] == len(served["records"]), ok
    bad = check(served["engine"], spec, 1, RetrainSpec(min_rows=10**6, max_missing_rate=0.05,
                                                       label_rate=(0.5, 0.9)))
    assert not bad["passed"]
    text = "; ".join(bad["problems"])
    assert "labeled rows, at least 1000000" in text and "police_report is missing" in text and "outside" in text


def test_rollback_needs_a_previous_champion(served: dict[str, Any]) -> None:
    from mlflow import MlflowClient

    from training_pipeline.rollback import RollbackError, rollback

    client = MlflowClient(served["uri"], served["uri"])
    with pytest.raises(RollbackError, match="no champion before it"):
        rollback(client, "claims-fraud", "champion")
    with pytest.raises(RollbackError, match="version 1 already"):
        rollback(client, "claims-fraud", "champion", to="1")
    with pytest.raises(RollbackError, match="has no version 9"):
        rollback(client, "claims-fraud", "champion", to="9")


def test_monitor_service_probes_metrics_and_reports(served: dict[str, Any], tmp_path: Path) -> None:
    """``create_app`` in process: a pass on its timer, then probes, Prometheus gauges, reports."""
    from monitoring_service.app import create_app
    from monitoring_service.config import Settings

    settings = Settings(data_dir=served["data"], reports_dir=tmp_path, monitor_interval_seconds=3600)
    with mlflow_uris_restored(), TestClient(create_app(settings, served["loaded"], retrain=False)) as client:
        assert client.get("/health/live").status_code == 200
        deadline = time.monotonic() + 60
        while client.get("/health/ready").status_code != 200:
            assert time.monotonic() < deadline, client.get("/health/ready").text
            time.sleep(0.2)
        ready = client.get("/health/ready").json()
        assert ready["passes"] == 1 and ready["reason"] is None
        text = client.get("/metrics").text
        assert 'fti_monitor_passes_total 1' in text
        assert re.search(r'fti_drift_share\{model="claims-fraud",version="1"\} [0-9.]+', text), text[:2000]
        assert 'fti_drift_feature_drifted{model="claims-fraud",version="1",feature="claim_amount"} 1' in text
        assert 'fti_realized_labeled_rows{model="claims-fraud",version="1"}' in text
        listed = client.get("/reports").json()
        assert len(listed) == 2 and all("report" not in r for r in listed)
        rid = listed[0]["report_id"]
        body = client.get(f"/reports/{rid}")
        assert body.status_code == 200 and json.loads(body.content)["window"]["rows"] == len(served["records"])
        html = client.get(f"/reports/{rid}.html")
        assert html.status_code == 200 and "<svg" in html.text
        assert client.get("/reports/" + "0" * 32).status_code == 404


def test_versions_are_found_by_index_seeks_in_first_logged_order(tmp_path: Path) -> None:
    """``model_versions`` walks the versions one index seek at a time; the order is by first prediction,
    not by name ("10" answered before "2" here), and other models' rows are not counted."""
    from datetime import datetime

    from sqlalchemy import insert

    from monitoring_service import log_reader as lr
    from shared import feature_table as ft
    from shared.db import make_engine
    from shared.prediction_table import predictions

    engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        ft.upgrade(engine)
        t0 = datetime(2026, 1, 1)
        rows = [("m", "1", 0), ("m", "10", 5), ("m", "2", 9), ("m", "1", 20), ("other", "0", 1), ("m", "10", 30)]
        with engine.begin() as conn:
            conn.execute(insert(predictions), [
                {"prediction_id": f"{i:032x}", "request_id": "r", "created_at": t0 + timedelta(seconds=s),
                 "dataset": "d", "model_name": m, "model_version": v, "feature_version": 1, "record_id": str(i),
                 "entity_key": "e", "event_time": None, "inputs": "{}", "outputs": "{}"}
                for i, (m, v, s) in enumerate(rows)])
        assert lr.model_versions(engine, "m") == ["1", "10", "2"]
        assert lr.model_versions(engine, "other") == ["0"]
        assert lr.model_versions(engine, "none") == []
    finally:
        engine.dispose()


def test_the_reference_is_verified_once_per_digest(served: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The monitor service asks for the reference on every pass: it is downloaded and verified once, and
    again whenever the version's digest tag changes (here to a wrong one: refused)."""
    from mlflow import MlflowClient

    from monitoring_service import monitor
    from shared.registry_contract import Tag

    downloads: list[str] = []
    real = monitor._download_reference

    def counted(*args: Any, **kw: Any) -> Any:
        downloads.append(args[2])
        return real(*args, **kw)

    monkeypatch.setattr(monitor, "_download_reference", counted)
    monkeypatch.setattr(monitor, "_REFERENCES", {})
    with mlflow_uris_restored():
        client = MlflowClient(served["uri"], served["uri"])
        name = served["loaded"].spec.model.name
        version = client.get_model_version_by_alias(name, "champion").version
        first = monitor.fetch_reference(client, name, version, served["uri"])
        again = monitor.fetch_reference(client, name, version, served["uri"])
        assert downloads == [version] and again.profile is first.profile and again.tags == first.tags
        digest = client.get_model_version(name, version).tags[Tag.ARTIFACT_SHA256]
        client.set_model_version_tag(name, version, Tag.ARTIFACT_SHA256, "0" * 64)
        try:
            with pytest.raises(monitor.MonitorError, match="do not match"):
                monitor.fetch_reference(client, name, version, served["uri"])
        finally:
            client.set_model_version_tag(name, version, Tag.ARTIFACT_SHA256, digest)
        assert monitor.fetch_reference(client, name, version, served["uri"]).profile is first.profile
        assert downloads == [version, version]
