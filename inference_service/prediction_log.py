"""The prediction log writer: off the request path, batched, flushed on shutdown.

By default this writer runs in a process of its own beside the server
(:mod:`inference_service.log_process`, ``FTI_PREDICTION_LOG_PROCESS``), which feeds it
the frames the request path handed over; with ``FTI_PREDICTION_LOG_PROCESS=false``, or
as the fallback when that process cannot start or dies, it runs in a thread of the
server. Either way, the ``/predict`` route hands over one *chunk* per request -- the
number of rows and a function that builds them (:meth:`PredictionLogWriter.log_request`,
:class:`inference_service.log_rows.RequestChunk`) -- with :meth:`PredictionLogWriter.submit_lazy`:
one append to a bounded in-memory buffer, nothing else. One background thread
takes chunks from the buffer, builds the rows (serialising the inputs and
outputs to canonical JSON happens there, not in the request), and inserts them
in batches of at most ``batch_size`` rows, one transaction per batch, so a row
is stored completely or not at all. A batch is written when ``batch_size``
rows are waiting, or ``flush_interval`` seconds after its first row arrived.

The buffer is bounded in *rows* (``max_queue``), not in requests. It is a
deque under a condition variable rather than a ``queue.Queue`` of rows: one
hand-over per request instead of one per row keeps the writer thread from
waking up (and taking the GIL) once per row of a large request.

Nothing is lost silently:

* buffer full -> :meth:`submit_lazy` blocks for at most ``block_seconds``,
  then counts the request's rows as ``dropped`` and logs an error with the
  count (the response is still sent: serving does not stop because the log
  database is slow);
* database unreachable / locked -> the batch is retried with back-off (rows an
  attempt may have committed before its outcome was lost are not inserted
  twice) while new chunks wait in the buffer;
* a row the database rejects (e.g. a value too long for a column) -> the batch
  is retried row by row, the rejected rows are counted as ``failed`` and logged;
* :meth:`close` (the app's lifespan shutdown, i.e. after uvicorn finished the
  in-flight requests of a graceful SIGTERM) refuses new chunks, then writes
  every buffered row before returning; only if the database stays unreachable
  past the close timeout are the remaining rows counted as
  ``lost_on_shutdown`` and logged.

The counters are in :meth:`stats` (served under ``prediction_log`` by
``/health/ready``).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

from inference_service.cpu_slot import CpuSlot
from inference_service.log_rows import RequestChunk, epoch_micros
from shared.prediction_table import COLUMNS, predictions
from shared.spec import DatasetSpec

log = logging.getLogger(__name__)

Row = dict[str, Any]
MULTI_ROWS = 500  # rows per SQLite INSERT statement (x 12 columns: under SQLite's 32,766 bound values)
RowsBuilder = Callable[[], Sequence[Row]]


def _transient(exc: BaseException) -> bool:
    """Connection loss, timeouts, "database is locked", missing table: worth retrying the same rows."""
    from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError

    if isinstance(exc, (OperationalError, InterfaceError, DisconnectionError)):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


class StoreChanged(RuntimeError):
    """The store file is not the one opened (deleted or replaced): writing there would lose the rows."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0][:300] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"


class _Remaining(Exception):
    """A transient error part-way through a row-by-row write: these rows are still to be written."""

    def __init__(self, rows: list[Row], cause: BaseException):
        super().__init__(str(cause))
        self.rows = rows
        self.cause = cause


def log_closed(stats: dict[str, Any], logger: logging.Logger = log) -> dict[str, Any]:
    """Say what a closed log wrote and did not (an error if anything was not written); returns ``stats``."""
    bad = stats["dropped"] or stats["failed"] or stats["lost_on_shutdown"] or stats["pending"]
    logger.log(logging.ERROR if bad else logging.INFO,
               "prediction log closed: %d row(s) written in %d batch(es), %d dropped, %d rejected by the "
               "database, %d lost at shutdown, %d not written", stats["written"], stats["batches"],
               stats["dropped"], stats["failed"], stats["lost_on_shutdown"], stats["pending"])
    return stats


class PredictionLog(Protocol):
    """What the app and the routes use of a prediction log: the thread writer below, or the writer process
    (:class:`inference_service.log_process.ProcessLogWriter`)."""

    store_check: Callable[[], str | None] | None

    def start(self) -> Any: ...

    def log_request(self, n: int, request_body: bytes, response_body: bytes, request_id: str, now: datetime,
                    threshold: float | None) -> int: ...

    def stats(self) -> dict[str, Any]: ...

    def close(self, timeout: float = 30.0) -> dict[str, Any]: ...


class PredictionLogWriter:
    def __init__(self, engine: Engine, *, max_queue: int = 50_000, batch_size: int = 500,
                 flush_interval: float = 0.02, block_seconds: float = 0.5, max_backoff: float = 5.0,
                 cpu_slot: CpuSlot | None = None, spec: DatasetSpec | None = None):
        self.engine = engine
        self.spec = spec  # what log_request's chunks normalise records with
        self.cpu_slot = cpu_slot or CpuSlot(0)  # building and inserting rows is GIL-heavy: see cpu_slot
        self.capacity = max_queue
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.block_seconds = block_seconds
        self.max_backoff = max_backoff
        self._chunks: collections.deque[tuple[int, RowsBuilder]] = collections.deque()
        self._rows = 0  # rows in self._chunks
        self._cond = threading.Condition()
        self._closed = False
        self._stop = threading.Event()
        self._give_up_at: float | None = None
        self._thread: threading.Thread | None = None
        self._counts = {"submitted": 0, "written": 0, "dropped": 0, "failed": 0, "lost_on_shutdown": 0,
                        "batches": 0, "retries": 0}
        self.last_error: str | None = None
        self.store_check: Callable[[], str | None] | None = None  # StoreGuard.file_problem, set by the app
        self._store_changed = False
        self._sqlite_insert: tuple[list[str], list[Any]] | None = None
        self._build_cpu = 0.0  # CPU seconds the writer thread spent building rows ...
        self._cpu = 0.0  # ... and inserting them

    # ------------------------------------------------------------------ producer side (request threads)

    def start(self) -> PredictionLogWriter:
        self._thread = threading.Thread(target=self._run, name="prediction-log-writer", daemon=True)
        self._thread.start()
        return self

    def log_request(self, n: int, request_body: bytes, response_body: bytes, request_id: str, now: datetime,
                    threshold: float | None) -> int:
        """One ``/predict`` request's ``n`` rows, built later from its bytes; returns how many were dropped."""
        if self.spec is None:
            raise RuntimeError("this writer was made without the dataset spec its requests need")
        chunk = RequestChunk(self.spec, n, request_body, response_body, request_id, epoch_micros(now), threshold)
        return self.submit_lazy(n, chunk)

    def submit(self, rows: Sequence[Row]) -> int:
        """Queue built rows; returns how many were dropped (0 or ``len(rows)``)."""
        rows = list(rows)
        return self.submit_lazy(len(rows), lambda: rows)

    def submit_lazy(self, n: int, build: RowsBuilder) -> int:
        """Queue ``n`` rows that ``build()`` will produce in the writer thread.

        Returns how many rows were dropped: 0, or ``n`` if the buffer stayed full for
        ``block_seconds`` or the log is closed (counted and logged as an error either way).
        """
        if n <= 0:
            return 0
        with self._cond:
            if not self._closed and not self._fits(n):
                self._cond.wait_for(lambda: self._closed or self._fits(n), timeout=self.block_seconds)
            if self._closed or not self._fits(n):
                self._counts["dropped"] += n
                total = self._counts["dropped"]
                why = "the log is closed (shutdown)" if self._closed else \
                    f"the buffer is full ({self._rows} of {self.capacity} rows) after waiting {self.block_seconds}s"
                log.error("prediction log: dropped %d row(s) of this request, %d in total: %s (last database "
                          "error: %s)", n, total, why, self.last_error)
                return n
            was_empty = self._rows == 0
            self._chunks.append((n, build))
            self._rows += n
            self._counts["submitted"] += n
            if was_empty or self._rows >= self.batch_size:  # the writer waits for a first row or a full batch
                self._cond.notify_all()
        return 0

    def _fits(self, n: int) -> bool:
        return self._rows == 0 or self._rows + n <= self.capacity

    def stats(self) -> dict[str, Any]:
        with self._cond:
            out: dict[str, Any] = {"enabled": True, **self._counts, "queued": self._rows}
        # accepted rows not written yet: in the buffer, or in the batch being written
        out["pending"] = out["submitted"] - out["written"] - out["failed"] - out["lost_on_shutdown"]
        out["capacity"] = self.capacity
        out["mode"] = "thread"
        out["writer_cpu_seconds"] = round(self._cpu + self._build_cpu, 4)
        out["writer_build_cpu_seconds"] = round(self._build_cpu, 4)
        out["last_error"] = self.last_error
        return out

    def close(self, timeout: float = 30.0) -> dict[str, Any]:
        """Refuse new rows, write every accepted one, stop the thread. Returns :meth:`stats`."""
        with self._cond:
            self._closed = True
            self._give_up_at = time.monotonic() + timeout
            self._stop.set()
            self._cond.notify_all()
        log.info("prediction log: closing; writing the %d row(s) not yet written", self.stats()["pending"])
        if self._thread is not None:
            self._thread.join(timeout + self.max_backoff + 5.0)
            if self._thread.is_alive():
                log.error("prediction log writer did not finish within %.0fs; %d accepted row(s) not written",
                          timeout, self.stats()["pending"])
        return log_closed(self.stats())

    def _count(self, key: str, n: int) -> int:
        with self._cond:
            self._counts[key] += n
            return self._counts[key]

    # ------------------------------------------------------------------ consumer side (writer thread)

    def _take(self) -> list[tuple[int, RowsBuilder]]:
        """Wait for a first chunk, then up to ``flush_interval`` for a full batch; take up to a batch."""
        with self._cond:
            if not self._chunks and not self._stop.is_set():
                self._cond.wait(self.flush_interval)
            if not self._chunks:
                return []
            until = time.monotonic() + self.flush_interval
            while self._rows < self.batch_size and not self._stop.is_set():
                left = until - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            taken: list[tuple[int, RowsBuilder]] = []
            n = 0
            while self._chunks and (not taken or n + self._chunks[0][0] <= self.batch_size):
                chunk = self._chunks.popleft()
                taken.append(chunk)
                n += chunk[0]
            self._rows -= n
            self._cond.notify_all()  # room for producers waiting on a full buffer
            return taken

    def _build(self, chunks: list[tuple[int, RowsBuilder]]) -> list[Row]:
        """The chunks' rows. Builders of one kind with a ``build_many`` (``RequestChunk``) are built together,
        which is cheaper than one by one; if that fails, each is built alone, so one bad chunk fails alone."""
        many = getattr(chunks[0][1], "build_many", None) if chunks else None
        if many is not None and len(chunks) > 1 and all(getattr(b, "build_many", None) == many for _, b in chunks):
            try:
                built = list(many([b for _, b in chunks]))
                if len(built) == sum(n for n, _ in chunks):
                    return built
                raise ValueError(f"expected {sum(n for n, _ in chunks)} rows, got {len(built)}")
            except Exception:  # noqa: BLE001 - the builds one by one say which chunk is bad
                log.warning("prediction log: building %d chunks together failed; building them one by one",
                            len(chunks), exc_info=True)
        return self._build_each(chunks)

    def _build_each(self, chunks: list[tuple[int, RowsBuilder]]) -> list[Row]:
        rows: list[Row] = []
        for n, build in chunks:
            try:
                built = list(build())
                if len(built) != n:
                    raise ValueError(f"expected {n} rows, got {len(built)}")
                rows.extend(built)
            except Exception as exc:  # noqa: BLE001 - a bug in building rows must not stop the writer
                total = self._count("failed", n)
                self.last_error = _first_line(exc)
                log.exception("prediction log: could not build %d row(s) (%d failed in total)", n, total)
        return rows

    def _run(self) -> None:
        pending: list[Row] = []
        backoff = 0.05
        attempt = 0
        while True:
            if not pending:
                chunks = self._take()
                if not chunks:
                    if self._stop.is_set():
                        with self._cond:
                            if not self._chunks:
                                return
                    continue
                cpu = time.thread_time()
                with self.cpu_slot.held():
                    pending = self._build(chunks)
                self._build_cpu += time.thread_time() - cpu
                attempt = 0
                continue
            head = pending[:self.batch_size]
            try:
                cpu = time.thread_time()
                with self.cpu_slot.held():
                    self._write(head, retry=attempt > 0)
                self._cpu += time.thread_time() - cpu
                pending = pending[len(head):]
                backoff, attempt = 0.05, 0
            except Exception as exc:  # noqa: BLE001 - the thread must survive anything
                cause: BaseException = exc
                if isinstance(exc, _Remaining):
                    pending = exc.rows + pending[len(head):]
                    cause = exc.cause
                attempt += 1
                self._count("retries", 1)
                self.last_error = _first_line(cause)
                if self._stop.is_set() and self._give_up_at is not None and time.monotonic() >= self._give_up_at:
                    with self._cond:
                        lost = len(pending) + self._rows
                        self._chunks.clear()
                        self._rows = 0
                        self._counts["lost_on_shutdown"] += lost
                    log.error("prediction log: database still failing at shutdown (%s): %d row(s) NOT written",
                              self.last_error, lost)
                    return
                log.warning("prediction log: writing %d row(s) failed (attempt %d, %s); retrying in %.2fs "
                            "(%d more queued)", len(head), attempt, self.last_error, backoff, self.stats()["queued"])
                time.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)

    def _write(self, rows: list[Row], *, retry: bool) -> None:
        """Insert ``rows`` in one transaction. Raises on transient errors (the caller retries them)."""
        if retry and not self._store_changed:  # the previous commit may have succeeded: do not insert twice
            rows = self._not_yet_stored(rows)
            if not rows:
                return
        self._check_store()
        try:
            with self.engine.begin() as conn:
                self._insert(conn, rows)
            self._check_store()  # replaced while committing: the rows went into the old file, not written
        except SQLAlchemyError as exc:
            if _transient(exc):
                raise
            log.warning("prediction log: batch of %d rejected (%s); writing row by row", len(rows),
                        _first_line(exc))
            self._write_one_by_one(rows)
            return
        self._count("written", len(rows))
        self._count("batches", 1)

    def _insert(self, conn: Any, rows: list[Row]) -> None:
        """The batch in one transaction. On SQLite, as multi-row ``INSERT ... VALUES`` statements of at most
        ``MULTI_ROWS`` rows, the values bound by the dialect's own processors (what ``executemany`` would
        store, byte for byte): ``executemany`` steps SQLite once per row and releases and retakes the GIL
        at each step, so a batch of 500 rows forced 500 GIL hand-overs on the event loop, which convoyed
        behind the writer (serving's throughput fell by a quarter with the log on; see docs/benchmarks.md).
        Elsewhere (PostgreSQL), SQLAlchemy's ``insertmanyvalues`` batching already does this."""
        if conn.dialect.name != "sqlite":
            conn.execute(insert(predictions), rows)
            return
        if self._sqlite_insert is None:
            names = list(COLUMNS)
            processors = [predictions.c[n].type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
                          for n in names]
            self._sqlite_insert = (names, processors)
        names, processors = self._sqlite_insert
        head = f"INSERT INTO {predictions.name} ({', '.join(names)}) VALUES "
        one = "(" + ", ".join("?" * len(names)) + ")"
        for start in range(0, len(rows), MULTI_ROWS):
            part = rows[start:start + MULTI_ROWS]
            params: list[Any] = []
            for row in part:
                params.extend(row[n] if proc is None else proc(row[n]) for n, proc in zip(names, processors, strict=True))
            conn.exec_driver_sql(head + ", ".join([one] * len(part)), tuple(params))

    def _check_store(self) -> None:
        problem = self.store_check() if self.store_check is not None else None
        if problem is not None:
            self._store_changed = True  # never ask the old file which rows it holds: it is not the store
            raise StoreChanged(problem)

    def _not_yet_stored(self, rows: list[Row]) -> list[Row]:
        ids = [r["prediction_id"] for r in rows]
        stored: set[str] = set()
        with self.engine.connect() as conn:
            for i in range(0, len(ids), 500):
                stored.update(conn.execute(select(predictions.c.prediction_id)
                                           .where(predictions.c.prediction_id.in_(ids[i:i + 500]))).scalars())
        if stored:
            self._count("written", len(stored))
        return [r for r in rows if r["prediction_id"] not in stored]

    def _write_one_by_one(self, rows: list[Row]) -> None:
        rejected: list[str] = []
        for i, row in enumerate(rows):
            try:
                with self.engine.begin() as conn:
                    conn.execute(insert(predictions), [row])
                self._count("written", 1)
            except IntegrityError as exc:
                self.last_error = _first_line(exc)
                if self._not_yet_stored([row]):  # not a duplicate of a committed row: really rejected
                    rejected.append(row["prediction_id"])
            except SQLAlchemyError as exc:
                if _transient(exc):  # the rest goes back to the retry loop; rows written so far stay written
                    self._report_rejected(rejected)
                    raise _Remaining(rows[i:], exc) from exc
                rejected.append(row["prediction_id"])
                self.last_error = _first_line(exc)
        self._report_rejected(rejected)
        self._count("batches", 1)

    def _report_rejected(self, rejected: list[str]) -> None:
        if rejected:
            total = self._count("failed", len(rejected))
            log.error("prediction log: the database rejected %d row(s) (%d in total; %s); first ids: %s",
                      len(rejected), total, self.last_error, ", ".join(rejected[:5]))
