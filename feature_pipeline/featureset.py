"""The pure feature build: source rows -> validated, as-of, de-duplicated feature rows + checksum.

extract (:mod:`feature_pipeline.extract`) -> normalise (:mod:`shared.raw`) -> as-of cutoff ->
one row per record id (latest edit known at the cutoff) -> features
(:func:`shared.features.compute_batch`) -> canonical payloads -> checksum.

Nothing here writes: the feature job publishes the result as a new version
(``fti features run``), and ``fti reproduce`` rebuilds a recorded version from
its source as of the recorded cutoff and compares checksums. Both call
:func:`build`, so "the same source as of T" means the same thing in both.

It belongs to the feature pipeline, not ``shared``: only the feature job builds feature
versions. ``fti reproduce`` (:mod:`fti.reproduce`, in the layer that may import several
services) calls it from there. ``shared`` keeps what every stage must run identically:
normalisation, the transformers, and the feature table's contract.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pandas as pd

from feature_pipeline.extract import Extracted
from shared import feature_table as ft
from shared.features import compute_batch
from shared.provenance import code_commit, shared_version
from shared.raw import Problems, RawDataError, check_unique, normalize_frame
from shared.spec import DatasetSpec, LoadedSpec

log = logging.getLogger(__name__)


class StrictSchemaError(RuntimeError):
    """--strict and the source has columns the spec does not declare."""


@dataclass
class Built:
    """What a build produced; ``manifest`` and ``rows`` are exactly what the feature job publishes."""

    manifest: dict[str, Any]
    rows: list[dict[str, Any]]
    warnings: list[str] = field(default_factory=list)
    # How the cutoff shaped the rows (not stored; for reports):
    # source_rows, after_cutoff (dropped: event or ingestion time > as-of), late_arrivals (event time <= as-of
    # but ingested after it), superseded (older edits of a record id), ingestion_time (column name or None).
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def checksum(self) -> str:
        return str(self.manifest["checksum"])


def parse_as_of(value: str | None) -> pd.Timestamp | None:
    if value is None:
        return None
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"--as-of {value!r} is not an ISO 8601 timestamp (e.g. 2025-06-30T00:00:00Z)") from exc
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def build(loaded: LoadedSpec, src: Extracted, *, as_of: pd.Timestamp | None = None, strict: bool = False) -> Built:
    """Everything up to (not including) the write.

    Raises before anything is written if the source or any row is invalid.
    """
    spec = loaded.spec
    warnings: list[str] = []
    frame, problems, extra = normalize_frame(src.frame, spec)
    warnings += ignored_columns(extra, strict=strict)
    if problems:
        raise RawDataError(problems.items, row_label=src.row_label, row_base=src.row_base,
                           context=f"source {src.location}")
    frame["__row"] = range(len(frame))

    # The as-of cutoff: nothing that happened, or became known, after it.
    stamp_col = spec.source.ingestion_time or spec.event_time
    if as_of is None:
        as_of = frame[stamp_col].max() if stamp_col else pd.Timestamp.now(tz="UTC").floor("s")
    keep, late = rows_before_cutoff(frame, spec, as_of)
    stats: dict[str, Any] = {"source_rows": len(frame), "after_cutoff": int((~keep).sum()),
                             "late_arrivals": int(late.sum()), "superseded": 0,
                             "ingestion_time": spec.source.ingestion_time}
    frame = frame[keep]
    if frame.empty:
        raise RawDataError([_problem(f"no rows as of {ft.iso_utc(as_of)}")],
                           context=f"source {src.location}")

    # One row per record id: with an ingestion time, a later row is an edit of an earlier one.
    problems = Problems()
    rows_before = frame["__row"].to_numpy()  # positions in ``frame`` -> source row numbers
    if spec.source.ingestion_time:
        check_unique(frame, [spec.record_id, spec.source.ingestion_time], problems,
                     f"({spec.record_id}, {spec.source.ingestion_time}) pairs")
        frame = frame.sort_values([spec.record_id, spec.source.ingestion_time], kind="stable")
        edits = int(frame.duplicated(subset=[spec.record_id], keep="last").sum())
        frame = frame.drop_duplicates(subset=[spec.record_id], keep="last")
        stats["superseded"] = edits
        if edits:
            log.info("%d superseded row(s) replaced by later edits", edits)
    else:
        check_unique(frame, [spec.record_id], problems, f"{spec.record_id} values")
    if problems:
        fixed = [type(p)(p.code, p.message, p.column, tuple(int(rows_before[i]) for i in p.rows), p.row_count)
                 for p in problems.items]
        raise RawDataError(fixed, row_label=src.row_label, row_base=src.row_base,
                           context=f"source {src.location}")
    frame = frame.drop(columns="__row").sort_values(spec.record_id, kind="stable").reset_index(drop=True)

    t1 = time.perf_counter()
    features = compute_batch(frame, spec)
    log.info("computed %d derived and %d history features for %d rows in %.1fs",
             len(spec.features.derived), len(spec.features.history), len(features), time.perf_counter() - t1)

    payloads = ft.encode_payloads(features, spec.stored_columns)
    rids = features[spec.record_id].tolist()
    ents = features[spec.entity_key].tolist()
    times = ft.iso_utc_column(features[spec.event_time]) if spec.event_time else [None] * len(rids)
    checksum, n = ft.checksum_lines(rids, ents, times, payloads)
    manifest = make_manifest(loaded, checksum=checksum, row_count=n, source_format=spec.source.format,
                             source_location=src.location, source_sha256=src.sha256, as_of=as_of,
                             source_rows=len(src.frame), extra=extra, warnings=warnings,
                             unlabeled=int(features[spec.label].isna().sum()))
    event_times = ft.naive_utc_column(features[spec.event_time]) if spec.event_time else [None] * n
    rows = [{"record_id": r, "entity_key": e, "event_time": t, "payload": p}
            for r, e, t, p in zip(rids, ents, event_times, payloads, strict=True)]
    return Built(manifest, rows, warnings, stats)


def ignored_columns(extra: list[str], *, strict: bool) -> list[str]:
    """The warning for source columns the spec does not declare (an error with ``--strict``)."""
    if not extra:
        return []
    msg = f"source columns not in the spec are ignored: {', '.join(extra[:20])}"
    if strict:
        raise StrictSchemaError(msg + " (--strict)")
    log.warning(msg)
    return [msg]


def rows_before_cutoff(frame: pd.DataFrame, spec: DatasetSpec, as_of: pd.Timestamp) -> tuple[pd.Series, pd.Series]:
    """(kept, late) masks of the as-of cutoff: a row is kept if it happened and became known by ``as_of``;
    late if it happened by then but became known after."""
    keep = pd.Series(True, index=frame.index)
    late = pd.Series(False, index=frame.index)
    if spec.event_time:
        keep &= frame[spec.event_time] <= as_of
    if spec.source.ingestion_time:
        known = frame[spec.source.ingestion_time] <= as_of
        late = keep & ~known
        keep &= known
    return keep, late


def make_manifest(loaded: LoadedSpec, *, checksum: str, row_count: int, source_format: str, source_location: str,
                  source_sha256: str, as_of: pd.Timestamp, source_rows: int, extra: list[str], warnings: list[str],
                  unlabeled: int, engine: dict[str, Any] | None = None) -> dict[str, Any]:
    """The version's manifest row; ``engine`` (how it was built) is recorded in ``details`` when not the
    in-memory build, so versions built in memory keep their manifests as they were."""
    details: dict[str, Any] = {"source_rows": source_rows, "ignored_columns": extra, "warnings": warnings,
                               # rows whose label has not arrived yet: kept (serving sees them), skipped by training
                               "unlabeled_rows": unlabeled}
    if engine is not None:
        details["engine"] = engine
    return {
        "dataset": loaded.spec.name, "checksum": checksum, "row_count": row_count, "spec_hash": loaded.hash,
        "shared_version": shared_version(), "code_commit": code_commit(),
        "source_format": source_format, "source_location": source_location, "source_sha256": source_sha256,
        "as_of": ft.naive_utc(as_of), "columns": ft.frame_columns(loaded.spec),
        "details": details, "created_at": ft.utcnow(),
    }


def rows_frame(rows: list[dict[str, Any]], spec: DatasetSpec) -> pd.DataFrame:
    """Built rows -> the canonical frame, decoded exactly as stored rows are (``ft.read_version``)."""
    ordered = sorted(rows, key=lambda r: r["record_id"])
    return ft.decode_frame([SimpleNamespace(**r) for r in ordered], spec)


def _problem(message: str) -> Any:
    p = Problems()
    p.add("empty", message)
    return p.items[0]
