"""Background work (the monitor, the prediction log's writer process) takes the CPU serving leaves.

A monitor pass is CPU-bound for seconds to minutes. Sharing a host with the inference service, it
ran at niceness 10 and still moved serving's p99 at c=8 from 20 ms to 37 ms on 2 cores
(``bench/monitoring.py``): CFS gives a nice-10 process about a tenth of a CPU's weight whenever
both want the CPU, and that tenth lands in the middle of requests. Linux's ``SCHED_IDLE`` policy
gives it a CPU only when nothing else wants one (a weight of 3 against a nice-0 task's 1024), so
the monitor's work fills the gaps between requests instead. Both settings survive ``fork`` and
``exec``, so the pass's worker processes run at the same priority.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def lower_cpu_priority(nice: int, idle: bool) -> str:
    """Lower this process's CPU priority; returns what was applied (for the log)."""
    applied = []
    if nice > 0:
        try:
            os.nice(nice)
            applied.append(f"nice +{nice}")
        except OSError as exc:  # pragma: no cover - lowering one's priority is always allowed on Linux
            log.warning("could not lower this process's niceness: %s", exc)
    if idle:
        if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
            try:
                os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
                applied.append("SCHED_IDLE")
            except OSError as exc:  # pragma: no cover - allowed for any process on Linux
                log.warning("could not switch this process to SCHED_IDLE: %s", exc)
        else:  # pragma: no cover - not Linux
            log.info("SCHED_IDLE is not available on this platform; the niceness alone applies")
    return ", ".join(applied) or "unchanged"


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask: a container's cpuset, ``taskset``)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


__all__ = ["lower_cpu_priority", "usable_cpus"]
