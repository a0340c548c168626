"""The local engine's worker processes: source chunks partitioned, record buckets cut off, then entity buckets
computed, one per task.

Why processes: normalising a chunk and computing a bucket's features are pandas, numpy and Python-level
JSON encoding, most of it holding the GIL, so threads would take turns on one core. Each task is the
function the single-process engine runs (:func:`feature_pipeline.buckets.partition_chunk`,
:func:`feature_pipeline.buckets.compute_bucket`, the latter also what the Spark engine runs), and the
results do not depend on which worker ran what or when:

* a worker partitions into files of its own (``e-00003-<pid>.pkl``), and a bucket is read back from all
  of them sorted by source row;
* the parent takes the chunks' results in source order, so problems, samples and the cutoff are
  gathered as one process would;
* a bucket's output is its own file, merged by record id at the end;
* each record bucket's cutoff and edits (step 2) come back in bucket order, gathered as one process would.

``tests/integration/test_bucketed_build.py`` checks the rows and checksum for 1, 2 and 3 workers.

Why ``spawn``: a worker is a fresh interpreter, never a fork of the job, which may hold a database
connection or threads. Each worker asks the kernel to kill it when the job dies (``PR_SET_PDEATHSIG``),
so a job killed mid-build leaves no worker computing for nobody. The dropped source rows go to the
workers as one ``.npy`` file in the work folder, not pickled into every task.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from feature_pipeline.buckets import (
    BucketDone,
    ChunkDone,
    CutoffDone,
    compute_bucket,
    cutoff_bucket,
    log_bucket_progress,
    outputs_checksum,
    partition_chunk,
)
from shared.spec import LoadedSpec

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1


def default_workers() -> int:
    """The CPUs this process may run on (its affinity, which a container's cpuset narrows)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


class WorkerPool:
    """``workers`` spawned processes for one build: ``start()``, ``partition()``, ``compute()``, ``close()``."""

    def __init__(self, workers: int):
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def start(self, purpose: str = "") -> WorkerPool:
        self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_die_with_parent, initargs=(os.getpid(),))
        log.info("%d worker process(es)%s", self.workers, f" {purpose}" if purpose else "")
        return self

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _submit(self, fn: Any, *args: Any) -> Future[Any]:
        assert self._pool is not None, "start() the pool first"
        return self._pool.submit(fn, *args)

    def partition(self, folder: Path, buckets: int, chunks: Iterable[tuple[int, pd.DataFrame]], spec: Any
                  ) -> Iterator[ChunkDone]:
        """Each chunk partitioned by a worker, the results in source order; one chunk per worker, and one
        more, is read ahead, so memory holds a few chunks whatever the source's size."""
        ahead: deque[Future[ChunkDone]] = deque()
        with _pool_errors():
            for offset, chunk in chunks:
                ahead.append(self._submit(_partition_task, folder, buckets, offset, chunk, spec))
                while len(ahead) > self.workers:
                    yield ahead.popleft().result()
            while ahead:
                yield ahead.popleft().result()

    def cutoffs(self, folder: Path, buckets: int, spec: Any, as_of: pd.Timestamp) -> Iterator[CutoffDone | None]:
        """Each record bucket's cutoff and edits (step 2), the results in bucket order."""
        with _pool_errors():
            futures = [self._submit(cutoff_bucket, folder, buckets, b, spec, as_of) for b in range(buckets)]
            for fut in futures:
                yield fut.result()

    def compute(self, folder: Path, buckets: int, loaded: LoadedSpec, dropped: np.ndarray, target: int
                ) -> list[BucketDone]:
        """Every entity bucket's features; the results in bucket order."""
        drop_path = folder / "dropped.npy"
        np.save(drop_path, dropped)
        log.info("computing %d bucket(s) on %d worker process(es)", buckets, min(self.workers, buckets))
        done: dict[int, BucketDone] = {}
        rows = 0
        t0 = time.perf_counter()
        try:
            with _pool_errors():
                pending: set[Future[BucketDone]] = {self._submit(_compute_task, folder, buckets, b, loaded, drop_path)
                                                    for b in range(buckets)}
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        d = fut.result()  # a worker's error is the build's error
                        done[d.bucket] = d
                        rows += d.rows
                        if d.rows:
                            log_bucket_progress(len(done), buckets, d.rows, rows, target, time.perf_counter() - t0)
        finally:
            with contextlib.suppress(FileNotFoundError):
                drop_path.unlink()
        return [done[b] for b in range(buckets)]


def checksum_apart(outputs: list[Path]) -> str:
    """The checksum pass over a build's outputs in a worker process of its own (killed with the job)."""
    pool = WorkerPool(1).start("for the checksum, computed while the rows are written")
    try:
        with _pool_errors():
            return str(pool._submit(outputs_checksum, outputs).result())
    finally:
        pool.close()


@contextlib.contextmanager
def _pool_errors() -> Iterator[None]:
    try:
        yield
    except BrokenProcessPool as exc:
        raise RuntimeError(f"a feature worker process died ({exc}); if the machine ran out of memory, run with "
                           "more buckets (--buckets) or fewer workers (--workers / FTI_FEATURE_WORKERS)") from exc


def _partition_task(folder: Path, buckets: int, offset: int, chunk: pd.DataFrame, spec: Any) -> ChunkDone:
    return partition_chunk(folder, buckets, offset, chunk, spec, suffix=f"-{os.getpid()}")


def _compute_task(folder: Path, buckets: int, b: int, loaded: LoadedSpec, drop_path: Path) -> BucketDone:
    return compute_bucket(folder, buckets, b, loaded, np.load(drop_path, mmap_mode="r"))


def _die_with_parent(parent: int) -> None:
    """Runs first in each worker: the kernel sends it SIGKILL when the job's process ends."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the job died before the request above: nobody to work for
        os._exit(1)
