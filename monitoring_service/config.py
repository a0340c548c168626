"""Monitor settings (environment only; windows, thresholds and the retraining policy live in the spec)."""

from pathlib import Path

from pydantic import Field

from shared.settings import MlflowSettings


class Settings(MlflowSettings):
    reports_dir: Path | None = Field(default=None, description="FTI_REPORTS_DIR: where `fti monitor` writes each "
                                     "window's JSON and HTML report; default <FTI_DATA_DIR>/reports")
    monitor_interval_seconds: float = Field(default=60.0, gt=0, le=86_400, description="FTI_MONITOR_INTERVAL_"
                                            "SECONDS: how often the monitor service reads the prediction log")

    monitor_nice: int = Field(default=10, ge=0, le=19, description="FTI_MONITOR_NICE: the monitor service lowers "
                              "its CPU priority by this much, so serving on the same host keeps the CPU it needs")
    monitor_sched_idle: bool = Field(default=True, description="FTI_MONITOR_SCHED_IDLE: the monitor runs under "
                                     "Linux's SCHED_IDLE policy, getting a CPU only when nothing else wants one "
                                     "(shared/cpu_priority.py)")
    monitor_jobs: int = Field(default=0, ge=0, le=64, description="FTI_MONITOR_JOBS: processes that compute a "
                              "pass's windows; 0: one per usable CPU, at most 4")
    monitor_host: str = Field(default="127.0.0.1", description="FTI_MONITOR_HOST: where `fti monitor serve` listens")
    monitor_port: int = Field(default=8001, ge=1, le=65535, description="FTI_MONITOR_PORT")

    @property
    def jobs(self) -> int:
        from shared.cpu_priority import usable_cpus

        return self.monitor_jobs or min(4, usable_cpus())

    @property
    def reports_path(self) -> Path:
        return self.reports_dir or self.data_dir / "reports"
