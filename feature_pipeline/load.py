"""Publish a feature version: manifest row + feature rows in ONE transaction.

Concurrent jobs are serialised per dataset (PostgreSQL advisory lock, SQLite
``BEGIN IMMEDIATE``), the version number is taken under that lock and guarded
by a unique constraint, and content already published (same checksum) is not
published again.

Two ways, one guarantee: :func:`publish` writes a finished build; :class:`StagedVersion` (the bucketed
engines on PostgreSQL) writes each entity bucket's rows as soon as it is computed, inside the
transaction that publishes them, so the database's work overlaps the features' (docs/features.md).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, insert, select, text, update
from sqlalchemy.engine import Connection, Engine, RootTransaction

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


class StagedVersion:
    """A version written while it is built, published (or not) in one transaction.

    Why: the local engine's workers compute entity buckets while the database would sit idle, then the
    database wrote every row while the workers sat idle -- at 10M rows, 143 s then 130 s (docs/features.md).
    Here each bucket's rows are ``COPY``'d as soon as the bucket is done (:meth:`write`), inside one open
    transaction that holds the dataset's lock and a version row whose checksum is a placeholder; only
    :meth:`finish`, given the finished manifest, fills that row in and commits. Nothing is visible to any
    reader before that commit: a job that fails or is killed rolls everything back, as :func:`publish` does.
    Content already published (same checksum) is found at :meth:`finish` and the transaction rolled back.

    PostgreSQL only: on SQLite an open write transaction locks the whole file for the build's duration
    (the prediction log and every other writer would wait), so the build is published by :func:`publish`.
    """

    def __init__(self, engine: Engine, dataset: str):
        if engine.dialect.name != "postgresql":
            raise ValueError(f"a staged version needs PostgreSQL; this store is {engine.dialect.name}")
        self.engine, self.dataset = engine, dataset
        self.version: int | None = None
        self.rows = 0
        self._conn: Connection | None = None
        self._tx: RootTransaction | None = None

    def _begin(self) -> Connection:
        if self._conn is not None:
            return self._conn
        ft.upgrade(self.engine)
        conn = self.engine.connect()
        self._conn, self._tx = conn, conn.begin()
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _lock_key(self.dataset)})
        v = ft.feature_versions
        latest = conn.execute(select(func.max(v.c.version)).where(v.c.dataset == self.dataset)).scalar()
        self.version = (latest or 0) + 1
        placeholder: dict[str, Any] = {  # every NOT NULL column; :meth:`finish` writes the manifest over all of them
            "dataset": self.dataset, "version": self.version, "checksum": f"pending-{uuid.uuid4().hex}",
            "row_count": 0, "spec_hash": "", "shared_version": "", "code_commit": "", "source_format": "",
            "source_location": "", "source_sha256": "", "as_of": ft.utcnow(), "columns": [], "details": {},
            "created_at": ft.utcnow()}
        conn.execute(insert(v).values(**placeholder))
        log.info("writing version %s of %r while it is built (one transaction, published at the end)",
                 self.version, self.dataset)
        return conn

    def write(self, rows: Iterable[tuple[str, str, Any, str]], total: int) -> int:
        """``(record_id, entity_key, event_time, payload)`` rows, through ``COPY``, of the ``total`` the build
        will write (for the progress lines); returns how many."""
        conn = self._begin()
        dataset, version, before = self.dataset, self.version, self.rows

        def tuples() -> Iterator[tuple[Any, ...]]:
            for i, (rid, ent, when, payload) in enumerate(rows, before + 1):
                yield dataset, version, rid, ent, when, payload
                if i % 50_000 == 0:
                    log.info("writing version %s: %d/%d rows (COPY)", version, i, total)

        n = copy_rows(conn, ft.feature_rows.name, _COPY_COLUMNS, tuples())
        self.rows += n
        if self.rows % 50_000:
            log.info("writing version %s: %d/%d rows (COPY)", version, self.rows, total)
        return n

    def finish(self, manifest: dict[str, Any]) -> Published:
        """Publish with ``manifest`` (its checksum over the rows written), or find the identical version."""
        conn = self._begin()
        assert self._tx is not None and self.version is not None
        v = ft.feature_versions
        existing = conn.execute(select(v).where(v.c.dataset == self.dataset,
                                                v.c.checksum == manifest["checksum"])).first()
        if existing is not None:
            self.close()  # rolls back every row written
            info = ft.VersionInfo(**{k: existing._mapping[k] for k in ft.VersionInfo.__dataclass_fields__})
            log.info("identical content is already version %s of %r: nothing written", info.version, self.dataset)
            return Published(info, created=False)
        total = int(manifest["row_count"])
        if self.rows != total:
            raise RuntimeError(f"{self.rows} rows were written for a manifest of {total}: nothing published")
        record = {**manifest, "version": self.version}
        conn.execute(update(v).where(v.c.dataset == self.dataset, v.c.version == self.version)
                     .values(**{k: val for k, val in record.items() if k not in ("dataset", "version")}))
        self._tx.commit()
        self.close()
        return Published(ft.VersionInfo(**{k: record[k] for k in ft.VersionInfo.__dataclass_fields__}), created=True)

    def close(self) -> None:
        """Roll back whatever was not committed and release the connection (idempotent)."""
        conn, self._conn, self._tx = self._conn, None, None
        if conn is not None:
            conn.close()  # an open transaction is rolled back
