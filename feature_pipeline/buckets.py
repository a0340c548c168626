"""The local engine: the feature build in bounded memory, with the in-memory build's exact output.

Why: the in-memory build (:func:`feature_pipeline.featureset.build`) holds the whole source, its
normalised frame and every feature row at once (~2-2.5 KB a row: 1.78M rows needed >= 3.5 GB).
Here memory is bounded by the largest bucket, not by the source:

1. **Partition.** The source is read in chunks of ``chunk_rows`` (CSV and Parquet stream; a SQL
   source is read whole, as the in-memory build does, to hash it). Each chunk is normalised with the
   same code (:func:`shared.raw.normalize_frame`) and split twice to disk: by a stable hash of the
   entity key into ``buckets`` *entity buckets* (all of an entity's events land in one, so its
   history is complete there), and by a hash of the record id into *record buckets* (every edit
   of a record in one). Problems are gathered from every chunk and raised together, before anything
   else runs, with source row numbers.
2. **Cutoff and edits.** Per record bucket: the as-of cutoff (default: the latest event or ingestion
   time of the whole source, as in memory), then one row per record id -- the latest edit known at
   the cutoff -- or the duplicate-key problem. What is dropped is a set of source row numbers.
3. **Features.** Per entity bucket: its rows minus the dropped ones, sorted by record id, through
   :func:`shared.features.compute_batch` -- the shared transformers -- and rendered to canonical
   payloads; written back to disk sorted by record id, in blocks.
4. **Merge.** The buckets' outputs merged by record id (Python's string order, as
   :func:`shared.feature_table.checksum_lines` sorts) give the checksum (here, or while the publish
   writes them: ``checksum=False``) and stream into the publishing transaction
   (:func:`feature_pipeline.load.publish_streaming`).

Steps 1 and 3 run on ``workers`` processes when there is more than one bucket
(:mod:`feature_pipeline.bucket_pool`). Every row's features depend only on its own values and its
entity's events, both whole inside one bucket, so the rows -- and the checksum -- are the in-memory
build's for any number of buckets and workers (``tests/integration/test_bucketed_build.py``). The
partition files are pickles this build (the job or its workers) wrote into a private temporary folder
(mode 0700), removed at the end; a folder left by a killed run is removed by the next run.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import os
import pickle
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from feature_pipeline.extract import SourceError, file_location, read_csv_chunks, read_parquet_chunks, source_sha256
from feature_pipeline.featureset import _problem, ignored_columns, make_manifest, rows_before_cutoff
from shared import feature_table as ft
from shared.features import compute_batch
from shared.raw import MAX_ROWS_LISTED, Problem, Problems, RawDataError, check_unique, normalize_frame
from shared.spec import LoadedSpec

log = logging.getLogger(__name__)

DEFAULT_CHUNK_ROWS = 100_000
ROWS_PER_BUCKET = 250_000  # ``buckets="auto"``: about this many source rows per entity bucket
BLOCK_ROWS = 2_000  # rows per pickled block of a bucket's output: the merge holds one block per bucket
_PREFIX = "fti-buckets-"


@dataclass
class BucketedBuild:
    """A bucketed build: the manifest, and the rows (sorted by record id) read back from disk on demand."""

    manifest: dict[str, Any]
    warnings: list[str]
    stats: dict[str, Any]
    folder: Path
    outputs: list[Path] = field(default_factory=list)

    @property
    def checksum(self) -> str:
        """The checksum (computed now if the build left it for later: ``build_bucketed(checksum=False)``)."""
        if not self.manifest["checksum"]:
            self.manifest["checksum"] = self.compute_checksum()
        return str(self.manifest["checksum"])

    def compute_checksum(self, apart: bool = False) -> str:
        """The checksum over the merged, record-id-ordered rows: one pass over the buckets' outputs.
        ``apart``: in a worker process of its own, so the pass does not take turns on this process's
        interpreter lock with the ``COPY`` that writes the rows meanwhile
        (:func:`feature_pipeline.load.publish_streaming`)."""
        if apart:
            from feature_pipeline.bucket_pool import checksum_apart

            return checksum_apart(self.outputs)
        return outputs_checksum(self.outputs)

    def rows(self) -> Iterator[dict[str, Any]]:
        """Every feature row, in record-id order, as :func:`feature_pipeline.load.publish` takes them."""
        for rid, ent, _iso, when, payload in _merged(self.outputs):
            yield {"record_id": rid, "entity_key": ent, "event_time": when, "payload": payload}

    def cleanup(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def outputs_checksum(outputs: list[Path]) -> str:
    """:meth:`BucketedBuild.compute_checksum` of these bucket outputs (here)."""
    h = ft.checksum_hasher()
    for rid, ent, iso, _when, payload in _merged(outputs):
        ft.checksum_update(h, rid, ent, iso, payload)
    return str(h.hexdigest())


def auto_buckets(size_bytes: int, *, bytes_per_row: int = 120, workers: int = 1) -> int:
    """Entity buckets for a source of ``size_bytes`` (CSV: ~120 bytes a demo row): ~250k rows in the buckets
    being computed at once, so ``250k / workers`` rows a bucket (memory: the job's peak is its workers'
    buckets together), and a multiple of ``workers`` (the last round keeps every worker busy)."""
    rows = max(size_bytes // bytes_per_row, 1)
    per_bucket = max(ROWS_PER_BUCKET // max(workers, 1), 1)
    buckets = max(1, -(-rows // per_bucket))
    return buckets if buckets == 1 or workers <= 1 else -(-buckets // workers) * workers


def build_bucketed(loaded: LoadedSpec, *, as_of: pd.Timestamp | None = None, strict: bool = False,
                   buckets: int | None = None, chunk_rows: int = DEFAULT_CHUNK_ROWS, workdir: Path | None = None,
                   location: Path | None = None, spark_master: str | None = None,
                   workers: int | None = None, checksum: bool = True) -> BucketedBuild:
    """The local engine's build (see the module docstring). ``buckets=None``: from the source's size and, for
    the local engine, the workers (:func:`auto_buckets`).
    ``workers``: processes computing step 3 (``None``: the CPUs this process may use; 1: here, in this
    process; :mod:`feature_pipeline.bucket_pool`). ``spark_master``: step 3 runs as Spark tasks, one group
    per entity bucket (the Spark engine). ``checksum=False``: the manifest's checksum is left empty, for
    the publish to compute while it writes (:meth:`BucketedBuild.compute_checksum`,
    :func:`feature_pipeline.load.publish_streaming`).

    Raises (:class:`RawDataError`, :class:`SourceError`, :class:`StrictSchemaError`) before anything is
    written to the store; the caller publishes ``rows()`` and then calls ``cleanup()``."""
    spec = loaded.spec
    src = loaded.spec.source
    path = location if location is not None else file_location(loaded)
    if workers is None:
        from feature_pipeline.bucket_pool import default_workers

        workers = default_workers()
    if workers < 1:
        raise ValueError("--workers must be at least 1")
    if buckets is None:
        buckets = auto_buckets(path.stat().st_size, workers=1 if spark_master else workers) \
            if path is not None and path.is_file() else 1
    if buckets < 1:
        raise ValueError("--buckets must be at least 1")
    folder = _work_folder(workdir)
    pool = None
    try:
        t0 = time.perf_counter()
        chunks, where, sha, row_base, row_label = _chunks(loaded, path, chunk_rows)
        if workers > 1 and buckets > 1 and not spark_master:  # one bucket: not worth two interpreters' start
            from feature_pipeline.bucket_pool import WorkerPool

            pool = WorkerPool(workers).start()
        problems: dict[tuple[str, str, str | None], list[Any]] = {}
        samples: list[pd.DataFrame] = []  # a few rows of each problem: to list the problems in the in-memory order
        extra: list[str] = []
        source_rows = 0
        stamp_col = src.ingestion_time or spec.event_time
        latest: pd.Timestamp | None = None
        parts = pool.partition(folder, buckets, chunks, spec) if pool is not None \
            else (partition_chunk(folder, buckets, offset, chunk, spec) for offset, chunk in chunks)
        for done in parts:  # in source order, however many processes partition
            extra = extra or done.extra
            source_rows += done.rows
            _gather(problems, done.found, done.offset)
            if done.found:
                samples.extend(s for s in done.samples if len(samples) < 1000)
                continue
            if stamp_col:
                top = done.latest
                latest = top if latest is None or (pd.notna(top) and top > latest) else latest
            rate = source_rows / max(time.perf_counter() - t0, 1e-9)
            log.info("partitioned %d rows into %d bucket(s) (%.0f rows/s)", source_rows, buckets, rate)
        if source_rows == 0 and not problems:
            _gather(problems, _empty_problems(), 0)
        warnings = ignored_columns(extra, strict=strict)
        if problems:
            raise RawDataError(_merged_problems(problems, _order(samples, spec)), row_label=row_label,
                               row_base=row_base, context=f"source {where}")
        if as_of is None:
            as_of = latest if stamp_col else pd.Timestamp.now(tz="UTC").floor("s")
        assert as_of is not None

        # 2. the cutoff and one row per record id, per record bucket
        dropped: set[int] = set()
        stats: dict[str, Any] = {"source_rows": source_rows, "after_cutoff": 0, "late_arrivals": 0, "superseded": 0,
                                 "ingestion_time": src.ingestion_time}
        dup: dict[tuple[str, str, str | None], list[Any]] = {}
        kept = 0
        cuts = pool.cutoffs(folder, buckets, spec, as_of) if pool is not None \
            else (cutoff_bucket(folder, buckets, b, spec, as_of) for b in range(buckets))
        for cut in cuts:  # in bucket order, however many processes compute them
            if cut is None:
                continue
            stats["after_cutoff"] += cut.after_cutoff
            stats["late_arrivals"] += cut.late_arrivals
            stats["superseded"] += cut.superseded
            dropped.update(cut.dropped.tolist())
            _gather(dup, cut.found, 0, rows=cut.rows)
            kept += cut.kept
        if dup:
            raise RawDataError(_merged_problems(dup), row_label=row_label, row_base=row_base,
                               context=f"source {where}")
        if kept == 0:
            raise RawDataError([_problem(f"no rows as of {ft.iso_utc(as_of)}")], context=f"source {where}")
        if stats["superseded"]:
            log.info("%d superseded row(s) replaced by later edits", stats["superseded"])

        # 3. features, per entity bucket: here, or as Spark tasks over the same buckets
        target = kept - stats["superseded"]
        drop = np.sort(np.fromiter(dropped, dtype=np.int64, count=len(dropped)))
        if spark_master:
            from feature_pipeline.spark_engine import compute_buckets

            done_buckets = compute_buckets(folder, buckets, loaded, drop, spark_master, target)
            engine: dict[str, Any] = {"name": "spark", "buckets": buckets, "master": spark_master}
        elif pool is not None:
            done_buckets = pool.compute(folder, buckets, loaded, drop, target)
            engine = {"name": "local", "buckets": buckets}
        else:
            done_buckets = _compute_here(folder, buckets, loaded, drop, target)
            engine = {"name": "local", "buckets": buckets}
        outputs = [d.output for d in done_buckets if d.output is not None]
        unlabeled = sum(d.unlabeled for d in done_buckets)

        # 4. the checksum over the merged, record-id-ordered rows (now, or while the publish writes them)
        n = sum(d.rows for d in done_buckets)
        manifest = make_manifest(loaded, checksum="", row_count=n, source_format=src.format,
                                 source_location=where, source_sha256=sha, as_of=as_of,
                                 source_rows=source_rows, extra=extra, warnings=warnings, unlabeled=unlabeled,
                                 engine=engine)
        built = BucketedBuild(manifest, warnings, stats, folder, outputs)
        if checksum:
            manifest["checksum"] = built.compute_checksum()
        log.info("built %d feature rows in %d bucket(s) in %.1fs", n, buckets, time.perf_counter() - t0)
        return built
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        if pool is not None:
            pool.close()


@dataclass(frozen=True)
class ChunkDone:
    """One source chunk partitioned: its rows, its problems (then nothing was written) with a few of their
    source rows, the source columns the spec does not declare, and its latest event or ingestion time."""

    offset: int
    rows: int
    found: Problems
    samples: list[pd.DataFrame]
    extra: list[str]
    latest: Any


def partition_chunk(folder: Path, buckets: int, offset: int, chunk: pd.DataFrame, spec: Any, suffix: str = ""
                    ) -> ChunkDone:
    """Step 1 for the chunk of source rows starting at ``offset``: normalised, then appended to the entity
    and record buckets' files (``suffix``: this process's own files, when several processes partition)."""
    frame, found, extra = normalize_frame(chunk, spec)
    if found:
        return ChunkDone(offset, len(chunk), found, [chunk.iloc[list(p.rows)] for p in found.items if p.rows],
                         extra, None)
    frame["__row"] = np.arange(offset, offset + len(frame), dtype=np.int64)
    stamp_col = spec.source.ingestion_time or spec.event_time
    latest = frame[stamp_col].max() if stamp_col else None
    _Partition(folder, buckets).write(frame, spec, suffix)
    return ChunkDone(offset, len(chunk), found, [], extra, latest)


@dataclass(frozen=True)
class CutoffDone:
    """Step 2 for one record bucket: its counts, the source rows it drops (after the cutoff, or superseded
    by a later edit), and its duplicate-key problems (positions in ``rows``, its kept rows' source rows)."""

    after_cutoff: int
    late_arrivals: int
    superseded: int
    kept: int
    dropped: np.ndarray
    found: Problems
    rows: np.ndarray


def cutoff_bucket(folder: Path, buckets: int, b: int, spec: Any, as_of: pd.Timestamp) -> CutoffDone | None:
    """Record bucket ``b`` (every edit of its record ids): the as-of cutoff, then one row per record id --
    the latest edit known at the cutoff -- or the duplicate-key problem. None: the bucket is empty."""
    keys = _Partition(folder, buckets).read("r", b)
    if keys is None:
        return None
    src = spec.source
    keep, late = rows_before_cutoff(keys, spec, as_of)
    dropped = [keys["__row"].to_numpy()[~keep.to_numpy(dtype=bool)]]
    keys = keys[keep]
    found = Problems()
    superseded = 0
    if src.ingestion_time:
        check_unique(keys, [spec.record_id, src.ingestion_time], found,
                     f"({spec.record_id}, {src.ingestion_time}) pairs")
        ordered = keys.sort_values([spec.record_id, src.ingestion_time], kind="stable")
        older = ordered.duplicated(subset=[spec.record_id], keep="last")
        superseded = int(older.sum())
        dropped.append(ordered["__row"].to_numpy()[older.to_numpy()])
    else:
        check_unique(keys, [spec.record_id], found, f"{spec.record_id} values")
    return CutoffDone(int((~keep).sum()), int(late.sum()), superseded, int(keep.sum()),
                      np.concatenate(dropped).astype(np.int64), found, keys["__row"].to_numpy())


@dataclass(frozen=True)
class BucketDone:
    """One entity bucket's features: its output file (None: no row left) and counts."""

    bucket: int
    output: Path | None
    rows: int
    unlabeled: int


def compute_bucket(folder: Path, buckets: int, b: int, loaded: LoadedSpec, dropped: np.ndarray) -> BucketDone:
    """Entity bucket ``b`` of the partition in ``folder``: its rows minus the ``dropped`` source rows, sorted
    by record id, through the shared transformers, rendered and written sorted by record id. The same
    function runs here (local engine) and in a Spark task (:mod:`feature_pipeline.spark_engine`)."""
    spec = loaded.spec
    part = _Partition(folder, buckets)
    frame = part.read("e", b)
    if frame is None:
        return BucketDone(b, None, 0, 0)
    frame = frame[~frame["__row"].isin(dropped)]
    frame = frame.drop(columns="__row").sort_values(spec.record_id, kind="stable").reset_index(drop=True)
    if frame.empty:
        return BucketDone(b, None, 0, 0)
    features = compute_batch(frame, spec)
    out = _write_output(folder / f"out-{b:05d}.pkl", features, spec)
    part.remove("e", b)
    return BucketDone(b, out, len(features), int(features[spec.label].isna().sum()))


def _compute_here(folder: Path, buckets: int, loaded: LoadedSpec, dropped: np.ndarray, target: int
                  ) -> list[BucketDone]:
    done: list[BucketDone] = []
    rows = 0
    t1 = time.perf_counter()
    for b in range(buckets):
        d = compute_bucket(folder, buckets, b, loaded, dropped)
        done.append(d)
        rows += d.rows
        if d.rows:
            log_bucket_progress(b + 1, buckets, d.rows, rows, target, time.perf_counter() - t1)
    return done


def log_bucket_progress(n: int, buckets: int, rows: int, done: int, target: int, elapsed: float) -> None:
    """One line per finished bucket: its rows, the rows done so far, the rate and the time left."""
    rate = done / max(elapsed, 1e-9)
    log.info("bucket %d/%d: %d rows; %d of %d rows computed (%.0f rows/s, ETA %.0fs)", n, buckets, rows, done,
             target, rate, max(target - done, 0) / max(rate, 1e-9))


# ---------------------------------------------------------------------- the source, in chunks


def _chunks(loaded: LoadedSpec, path: Path | None, chunk_rows: int
            ) -> tuple[Iterable[tuple[int, pd.DataFrame]], str, str, int, str]:
    """(offset, chunk) pairs, where, sha256, row base, row label."""
    fmt = loaded.spec.source.format
    if fmt in ("csv", "parquet"):
        assert path is not None
        if not path.is_file():
            raise SourceError(f"source file not found: {path} (spec {loaded.path}: source.path)")
        sha = source_sha256(path)
        if fmt == "csv":
            return read_csv_chunks(path, chunk_rows), str(path), sha, 2, "line"
        return read_parquet_chunks(path, chunk_rows), str(path), sha, 0, "row"
    from feature_pipeline.extract import extract

    src = extract(loaded)  # a SQL source: read whole (its hash sorts every row), then cut into chunks
    frame = src.frame
    return (((i, frame.iloc[i:i + chunk_rows].reset_index(drop=True)) for i in range(0, max(len(frame), 1),
                                                                                    chunk_rows)),
            src.location, src.sha256, src.row_base, src.row_label)


def _empty_problems() -> Problems:
    p = Problems()
    p.add("empty", "the source has no rows")
    return p


def _gather(into: dict[tuple[str, str, str | None], list[Any]], found: Problems, offset: int,
            rows: np.ndarray | None = None) -> None:
    """Problems of one chunk (positions + ``offset``, or ``rows[position]``) merged into ``into``."""
    for p in found.items:
        key = (p.code, p.message, p.column)
        entry = into.setdefault(key, [[], 0])
        entry[0].extend(int(rows[r]) if rows is not None else r + offset for r in p.rows)
        entry[1] += p.row_count


def _order(samples: list[pd.DataFrame], spec: Any) -> dict[tuple[str, str | None], int]:
    """The order normalisation lists problem kinds in, from a frame of a few rows of each kind: the
    chunks found them in their own order, the in-memory build in this one."""
    if not samples:
        return {}
    _, found, _ = normalize_frame(pd.concat(samples, ignore_index=True), spec)
    return {(p.code, p.column): i for i, p in reversed(list(enumerate(found.items)))}


def _merged_problems(problems: dict[tuple[str, str, str | None], list[Any]],
                     order: dict[tuple[str, str | None], int] | None = None) -> list[Problem]:
    merged = [Problem(code, message, column, tuple(sorted(rows)[:MAX_ROWS_LISTED]), count)
              for (code, message, column), (rows, count) in problems.items()]
    rank = order or {}
    return sorted(merged, key=lambda p: rank.get((p.code, p.column), len(rank)))  # stable: first seen next


# ---------------------------------------------------------------------- partitions on disk


def _hash_bucket(values: pd.Series, buckets: int) -> np.ndarray:
    """A stable bucket per value (the same text -> the same bucket, in every run and process)."""
    text = values.astype(str).to_numpy(dtype=object)
    return (pd.util.hash_array(text, categorize=False) % np.uint64(buckets)).astype(np.int64)


class _Partition:
    def __init__(self, folder: Path, buckets: int):
        self.folder, self.buckets = folder, buckets

    def write(self, frame: pd.DataFrame, spec: Any, suffix: str = "") -> None:
        key_cols = [c for c in (spec.record_id, spec.event_time, spec.source.ingestion_time) if c] + ["__row"]
        for kind, by, data in (("e", spec.entity_key, frame), ("r", spec.record_id, frame[key_cols])):
            bucket = _hash_bucket(frame[by], self.buckets)
            order = np.argsort(bucket, kind="stable")
            sorted_b = bucket[order]
            bounds = np.searchsorted(sorted_b, np.arange(self.buckets + 1))
            for b in range(self.buckets):
                lo, hi = int(bounds[b]), int(bounds[b + 1])
                if lo == hi:
                    continue
                piece = data.iloc[order[lo:hi]]
                with open(self.folder / f"{kind}-{b:05d}{suffix}.pkl", "ab") as fh:
                    pickle.dump(piece, fh, protocol=pickle.HIGHEST_PROTOCOL)

    def _files(self, kind: str, b: int) -> list[Path]:
        """The bucket's files: this process's, and one per worker process that partitioned."""
        own = self.folder / f"{kind}-{b:05d}.pkl"
        return ([own] if own.exists() else []) + sorted(self.folder.glob(f"{kind}-{b:05d}-*.pkl"))

    def read(self, kind: str, b: int) -> pd.DataFrame | None:
        pieces = [piece for path in self._files(kind, b) for piece in _load_all(path)]
        if not pieces:
            return None
        frame = pd.concat(pieces, ignore_index=True) if len(pieces) > 1 else pieces[0].reset_index(drop=True)
        return frame.sort_values("__row", kind="stable").reset_index(drop=True)  # source order

    def remove(self, kind: str, b: int) -> None:
        for path in self._files(kind, b):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _load_all(path: Path) -> Iterator[Any]:
    """Objects pickled one after another into ``path`` by this build (its own private folder)."""
    with open(path, "rb") as fh:
        while True:
            try:
                yield pickle.load(fh)  # noqa: S301 - files this build wrote into its 0700 folder
            except EOFError:
                return


def _write_output(path: Path, features: pd.DataFrame, spec: Any) -> Path:
    """The bucket's rows sorted by record id (Python's string order, as the merge and the checksum take
    them), rendered and pickled ``BLOCK_ROWS`` at a time: a block's Python objects are all that exist at
    once beside the frame, whatever the bucket's size."""
    order = np.argsort(features[spec.record_id].to_numpy(dtype=object), kind="stable")
    with open(path, "wb") as fh:
        for start in range(0, len(order), BLOCK_ROWS):
            block = features.iloc[order[start:start + BLOCK_ROWS]]
            payloads = ft.encode_payloads(block, spec.stored_columns)
            rids = block[spec.record_id].tolist()
            ents = block[spec.entity_key].tolist()
            isos: list[str | None] = [None] * len(rids)
            whens: list[Any] = [None] * len(rids)
            if spec.event_time:
                isos = ft.iso_utc_column(block[spec.event_time])
                whens = ft.naive_utc_column(block[spec.event_time])
            pickle.dump(list(zip(rids, ents, isos, whens, payloads, strict=True)), fh,
                        protocol=pickle.HIGHEST_PROTOCOL)
    return path


def _merged(outputs: list[Path]) -> Iterator[tuple[Any, ...]]:
    def rows(path: Path) -> Iterator[tuple[Any, ...]]:
        for block in _load_all(path):
            yield from block

    return heapq.merge(*(rows(p) for p in outputs), key=lambda r: r[0])


def _work_folder(workdir: Path | None) -> Path:
    """A private folder for this build; folders of earlier builds whose process is gone are removed."""
    base = Path(workdir) if workdir is not None else Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    for old in base.glob(f"{_PREFIX}*"):
        pid = old.name[len(_PREFIX):].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=base))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
