"""The monitor service: the loop step on a timer, its state as probes, Prometheus gauges and reports.

``fti monitor serve`` runs it (in compose: its own container). Every ``FTI_MONITOR_INTERVAL_SECONDS``
it runs :func:`monitoring_service.loop.watch` in a worker thread -- a pass over the prediction log and,
with a ``monitoring.retrain`` policy, one decision, handed to the pipelines' workers through the
database. The process lowers its own CPU priority (``FTI_MONITOR_NICE``) so that, sharing a host with
serving, it takes what serving leaves.

* ``/health/live``: the process answers; ``/health/ready``: the last pass succeeded (503 with the reason
  otherwise, or before the first);
* ``/metrics``: per served model version, the latest complete window's drift share, each feature's PSI
  and drift flag, prediction drift, rows and realized performance; pass counts and durations;
  decisions by action;
* ``/reports`` (summaries), ``/reports/{id}`` (the canonical JSON), ``/reports/{id}.html``.

Reports hold no row of data; the service has no write endpoint.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

from monitoring_service.config import Settings
from shared.spec import LoadedSpec

log = logging.getLogger(__name__)


@dataclass
class State:
    passes: int = 0
    failures: int = 0
    last_ok_at: float | None = None
    last_error: str | None = "no pass yet"
    last_seconds: float | None = None
    last_decision: dict[str, Any] | None = None
    started_at: float = field(default_factory=time.time)


def _esc(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


def metrics_text(engine: Any, model_name: str, state: State) -> str:
    """Prometheus text exposition (gauges from the latest complete window of each model version)."""
    from shared import monitor_table as mt

    lines = ["# HELP fti_monitor_passes_total Monitor passes over the prediction log.",
             "# TYPE fti_monitor_passes_total counter", f"fti_monitor_passes_total {state.passes}",
             "# TYPE fti_monitor_pass_failures_total counter", f"fti_monitor_pass_failures_total {state.failures}",
             "# TYPE fti_monitor_last_pass_seconds gauge",
             f"fti_monitor_last_pass_seconds {state.last_seconds if state.last_seconds is not None else 'NaN'}",
             "# TYPE fti_monitor_last_success_timestamp_seconds gauge",
             f"fti_monitor_last_success_timestamp_seconds {state.last_ok_at or 'NaN'}"]
    latest: dict[str, dict[str, Any]] = {}
    for r in mt.list_reports(engine, model_name, limit=1000):
        report = json.loads(r["report"])
        if report["window"]["complete"] and r["model_version"] not in latest:
            latest[r["model_version"]] = report
    gauges: dict[str, list[str]] = {k: [] for k in (
        "fti_drift_window_rows", "fti_drift_share", "fti_drift_feature_psi", "fti_drift_feature_drifted",
        "fti_drift_prediction_psi", "fti_drift_prediction_drifted", "fti_realized_labeled_rows", "fti_realized_metric")}
    for version, report in sorted(latest.items()):
        base = f'model="{_esc(model_name)}",version="{_esc(version)}"'
        d, p = report["drift"], report["performance"]
        gauges["fti_drift_window_rows"].append(f"fti_drift_window_rows{{{base}}} {report['window']['rows']}")
        if d.get("status") == "ok":
            gauges["fti_drift_share"].append(f"fti_drift_share{{{base}}} {d['drift_share']}")
            for name, f in sorted(d["features"].items()):
                lab = f'{base},feature="{_esc(name)}"'
                gauges["fti_drift_feature_psi"].append(f"fti_drift_feature_psi{{{lab}}} {f['psi']}")
                gauges["fti_drift_feature_drifted"].append(f"fti_drift_feature_drifted{{{lab}}} {int(f['drifted'])}")
            if "prediction" in d:
                gauges["fti_drift_prediction_psi"].append(f"fti_drift_prediction_psi{{{base}}} {d['prediction']['psi']}")
                gauges["fti_drift_prediction_drifted"].append(
                    f"fti_drift_prediction_drifted{{{base}}} {int(d['prediction']['drifted'])}")
        gauges["fti_realized_labeled_rows"].append(f"fti_realized_labeled_rows{{{base}}} {p['labeled_rows']}")
        for k, v in sorted(p.items()):
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("labeled_rows",
                                                                                      "labels_from_feature_version"):
                gauges["fti_realized_metric"].append(f'fti_realized_metric{{{base},metric="{_esc(k)}"}} {v}')
    for name, rows in gauges.items():
        lines.append(f"# TYPE {name} gauge")
        lines.extend(rows)
    counts: dict[str, int] = {}
    for d in mt.list_decisions(engine, model_name, limit=10_000):
        counts[d["action"]] = counts.get(d["action"], 0) + 1
    lines.append("# TYPE fti_retrain_decisions gauge")
    lines.extend(f'fti_retrain_decisions{{model="{_esc(model_name)}",action="{_esc(a)}"}} {n}'
                 for a, n in sorted(counts.items()))
    return "\n".join(lines) + "\n"


def create_app(settings: Settings, loaded: LoadedSpec, *, retrain: bool = True) -> FastAPI:
    from monitoring_service.loop import watch
    from shared import monitor_table as mt
    from shared.db import make_engine

    state = State()
    engine = make_engine(settings.feature_store_url)
    name = loaded.spec.model.name

    def one_pass() -> None:
        t0 = time.perf_counter()
        try:
            out = watch(loaded, out_dir=settings.reports_path, settings=settings,
                        retrain=retrain and loaded.spec.monitoring.retrain is not None)
            state.last_decision = out.decision
            state.last_ok_at, state.last_error = time.time(), None
        except Exception as exc:  # noqa: BLE001 - reported on /health/ready; the loop goes on
            state.failures += 1
            state.last_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            log.exception("monitor pass failed")
        finally:
            state.passes += 1
            state.last_seconds = time.perf_counter() - t0

    async def loop() -> None:
        while True:
            await asyncio.to_thread(one_pass)
            await asyncio.sleep(settings.monitor_interval_seconds)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> Any:
        task = asyncio.create_task(loop(), name="monitor-loop")
        try:
            yield
        finally:
            task.cancel()
            engine.dispose()

    app = FastAPI(title="fti monitor", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.get("/health/live")
    def live() -> dict[str, str]:
        return {"status": "live"}

    @app.get("/health/ready")
    def ready() -> Response:
        body = {"status": "ready" if state.last_error is None else "not ready", "reason": state.last_error,
                "passes": state.passes, "last_pass_seconds": state.last_seconds, "model": name,
                "last_decision": {k: state.last_decision.get(k) for k in ("action", "verdict", "decision_id")}
                if state.last_decision else None}
        return JSONResponse(body, status_code=200 if state.last_error is None else 503)

    @app.get("/metrics")
    def metrics() -> PlainTextResponse:
        return PlainTextResponse(metrics_text(engine, name, state), media_type="text/plain; version=0.0.4")

    @app.get("/reports")
    def reports(limit: int = 50) -> list[dict[str, Any]]:
        rows = mt.list_reports(engine, name, limit=max(1, min(limit, 1000)))
        return [{k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in r.items() if k != "report"}
                for r in rows]

    def _report(rid: str) -> dict[str, Any]:
        row = mt.get_report(engine, rid[:64])
        if row is None:
            raise HTTPException(404, f"no report {rid[:64]!r}")
        return row

    @app.get("/reports/{rid}.html", response_class=HTMLResponse)
    def report_html(rid: str) -> HTMLResponse:
        path = settings.reports_path / name / _report(rid)["model_version"] / f"{rid}.html"
        if not path.is_file():
            raise HTTPException(404, f"report {rid[:64]!r} has no HTML file under FTI_REPORTS_DIR")
        return HTMLResponse(path.read_text())

    @app.get("/reports/{rid}")
    def report_json(rid: str) -> Response:
        return Response(_report(rid)["report"], media_type="application/json")

    return app


__all__ = ["State", "create_app", "metrics_text"]
