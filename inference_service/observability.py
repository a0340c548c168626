"""Prometheus metrics, request ids and structured JSON logs for the inference service.

One :class:`Observability` per app (its own ``CollectorRegistry``, so two apps
in one process -- tests -- never share counters). The ASGI middleware
:class:`ObserveRequests` wraps every HTTP request:

* gives it a request id (``X-Request-ID`` on every response; routes read it
  from ``request.state.request_id``);
* counts it and times it per endpoint (the route's path template, never the
  raw path, so ids in URLs cannot blow up the series), method, status and the
  model version that answered (the route puts ``X-Model-Version`` on it);
* writes one JSON access-log line with what the route added
  (``request.state.log``: rows, prediction ids...), buffered and written in
  batches (at the latest 0.25 s later, and at shutdown). Request bodies are
  not logged unless ``FTI_LOG_REQUEST_BODIES=true``.

The score histogram is kept in numpy (one vectorised update per request, not
one call per row) and exported by a custom collector, together with the
prediction-log writer's counters.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

access_log = logging.getLogger("fti.access")
# Answered 200, these are not access-logged unless FTI_ACCESS_LOG_PROBES (a probe every few seconds made
# 56% of the inference container's lines); a failing probe is always logged.
QUIET_PATHS = frozenset({"/health/live", "/health/ready", "/ping", "/health", "/version", "/metrics"})

LATENCY_BUCKETS = (0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.03, 0.05,
                   0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SCORE_BUCKETS = tuple(round(x, 2) for x in np.arange(0.05, 1.0001, 0.05))
MAX_LOGGED_IDS = 100
ACCESS_LOG_BATCH = 64
ACCESS_LOG_FLUSH_SECONDS = 0.25


class ScoreHistogram(Collector):
    """``fti_prediction_score``: the positive-class probability (binary) or the top probability
    (multi-class) of every scored row, per endpoint and model version."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._edges = np.asarray(SCORE_BUCKETS, dtype=np.float64)
        self._series: dict[tuple[str, str], list[Any]] = {}  # (endpoint, version) -> [counts, sum]

    def observe(self, endpoint: str, version: str, proba: np.ndarray, positive: int = -1) -> None:
        if proba.ndim != 2 or proba.shape[0] == 0 or proba.shape[1] < 2:  # a regressor's values are no scores
            return
        scores = proba[:, positive] if proba.shape[1] == 2 else proba.max(axis=1)
        counts = np.bincount(np.searchsorted(self._edges, scores, side="left"), minlength=len(self._edges) + 1)
        total = float(scores.sum())
        with self._lock:
            entry = self._series.setdefault((endpoint, version), [np.zeros(len(self._edges) + 1, np.int64), 0.0])
            entry[0] += counts
            entry[1] += total

    def collect(self) -> Any:
        fam = HistogramMetricFamily("fti_prediction_score", "Scores of predictions served: the positive-class "
                                    "probability (binary models) or the top class probability",
                                    labels=["endpoint", "model_version"])
        with self._lock:
            items = [(k, v[0].copy(), v[1]) for k, v in self._series.items()]
        for (endpoint, version), counts, total in items:
            cum = np.cumsum(counts)
            buckets = [(f"{edge:g}", int(c)) for edge, c in zip(self._edges, cum[:-1], strict=True)]
            buckets.append(("+Inf", int(cum[-1])))
            fam.add_metric([endpoint, version], buckets, total)
        yield fam


class RuntimeCollector(Collector):
    """Gauges read from the runtime at scrape time: what is served, hot-reload and prediction-log state."""

    def __init__(self, runtime_getter: Callable[[], Any]):
        self._runtime = runtime_getter

    def collect(self) -> Any:
        runtime = self._runtime()
        info = GaugeMetricFamily("fti_model_info", "The model version being served (value 1), with how it scores",
                                 labels=["model_name", "model_version", "scorer"])
        ready = GaugeMetricFamily("fti_model_ready", "1 once a model passed its checks and serves")
        log_written = CounterMetricFamily("fti_prediction_log_rows", "Rows the prediction log wrote or dropped",
                                          labels=["outcome"])
        queue = GaugeMetricFamily("fti_prediction_log_queue_rows", "Rows waiting in the prediction log queue")
        model = getattr(runtime, "model", None) if runtime is not None else None
        ready.add_metric([], 1.0 if model is not None else 0.0)
        if model is not None:
            scorer = getattr(model, "scorer", None)
            mode = scorer.status.get("mode", "pipeline") if scorer is not None else "pipeline"
            info.add_metric([model.name, model.version, mode], 1.0)
        plog = getattr(runtime, "prediction_log", None) if runtime is not None else None
        if plog is not None:
            stats = plog.stats()
            log_written.add_metric(["written"], float(stats.get("written", 0)))
            log_written.add_metric(["dropped"], float(stats.get("dropped", 0)))
            log_written.add_metric(["failed"], float(stats.get("failed", 0)))
            log_written.add_metric(["lost_on_shutdown"], float(stats.get("lost_on_shutdown", 0)))
            queue.add_metric([], float(stats.get("queued", 0)))
        yield info
        yield ready
        slot = getattr(runtime, "cpu_slot", None) if runtime is not None else None
        if slot is not None:
            bypassed = CounterMetricFamily("fti_cpu_slot_bypassed", "Worker tasks that ran without a CPU slot after "
                                           "waiting its patience (FTI_CPU_SLOTS; a slot holder was stuck)")
            bypassed.add_metric([], float(slot.bypassed))
            yield bypassed
        if plog is not None:
            yield log_written
            yield queue


class Observability:
    def __init__(self, runtime_getter: Callable[[], Any]):
        disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series: they double the exposition and nobody graphs them
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("fti_requests", "HTTP requests served", ["endpoint", "method", "status",
                                                                         "model_version"], registry=self.registry)
        self.latency = Histogram("fti_request_duration_seconds", "Time from request start to the last byte "
                                 "sent, per endpoint", ["endpoint", "model_version"], buckets=LATENCY_BUCKETS,
                                 registry=self.registry)
        self.rows = Counter("fti_rows_scored", "Rows (records) scored", ["endpoint", "model_version"],
                            registry=self.registry)
        self.reload_checks = Counter("fti_model_reload_checks", "Hot-reload checks of the served alias, by "
                                     "outcome (unchanged, reloaded, refused, failed, waiting, registry_error)",
                                     ["outcome"], registry=self.registry)
        self.loads = Counter("fti_model_loads", "Model loads (first load and hot reloads), by outcome",
                             ["kind", "outcome"], registry=self.registry)
        self.load_seconds = Gauge("fti_model_load_seconds", "How long the served model took to load and check",
                                  registry=self.registry)
        self.access_lines: list[str] = []  # JSON access-log lines not written yet (event loop only)
        self.scores = ScoreHistogram()
        self.registry.register(self.scores)
        self.registry.register(RuntimeCollector(runtime_getter))

    def flush_access_log(self) -> None:
        """Write the buffered access-log lines in one write (one syscall instead of one per request).

        Called when ``ACCESS_LOG_BATCH`` lines are waiting, every ``ACCESS_LOG_FLUSH_SECONDS`` by the
        app's lifespan, and at shutdown; a crash loses at most that much of the access log (never a
        prediction: those are in the prediction log)."""
        lines, self.access_lines = self.access_lines, []
        if lines:
            try:
                sys.stderr.write("\n".join(lines) + "\n")
                sys.stderr.flush()
            except (OSError, ValueError):  # stderr closed: nowhere to log
                pass

    async def flush_access_log_periodically(self) -> None:
        while True:
            await asyncio.sleep(ACCESS_LOG_FLUSH_SECONDS)
            self.flush_access_log()

    def scored(self, endpoint: str, version: str, proba: np.ndarray, positive: int = -1) -> None:
        """``positive``: binary models' score column (``LoadedModel.positive_index``)."""
        self.rows.labels(endpoint, version).inc(len(proba))
        self.scores.observe(endpoint, version, proba, positive)


class ObserveRequests:
    """Pure ASGI middleware (no per-request task or body copy): ids, metrics, one access-log line."""

    def __init__(self, app: Any, obs: Observability, *, access_log_on: bool = True, log_bodies: bool = False,
                 json_lines: bool = True, fast_lane: Any = None, guard: Any = None, log_probes: bool = False):
        self.app = app
        self.log_probes = log_probes  # health probes and scrapes answered 200: most of a quiet service's lines
        self.guard = guard  # inference_service.guard.Guard: hosts, keys, concurrency, deadline
        self.fast_lane = fast_lane  # handles() + __call__(scope, receive, send, state): the scoring hot path
        self.obs = obs
        self.access_log_on = access_log_on
        self.log_bodies = log_bodies
        self.json_lines = json_lines  # write the JSON line straight to stderr: a LogRecord costs ~10% of a request

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        request_id = uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        extra: dict[str, Any] = {}
        state["log"] = extra
        status = 500
        version = "none"
        body = bytearray() if self.log_bodies else None

        async def send_with_id(message: dict[str, Any]) -> None:
            nonlocal status, version
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                if b"x-request-id" not in names:
                    headers.append((b"x-request-id", request_id.encode()))
                for k, v in headers:
                    if k.lower() == b"x-model-version":
                        version = v.decode("latin-1")
                message["headers"] = headers
            await send(message)

        async def receive_copy() -> dict[str, Any]:
            message = await receive()
            if body is not None and message.get("type") == "http.request" and len(body) < 4096:
                body.extend(message.get("body", b"")[: 4096 - len(body)])
            return message

        lane = self.fast_lane is not None and self.fast_lane.handles(scope)
        rcv = receive_copy if body is not None else receive

        async def dispatch(out: Any) -> None:
            if lane:
                await self.fast_lane(scope, rcv, out, state)
            else:
                await self.app(scope, rcv, out)

        try:
            if self.guard is None:
                await dispatch(send_with_id)
            else:
                rejection = self.guard.admit(scope)
                if rejection is not None:
                    from inference_service.guard import send_json

                    await send_json(send_with_id, *rejection)
                else:
                    await self.guard.run(scope, dispatch, send_with_id)
        finally:
            seconds = time.perf_counter() - t0
            route = scope.get("route")
            endpoint = scope["path"] if lane else getattr(route, "path", None) or "unmatched"
            if endpoint != "/metrics":
                self.obs.requests.labels(endpoint, scope["method"], str(status), version).inc()
                self.obs.latency.labels(endpoint, version).observe(seconds)
            quiet_probe = not self.log_probes and status == 200 and scope["path"] in QUIET_PATHS
            if self.access_log_on and not quiet_probe and access_log.isEnabledFor(logging.INFO):
                fields: dict[str, Any] = {"event": "request", "method": scope["method"], "path": scope["path"],
                                          "endpoint": endpoint, "status": status,
                                          "duration_ms": round(seconds * 1000, 3), "request_id": request_id,
                                          "model_version": None if version == "none" else version, **extra}
                if body is not None:
                    fields["body_excerpt"] = bytes(body).decode("utf-8", "replace")
                message = f"{scope['method']} {scope['path']} {status}"
                if self.json_lines:
                    line = {"ts": _iso_now(), "level": "info", "logger": "fti.access", "message": message, **fields}
                    self.obs.access_lines.append(json.dumps(line, default=str, ensure_ascii=False))
                    if len(self.obs.access_lines) >= ACCESS_LOG_BATCH:
                        self.obs.flush_access_log()
                else:
                    access_log.info("%s", message, extra={"fti": fields})


def note(request: Any, **fields: Any) -> None:
    """Add fields to this request's access-log line (rows, model, prediction ids...)."""
    log = getattr(request.state, "log", None)
    if log is None:
        return
    ids = fields.pop("prediction_ids", None)
    if ids is not None:
        log["prediction_ids"] = list(ids[:MAX_LOGGED_IDS])
        if len(ids) > MAX_LOGGED_IDS:
            log["prediction_ids_truncated"] = True
    log.update(fields)


# ---------------------------------------------------------------------- JSON logs


def _iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, plus the record's ``fti`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage(),
        }
        fields = getattr(record, "fti", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def configure_logging(level: str, fmt: str) -> None:
    """Root logging for ``fti serve``: JSON lines (default) or text, on stderr; uvicorn's loggers join in."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    logging.captureWarnings(True)  # warnings.warn() output becomes log records (JSON), not stray stderr text
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    for noisy in ("alembic", "mlflow.store.db.utils", "mlflow.utils.uv_utils"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
