"""The prediction log written by a process of its own, beside the server.

Why a process: in the server's process the log's thread built and inserted rows under the GIL,
and every millisecond it held the GIL was a millisecond ``/predict`` waited -- with the log on,
serving's p99 at c=8 was 1.45x what it was with the log off, and its throughput 15-20% lower
(``bench/monitoring.py``, docs/monitoring.md). Here the request path hands over the bytes it already
holds (:class:`inference_service.log_rows.RequestChunk`'s frame: the request body, the response body,
the request id, the time, the threshold -- no serialisation of live objects), a pump thread writes a
batch of frames to a pipe now and then (the write releases the GIL), and a child process at a lower
CPU priority builds and inserts the rows with the same :class:`PredictionLogWriter` the in-process
mode uses, so batching, retries, the store check and the close semantics are the same code.

The guarantees of :mod:`inference_service.prediction_log` hold across the two processes:

* **bounded**: rows handed over and not yet written by the child count against
  ``FTI_PREDICTION_LOG_QUEUE``; past it a request waits up to ``block_seconds``, then its rows are
  dropped, counted and logged (serving goes on);
* **graceful shutdown**: :meth:`ProcessLogWriter.close` sends what is buffered, then a close message;
  the child writes every row and exits; rows it still could not write are counted (``lost_on_shutdown``).
  The child ignores SIGINT and SIGTERM (Ctrl-C reaches the whole process group): it stops when the
  server tells it to, or when the pipe closes because the server died -- and then still writes what
  it was handed;
* **the child dies** (killed, out of memory): the rows it held are counted as ``failed`` with the
  reason, and the log goes on in a thread of the server (:class:`PredictionLogWriter`): the fallback.

The child is a fresh interpreter (multiprocessing's *spawn*; ~1 s of imports, once per server start),
never a fork of the server: a fork of a multi-threaded server can inherit a lock another thread held.
Not the *forkserver* either: it is a sibling in the server's process group, and a group-wide SIGTERM
kills it, after which the server can no longer tell whether its writer is alive.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import math
import multiprocessing
import os
import signal
import struct
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from inference_service.cpu_slot import CpuSlot
from inference_service.log_rows import RequestChunk, epoch_micros
from inference_service.prediction_log import PredictionLogWriter, log_closed
from shared.cpu_priority import lower_cpu_priority
from shared.spec import DatasetSpec

log = logging.getLogger(__name__)

# what the child reports through shared memory, read by the server without a round trip
FIELDS = ("written", "failed", "lost_on_shutdown", "dropped", "batches", "retries", "received", "queued",
          "cpu_us", "build_cpu_us", "ready")
_I = {name: i for i, name in enumerate(FIELDS)}
ERROR_BYTES = 400
PIPE_BYTES = 1 << 20  # F_SETPIPE_SZ: a 1 MiB pipe (the kernel's default is 64 KiB)
MAX_MESSAGE = 8 << 20  # a message holds at most this many bytes of frames (one large request may exceed it)
_FRAMES, _CLOSE = b"F", b"C"
_MSG = struct.Struct("<cQ")  # a message on the pipe: its kind (_FRAMES or _CLOSE), then its length
_IOV_MAX = 1024  # pieces per writev (POSIX's minimum for IOV_MAX is 16; Linux's is 1024)


@dataclass(frozen=True)
class ChildParams:
    url: str
    batch_size: int
    flush_interval: float
    capacity: int
    nice: int
    sched_idle: bool
    log_level: int


class ProcessLogWriter:
    """The prediction log's writer in a child process; the same interface as :class:`PredictionLogWriter`
    for the app (:meth:`log_request`, :meth:`stats`, :meth:`close`, ``store_check``)."""

    def __init__(self, engine: Engine, spec: DatasetSpec, *, max_queue: int = 50_000, batch_size: int = 500,
                 flush_interval: float = 0.02, block_seconds: float = 0.5, nice: int = 10, sched_idle: bool = True,
                 cpu_slot: CpuSlot | None = None, fallback_flush_interval: float | None = None):
        self.engine = engine
        self.spec = spec
        self.capacity = max_queue
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.block_seconds = block_seconds
        self.nice = nice
        self.sched_idle = sched_idle
        self.store_check: Any = None  # the app sets it; used by the fallback (the child keeps its own)
        self.cpu_slot = cpu_slot  # the fallback thread's
        # the fallback thread's batches hold the server's interpreter: its own (shorter) interval
        self.fallback_flush_interval = flush_interval if fallback_flush_interval is None else fallback_flush_interval
        self._cond = threading.Condition()
        self._parts: list[bytes] = []  # frames not yet sent
        self._part_rows: list[int] = []  # rows of each frame in _parts
        self._queued = 0  # rows in _parts
        self._due = 0.0  # when the pump sends the buffered frames (flush_interval after the first one)
        self._wake_rows = max(batch_size, max_queue // 4)  # ... or sooner, once this many rows wait
        self._sent = 0  # rows written to the pipe
        self._counts = {"submitted": 0, "dropped": 0, "failed": 0}
        self._closed = False
        self._stop = threading.Event()
        self._proc: Any = None
        self._conn: Any = None
        self._pump_thread: threading.Thread | None = None
        self._shared: Any = None
        self._error: Any = None
        self._child_final: dict[str, int] | None = None  # the child's counters once it exited
        self._fallback: PredictionLogWriter | None = None
        self._dead = False
        self.last_error: str | None = None
        self.mode = "process"

    # ------------------------------------------------------------------ start

    def start(self) -> ProcessLogWriter:
        """Start the child; if it cannot be started, the log runs in a thread (said in the log)."""
        try:
            ctx = multiprocessing.get_context("spawn")
            self._shared = ctx.Array("q", len(FIELDS), lock=False)
            self._error = ctx.Array("c", ERROR_BYTES, lock=False)
            reader, writer = ctx.Pipe(duplex=False)
            with contextlib.suppress(OSError):  # a larger pipe: fewer pump wake-ups block on a busy child
                fcntl.fcntl(writer.fileno(), 1031, PIPE_BYTES)  # F_SETPIPE_SZ
            params = ChildParams(url=_absolute_url(self.engine),
                                 batch_size=self.batch_size, flush_interval=self.flush_interval,
                                 capacity=self.capacity + self.batch_size, nice=self.nice, sched_idle=self.sched_idle,
                                 log_level=logging.getLogger().getEffectiveLevel())
            self._proc = ctx.Process(target=child_main, name="fti-prediction-log", daemon=True,
                                     args=(reader, self.spec, asdict(params), self._shared, self._error))
            self._proc.start()
            reader.close()
            self._conn = writer
            atexit.register(self._at_exit)
        except Exception as exc:  # noqa: BLE001 - the log must run somewhere
            log.error("prediction log: could not start its writer process (%s: %s); writing from a thread of "
                      "the server instead", type(exc).__name__, exc)
            self._use_fallback([])
            return self
        log.info("prediction log: writer process %d started (nice +%d%s)", self._proc.pid, self.nice,
                 ", SCHED_IDLE" if self.sched_idle else "")
        self._pump_thread = threading.Thread(target=self._pump, name="prediction-log-pump", daemon=True)
        self._pump_thread.start()
        return self

    def _at_exit(self) -> None:
        r"""Never :meth:`close`\ d (an embedding program exited without the app's shutdown): close the pipe, so
        the child writes what it holds and exits before multiprocessing's exit handler waits for it."""
        with contextlib.suppress(OSError, ValueError):
            if self._conn is not None and not self._stop.is_set():
                self._conn.close()

    # ------------------------------------------------------------------ producer side (request path)

    def log_request(self, n: int, request_body: bytes, response_body: bytes, request_id: str, now: datetime,
                    threshold: float | None) -> int:
        """Hand one request's ``n`` rows over; returns how many were dropped (0 or ``n``)."""
        if n <= 0:
            return 0
        fallback = self._fallback
        if fallback is not None:
            return fallback.log_request(n, request_body, response_body, request_id, now, threshold)
        frame = RequestChunk.encode_frame(n, request_body, response_body, request_id, epoch_micros(now), threshold)
        with self._cond:
            if not self._closed and not self._fits(n):
                self._cond.notify_all()  # the pump sends what waits, so that the child can make room
                deadline = time.monotonic() + self.block_seconds
                while not self._closed and not self._fits(n) and self._fallback is None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(min(left, 0.01))  # the child's progress is not signalled: poll it
            if self._fallback is not None:  # the child died while we waited
                fallback = self._fallback
            elif self._closed or not self._fits(n):
                self._counts["dropped"] += n
                why = "the log is closed (shutdown)" if self._closed else \
                    f"{self._outstanding()} rows are waiting (capacity {self.capacity}) after {self.block_seconds}s"
                log.error("prediction log: dropped %d row(s) of this request, %d in total: %s (last error: %s)",
                          n, self._counts["dropped"], why, self._last_error())
                return n
            else:
                if not self._parts:
                    self._due = time.monotonic() + self.flush_interval
                self._parts.append(frame)
                self._part_rows.append(n)
                self._queued += n
                self._counts["submitted"] += n
                if self._queued >= self._wake_rows and self._queued - n < self._wake_rows:
                    self._cond.notify_all()
                return 0
        return fallback.log_request(n, request_body, response_body, request_id, now, threshold)

    def _child_done(self) -> int:
        """Rows the child finished with (on every request: four reads of shared memory, no dict)."""
        if self._child_final is not None or self._shared is None:
            c = self._child_counts()
            return c["written"] + c["failed"] + c["lost_on_shutdown"] + c["dropped"]
        shared = self._shared
        return int(shared[_I["written"]] + shared[_I["failed"]] + shared[_I["lost_on_shutdown"]]
                   + shared[_I["dropped"]])

    def _outstanding(self) -> int:
        return self._queued + self._sent - self._child_done()

    def _fits(self, n: int) -> bool:
        out = self._outstanding()
        return out == 0 or out + n <= self.capacity

    # ------------------------------------------------------------------ the pump (a thread of the server)

    def _take(self) -> tuple[list[bytes], list[int]]:
        """The buffered frames and their rows, once ``flush_interval`` has passed since the first of them
        (sooner if ``_wake_rows`` rows wait, or at close); from here they count as sent, so that rows in a
        blocked pipe write still count against the capacity.

        Why time, not a row count: each send wakes this thread, which must take the interpreter from the
        event loop in the middle of requests (twice: to take the frames, and after the write). Sending
        whenever 500 rows waited, in messages of 64 frames, did that dozens of times a second at c=8; on a
        time budget it is four times a second whatever the rate (docs/monitoring.md)."""
        with self._cond:
            if not self._parts and not self._stop.is_set():
                self._cond.wait(self.flush_interval)  # then back to the pump, which checks the child is alive
            while self._parts and not self._stop.is_set() and self._queued < self._wake_rows:
                wait = self._due - time.monotonic()
                if wait <= 0:
                    break
                self._cond.wait(wait)
            if not self._parts:
                return [], []
            parts, rows = self._parts, self._part_rows
            self._sent += self._queued
            self._parts, self._part_rows, self._queued = [], [], 0
            return parts, rows

    def _pump(self) -> None:
        while True:
            parts, rows = self._take()
            if parts:
                try:
                    sent = 0
                    for k, end in _messages(parts):
                        _write_message(self._conn.fileno(), _FRAMES, parts[k:end])
                        sent = end
                except (OSError, ValueError) as exc:  # the child is gone: its pipe is broken
                    with self._cond:
                        self._sent -= sum(rows[sent:])  # not sent: they go to the fallback
                    self._child_died(f"{type(exc).__name__}: {exc}", unsent=parts[sent:])
                    return
            elif self._stop.is_set():
                return
            if not self._proc.is_alive() and not self._stop.is_set():
                self._child_died(f"exit code {self._proc.exitcode}", unsent=[])
                return

    def _child_died(self, how: str, unsent: list[bytes]) -> None:
        """Count the rows the child held as failed and go on with the thread writer (once)."""
        with self._cond:
            if self._dead:
                return
            self._dead = True
        with contextlib.suppress(Exception):
            self._proc.join(1.0)
        final = self._child_counts()
        with self._cond:
            self._child_final = final
            lost = self._sent - self._child_done()
            self._counts["failed"] += max(lost, 0)
            self._sent = self._child_done()
        self.last_error = (f"the prediction log's writer process died ({how}); {max(lost, 0)} row(s) it held were "
                           "not written; writing from a thread of the server from now on")
        log.error("prediction log: %s", self.last_error)
        self._use_fallback(unsent)

    def _use_fallback(self, unsent: list[bytes]) -> None:
        """Frames taken from the buffer but not sent, and those still buffered, go to the thread writer."""
        fallback = PredictionLogWriter(self.engine, max_queue=self.capacity, batch_size=self.batch_size,
                                       flush_interval=self.fallback_flush_interval, block_seconds=self.block_seconds,
                                       cpu_slot=self.cpu_slot, spec=self.spec)  # the same settings, in a thread
        fallback.store_check = self.store_check
        fallback.start()
        with self._cond:
            frames = b"".join(unsent + self._parts)
            self._parts, self._part_rows, self._queued = [], [], 0
            for chunk in RequestChunk.parse(self.spec, frames):  # handed over, not yet sent: nothing lost
                fallback.submit_lazy(chunk.n, chunk)
                self._counts["submitted"] -= chunk.n  # the fallback counts them now
            self._fallback = fallback
            self.mode = "thread (fallback)"
            self._cond.notify_all()

    def wait_ready(self, timeout: float = 60.0) -> bool:
        """Wait until the child has started (imports done, store opened); if it exits or does not start in
        ``timeout`` seconds, the log goes on in a thread. The app waits for this before it takes requests:
        a burst arriving while the child still imports would fill the capacity and drop rows."""
        if self._fallback is not None or self._proc is None:
            return self._fallback is not None
        deadline = time.monotonic() + timeout
        while not self._child_counts()["ready"]:
            if not self._proc.is_alive() or time.monotonic() > deadline:
                how = f"exit code {self._proc.exitcode}" if not self._proc.is_alive() else \
                    f"not started within {timeout:.0f}s"
                self._stop.set()  # the pump hands over to the fallback below, once
                if self._pump_thread is not None:
                    self._pump_thread.join(5.0)
                if self._proc.is_alive():
                    self._proc.kill()
                self._child_died(how, unsent=[])
                return False
            time.sleep(0.02)
        log.info("prediction log: writer process %d ready", self._proc.pid)
        return True

    # ------------------------------------------------------------------ what it did

    def _child_counts(self) -> dict[str, int]:
        if self._child_final is not None:
            return self._child_final
        if self._shared is None:
            return dict.fromkeys(FIELDS, 0)
        return {name: int(self._shared[i]) for i, name in enumerate(FIELDS)}

    def _last_error(self) -> str | None:
        """The server side's own error (the child died), else the child's last database error."""
        if self.last_error is None and self._error is not None:
            return bytes(self._error.value).decode(errors="replace") or None
        return self.last_error

    def stats(self) -> dict[str, Any]:
        c = self._child_counts()
        with self._cond:
            mine = dict(self._counts)
            queued = self._queued + max(self._sent - self._child_done(), 0)
        out: dict[str, Any] = {"enabled": True, "mode": self.mode, "submitted": mine["submitted"],
                               "written": c["written"], "dropped": mine["dropped"] + c["dropped"],
                               "failed": mine["failed"] + c["failed"], "lost_on_shutdown": c["lost_on_shutdown"],
                               "batches": c["batches"], "retries": c["retries"], "queued": queued}
        cpu, build = c["cpu_us"] / 1e6, c["build_cpu_us"] / 1e6
        fallback = self._fallback.stats() if self._fallback is not None else None
        if fallback is not None:
            for key in ("submitted", "written", "dropped", "failed", "lost_on_shutdown", "batches", "retries",
                        "queued"):
                out[key] += fallback[key]
            cpu += fallback["writer_cpu_seconds"]
            build += fallback["writer_build_cpu_seconds"]
        out["pending"] = out["submitted"] - out["written"] - out["failed"] - out["lost_on_shutdown"]
        out["capacity"] = self.capacity
        out["writer_pid"] = self._proc.pid if self._proc is not None and self._fallback is None else None
        out["writer_cpu_seconds"] = round(cpu, 4)  # in the child: not the server's CPU
        out["writer_build_cpu_seconds"] = round(build, 4)
        out["last_error"] = (fallback or {}).get("last_error") or self._last_error()
        return out

    # ------------------------------------------------------------------ shutdown

    def close(self, timeout: float = 30.0) -> dict[str, Any]:
        """Refuse new rows, have every accepted one written, stop the child. Returns :meth:`stats`."""
        with self._cond:
            self._closed = True
            self._stop.set()
            self._cond.notify_all()
        if self._pump_thread is not None:
            self._pump_thread.join(timeout)
        if self._fallback is None and self._proc is not None:
            log.info("prediction log: closing; the writer process writes the %d row(s) not yet written",
                     self.stats()["pending"])
            with contextlib.suppress(OSError, ValueError):
                _write_message(self._conn.fileno(), _CLOSE, [struct.pack("<d", timeout)])
            self._proc.join(timeout + 10.0)
            if self._proc.is_alive():
                log.error("prediction log: the writer process did not finish within %.0fs; stopping it", timeout)
                self._proc.kill()
                self._proc.join(5.0)
            final = self._child_counts()
            with self._cond:
                self._child_final = final
                lost = self._sent - self._child_done()
                if lost > 0:  # handed to the child, never reported written, failed or lost by it
                    self._child_final = {**final, "lost_on_shutdown": final["lost_on_shutdown"] + lost}
            with contextlib.suppress(OSError):
                self._conn.close()
        if self._fallback is not None:
            self._fallback.close(timeout)
        return log_closed(self.stats(), log)


def _absolute_url(engine: Engine) -> str:
    """The store's URL for the child; a SQLite path made absolute (the child's working folder is not ours)."""
    url = engine.url
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        url = url.set(database=str(Path(url.database).expanduser().resolve()))
    return url.render_as_string(hide_password=False)


# ---------------------------------------------------------------------- the pipe's messages


def _messages(frames: list[bytes]) -> Iterator[tuple[int, int]]:
    """``frames[k:end]`` slices of at most :data:`MAX_MESSAGE` bytes (one frame may be larger alone)."""
    k, size = 0, 0
    for i, frame in enumerate(frames):
        if size and size + len(frame) > MAX_MESSAGE:
            yield k, i
            k, size = i, 0
        size += len(frame)
    if k < len(frames):
        yield k, len(frames)


def _write_message(fd: int, kind: bytes, pieces: list[bytes]) -> None:
    """One message (a header, then ``pieces``) with ``writev``: no copy of the pieces into one buffer, and
    the interpreter released once per 1,024 pieces rather than once per frame."""
    views: list[bytes | memoryview] = [_MSG.pack(kind, sum(len(p) for p in pieces)), *pieces]
    i = 0
    while i < len(views):
        n = os.writev(fd, views[i:i + _IOV_MAX])
        while i < len(views) and n >= len(views[i]):
            n -= len(views[i])
            i += 1
        if n:  # part of views[i] went out
            views[i] = memoryview(views[i])[n:]


def _read_exactly(fd: int, size: int) -> bytes | None:
    """``size`` bytes from the pipe; ``None`` if it closes first (a message cut short is not a message)."""
    buf = bytearray(size)
    view = memoryview(buf)
    at = 0
    while at < size:
        n = os.readv(fd, [view[at:]])
        if n == 0:
            return None
        at += n
    return bytes(buf)


def read_message(fd: int) -> tuple[bytes, bytes] | None:
    """The next message's kind and body; ``None`` once the server closed its end of the pipe."""
    head = _read_exactly(fd, _MSG.size)
    if head is None:
        return None
    kind, size = _MSG.unpack(head)
    body = _read_exactly(fd, size)
    return None if body is None else (kind, body)


# ---------------------------------------------------------------------- the child


def child_main(conn: Any, spec: DatasetSpec, params: dict[str, Any], shared: Any, error: Any) -> None:
    """The writer process: frames from the pipe -> :class:`PredictionLogWriter` -> the database."""
    for sig in (signal.SIGINT, signal.SIGTERM):  # the server says when to stop (or its pipe closes)
        signal.signal(sig, signal.SIG_IGN)
    p = ChildParams(**params)
    logging.basicConfig(level=p.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s [prediction-log writer]: %(message)s")
    applied = lower_cpu_priority(p.nice, p.sched_idle)
    from inference_service.store_guard import StoreGuard
    from shared.db import make_engine

    engine = make_engine(p.url, must_exist=True)
    guard = StoreGuard(engine, spec.name)
    guard.remember()  # the file the server opened (it checked it exists): a replaced one is detected
    writer = PredictionLogWriter(engine, max_queue=p.capacity, batch_size=p.batch_size,
                                 flush_interval=p.flush_interval, block_seconds=0.0, spec=spec)
    writer.store_check = guard.file_problem
    writer.start()
    received = 0
    done = threading.Event()

    def mirror() -> None:
        s = writer.stats()
        for name in ("written", "failed", "lost_on_shutdown", "dropped", "batches", "retries", "queued"):
            shared[_I[name]] = int(s[name])
        shared[_I["received"]] = received
        shared[_I["cpu_us"]] = int(s["writer_cpu_seconds"] * 1e6)
        shared[_I["build_cpu_us"]] = int(s["writer_build_cpu_seconds"] * 1e6)
        text = (s["last_error"] or "").encode()[:ERROR_BYTES - 1]
        error.value = text

    def mirror_loop() -> None:
        while not done.wait(0.02):
            mirror()

    threading.Thread(target=mirror_loop, name="prediction-log-mirror", daemon=True).start()
    shared[_I["ready"]] = 1
    logging.getLogger(__name__).info("prediction log writer process %d: priority %s", os.getpid(), applied)
    close_timeout = 30.0
    while True:
        try:
            msg = read_message(conn.fileno())
        except OSError:
            msg = None
        if msg is None:
            logging.getLogger(__name__).warning("the server went away; writing the rows it handed over")
            break
        kind, body = msg
        if kind == _CLOSE:
            close_timeout = struct.unpack("<d", body[:8])[0] if len(body) >= 8 else close_timeout
            break
        for chunk in RequestChunk.parse(spec, body):
            writer.submit_lazy(chunk.n, chunk)
            received += chunk.n
    writer.close(close_timeout if math.isfinite(close_timeout) else 30.0)
    done.set()
    mirror()
    engine.dispose()
