"""Feature-job settings (environment only; see .env.example)."""

from pathlib import Path
from typing import Literal

from pydantic import Field

from shared.settings import CommonSettings


class Settings(CommonSettings):
    """``FTI_DATABASE_URL`` and ``FTI_DATA_DIR``; the source location lives in the spec."""

    feature_engine: Literal["memory", "local", "spark"] = Field(
        default="memory", description="FTI_FEATURE_ENGINE: how `fti features run` builds a version: memory (the "
        "whole source at once), local (bounded memory: entity-hash buckets on disk, the same rows and "
        "checksum; feature_pipeline/buckets.py) or spark (the local engine's buckets computed as Spark tasks, "
        "the same checksum; feature_pipeline/spark_engine.py; needs the spark extra and Java 17)")
    spark_master: str = Field(default="local[*]", description="FTI_SPARK_MASTER: the Spark engine's master "
                              "(local[*]: this machine's cores; spark://host:7077 for a cluster, whose executors "
                              "must see FTI_FEATURE_WORK_DIR and have fti installed)")
    feature_buckets: int | None = Field(default=None, ge=1, le=100_000, description="FTI_FEATURE_BUCKETS: entity "
                                        "buckets of the local engine (default: from the source's size, about 250,000 rows in the buckets its "
                                        "workers compute at once)")
    feature_workers: int | None = Field(default=None, ge=1, le=1024, description="FTI_FEATURE_WORKERS: processes "
                                        "computing the local engine's buckets (default: the CPUs the job may use)")
    feature_chunk_rows: int = Field(default=100_000, ge=1, le=10_000_000, description="FTI_FEATURE_CHUNK_ROWS: "
                                    "source rows the local engine reads at a time")
    feature_work_dir: Path | None = Field(default=None, description="FTI_FEATURE_WORK_DIR: where the local engine "
                                          "keeps its buckets while it runs (default: the system's temporary "
                                          "folder; removed at the end)")
