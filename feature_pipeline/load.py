"""Publish a feature version: manifest row + feature rows in ONE transaction.

Concurrent jobs are serialised per dataset (PostgreSQL advisory lock, SQLite
``BEGIN IMMEDIATE``), the version number is taken under that lock and guarded
by a unique constraint, and content already published (same checksum) is not
published again.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, insert, select, text
from sqlalchemy.engine import Engine

from shared import feature_table as ft
from shared.db import IMMEDIATE

log = logging.getLogger(__name__)
_BATCH = 2000


@dataclass(frozen=True)
class Published:
    info: ft.VersionInfo
    created: bool


def _lock_key(dataset: str) -> int:
    return int.from_bytes(hashlib.sha256(f"fti-features:{dataset}".encode()).digest()[:8], "big", signed=True)


def publish(engine: Engine, manifest: dict[str, Any], rows: list[dict[str, Any]]) -> Published:
    dataset = manifest["dataset"]
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
            for start in range(0, len(rows), _BATCH):
                chunk = [{**r, "dataset": dataset, "version": version} for r in rows[start:start + _BATCH]]
                conn.execute(insert(ft.feature_rows), chunk)
                log.info("writing version %s: %d/%d rows", version, min(start + _BATCH, len(rows)), len(rows))
        info = ft.VersionInfo(**{k: record[k] for k in ft.VersionInfo.__dataclass_fields__})
    return Published(info, created=True)
