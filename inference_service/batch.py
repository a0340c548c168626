"""``fti predict-batch``: score a whole feature version into ``fti_batch_predictions``, in one transaction.

Why a job and not a loop over ``POST /predict``: the feature version already
holds every record's model inputs, computed once by the feature job, so the
batch reads them back and scores them directly -- the same inputs training
evaluated on, no online recomputation, no HTTP.

What makes the table trustworthy:

* **The model passes every check the service applies.** It is loaded through
  :class:`~inference_service.model_loader.MlflowLoader` (environment
  fingerprint, skops allow-list, ``fti.validated``, feature contract), and
  before anything is written its parity certificate is checked at the model
  level: the certificate's stored model inputs, scored through
  :func:`inference_service.scoring.predict_proba` (the one scoring entry
  point, also used for the batch itself), must give the certified outputs bit
  for bit. A scorer that drifted is refused, not used.
* **One transaction per batch.** The manifest row and every prediction row are
  committed together, so a batch is visible completely or not at all: a run
  killed half-way leaves nothing behind, and its rerun writes the whole batch.
  Rows are read, scored and inserted in chunks (``FTI_BATCH_CHUNK_ROWS``) inside
  that transaction, so memory stays bounded by a chunk, and progress goes to
  stderr as they are written.
* **At most one batch per (feature version, model version).** A unique
  constraint, plus a lock taken before the work starts (PostgreSQL: an advisory
  lock on the batch; SQLite: ``BEGIN IMMEDIATE``), so of two concurrent runs
  one writes and the other reports the winner's batch. A rerun reports the
  existing batch and writes nothing; ``--replace`` deletes and rewrites it in
  the same transaction (the old batch stays visible until the new one commits).
* **Checksums both ways.** The feature rows read are checksummed as they
  stream by and must match the feature version's manifest; the written rows
  get their own sha256 in the batch manifest, recomputable from the table
  (:func:`shared.batch_table.stored_checksum`).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field
from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, OperationalError

from inference_service.config import Settings
from inference_service.model_loader import LoadedModel, MlflowLoader, ModelLoadError
from shared import batch_table as bt
from shared import feature_table as ft
from shared import model_ref
from shared.db import IMMEDIATE, copy_rows, make_engine, redact
from shared.model_ref import ModelRef, ModelRefError
from shared.prediction_table import canonical_json, outputs
from shared.spec import DatasetSpec, LoadedSpec

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


class BatchError(RuntimeError):
    """The batch cannot be scored as asked; the message says why and what to do."""


class BatchSettings(Settings):
    """The inference settings plus the job's own knobs (``FTI_BATCH_*``)."""

    batch_chunk_rows: int = Field(default=20_000, ge=1, le=1_000_000, description="FTI_BATCH_CHUNK_ROWS: feature "
                                  "rows read, scored and inserted per step of the one transaction")
    batch_progress_seconds: float = Field(default=2.0, ge=0, description="FTI_BATCH_PROGRESS_SECONDS: at most "
                                          "one progress line per this many seconds (0: one per chunk)")


def log_progress(line: str) -> None:
    """The default progress sink (the CLI prints to stderr instead, whatever the log level)."""
    log.info("predict-batch: %s", line)


# --------------------------------------------------------------------------- which model

def parse_model_ref(value: str | None, default_name: str, default_alias: str) -> ModelRef:
    """``--model`` in the one grammar of :mod:`shared.model_ref`; ``None``: the spec's model at the alias."""
    if not value:
        return ModelRef(default_name, alias=default_alias)
    try:
        return model_ref.parse(value, what="--model")
    except ModelRefError as exc:
        raise BatchError(str(exc)) from None


def load_model(loader: MlflowLoader, spec: DatasetSpec, ref: ModelRef) -> LoadedModel:
    """Load with every check the service applies; a version the registry does not have is the user's to fix."""
    from mlflow.exceptions import MlflowException

    try:
        if ref.alias is not None:
            return loader.load(spec, ref.name, ref.alias)
        assert ref.version is not None
        return loader.load_version(spec, ref.name, ref.version)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise BatchError(f"model {ref} is not in the registry at {redact(loader.registry_uri)}"
                         f"{_registered_versions(loader, ref.name)}: pass an existing version with "
                         f"--model {ref.name}/VERSION, or train one with `fti train --spec ...`") from None


def _registered_versions(loader: MlflowLoader, name: str) -> str:
    from mlflow import MlflowClient

    try:
        client = MlflowClient(tracking_uri=loader.tracking_uri, registry_uri=loader.registry_uri)
        versions = sorted(int(mv.version) for mv in client.search_model_versions(f"name='{name}'"))
    except Exception:  # noqa: BLE001 - only decorates the message
        return ""
    return f" (registered versions of {name!r}: {', '.join(map(str, versions))})" if versions else \
        f" (no version of {name!r} is registered)"


# --------------------------------------------------------------------------- model-level certificate

def certificate_inputs(cert: dict[str, Any], spec: DatasetSpec) -> pd.DataFrame:
    """The certificate's stored model inputs as the frame the feature table decodes to (same dtypes)."""
    columns = list(cert["model_features"])
    rows = cert["features"]
    data: dict[str, Any] = {}
    for c in columns:
        values = [row.get(c) for row in rows]
        if ft.column_type(spec, c).is_numeric:  # as shared.feature_table decodes payloads
            data[c] = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64) + 0.0
        else:
            data[c] = pd.Series([np.nan if v is None else str(v) for v in values], dtype=object)
    return pd.DataFrame(data, columns=columns)


def verify_certificate(model: LoadedModel, spec: DatasetSpec) -> str:
    """The certificate's model inputs must score to its expected outputs bit for bit; returns a summary."""
    cert = model.certificate or {}
    what = f"{model.name} version {model.version}"
    if list(cert.get("model_features") or []) != model.features:
        raise BatchError(f"refusing {what}: its parity certificate was made for other model inputs than the "
                         "model takes; retrain it (`fti train`)")
    if list(cert.get("classes") or []) != model.classes:
        raise BatchError(f"refusing {what}: its parity certificate names classes {cert.get('classes')}, the "
                         f"model predicts {model.classes}; retrain it (`fti train`)")
    from inference_service.scoring import predict_proba  # sklearn: imported only when a model is scored

    expected = np.asarray(cert.get("expected") or [], dtype=np.float64)
    got = predict_proba(model, certificate_inputs(cert, spec))
    if got.shape != expected.shape:
        raise BatchError(f"refusing {what}: it gives outputs of shape {got.shape} on its parity certificate, "
                         f"which certifies {expected.shape}")
    if not np.array_equal(got, expected):
        differing = int((got != expected).any(axis=1).sum())
        raise BatchError(
            f"refusing {what}: on its parity certificate's model inputs it does not give the certified outputs "
            f"({differing} of {len(expected)} rows differ, max |diff| {float(np.abs(got - expected).max()):.3g}). "
            "The model files or the scoring code changed since training: score in the environment the model "
            "was trained in, or retrain it (`fti train`). Nothing was written")
    return f"parity certificate passed at the model level: {len(expected)} rows identical bit for bit"


# --------------------------------------------------------------------------- the job

@dataclass
class BatchResult:
    status: str  # "written", "replaced" or "exists"
    info: bt.BatchInfo
    seconds: float
    concurrent: bool = False  # "exists" because another run wrote it while this one waited
    certificate: str | None = None

    def summary(self) -> str:
        i = self.info
        what = (f"{i.row_count} rows of {i.dataset!r} feature version {i.feature_version} scored by "
                f"{i.model_name} version {i.model_version} (checksum {i.checksum[:16]}...)")
        if self.status == "exists":
            who = "a concurrent run" if self.concurrent else "an earlier run"
            return (f"batch {i.batch_id} already exists: {what}, written by {who} at {ft.iso_utc(i.created_at)}; "
                    f"nothing written (--replace rewrites it) ({self.seconds:.1f}s)")
        return f"batch {i.batch_id} {self.status}: {what} in {self.seconds:.1f}s"

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, **self.info.as_dict(), "run_seconds": round(self.seconds, 3),
                "concurrent": self.concurrent, "certificate": self.certificate}


def run(loaded: LoadedSpec, settings: BatchSettings, *, feature_version: int | None = None,
        model: str | None = None, replace: bool = False, progress: Progress = log_progress) -> BatchResult:
    t0 = time.perf_counter()
    started_at = ft.utcnow()
    spec = loaded.spec
    ref = parse_model_ref(model, settings.model_name or spec.model.name, settings.model_alias)
    engine = make_engine(settings.feature_store_url)
    try:
        ft.check_schema(engine, minimum=bt.BATCH_TABLES_REVISION)
        info = ft.get_version(engine, spec.name, feature_version)
        if [list(c) for c in info.columns] != ft.frame_columns(spec):
            raise BatchError(f"feature version {info.version} of {spec.name!r} holds other columns than this spec "
                             "describes: score a version built with this spec (`fti features run --spec ...`) "
                             "or pass the spec it was built with")
        loader = MlflowLoader(settings.tracking_uri, settings.registry_uri, settings.cache_dir,
                              allow_env_mismatch=settings.allow_env_mismatch, fast_path=settings.fast_path,
                              fast_path_tree_rows=settings.fast_path_tree_rows,
                              memory_limit_mb=settings.model_load_memory_mb)
        if not replace:  # a rerun is answered before any model is downloaded
            version = ref.version or str(loader.resolve(ref.name, str(ref.alias)).version)
            existing = bt.find_batch(engine, spec.name, info.version, ref.name, version)
            if existing is not None:
                return BatchResult("exists", existing, time.perf_counter() - t0)
        t_load = time.perf_counter()
        lm = load_model(loader, spec, ref)
        load_seconds = time.perf_counter() - t_load
        t_cert = time.perf_counter()
        certificate = verify_certificate(lm, spec)
        progress(f"{lm.name} version {lm.version} loaded and checked ({load_seconds:.1f}s; scorer: "
                 f"{_scorer_mode(lm)}); {certificate}")
        job = _Job(engine, spec, info, lm, settings.batch_chunk_rows, settings.batch_progress_seconds, progress,
                   started_at, t0, {"load_seconds": round(load_seconds, 3),
                                    "certificate_seconds": round(time.perf_counter() - t_cert, 3)})
        status, batch, concurrent = job.write(replace=replace)
        return BatchResult(status, batch, time.perf_counter() - t0, concurrent=concurrent, certificate=certificate)
    finally:
        engine.dispose()


def _scorer_mode(model: LoadedModel) -> str:
    status = getattr(getattr(model, "scorer", None), "status", None) or {}
    return str(status.get("mode", "pipeline"))


def _lock_key(batch: str) -> int:
    return int.from_bytes(hashlib.sha256(f"fti-batch:{batch}".encode()).digest()[:8], "big", signed=True)


class _Job:
    """One write of one batch: lock, check, (delete,) stream-score-insert, verify, commit."""

    def __init__(self, engine: Engine, spec: DatasetSpec, info: ft.VersionInfo, model: LoadedModel,
                 chunk_rows: int, progress_seconds: float, progress: Progress, started_at: Any, t0: float,
                 timings: dict[str, float]):
        self.engine, self.spec, self.info, self.model = engine, spec, info, model
        self.chunk_rows, self.progress_seconds, self.progress = chunk_rows, progress_seconds, progress
        self.started_at, self.t0, self.timings = started_at, t0, timings
        self.batch_id = bt.batch_id(spec.name, info.version, model.name, model.version)
        self.labels = [str(c) for c in model.classes]

    def write(self, *, replace: bool) -> tuple[str, bt.BatchInfo, bool]:
        waited = False
        while True:
            try:
                with self.engine.connect() as raw:
                    conn = raw.execution_options(**{IMMEDIATE: True})  # SQLite: BEGIN IMMEDIATE (one writer)
                    t_begin = time.perf_counter()
                    try:
                        trans = conn.begin()
                    except OperationalError as exc:
                        if "locked" not in str(exc).lower():
                            raise
                        self.progress("waiting for the feature store's write lock (held by another writer: a "
                                      "feature job, the prediction log or another predict-batch run)")
                        waited = True
                        continue
                    if time.perf_counter() - t_begin > 1.0:  # SQLite waited in its busy handler
                        self.progress(f"waited {time.perf_counter() - t_begin:.1f}s for the feature store's "
                                      "write lock")
                        waited = True
                    with trans:
                        waited = self._lock(conn) or waited
                        return self._write(conn, replace=replace, waited=waited)
            except IntegrityError:
                # The unique constraint: another run committed this batch while we were writing it.
                existing = bt.find_batch(self.engine, self.spec.name, self.info.version, self.model.name,
                                         self.model.version)
                if existing is None:
                    raise
                return "exists", existing, True

    def _lock(self, conn: Connection) -> bool:
        """PostgreSQL: serialise runs of the same batch (SQLite's BEGIN IMMEDIATE already serialises writers)."""
        if conn.dialect.name != "postgresql":
            return False
        key = _lock_key(self.batch_id)
        if conn.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": key}).scalar():
            return False
        self.progress(f"another run is writing batch {self.batch_id}; waiting for it to finish")
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
        return True

    def _write(self, conn: Connection, *, replace: bool, waited: bool) -> tuple[str, bt.BatchInfo, bool]:
        spec, info, model = self.spec, self.info, self.model
        existing = bt.find_batch(conn, spec.name, info.version, model.name, model.version)
        # Committed after this run started: another run wrote it meanwhile (even --replace keeps that one).
        concurrent = existing is not None and existing.created_at >= self.started_at
        if existing is not None and (not replace or concurrent):
            return "exists", existing, waited or concurrent
        if existing is not None:
            conn.execute(delete(bt.batch_predictions).where(bt.batch_predictions.c.batch_id == existing.batch_id))
            conn.execute(delete(bt.prediction_batches).where(bt.prediction_batches.c.batch_id == existing.batch_id))
            self.progress(f"--replace: deleted batch {existing.batch_id} ({existing.row_count} rows) in this "
                          "transaction; it stays visible to others until the new one commits")
        manifest: dict[str, Any] = {
            "batch_id": self.batch_id, "dataset": spec.name, "feature_version": info.version,
            "feature_checksum": info.checksum, "model_name": model.name, "model_version": model.version,
            "row_count": 0, "checksum": "", "started_at": self.started_at, "created_at": self.started_at,
            "seconds": 0.0, "details": {}}
        conn.execute(insert(bt.prediction_batches).values(**manifest))  # the rows' foreign key needs it first
        rows, checksum, timings = self._score_and_insert(conn)
        b = bt.prediction_batches
        final = {"row_count": rows, "checksum": checksum, "created_at": ft.utcnow(),
                 "seconds": round(time.perf_counter() - self.t0, 3),
                 "details": {"alias": model.alias or None, "run_id": model.run_id, "classes": self.labels,
                             "scorer": _scorer_mode(model),
                             "chunk_rows": self.chunk_rows, "replaced": existing is not None,
                             "timings": {**self.timings, **timings}}}
        conn.execute(update(b).where(b.c.batch_id == self.batch_id).values(**final))
        self.progress(f"committing {rows} rows")
        return ("replaced" if existing is not None else "written"), bt.BatchInfo(**{**manifest, **final}), False

    def _score_and_insert(self, conn: Connection) -> tuple[int, str, dict[str, float]]:
        from inference_service.scoring import predict_proba

        spec, info = self.spec, self.info
        t = ft.feature_rows
        # Rows stream in record-id order in Python's sense (byte order of UTF-8), so both checksums
        # are computed on the fly: SQLite compares text with BINARY, PostgreSQL is told COLLATE "C".
        dialect = self.engine.dialect.name
        streamed = dialect in ("sqlite", "postgresql")
        order = t.c.record_id.collate("C") if dialect == "postgresql" else t.c.record_id
        q = (select(t.c.record_id, t.c.entity_key, t.c.event_time, t.c.payload)
             .where(t.c.dataset == spec.name, t.c.version == info.version).order_by(order))
        features_digest, batch_digest = bt.RowDigest(streamed), bt.RowDigest(streamed)
        copy = dialect == "postgresql"
        done, total = 0, info.row_count
        timings = {"read_seconds": 0.0, "score_seconds": 0.0, "insert_seconds": 0.0}
        t_start = last = time.perf_counter()
        # A second connection reads while this one writes: the feature rows are immutable, and a
        # server-side cursor keeps only one chunk in memory.
        with self.engine.connect() as reader:
            result = reader.execution_options(stream_results=True, yield_per=self.chunk_rows).execute(q)
            while True:
                t_read = time.perf_counter()
                chunk = result.fetchmany(self.chunk_rows)
                if not chunk:
                    break
                for r in chunk:
                    ts = ft.iso_utc(r.event_time) if r.event_time is not None else ""
                    features_digest.add(r.record_id, f"{r.record_id}\t{r.entity_key}\t{ts}\t{r.payload}\n")
                frame = ft.decode_frame(chunk, spec)
                t_score = time.perf_counter()
                proba = predict_proba(self.model, frame)
                t_insert = time.perf_counter()
                out = self._rows(chunk, proba)
                for row in out:
                    batch_digest.add(row["record_id"], bt.checksum_line(row))
                if copy:  # PostgreSQL: COPY in the same transaction (the feature job's INSERTs ran at a third of its rate)
                    columns = tuple(out[0])
                    copy_rows(conn, bt.batch_predictions.name, columns, ([row[c] for c in columns] for row in out))
                else:
                    conn.execute(insert(bt.batch_predictions), out)
                now = time.perf_counter()
                timings["read_seconds"] += t_score - t_read
                timings["score_seconds"] += t_insert - t_score
                timings["insert_seconds"] += now - t_insert
                done += len(chunk)
                if now - last >= self.progress_seconds or done >= total:
                    last = now
                    pct = 100.0 * done / total if total else 100.0
                    self.progress(f"{done}/{total} rows scored and written ({pct:.1f}%), "
                                  f"{done / max(now - t_start, 1e-9):.0f} rows/s, {now - t_start:.1f}s")
        features_checksum = features_digest.hexdigest()
        if done != info.row_count or features_checksum != info.checksum:
            raise BatchError(f"feature version {info.version} of {spec.name!r} read back as {done} rows with "
                             f"checksum {features_checksum[:16]}..., its manifest says {info.row_count} rows, "
                             f"{info.checksum[:16]}...: check it with `fti features show {info.version} --spec "
                             "... --verify`. Nothing was written")
        return done, batch_digest.hexdigest(), {k: round(v, 3) for k, v in timings.items()}

    def _rows(self, chunk: Sequence[Any], proba: np.ndarray) -> list[dict[str, Any]]:
        model, labels, classes = self.model, self.labels, self.model.classes
        if model.is_regressor:  # the one output column is the predicted value
            return [self._row(r, repr(value), outputs(value, None)) for r, value in zip(chunk, proba[:, 0].tolist(),
                                                                                        strict=True)]
        threshold = model.decision.threshold if model.decision is not None else None
        best = model.decide(proba).tolist()  # the model's decision rule, as /predict applies it
        return [self._row(r, str(classes[k]), outputs(classes[k], dict(zip(labels, p, strict=True)), threshold))
                for r, p, k in zip(chunk, proba.tolist(), best, strict=True)]

    def _row(self, r: Any, prediction: str, out: dict[str, Any]) -> dict[str, Any]:
        spec, info, model = self.spec, self.info, self.model
        return {
            "prediction_id": bt.prediction_id(spec.name, info.version, model.name, model.version, r.record_id),
            "batch_id": self.batch_id, "dataset": spec.name, "record_id": r.record_id,
            "entity_key": r.entity_key, "as_of": r.event_time if spec.event_time else None,
            "model_name": model.name, "model_version": model.version, "feature_version": info.version,
            "prediction": prediction, "outputs": canonical_json(out),
        }


__all__ = ["BatchError", "BatchResult", "BatchSettings", "ModelLoadError", "ModelRef", "parse_model_ref", "run",
           "verify_certificate"]
