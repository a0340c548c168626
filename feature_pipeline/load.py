"""Publish a feature version: manifest row + feature rows in ONE transaction.

Concurrent jobs are serialised per dataset (PostgreSQL advisory lock, SQLite
``BEGIN IMMEDIATE``), the version number is taken under that lock and guarded
by a unique constraint, and content already published (same checksum) is not
published again.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, insert, select, text
from sqlalchemy.engine import Engine

from shared import feature_table as ft
from shared.db import IMMEDIATE, copy_rows

log = logging.getLogger(__name__)
_BATCH = 2000


@dataclass(frozen=True)
class Published:
    info: ft.VersionInfo
    created: bool


class _Counted:
    def __init__(self, rows: Iterable[dict[str, Any]]):
        self.rows, self.n = rows, 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for r in self.rows:
            self.n += 1
            yield r


def _lock_key(dataset: str) -> int:
    return int.from_bytes(hashlib.sha256(f"fti-features:{dataset}".encode()).digest()[:8], "big", signed=True)


_COPY_COLUMNS = ("dataset", "version", "record_id", "entity_key", "event_time", "payload")


def _copy_rows(conn: Any, dataset: str, version: int, rows: Iterable[dict[str, Any]], total: int) -> None:
    """The rows through ``COPY`` (:func:`shared.db.copy_rows`), in the publishing transaction, with progress."""

    def tuples() -> Iterator[tuple[Any, ...]]:
        for i, r in enumerate(rows, 1):
            yield dataset, version, r["record_id"], r["entity_key"], r["event_time"], r["payload"]
            if i % 50_000 == 0 or i == total:
                log.info("writing version %s: %d/%d rows (COPY)", version, i, total)

    copy_rows(conn, ft.feature_rows.name, _COPY_COLUMNS, tuples())


def publish(engine: Engine, manifest: dict[str, Any], rows: Iterable[dict[str, Any]]) -> Published:
    """``rows``: a list, or any iterable of exactly ``manifest["row_count"]`` rows (the local engine streams
    them from disk); a different count rolls the transaction back."""
    dataset = manifest["dataset"]
    total = int(manifest["row_count"])
    with engine.connect() as raw_conn:
        conn = raw_conn.execution_options(**{IMMEDIATE: True})
        with conn.begin():
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _lock_key(dataset)})
            v = ft.feature_versions
            existing = conn.execute(select(v).where(v.c.dataset == dataset,
                                                    v.c.checksum == manifest["checksum"])).first()
            if existing is not None:
                info = ft.VersionInfo(**{k: existing._mapping[k] for k in ft.VersionInfo.__dataclass_fields__})
                log.info("identical content is already version %s of %r: nothing written", info.version, dataset)
                return Published(info, created=False)
            latest = conn.execute(select(func.max(v.c.version)).where(v.c.dataset == dataset)).scalar()
            version = (latest or 0) + 1
            record = {**manifest, "version": version}
            conn.execute(insert(v).values(**record))
            counted = _Counted(rows)
            if conn.dialect.name == "postgresql":
                _copy_rows(conn, dataset, version, counted, total)
            else:
                it = iter(counted)
                while chunk := [{**r, "dataset": dataset, "version": version} for r in itertools.islice(it, _BATCH)]:
                    conn.execute(insert(ft.feature_rows), chunk)
                    log.info("writing version %s: %d/%d rows", version, counted.n, total)
            if counted.n != total:
                raise RuntimeError(f"{counted.n} rows were written for a manifest of {total}: nothing published")
        info = ft.VersionInfo(**{k: record[k] for k in ft.VersionInfo.__dataclass_fields__})
    return Published(info, created=True)
