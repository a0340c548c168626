"""Monitor settings (environment only; windows, thresholds and the retraining policy live in the spec)."""

from pathlib import Path

from pydantic import Field

from shared.settings import MlflowSettings


class Settings(MlflowSettings):
    reports_dir: Path | None = Field(default=None, description="FTI_REPORTS_DIR: where `fti monitor` writes each "
                                     "window's JSON and HTML report; default <FTI_DATA_DIR>/reports")
    monitor_interval_seconds: float = Field(default=60.0, gt=0, le=86_400, description="FTI_MONITOR_INTERVAL_"
                                            "SECONDS: how often the monitor service reads the prediction log")

    @property
    def reports_path(self) -> Path:
        return self.reports_dir or self.data_dir / "reports"
