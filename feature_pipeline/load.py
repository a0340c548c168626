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
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, insert, select, text, update
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
            if (info := _existing(conn, dataset, manifest["checksum"])) is not None:
                log.info("identical content is already version %s of %r: nothing written", info.version, dataset)
                return Published(info, created=False)
            record = _insert_next_version(conn, manifest)
            version = record["version"]
            counted = _Counted(rows)
            if conn.dialect.name == "postgresql":
                _copy_rows(conn, dataset, version, counted, total)
            else:
                it = iter(counted)
                while chunk := [{**r, "dataset": dataset, "version": version} for r in itertools.islice(it, _BATCH)]:
                    conn.execute(insert(ft.feature_rows), chunk)
                    log.info("writing version %s: %d/%d rows", version, counted.n, total)
            _check_count(counted, total)
        info = ft.VersionInfo(**{k: record[k] for k in ft.VersionInfo.__dataclass_fields__})
    return Published(info, created=True)


def _insert_next_version(conn: Any, manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest's version row under the next version number (the dataset's lock is held); the row."""
    v = ft.feature_versions
    latest = conn.execute(select(func.max(v.c.version)).where(v.c.dataset == manifest["dataset"])).scalar()
    record = {**manifest, "version": (latest or 0) + 1}
    conn.execute(insert(v).values(**record))
    return record


def _check_count(counted: _Counted, total: int) -> None:
    if counted.n != total:
        raise RuntimeError(f"{counted.n} rows were written for a manifest of {total}: nothing published")


class _AlreadyPublished(Exception):  # noqa: N818 - a signal, not an error: rolls the staged write back
    def __init__(self, info: ft.VersionInfo):
        super().__init__(f"identical content is version {info.version}")
        self.info = info


class _Checksum:
    """``compute(True)`` on a thread (which waits on the process that computes it): the checksum's merge pass
    runs while the rows are written."""

    def __init__(self, compute: Callable[[bool], str]):
        self.value: str | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(compute,), name="fti-checksum", daemon=True)

    def _run(self, compute: Callable[[bool], str]) -> None:
        try:
            self.value = compute(True)
        except BaseException as exc:  # noqa: BLE001 - raised again in the publishing thread
            self.error = exc

    def start(self) -> _Checksum:
        self._thread.start()
        return self

    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self) -> str:
        self._thread.join()
        if self.error is not None:
            raise self.error
        assert self.value is not None
        return self.value


def _existing(conn: Any, dataset: str, checksum: str) -> ft.VersionInfo | None:
    v = ft.feature_versions
    row = conn.execute(select(v).where(v.c.dataset == dataset, v.c.checksum == checksum)).first()
    return None if row is None else ft.VersionInfo(**{k: row._mapping[k] for k in ft.VersionInfo.__dataclass_fields__})


def publish_streaming(engine: Engine, manifest: dict[str, Any], rows: Iterable[dict[str, Any]],
                      checksum: Callable[[bool], str]) -> Published:
    """:func:`publish` for a build whose checksum is one more pass over its rows (the local and Spark
    engines' merge of their buckets): on PostgreSQL that pass runs *while* the rows are written, instead of
    before.

    Why: the pass took ~1.9 s a million rows on its own, while during the ``COPY`` the server's backend is
    the bottleneck (~14 s of its CPU a million rows, against ~5 s for this process) and this process waits.
    ``checksum(True)`` is asked to run the pass apart, in another process: on a thread here it shared the
    interpreter lock with the rows' feeder, and at 10M rows the write took 160 s against 123 s for a bare
    ``COPY``.

    The version row is written first with a unique placeholder checksum, inside the same transaction, so
    nothing is visible before the commit and a killed job leaves nothing. As soon as the checksum is known
    (long before the last row), a version with the same content is looked up: if there is one, the write
    stops there and is rolled back, and the existing version is returned, as :func:`publish` does. At the
    end the placeholder becomes the checksum, in the same transaction. Other databases (SQLite): the
    checksum first, then :func:`publish`."""
    if engine.dialect.name != "postgresql":
        return publish(engine, {**manifest, "checksum": checksum(False)}, rows)
    dataset = manifest["dataset"]
    total = int(manifest["row_count"])
    placeholder = f"staged-{uuid.uuid4().hex}"
    summed = _Checksum(checksum)
    try:
        with engine.connect() as raw_conn, raw_conn.begin():
            conn = raw_conn
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _lock_key(dataset)})
            summed.start()  # after the lock: a job waiting for another's publish does not read its files yet
            record = _insert_next_version(conn, {**manifest, "checksum": placeholder})
            version = record["version"]
            counted = _Counted(_checked(engine, dataset, rows, summed))
            _copy_rows(conn, dataset, version, counted, total)
            _check_count(counted, total)
            record["checksum"] = summed.result()
            if (info := _existing(conn, dataset, record["checksum"])) is not None:
                raise _AlreadyPublished(info)
            v = ft.feature_versions
            conn.execute(update(v).where(v.c.dataset == dataset, v.c.version == version)
                         .values(checksum=record["checksum"]))
    except _AlreadyPublished as same:
        log.info("identical content is already version %s of %r: nothing written", same.info.version, dataset)
        return Published(same.info, created=False)
    info = ft.VersionInfo(**{k: record[k] for k in ft.VersionInfo.__dataclass_fields__})
    return Published(info, created=True)


def _checked(engine: Engine, dataset: str, rows: Iterable[dict[str, Any]], summed: _Checksum
             ) -> Iterator[dict[str, Any]]:
    """``rows``; once the checksum is known, a version with the same content stops the write (on another
    connection: the publishing one is busy with the ``COPY``)."""
    pending = True
    for i, r in enumerate(rows):
        if pending and i % 10_000 == 0 and summed.done():
            pending = False
            value = summed.result()
            log.info("checksum %s... computed while writing (%d rows written)", value[:16], i)
            with engine.connect() as other:
                if (info := _existing(other, dataset, value)) is not None:
                    raise _AlreadyPublished(info)
        yield r
