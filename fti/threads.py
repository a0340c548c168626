"""BLAS and OpenMP thread limits for every ``fti`` command, decided before numpy loads.

OpenBLAS and OpenMP start one thread per CPU the machine has, not per CPU the process may use, and
on a busy host their spinning workers collapse: a HistGradientBoosting fit of 17.5k rows took 47.6 s
with the default threads against 1.4 s with one, and ``fti predict-batch`` 23.7 s against 0.63 s
(``docs/benchmarks.md``). So each command sets the usual variables -- only those the user has not set
-- to ``FTI_THREADS``: a number, or ``auto`` (the default): half the CPUs the process may use (its
affinity mask and its cgroup CPU quota), at least one. Half, because fti's jobs share their host
with the database, the registry and the API, and because, measured on this project's 2-core
machine under load, two threads were 2-3x slower than one. Child processes inherit the variables.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import MutableMapping
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger(__name__)

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
CGROUP_ROOT = Path("/sys/fs/cgroup")


class ThreadSettingError(ValueError):
    pass


class ThreadSettings(BaseSettings):
    """Read by every command (before numpy loads); documented with the services' settings."""

    model_config = SettingsConfigDict(env_prefix="FTI_", extra="ignore")

    threads: str = Field(default="auto", description="BLAS/OpenMP threads of every command and the processes "
                         "it starts: a number, or auto (half the CPUs the process may use, at least 1); "
                         "OMP_NUM_THREADS, OPENBLAS_NUM_THREADS... set explicitly win")


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs the cgroup quota allows (cgroup v2 ``cpu.max``, else v1 ``cpu.cfs_quota_us``); None: no quota."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max" and int(period) > 0:
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def usable_cpus(root: Path = CGROUP_ROOT) -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_limit(root)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def decide(setting: str | None, cpus: int) -> int:
    value = (setting or "auto").strip().lower()
    if value == "auto":
        return max(1, cpus // 2)
    if not value.isdigit() or int(value) < 1:
        raise ThreadSettingError(f"FTI_THREADS={setting!r}: use a whole number of threads >= 1, or auto")
    return int(value)


def apply(env: MutableMapping[str, str] | None = None, root: Path = CGROUP_ROOT) -> dict[str, str]:
    """Set the thread variables the user left unset; returns the values in force for each."""
    env = os.environ if env is None else env
    cpus = usable_cpus(root)
    threads = decide(env.get("FTI_THREADS"), cpus)
    for name in THREAD_VARS:
        env.setdefault(name, str(threads))
    in_force = {name: env[name] for name in THREAD_VARS}
    if "numpy" in sys.modules and env is os.environ:  # loaded already (an in-process call): limit it now
        from threadpoolctl import threadpool_limits

        omp = in_force["OMP_NUM_THREADS"]
        threadpool_limits(limits=int(omp) if omp.isdigit() and int(omp) > 0 else threads)
    log.debug("threads: %s (usable CPUs %d, FTI_THREADS=%s)", ", ".join(f"{k}={v}" for k, v in in_force.items()),
              cpus, env.get("FTI_THREADS", "auto"))
    return in_force


__all__ = ["THREAD_VARS", "ThreadSettingError", "ThreadSettings", "apply", "cgroup_cpu_limit", "decide", "usable_cpus"]
