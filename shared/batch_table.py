"""The batch-prediction contract: what ``fti predict-batch`` writes and its readers read.

Two tables (store schema revision 0003), next to the feature tables so a batch
and the feature version it scored can be joined without a second store:

* ``fti_prediction_batches`` -- the manifest, one row per batch: which feature
  version (and its checksum) was scored by which model version, how many rows,
  the sha256 of the written rows, when and how long. At most one batch exists
  per (dataset, feature version, model name, model version): a unique
  constraint, so two runs racing for the same batch cannot both write it.
* ``fti_batch_predictions`` -- one row per record of the feature version: the
  record's keys, ``as_of`` (the record's event time: the point in time its
  features describe), the model and feature versions, and ``outputs``
  (``{"prediction": ..., "probabilities": {label: float}}`` in canonical JSON,
  the same rendering as the prediction log, so floats read back bit-identical).

The ids are derived from what was scored, not drawn at random: the same
(dataset, feature version, model, version, record) always gets the same
prediction id, so a rerun (or ``--replace``) writes identical content and the
checksum says so. A batch's manifest and rows are committed in one
transaction: a batch is visible completely or not at all.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Float,
    ForeignKeyConstraint,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    select,
)
from sqlalchemy.engine import Connection, Engine

from shared import feature_table as ft

BATCH_TABLES_REVISION = "0003"

prediction_batches = Table(
    "fti_prediction_batches", ft.metadata,
    Column("batch_id", String(32), nullable=False),
    Column("dataset", String(64), nullable=False),
    Column("feature_version", Integer, nullable=False),
    Column("feature_checksum", String(64), nullable=False),
    Column("model_name", String(128), nullable=False),
    Column("model_version", String(32), nullable=False),
    Column("row_count", Integer, nullable=False),
    Column("checksum", String(64), nullable=False),
    Column("started_at", DateTime, nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("seconds", Float, nullable=False),
    Column("details", JSON, nullable=False),
    PrimaryKeyConstraint("batch_id", name="pk_fti_prediction_batches"),
    UniqueConstraint("dataset", "feature_version", "model_name", "model_version",
                     name="uq_fti_prediction_batches_key"),
)

batch_predictions = Table(
    "fti_batch_predictions", ft.metadata,
    Column("prediction_id", String(32), nullable=False),
    Column("batch_id", String(32), nullable=False),
    Column("dataset", String(64), nullable=False),
    Column("record_id", String(256), nullable=False),
    Column("entity_key", String(256), nullable=False),
    Column("as_of", DateTime, nullable=True),
    Column("model_name", String(128), nullable=False),
    Column("model_version", String(32), nullable=False),
    Column("feature_version", Integer, nullable=False),
    Column("prediction", Text, nullable=False),
    Column("outputs", Text, nullable=False),
    PrimaryKeyConstraint("prediction_id", name="pk_fti_batch_predictions"),
    UniqueConstraint("batch_id", "record_id", name="uq_fti_batch_predictions_record"),
    ForeignKeyConstraint(["batch_id"], ["fti_prediction_batches.batch_id"],
                         name="fk_fti_batch_predictions_batch", ondelete="CASCADE"),
    Index("ix_fti_batch_predictions_record", "dataset", "record_id"),
)

# The columns a batch checksum covers, in order (everything but the batch id, which they determine).
CHECKSUM_COLUMNS = ("prediction_id", "dataset", "record_id", "entity_key", "as_of", "model_name", "model_version",
                    "feature_version", "prediction", "outputs")


# --------------------------------------------------------------------------- ids and checksums

def _digest(*parts: str) -> str:
    # A unit separator cannot occur in a name or an id we accept, so the join is unambiguous.
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def batch_id(dataset: str, feature_version: int, model_name: str, model_version: str) -> str:
    """The batch's id: a function of the batch key, so a rerun names the same batch."""
    return _digest("fti-batch", dataset, str(feature_version), model_name, str(model_version))


def prediction_id(dataset: str, feature_version: int, model_name: str, model_version: str, record_id: str) -> str:
    """A row's id: a function of the batch key and the record, so a rerun writes the same ids."""
    return _digest("fti-batch-prediction", dataset, str(feature_version), model_name, str(model_version), record_id)


def checksum_line(row: Mapping[str, Any]) -> str:
    """One row as checksummed: ``CHECKSUM_COLUMNS`` tab-separated, ``as_of`` as ISO UTC ('' if null)."""
    values = []
    for c in CHECKSUM_COLUMNS:
        v = row[c]
        if c == "as_of":
            v = ft.iso_utc(v) if v is not None else ""
        values.append(str(v))
    return "\t".join(values) + "\n"


class RowDigest:
    """sha256 over checksum lines in record-id order (Python's order, not the database's collation).

    ``streamed=True``: the caller promises rows arrive sorted by record id, so
    the hash is updated as they come (constant memory; an out-of-order row is a
    bug and raises). Otherwise lines are kept and sorted at the end.
    """

    def __init__(self, streamed: bool):
        self.streamed = streamed
        self._hash = hashlib.sha256()
        self._lines: list[tuple[str, str]] = []
        self._last: str | None = None
        self.count = 0

    def add(self, record_id: str, line: str) -> None:
        self.count += 1
        if not self.streamed:
            self._lines.append((record_id, line))
            return
        if self._last is not None and not record_id > self._last:
            raise RuntimeError(f"rows out of record-id order ({self._last!r} then {record_id!r}): "
                               "the database's collation does not sort like Python")
        self._last = record_id
        self._hash.update(line.encode())

    def hexdigest(self) -> str:
        if not self.streamed:
            for _, line in sorted(self._lines, key=lambda r: r[0]):
                self._hash.update(line.encode())
            self._lines, self.streamed = [], True
        return self._hash.hexdigest()


def checksum_rows(rows: Iterable[Mapping[str, Any]]) -> tuple[str, int]:
    """A batch's checksum and row count from its rows (in any order)."""
    digest = RowDigest(streamed=False)
    for r in rows:
        digest.add(r["record_id"], checksum_line(r))
    return digest.hexdigest(), digest.count


# --------------------------------------------------------------------------- reads

@dataclass(frozen=True)
class BatchInfo:
    batch_id: str
    dataset: str
    feature_version: int
    feature_checksum: str
    model_name: str
    model_version: str
    row_count: int
    checksum: str
    started_at: datetime
    created_at: datetime
    seconds: float
    details: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["started_at"] = ft.iso_utc(self.started_at)
        d["created_at"] = ft.iso_utc(self.created_at)
        return d


def _info(row: Any) -> BatchInfo:
    m = row._mapping
    details = m["details"]
    return BatchInfo(**{k: m[k] for k in BatchInfo.__dataclass_fields__ if k != "details"},
                     details=json.loads(details) if isinstance(details, str) else dict(details or {}))


def find_batch(conn: Connection | Engine, dataset: str, feature_version: int, model_name: str,
               model_version: str) -> BatchInfo | None:
    """The committed batch for this key (as seen by ``conn``'s transaction), or ``None``."""
    b = prediction_batches
    q = select(b).where(b.c.dataset == dataset, b.c.feature_version == feature_version,
                        b.c.model_name == model_name, b.c.model_version == str(model_version))
    if isinstance(conn, Engine):
        ft.check_schema(conn, minimum=BATCH_TABLES_REVISION)
        with conn.connect() as c:
            row = c.execute(q).first()
    else:
        row = conn.execute(q).first()
    return _info(row) if row is not None else None


def list_batches(engine: Engine, dataset: str) -> list[BatchInfo]:
    ft.check_schema(engine, minimum=BATCH_TABLES_REVISION)
    b = prediction_batches
    with engine.connect() as conn:
        rows = conn.execute(select(b).where(b.c.dataset == dataset)
                            .order_by(b.c.feature_version, b.c.model_name, b.c.model_version)).all()
    return [_info(r) for r in rows]


def stored_checksum(engine: Engine, batch: str) -> tuple[str, int]:
    """Recompute a batch's checksum and row count from its stored rows."""
    ft.check_schema(engine, minimum=BATCH_TABLES_REVISION)
    t = batch_predictions
    with engine.connect() as conn:
        rows = conn.execute(select(*(t.c[c] for c in CHECKSUM_COLUMNS)).where(t.c.batch_id == batch)).all()
    return checksum_rows(cast("Mapping[str, Any]", r._mapping) for r in rows)
