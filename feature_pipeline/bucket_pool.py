"""The local engine's entity buckets computed by worker processes, one bucket per task.

Why processes: a bucket's features are pandas, numpy and Python-level JSON encoding, most of it holding
the GIL, so threads would take turns on one core. Each task is the same
:func:`feature_pipeline.buckets.compute_bucket` the single-process engine and the Spark engine run: it
reads its bucket from the work folder and writes its rendered rows back, so the output files -- and the
merged rows and checksum -- do not depend on how many workers ran them or in what order they finished
(``tests/integration/test_bucketed_build.py``).

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
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np

from feature_pipeline.buckets import BucketDone, compute_bucket, log_bucket_progress
from shared.spec import LoadedSpec

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1


def default_workers() -> int:
    """The CPUs this process may run on (its affinity, which a container's cpuset narrows)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def compute_in_workers(folder: Path, buckets: int, loaded: LoadedSpec, dropped: np.ndarray, target: int,
                       workers: int) -> list[BucketDone]:
    """Every entity bucket's features, on ``workers`` processes; the results in bucket order."""
    drop_path = folder / "dropped.npy"
    np.save(drop_path, dropped)
    workers = max(1, min(workers, buckets))
    log.info("computing %d bucket(s) on %d worker process(es)", buckets, workers)
    done: dict[int, BucketDone] = {}
    rows = 0
    t0 = time.perf_counter()
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_die_with_parent, initargs=(os.getpid(),))
    try:
        pending: set[Future[BucketDone]] = {pool.submit(_task, folder, buckets, b, loaded, drop_path)
                                            for b in range(buckets)}
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                d = fut.result()  # a worker's error is the build's error
                done[d.bucket] = d
                rows += d.rows
                if d.rows:
                    log_bucket_progress(len(done), buckets, d.rows, rows, target, time.perf_counter() - t0)
    except BrokenProcessPool as exc:
        raise RuntimeError(f"a feature worker process died ({exc}); if the machine ran out of memory, run with "
                           "more buckets (--buckets) or fewer workers (--workers / FTI_FEATURE_WORKERS)") from exc
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        with contextlib.suppress(FileNotFoundError):
            drop_path.unlink()
    return [done[b] for b in range(buckets)]


def _task(folder: Path, buckets: int, b: int, loaded: LoadedSpec, drop_path: Path) -> BucketDone:
    return compute_bucket(folder, buckets, b, loaded, np.load(drop_path, mmap_mode="r"))


def _die_with_parent(parent: int) -> None:
    """Runs first in each worker: the kernel sends it SIGKILL when the job's process ends."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the job died before the request above: nobody to work for
        os._exit(1)
