"""The Spark engine: the local engine's step 3 -- features per entity bucket -- as Spark tasks.

Why this shape: the feature values must be the in-memory build's bit for bit, and Spark's own window
functions are not (their float sums differ in the last bits in about half the rows; see
``docs/features.md``). So Spark runs fti's shared transformer, not a re-implementation: the source is
partitioned by entity hash exactly as the local engine does (:mod:`feature_pipeline.buckets`), and
``groupBy(bucket).applyInPandas`` runs :func:`feature_pipeline.buckets.compute_bucket` once per bucket, one
bucket per partition, as many at once as the master has cores.
Each task reads its bucket from the build's work folder and writes its rendered rows back there; only
(bucket, rows, unlabeled) travel through Spark. The driver then merges, checksums and publishes the
outputs as the local engine does -- so the checksum is the local engine's for the same source.

What that asks of a cluster: executors must see the work folder (``FTI_FEATURE_WORK_DIR`` on a shared
filesystem) and have fti installed with the same versions (``uv sync --extra spark``). Partitioning and
the publish stay on the driver (one reader of the source, one writing transaction); Spark spreads the
compute, which is the larger part (``docs/benchmarks.md``).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from feature_pipeline.buckets import BucketDone, compute_bucket
from shared.spec import LoadedSpec

log = logging.getLogger(__name__)

_SCHEMA = "bucket long, output string, rows long, unlabeled long"


class SparkUnavailable(RuntimeError):
    """pyspark or Java is missing, or the master cannot be reached; the message says what to install."""


def session(master: str) -> Any:
    """A Spark session on ``master`` (``local[2]``, ``spark://host:7077``...), quiet, one BLAS thread a task."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise SparkUnavailable("--engine spark needs pyspark: install fti's spark extra (`uv sync --extra spark` "
                               "or `pip install 'fti[spark]'`) and a Java 17 runtime; or use --engine local") from None
    threads = {k: os.environ.get(k, "1") for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    # pyspark 4.3 warns that pandas >= 3 is not fully supported; fti passes it only bucket numbers and counts
    # (the rows stay in fti's own files), and its tests compare every row with the in-memory build.
    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)
    builder = (SparkSession.builder.master(master).appName("fti-features")
               .config("spark.ui.enabled", "false")
               .config("spark.ui.showConsoleProgress", "false")
               .config("spark.sql.session.timeZone", "UTC")
               .config("spark.python.worker.reuse", "true")
               .config("spark.sql.adaptive.coalescePartitions.enabled", "false")
               .config("spark.sql.execution.pyspark.udf.faulthandler.enabled", "true"))
    for k, v in threads.items():
        builder = builder.config(f"spark.executorEnv.{k}", v)
    if master.startswith("local") and not os.environ.get("PYSPARK_PYTHON"):
        # Spark starts its Python workers with `python3` from PATH (pyspark reads only this variable); here
        # they must be this interpreter, with its fti, pandas and scikit-learn. A cluster sets its own.
        os.environ["PYSPARK_PYTHON"] = sys.executable
    try:
        spark = builder.getOrCreate()
    except Exception as exc:  # noqa: BLE001 - the JVM did not start: say what to check
        raise SparkUnavailable(f"could not start Spark on {master!r} ({type(exc).__name__}: {str(exc)[:300]}): "
                               "check that Java 17 is installed (JAVA_HOME or java on PATH) and the master "
                               "(FTI_SPARK_MASTER) is reachable") from None
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def compute_buckets(folder: Path, buckets: int, loaded: LoadedSpec, dropped: np.ndarray, master: str,
                    target: int) -> list[BucketDone]:
    """Every entity bucket computed by a Spark task on ``master``; progress is logged as buckets finish."""
    import pandas as pd

    spark = session(master)
    t0 = time.perf_counter()
    log.info("spark %s (Spark %s): %d bucket(s)", master, spark.version, buckets)
    folder_text = str(folder)

    def task(group: pd.DataFrame) -> pd.DataFrame:  # runs in a Spark Python worker
        out = []
        for b in group["bucket"].tolist():
            d = compute_bucket(Path(folder_text), buckets, int(b), loaded, dropped)
            out.append((d.bucket, "" if d.output is None else str(d.output), d.rows, d.unlabeled))
        return pd.DataFrame(out, columns=["bucket", "output", "rows", "unlabeled"])

    # One bucket per partition (range partitioning of distinct ids), so local[2] runs two buckets at once;
    # collect() runs every partition in parallel (toLocalIterator would run them one after another).
    frame = (spark.range(buckets).withColumnRenamed("id", "bucket").repartitionByRange(buckets, "bucket")
             .groupBy("bucket").applyInPandas(task, schema=_SCHEMA))
    rows_out: list[Any] = []
    failed: list[BaseException] = []

    def collect() -> None:
        try:
            rows_out.extend(frame.collect())
        except BaseException as exc:  # noqa: BLE001 - raised below, in the caller's thread
            failed.append(exc)

    worker = threading.Thread(target=collect, name="fti-spark-collect", daemon=True)
    worker.start()
    tracker = spark.sparkContext.statusTracker()
    shown = -1
    while worker.is_alive():
        worker.join(2.0)
        stages = [tracker.getStageInfo(i) for i in tracker.getActiveStageIds()]
        finished = max((st.numCompletedTasks for st in stages if st is not None and st.numTasks == buckets),
                       default=None)
        if finished is not None and finished != shown and finished > 0:
            shown = finished
            elapsed = time.perf_counter() - t0
            log.info("spark: %d/%d bucket task(s) done (%.0fs, ETA %.0fs)", finished, buckets, elapsed,
                     elapsed / finished * (buckets - finished))
    if failed:
        raise failed[0]
    done = [BucketDone(int(r["bucket"]), Path(r["output"]) if r["output"] else None, int(r["rows"]),
                       int(r["unlabeled"])) for r in sorted(rows_out, key=lambda r: int(r["bucket"]))]
    for n, d in enumerate(done, 1):  # all finished together: counts only, no rate or ETA per bucket
        log.info("bucket %d/%d: %d rows", n, buckets, d.rows)
    rows, elapsed = sum(d.rows for d in done), time.perf_counter() - t0
    log.info("spark: %d of %d rows computed in %.0fs (%.0f rows/s)", rows, target, elapsed, rows / max(elapsed, 1e-9))
    if sorted(d.bucket for d in done) != list(range(buckets)):
        raise RuntimeError(f"Spark returned buckets {sorted(d.bucket for d in done)}, expected 0..{buckets - 1}")
    return sorted(done, key=lambda d: d.bucket)
