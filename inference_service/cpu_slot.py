"""A few Python-heavy tasks at a time beside the event loop (by default one).

CPython's GIL is shared about evenly among the threads that want it. Under load every worker
thread wants it -- decoding a large body, scoring a batch, encoding its response, building and
inserting prediction-log rows -- and the event loop, which answers health probes and turns
away requests past the concurrency limit, got a quarter of it or less: its callbacks, and the
probes queued behind them, ran several times slower. Measured in ``bench/hardening.py``'s
``all`` scenario (8 MB bodies + Parquet bombs + 24 parallel 1,000-record clients):
``/health/live`` p99 76 ms without a slot, 51 ms with the prediction log switched off, 32 ms
with one slot (docs/benchmarks.md).

So that work holds a :class:`CpuSlot` while it runs: the others wait in their own threads (never
on the loop) and the loop competes with one thread, not five. On a GIL-bound interpreter this
costs little throughput: those tasks could not run Python in parallel anyway.

``patience``: a task that waited this long runs without the slot. The slot must never turn a
stuck holder (e.g. the prediction log waiting for a database lock another process holds) into a
stuck service; each such bypass is counted.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from fastapi.concurrency import run_in_threadpool

T = TypeVar("T")


class CpuSlot:
    def __init__(self, slots: int = 1, patience_seconds: float = 1.0):
        self.slots = slots
        self.patience_seconds = patience_seconds
        self._sem = threading.BoundedSemaphore(slots) if slots > 0 else None
        self._lock = threading.Lock()
        self.bypassed = 0  # tasks that ran without the slot after waiting ``patience_seconds``

    @contextmanager
    def held(self) -> Iterator[None]:
        """Run the block holding a slot (or without one, after ``patience_seconds``; or always when disabled)."""
        if self._sem is None:
            yield
            return
        got = self._sem.acquire(timeout=self.patience_seconds)
        if not got:
            with self._lock:
                self.bypassed += 1
        try:
            yield
        finally:
            if got:
                self._sem.release()

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        with self.held():
            return fn(*args)

    async def in_worker(self, fn: Callable[..., T], *args: Any) -> T:
        """``run_in_threadpool(fn, *args)`` holding a slot while ``fn`` runs."""
        return await run_in_threadpool(self.call, fn, *args)
