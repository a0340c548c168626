"""``fti features run``: source -> validate -> as-of cutoff -> features -> one new version.

The build itself (everything before the write) is :func:`feature_pipeline.featureset.build`,
shared with ``fti reproduce``, which rebuilds recorded versions without publishing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from feature_pipeline import featureset
from feature_pipeline.config import Settings
from feature_pipeline.extract import extract
from feature_pipeline.featureset import StrictSchemaError, parse_as_of
from feature_pipeline.load import Published, publish, publish_streaming
from shared import feature_table as ft
from shared.db import make_engine
from shared.spec import LoadedSpec

log = logging.getLogger(__name__)

__all__ = ["RunResult", "StrictSchemaError", "build", "parse_as_of", "run"]


@dataclass
class RunResult:
    published: Published
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def info(self) -> ft.VersionInfo:
        return self.published.info


def build(loaded: LoadedSpec, *, as_of: pd.Timestamp | None = None, strict: bool = False
          ) -> tuple[dict[str, Any], list[dict[str, Any]], list[str]]:
    """Everything up to (not including) the write: manifest, rows and warnings.

    Raises before anything is written if the source or any row is invalid.
    """
    t0 = time.perf_counter()
    src = extract(loaded)
    log.info("read %d rows from %s in %.1fs", len(src.frame), src.location, time.perf_counter() - t0)
    built = featureset.build(loaded, src, as_of=as_of, strict=strict)
    return built.manifest, built.rows, built.warnings


def run(loaded: LoadedSpec, settings: Settings, *, as_of: str | None = None, strict: bool = False,
        engine_name: str | None = None, buckets: int | None = None, workers: int | None = None) -> RunResult:
    """Build with the chosen engine (``--engine``, else ``FTI_FEATURE_ENGINE``) and publish atomically."""
    t0 = time.perf_counter()
    which = engine_name or settings.feature_engine
    if which in ("local", "spark"):
        from feature_pipeline.buckets import build_bucketed

        built = build_bucketed(loaded, as_of=parse_as_of(as_of), strict=strict,
                               buckets=buckets or settings.feature_buckets, chunk_rows=settings.feature_chunk_rows,
                               workdir=settings.feature_work_dir, workers=workers or settings.feature_workers,
                               spark_master=settings.spark_master if which == "spark" else None, checksum=False)
        try:
            published = _publish(settings, built.manifest, built.rows(), checksum=built.compute_checksum)
        finally:
            built.cleanup()
        return RunResult(published, built.warnings, time.perf_counter() - t0)
    if which != "memory":
        raise ValueError(f"unknown feature engine {which!r}: memory, local or spark")
    manifest, rows, warnings = build(loaded, as_of=parse_as_of(as_of), strict=strict)
    return RunResult(_publish(settings, manifest, rows), warnings, time.perf_counter() - t0)


def _publish(settings: Settings, manifest: dict[str, Any], rows: Iterable[dict[str, Any]],
             checksum: Callable[[bool], str] | None = None) -> Published:
    """``checksum``: the manifest's checksum is still to be computed (:func:`publish_streaming`)."""
    engine = make_engine(settings.feature_store_url)
    try:
        ft.upgrade(engine)
        if checksum is not None:
            return publish_streaming(engine, manifest, rows, checksum)
        return publish(engine, manifest, rows)
    finally:
        engine.dispose()
