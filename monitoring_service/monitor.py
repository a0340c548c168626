"""One pass of the monitor: every complete window of the prediction log not reported yet.

For each model version that served, its reference profile is read from the registry (the model
directory is downloaded and its digest checked against ``fti.artifact_sha256``, as every fti
loader does; nothing in it is executed -- the profile is JSON). Each window's logged records are
turned back into model inputs (:mod:`monitoring_service.log_reader`), compared with the profile
(:mod:`monitoring_service.drift`), joined with the labels that have arrived
(:mod:`monitoring_service.performance`), and written as a report: a row of ``fti_drift_reports``
(its id is the sha256 of the canonical JSON, so a second pass over the same log adds nothing), a
JSON file and a self-contained HTML file.
"""

from __future__ import annotations

import itertools
import json
import logging
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.engine import Engine

from monitoring_service import drift
from monitoring_service import log_reader as lr
from monitoring_service import performance as perf
from monitoring_service.report_html import render
from shared import feature_table as ft
from shared import monitor_table as mt
from shared.registry_contract import Artifact, Tag
from shared.spec import DatasetSpec

log = logging.getLogger(__name__)
REPORT_FORMAT = 1
BLOCK_ROWS = 20_000  # windows are computed in blocks of about this many rows (fixed costs paid once per block)


class MonitorError(RuntimeError):
    """Something the user fixes (a registry or model version that cannot be read)."""


@dataclass
class Reference:
    version: str
    profile: dict[str, Any]
    tags: dict[str, str]

    @property
    def positive_label(self) -> str | None:
        return self.tags.get(Tag.POSITIVE_CLASS)


_REFERENCES: dict[tuple[Any, ...], Reference] = {}  # verified profiles, by version and artifact digest
_REFERENCES_MAX = 16


def fetch_reference(client: Any, name: str, version: str, tracking_uri: str | None = None) -> Reference:
    """A model version's reference profile, from its verified model directory.

    Kept in memory by (registry, name, version, artifact digest) once verified: the monitor service asks
    on every pass, and downloading a model's files each time was most of a pass's fixed cost. A version
    whose digest tag changes is fetched and verified again; the tags returned are always the current ones."""
    mv = client.get_model_version(name, version)
    tags = dict(mv.tags or {})
    key = (tracking_uri, getattr(client, "_registry_uri", None), name, str(version), tags.get(Tag.ARTIFACT_SHA256))
    if key[-1] and key in _REFERENCES:
        return replace(_REFERENCES[key], tags=tags)
    ref = _download_reference(client, name, version, tracking_uri, tags)
    if key[-1]:
        if len(_REFERENCES) >= _REFERENCES_MAX:
            _REFERENCES.pop(next(iter(_REFERENCES)))
        _REFERENCES[key] = ref
    return ref


def _download_reference(client: Any, name: str, version: str, tracking_uri: str | None,
                        tags: dict[str, str]) -> Reference:
    import mlflow.artifacts

    from shared.model_file import artifact_digest

    with tempfile.TemporaryDirectory(prefix="fti-monitor-") as tmp:
        uri = client.get_model_version_download_uri(name, version)
        model_dir = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp,
                                                               tracking_uri=tracking_uri))
        expected = tags.get(Tag.ARTIFACT_SHA256)
        if expected and artifact_digest(model_dir) != expected:
            raise MonitorError(f"{name} version {version}: its files do not match {Tag.ARTIFACT_SHA256}; the "
                               "registry copy was changed after training -- retrain it")
        path = model_dir / Artifact.EXTRA_FILES / Artifact.REFERENCE_PROFILE
        if not path.is_file():
            raise MonitorError(f"{name} version {version} has no reference profile (trained before fti "
                               "monitored); retrain it to monitor it")
        return Reference(str(version), json.loads(path.read_text()), tags)


@dataclass
class PassResult:
    reports: list[dict[str, Any]] = field(default_factory=list)  # summaries, oldest window first
    new: int = 0
    unchanged: int = 0  # complete windows reported before with the same labels: not computed again
    skipped_versions: dict[str, str] = field(default_factory=dict)  # version -> why not monitored
    seconds: float = 0.0


def _columns(frame: Any, profile: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, column in profile["features"].items():
        if name not in frame.columns:
            continue
        s = frame[name]
        out[name] = s.to_numpy(dtype=np.float64, na_value=np.nan) if column["kind"] == "numeric" \
            else s.astype(object).where(s.notna(), None).tolist()
    return out


def window_report(engine: Engine, spec: DatasetSpec, ref: Reference, window: lr.Window,
                  thresholds: drift.Thresholds, events: lr.VersionEvents | None = None) -> dict[str, Any]:
    """The report of one window (deterministic in the window's rows, the profile and the labels)."""
    return window_reports(engine, spec, ref, [window], thresholds, events)[0]


def window_reports(engine: Engine, spec: DatasetSpec, ref: Reference, windows: list[lr.Window],
                   thresholds: drift.Thresholds, events: lr.VersionEvents | None = None) -> list[dict[str, Any]]:
    """The reports of consecutive windows of one model version, computed as one block.

    Every step is row-wise (the records' normalisation, their model inputs with history from each
    row's logged feature version, the scores, the label join), so a window's slice of the block is
    what the window alone would give -- byte for byte, which a test checks -- while the fixed cost of
    each step (sorting a version's events, a query for labels, building frames) is paid once per
    block instead of once per window."""
    regression = spec.model.task == "regression"
    rows = [r for w in windows for r in w.rows]
    first = windows[0]
    block = lr.Window(first.model_name, first.model_version, first.kind, first.start, windows[-1].end, "block",
                      all(w.complete for w in windows), rows)
    frame = lr.model_inputs(engine, spec, block, events)
    scores, preds, proba = lr.scores_and_predictions(block, ref.positive_label, regression)
    columns = _columns(frame, ref.profile)
    history = frozenset(h.name for h in spec.features.history)
    record_ids = [str(r[3]) for r in rows]
    labels, label_version = perf.labels_for(engine, spec, record_ids)
    class_labels = None if regression else list(json.loads(rows[0][6]).get("probabilities", {}))
    out: list[dict[str, Any]] = []
    offset = 0
    for window in windows:
        part = slice(offset, offset + window.n)
        offset += window.n
        sliced = {k: v[part] for k, v in columns.items()}
        result = drift.evaluate(ref.profile, sliced, scores[part], thresholds, history=history)
        ids = record_ids[part]
        at = perf.join(ids, labels)
        w_preds = preds[part]
        performance = perf.realized(spec, [labels[ids[i]] for i in at], [w_preds[i] for i in at],
                                    None if proba is None else proba[part][at], class_labels, ref.positive_label)
        performance["labels_from_feature_version"] = label_version
        out.append({"format": REPORT_FORMAT, "dataset": spec.name,
                    "model": {"name": window.model_name, "version": window.model_version},
                    "window": {"kind": window.kind, "label": window.label, "start": ft.iso_utc(window.start),
                               "end": ft.iso_utc(window.end), "rows": window.n, "complete": window.complete,
                               "feature_versions": sorted({r[2] for r in window.rows if r[2] is not None})},
                    "drift": result, "performance": performance})
    return out


def is_drift(report: dict[str, Any], min_share: float) -> bool | None:
    d = report["drift"]
    if d.get("status") != "ok":
        return None
    return bool(d["drift_share"] > min_share or d.get("prediction", {}).get("drifted", False))


def summary(report: dict[str, Any], rid: str, min_share: float = 0.0) -> dict[str, Any]:
    d = report["drift"]
    return {"report_id": rid, "model_version": report["model"]["version"], "window": report["window"]["label"],
            "start": report["window"]["start"], "end": report["window"]["end"], "rows": report["window"]["rows"],
            "status": d.get("status"), "drift": is_drift(report, min_share), "drifted": d.get("drifted", []),
            "drift_share": d.get("drift_share"),
            "prediction_drift": d.get("prediction", {}).get("drifted"),
            "labeled_rows": report["performance"]["labeled_rows"]}


# --------------------------------------------------------------------------- blocks, in this process or a pool

_WORKER: dict[str, Any] = {}


def _worker_init(url: str, spec: DatasetSpec) -> None:
    """A pool process: its own engine (never one inherited from the parent) and its own events cache. Its
    CPU priority is the parent's: niceness and the scheduling policy survive fork and exec."""
    from shared.db import make_engine

    engine = make_engine(url)
    _WORKER.update(engine=engine, spec=spec, events=lr.VersionEvents(engine, spec))


def _worker_block(ref: Reference, windows: list[lr.Window], thresholds: drift.Thresholds) -> list[dict[str, Any]]:
    w = _WORKER
    return window_reports(w["engine"], w["spec"], ref, windows, thresholds, w["events"])


def _blocks(windows: Iterator[lr.Window], block_rows: int) -> Iterator[list[lr.Window]]:
    block: list[lr.Window] = []
    n = 0
    for window in windows:
        block.append(window)
        n += window.n
        if n >= block_rows:
            yield block
            block, n = [], 0
    if block:
        yield block


def latest_label_version(engine: Engine, spec: DatasetSpec) -> int | None:
    try:
        return ft.get_version(engine, spec.name).version
    except ft.FeatureStoreError:
        return None


def run_pass(engine: Engine, spec: DatasetSpec, client: Any, *, out_dir: Path | None = None,
             include_partial: bool = False, versions: list[str] | None = None,
             tracking_uri: str | None = None, recompute: bool = False, jobs: int = 1,
             block_rows: int = BLOCK_ROWS) -> PassResult:
    """Report every window of ``spec``'s model in the prediction log (JSON + HTML under ``out_dir``).

    A complete window already reported with labels from the current feature version is skipped (its
    report could only come out the same), unless ``recompute``. ``jobs`` > 1 computes blocks of
    windows in that many processes; reports are written here, in log order, either way."""
    t0 = time.perf_counter()
    m = spec.monitoring
    thresholds = drift.Thresholds(alpha=m.alpha, min_psi=m.min_psi, min_rows=m.min_rows)
    name = spec.model.name
    if ft.schema_revision(engine) != ft.SCHEMA_HEAD:
        ft.upgrade(engine)  # the drift tables (0004): the monitor writes them
    result = PassResult()
    events = lr.VersionEvents(engine, spec)
    label_version = latest_label_version(engine, spec)
    pool: Any = None
    try:
        for version in versions or lr.model_versions(engine, name):
            try:
                ref = fetch_reference(client, name, version, tracking_uri)
            except MonitorError as exc:
                result.skipped_versions[version] = str(exc)
                log.warning("%s", exc)
                continue
            done = {} if recompute else mt.reported_windows(engine, name, version)

            def todo(window: lr.Window, done: dict[mt.WindowKey, dict[Any, str]] = done, ref: Reference = ref) -> bool:
                key = (window.kind, ft.naive_utc(window.start), ft.naive_utc(window.end), window.n)
                rid = done.get(key, {}).get(label_version)
                if not window.complete or rid is None:
                    return True
                result.unchanged += 1
                if out_dir is not None:
                    _ensure_files(engine, out_dir / name / str(ref.version), rid, ref)
                return False

            skip = 0 if recompute else _reported_prefix(engine, spec, ref, done, label_version, out_dir, result)
            pending = (w for w in lr.windows(engine, name, version, rows=m.window_rows, period=m.window_period,
                                             include_partial=include_partial, skip_windows=skip) if todo(w))
            blocks = _blocks(pending, block_rows)
            head = list(itertools.islice(blocks, 2))  # a pool (seconds to start) only for two blocks or more
            blocks = itertools.chain(head, blocks)
            if jobs > 1 and len(head) > 1:
                pool = pool or _pool(engine, spec, jobs)
                computed: Iterator[tuple[list[lr.Window], list[dict[str, Any]]]] = _in_pool(pool, ref, blocks,
                                                                                              thresholds, jobs)
            else:
                computed = ((b, window_reports(engine, spec, ref, b, thresholds, events)) for b in blocks)
            for block, reports in computed:
                _save(engine, spec, ref, block, reports, out_dir, result)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    result.seconds = time.perf_counter() - t0
    return result


def _reported_prefix(engine: Engine, spec: DatasetSpec, ref: Reference, done: dict[mt.WindowKey, dict[Any, str]],
                     label_version: int | None, out_dir: Path | None, result: PassResult) -> int:
    """How many leading row windows of the version are reported with the current labels, so the pass can
    start past them without reading their rows (passes report windows in log order, so they are a prefix).

    Checked against the log before it is trusted: its first prediction must be the first window's
    start and the prediction at the prefix's last position the last window's end; otherwise (windows
    shifted by a late row, a report of another window size) 0, and the pass reads everything."""
    size = spec.monitoring.window_rows
    if not size:
        return 0
    mine = sorted((k for k, ids in done.items() if k[0] == "rows" and k[3] == size and label_version in ids),
                  key=lambda k: (k[1], k[2]))
    if not mine:
        return 0
    name, version = spec.model.name, ref.version
    if lr.created_at_at(engine, name, version, 0) != mine[0][1] or \
            lr.created_at_at(engine, name, version, len(mine) * size - 1) != mine[-1][2]:
        log.info("%s v%s: the reported windows are not a prefix of the log; reading all of it", name, version)
        return 0
    result.unchanged += len(mine)
    if out_dir is not None:
        for key in mine:
            _ensure_files(engine, out_dir / name / str(version), done[key][label_version], ref)
    return len(mine)


def _pool(engine: Engine, spec: DatasetSpec, jobs: int) -> Any:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: the monitor service runs passes in a thread beside uvicorn's, and a forked child
    # would inherit locks other threads held
    return ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init,
                               initargs=(engine.url.render_as_string(hide_password=False), spec))


def _in_pool(pool: Any, ref: Reference, blocks: Iterator[list[lr.Window]], thresholds: drift.Thresholds,
             jobs: int) -> Iterator[tuple[list[lr.Window], list[dict[str, Any]]]]:
    """Blocks through the pool, results in order, at most ``2 * jobs`` blocks in flight (bounded memory)."""
    import collections

    inflight: collections.deque[tuple[list[lr.Window], Any]] = collections.deque()
    for block in blocks:
        inflight.append((block, pool.submit(_worker_block, ref, block, thresholds)))
        if len(inflight) >= 2 * jobs:
            b, f = inflight.popleft()
            yield b, f.result()
    while inflight:
        b, f = inflight.popleft()
        yield b, f.result()


def _ensure_files(engine: Engine, folder: Path, rid: str, ref: Reference) -> None:
    """A report computed by an earlier pass still gets its files in this pass's folder (from the stored JSON)."""
    if (folder / f"{rid}.json").is_file() and (folder / f"{rid}.html").is_file():
        return
    row = mt.get_report(engine, rid)
    if row is None:  # pragma: no cover - the id was just read from the same table
        return
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{rid}.json").write_text(row["report"])
    (folder / f"{rid}.html").write_text(render(json.loads(row["report"]), ref.profile, rid))


def _save(engine: Engine, spec: DatasetSpec, ref: Reference, block: list[lr.Window], reports: list[dict[str, Any]],
          out_dir: Path | None, result: PassResult) -> None:
    m = spec.monitoring
    name = spec.model.name
    rows = []
    summaries = []
    for window, report in zip(block, reports, strict=True):
        text = drift.canonical_json(report)
        rid = mt.report_id(text)
        s = summary(report, rid, m.min_drift_share)
        rows.append({"report_id": rid, "dataset": spec.name, "model_name": name, "model_version": ref.version,
                     "window_kind": window.kind, "window_start": window.start, "window_end": window.end,
                     "rows": window.n, "status": s["status"], "drift_share": s["drift_share"],
                     "drifted": s["drifted"], "prediction_drift": s["prediction_drift"],
                     "labeled_rows": s["labeled_rows"],
                     "performance": json.loads(drift.canonical_json(report["performance"])),
                     "report": text, "created_at": ft.utcnow()})
        if out_dir is not None:
            folder = out_dir / name / str(ref.version)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{rid}.json").write_text(text)
            (folder / f"{rid}.html").write_text(render(report, ref.profile, rid))
        log.info("%s v%s %s: %d rows, %s%s", name, ref.version, window.label, window.n, s["status"],
                 f", drifted: {', '.join(s['drifted']) or 'none'}" if s["status"] == "ok" else "")
        summaries.append(s)
    result.new += mt.save_reports(engine, rows)
    result.reports.extend(summaries)


__all__ = ["BLOCK_ROWS", "MonitorError", "is_drift", "latest_label_version", "PassResult", "Reference", "fetch_reference",
           "run_pass", "summary", "window_report", "window_reports"]
