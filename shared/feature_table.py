"""The feature-table contract: what the feature job writes and training and serving read.

Two tables, one schema for every dataset (so a new spec needs no migration):

* ``fti_feature_versions`` -- the manifest, one row per immutable version.
* ``fti_feature_rows`` -- one row per source record and version: the keys as
  typed columns (for point-in-time lookups) and every other column as one
  canonical JSON text (``payload``).

The same database and migration chain also hold the inference service's
prediction log (``fti_predictions``, revision 0002, see
:mod:`shared.prediction_table`).

The payload is canonical (sorted keys, shortest round-trip float repr,
``null`` for missing), so the version checksum can be recomputed from the
stored rows on any backend, and a float read back is bit-identical to the one
written. A version's rows and its manifest row are committed in one
transaction: a version is visible completely or not at all.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Connection, Engine

from shared.spec import ColumnType, DatasetSpec

# Every revision of the store schema this code knows, oldest first (the migration chain).
KNOWN_REVISIONS = ("0001", "0002", "0003", "0004", "0005")
SCHEMA_HEAD = KNOWN_REVISIONS[-1]
FEATURE_TABLES_REVISION = "0001"  # the feature tables have not changed since this revision
VERSION_TABLE = "fti_alembic_version"
_SCHEMA_LOCK_KEY = 0x6674_6953_4348_4D  # pg_advisory_xact_lock key: serialises concurrent upgrades

metadata = MetaData()

feature_versions = Table(
    "fti_feature_versions", metadata,
    Column("dataset", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("checksum", String(64), nullable=False),
    Column("row_count", Integer, nullable=False),
    Column("spec_hash", String(64), nullable=False),
    Column("shared_version", String(32), nullable=False),
    Column("code_commit", String(64), nullable=False),
    Column("source_format", String(16), nullable=False),
    Column("source_location", Text, nullable=False),
    Column("source_sha256", String(64), nullable=False),
    Column("as_of", DateTime, nullable=False),
    Column("columns", JSON, nullable=False),
    Column("details", JSON, nullable=False),
    Column("created_at", DateTime, nullable=False),
    PrimaryKeyConstraint("dataset", "version", name="pk_fti_feature_versions"),
    UniqueConstraint("dataset", "checksum", name="uq_fti_feature_versions_checksum"),
)

feature_rows = Table(
    "fti_feature_rows", metadata,
    Column("dataset", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("record_id", String(256), nullable=False),
    Column("entity_key", String(256), nullable=False),
    Column("event_time", DateTime, nullable=True),
    Column("payload", Text, nullable=False),
    PrimaryKeyConstraint("dataset", "version", "record_id", name="pk_fti_feature_rows"),
    ForeignKeyConstraint(["dataset", "version"], ["fti_feature_versions.dataset", "fti_feature_versions.version"],
                         name="fk_fti_feature_rows_version", ondelete="CASCADE"),
    Index("ix_fti_feature_rows_entity_time", "dataset", "version", "entity_key", "event_time"),
)


class FeatureStoreError(RuntimeError):
    """The feature store is missing, at the wrong schema revision, or lacks a version."""


@dataclass(frozen=True)
class VersionInfo:
    dataset: str
    version: int
    checksum: str
    row_count: int
    spec_hash: str
    shared_version: str
    code_commit: str
    source_format: str
    source_location: str
    source_sha256: str
    as_of: datetime
    columns: list[list[str]]
    details: dict[str, Any]
    created_at: datetime

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["as_of"] = iso_utc(self.as_of)
        d["created_at"] = iso_utc(self.created_at)
        return d


# --------------------------------------------------------------------------- schema

def _alembic_config(connection: Connection) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.attributes["connection"] = connection
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Create or migrate the store tables to ``revision`` (default: the head).

    Concurrent upgrades (two services starting at once) are serialised: an
    advisory transaction lock on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite. The
    later one then finds the head already applied and does nothing.
    """
    from alembic import command

    from shared.db import IMMEDIATE

    with engine.connect() as raw_conn:
        conn = raw_conn.execution_options(**{IMMEDIATE: True})
        with conn.begin():
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _SCHEMA_LOCK_KEY})
            command.upgrade(_alembic_config(conn), revision)


def schema_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        if not inspect(conn).has_table(VERSION_TABLE):
            return None
        return conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()


def check_schema(engine: Engine, minimum: str = FEATURE_TABLES_REVISION) -> str:
    """Readers call this: fail with what to do instead of an SQL error later. Returns the revision.

    A reader states the oldest revision that has what it reads. The feature
    tables are unchanged since 0001, so readers of feature tables (training,
    ``fti features list/show``, the serving path's history lookups) accept any
    revision this code knows: a store still at 0001 -- no prediction log yet,
    because no new inference service has started against it -- keeps working
    for training, and a store already at 0002 keeps working for an older
    reader's code path. Only readers of the prediction log pass
    ``minimum="0002"``. A revision this code does not know (written by a newer
    fti, or not an fti store) is refused: its tables may mean something else.
    Writers do not call this; they run :func:`upgrade` (the feature job and
    the inference service, which writes the prediction log).
    """
    try:
        rev = schema_revision(engine)
    except Exception as exc:  # noqa: BLE001 - connection errors get a user-facing message
        raise FeatureStoreError(f"cannot reach the feature store at {engine.url!r}: {exc}") from exc
    if rev is None:
        raise FeatureStoreError(
            f"the feature store at {engine.url!r} has no fti tables yet: run `fti features run --spec ...` first")
    if rev not in KNOWN_REVISIONS:
        raise FeatureStoreError(
            f"the feature store schema is at revision {rev}, which this fti version does not know (it knows "
            f"{', '.join(KNOWN_REVISIONS)}): use the fti version that wrote it, or run `fti features migrate` "
            "with a newer one")
    if KNOWN_REVISIONS.index(rev) < KNOWN_REVISIONS.index(minimum):
        raise FeatureStoreError(
            f"the feature store schema is at revision {rev}, this needs {minimum} or later: "
            "run `fti features migrate` (or start the inference service once, which upgrades it)")
    return rev


# --------------------------------------------------------------------------- encoding

def iso_utc(ts: Any) -> str:
    """Timestamp -> 'YYYY-MM-DDTHH:MM:SS.ffffffZ' (naive values are UTC).

    A plain ``datetime`` (what the database drivers return) is formatted directly: going through
    ``pd.Timestamp`` cost ~8 us a call, twice a row in ``fti predict-batch``. Both ways end in
    ``datetime.strftime`` of the same UTC instant (``tests/unit/shared/test_feature_table.py``)."""
    if type(ts) is datetime:
        if ts.tzinfo is not None:
            ts = ts.astimezone(UTC).replace(tzinfo=None)
        return ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    t = pd.Timestamp(ts)
    t = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def naive_utc(ts: Any) -> datetime:
    t = pd.Timestamp(ts)
    t = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
    return t.tz_localize(None).to_pydatetime()


def _json_value(v: Any) -> Any:
    if v is None or v is pd.NA or v is pd.NaT:
        return None
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if math.isnan(f):
            return None
        if math.isinf(f):
            raise ValueError("infinite values cannot be stored in the feature table")
        return f + 0.0
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (pd.Timestamp, datetime, np.datetime64)):
        return iso_utc(v)
    return v


_PAYLOAD_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


PAYLOAD_BLOCK_ROWS = 20_000  # rows encoded at a time: a block's cell values and texts are all that exist at once


def encode_payloads(frame: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    """:func:`_encode_block` of each block of ``PAYLOAD_BLOCK_ROWS`` rows, so the cells' Python values and
    texts exist a block at a time (for a million rows at once they would take gigabytes)."""
    if len(frame) <= PAYLOAD_BLOCK_ROWS:
        return _encode_block(frame, columns)
    return [text for start in range(0, len(frame), PAYLOAD_BLOCK_ROWS)
            for text in _encode_block(frame.iloc[start:start + PAYLOAD_BLOCK_ROWS], columns)]


def _encode_block(frame: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    """Canonical JSON text per row for ``columns``: ``_json_value`` of each cell, computed a column at a time
    (:func:`json_column`), encoded with one encoder (``json.dumps`` with options builds one per call).

    Where every cell is ``None``, ``bool``, ``int``, ``float`` or ``str`` (what :func:`json_column` gives for
    the feature job's columns), each cell's JSON text is made a column at a time by the functions the
    encoder itself calls for them (``float.__repr__``, ``int.__repr__``, its string escaper), and a row is
    one ``%`` format of a template holding the sorted keys: the encoder's text, without a dict per row
    (``tests/unit/shared/test_payload_encoding.py``). A column with few distinct values has each value's
    text made once (:func:`few_values_texts`). Any other cell type: the encoder, row by row."""
    encode = _PAYLOAD_ENCODER.encode
    if not columns:
        return [encode({}) for _ in range(len(frame))]
    values: dict[int, list[Any]] = {}  # json_column of the columns that go cell by cell, computed once
    texts: list[list[str] | None] = []
    for i, c in enumerate(columns):
        text = few_values_texts(frame[c])
        if text is None:
            values[i] = json_column(frame[c])
            text = _json_texts(values[i])
        texts.append(text)
    if any(t is None for t in texts) or len(set(columns)) != len(columns):
        cells = [values[i] if i in values else json_column(frame[c]) for i, c in enumerate(columns)]
        return [encode(dict(zip(columns, row, strict=True))) for row in zip(*cells, strict=True)]
    order = sorted(range(len(columns)), key=lambda i: columns[i])  # sort_keys: Python's string order
    template = "{" + ",".join(_encode_string(columns[i]).replace("%", "%%") + ":%s" for i in order) + "}"
    return [template % row for row in zip(*(texts[i] for i in order), strict=True)]


_encode_string = json.encoder.encode_basestring  # what the encoder uses with ensure_ascii=False
_CELL_TEXT: dict[type, Any] = {type(None): lambda _: "null", bool: lambda b: "true" if b else "false",
                               int: int.__repr__, float: float.__repr__, str: _encode_string}


def _json_texts(values: list[Any]) -> list[str] | None:
    """Each cell's JSON text as :data:`_PAYLOAD_ENCODER` writes it, or None if a cell is of another type.
    Floats here are finite: :func:`json_column` gives ``None`` for NaN and refuses infinities."""
    kinds = set(map(type, values))
    if not kinds <= _CELL_TEXT.keys():
        return None
    for kind in (float, str, int):
        if kinds <= {kind, type(None)}:
            text = _CELL_TEXT[kind]
            return ["null" if v is None else text(v) for v in values]
    table = _CELL_TEXT
    return [table[type(v)](v) for v in values]


def _refuse_infinite(arr: np.ndarray) -> None:
    if np.isinf(arr).any():
        raise ValueError("infinite values cannot be stored in the feature table")


FEW_VALUES_SAMPLE = 1_000  # rows looked at first: a column with many distinct values there skips the count
FEW_VALUES_SHARE = 0.1  # at most this share of distinct values (sample and column) for :func:`few_values_texts`


def few_values_texts(series: pd.Series) -> list[str] | None:
    """Each cell's JSON text, made once per distinct value, for a float or text column with few distinct
    values (counts, flags, ages, categories); None for any other column, which goes cell by cell.

    Why: writing a cell's text (``float.__repr__``, the string escaper) was most of a bucket's encoding
    time, and most feature columns repeat a few values. The text of a value is the cell path's:
    ``float.__repr__(v + 0.0)`` (so -0.0 gives ``0.0``) or ``null`` for NaN; for
    text, the escaped string, ``null`` for a missing cell; a text column holding anything but ``str`` and
    missing cells goes cell by cell (``tests/unit/shared/test_payload_encoding.py``)."""
    n = len(series)
    if n < 2 * FEW_VALUES_SAMPLE:
        return None
    dtype = series.dtype
    if isinstance(dtype, np.dtype) and dtype.kind == "f":
        arr = series.to_numpy(dtype=np.float64)
        if len(np.unique(arr[:FEW_VALUES_SAMPLE])) > FEW_VALUES_SHARE * FEW_VALUES_SAMPLE:
            return None
        _refuse_infinite(arr)
        codes, uniques = pd.factorize(arr, use_na_sentinel=True)  # NaN: -1
        if len(uniques) > FEW_VALUES_SHARE * n:
            return None
        table = np.array([float.__repr__(v + 0.0) for v in uniques.tolist()] + ["null"], dtype=object)
        return table[codes].tolist()  # code -1: the last entry, null
    plain_objects = isinstance(dtype, np.dtype) and dtype.kind == "O"
    if plain_objects or isinstance(dtype, pd.StringDtype):
        try:
            if len(pd.unique(series.iloc[:FEW_VALUES_SAMPLE])) > FEW_VALUES_SHARE * FEW_VALUES_SAMPLE:
                return None
            codes, uniques = pd.factorize(series, use_na_sentinel=True)  # missing cells: -1
        except TypeError:  # unhashable cells (lists, dicts)
            return None
        if len(uniques) > FEW_VALUES_SHARE * n or any(type(v) is not str for v in uniques):
            return None
        missing = codes == -1
        if plain_objects and missing.any() and not all(
                v is None or v is pd.NA or v is pd.NaT or isinstance(v, (float, np.floating))
                for v in series.to_numpy(dtype=object)[missing]):
            return None  # a missing cell the cell path does not write as null (it may refuse it)
        table = np.array([_encode_string(v) for v in uniques] + ["null"], dtype=object)
        return table[codes].tolist()  # code -1: the last entry, null
    return None


def json_column(series: pd.Series) -> list[Any]:
    """:func:`_json_value` of every cell of a column, vectorised for float, integer and microsecond
    timestamp columns (the same Python values: ``tests/unit/shared/test_payload_encoding.py``)."""
    dtype = series.dtype
    numpy_dtype = isinstance(dtype, np.dtype)  # extension dtypes (nullable Int64, ...) cell by cell
    if numpy_dtype and dtype.kind == "f":
        arr = series.to_numpy(dtype=np.float64)
        _refuse_infinite(arr)
        nan = np.isnan(arr)
        out = (arr + 0.0).tolist()
        if nan.any():
            for i in np.flatnonzero(nan).tolist():
                out[i] = None
        return out
    if numpy_dtype and dtype.kind in "iu":
        return series.to_numpy().tolist()
    if dtype.kind == "M" or isinstance(dtype, pd.DatetimeTZDtype):
        return iso_utc_column(series)
    if isinstance(dtype, pd.StringDtype):  # missing cells as None (``_json_value`` of pd.NA)
        cells = series.to_numpy(dtype=object, na_value=None).tolist()
    else:
        cells = series.to_numpy(dtype=object).tolist()
    if set(map(type, cells)) <= _AS_IS:  # text columns: every cell is already its JSON value
        return cells
    return [_json_value(v) for v in cells]


_AS_IS = {str, int, bool, type(None)}  # the exact types ``_json_value`` returns unchanged


def iso_utc_column(series: pd.Series) -> list[str | None]:
    """:func:`iso_utc` of every timestamp of a column (``None`` for a missing one)."""
    micros = _utc_micros(series)
    if micros is None:
        return [None if pd.isna(v) else iso_utc(v) for v in series]
    nat = micros == np.iinfo(np.int64).min
    text = np.datetime_as_string(micros.view("datetime64[us]"), unit="us").tolist()
    return [None if missing else f"{t}Z" for t, missing in zip(text, nat.tolist(), strict=True)]


def naive_utc_column(series: pd.Series) -> list[datetime | None]:
    """:func:`naive_utc` of every timestamp of a column (``None`` for a missing one)."""
    micros = _utc_micros(series)
    if micros is None:
        return [None if pd.isna(v) else naive_utc(v) for v in series]
    return micros.view("datetime64[us]").astype(object).tolist()


def _utc_micros(series: pd.Series) -> np.ndarray | None:
    """Epoch microseconds (UTC; naive values are UTC) of a datetime column of at most microsecond
    precision between the years 1000 and 9999 (where the ISO text is the same as ``strftime``'s), else None."""
    s = series
    if isinstance(s.dtype, pd.DatetimeTZDtype):
        s = s.dt.tz_convert("UTC").dt.tz_localize(None)
    if s.dtype.kind != "M":
        return None
    ns = s.to_numpy(dtype="datetime64[ns]") if np.datetime_data(s.dtype)[0] == "ns" else None
    if ns is not None and (ns.view(np.int64)[~np.isnat(ns)] % 1000).any():
        return None  # sub-microsecond values: strftime's %f truncates them its own way
    micros = s.to_numpy(dtype="datetime64[us]").view(np.int64)
    valid = micros[micros != np.iinfo(np.int64).min]
    if len(valid) and (valid.min() < _YEAR_1000_US or valid.max() >= _YEAR_10000_US):
        return None
    return micros


_YEAR_1000_US = -30_610_224_000_000_000
_YEAR_10000_US = 253_402_300_800_000_000


def checksum_lines(record_ids: Iterable[str], entities: Iterable[str], times: Iterable[str | None],
                   payloads: Iterable[str]) -> tuple[str, int]:
    """sha256 over rows sorted by record id (Python order, not the database's collation)."""
    rows = sorted(zip(record_ids, entities, times, payloads, strict=True), key=lambda r: r[0])
    h = checksum_hasher()
    for rid, ent, ts, payload in rows:
        checksum_update(h, rid, ent, ts, payload)
    return h.hexdigest(), len(rows)


def checksum_hasher() -> Any:
    """The hash :func:`checksum_lines` feeds, for builds that stream their rows in record-id order."""
    return hashlib.sha256()


def checksum_update(h: Any, rid: str, ent: str, ts: str | None, payload: str) -> None:
    """One row's line of the checksum (rows must come in record-id order, Python's string order)."""
    h.update(f"{rid}\t{ent}\t{ts or ''}\t{payload}\n".encode())


def decode_frame(rows: Sequence[Any], spec: DatasetSpec) -> pd.DataFrame:
    """Stored rows (record_id, entity_key, event_time, payload) -> canonical DataFrame."""
    payload_cols = spec.stored_columns
    data: dict[str, list[Any]] = {c: [] for c in payload_cols}
    rids, ents, times = [], [], []
    for r in rows:
        rids.append(r.record_id)
        ents.append(r.entity_key)
        times.append(r.event_time)
        values = json.loads(r.payload)
        for c in payload_cols:
            data[c].append(values.get(c))
    frame = pd.DataFrame({spec.record_id: pd.Series(rids, dtype=object),
                          spec.entity_key: pd.Series(ents, dtype=object)})
    if spec.event_time:
        frame[spec.event_time] = pd.to_datetime(pd.Series(times, dtype=object), utc=True).astype(
            "datetime64[us, UTC]")
    for c in payload_cols:
        frame[c] = _typed(data[c], column_type(spec, c))
    return frame


def column_type(spec: DatasetSpec, name: str) -> ColumnType:
    col = spec.columns.get(name)
    return col.type if col is not None else ColumnType.FLOAT


def _typed(values: list[Any], ctype: ColumnType) -> Any:
    if ctype.is_numeric:
        return pd.Series(np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64) + 0.0)
    if ctype == ColumnType.TIMESTAMP:
        return pd.to_datetime(pd.Series(values, dtype=object), utc=True).astype("datetime64[us, UTC]")
    return pd.Series([np.nan if v is None else str(v) for v in values], dtype=object)


def frame_columns(spec: DatasetSpec) -> list[list[str]]:
    """The schema recorded in the manifest: [name, type] for every stored column."""
    return [[c, column_type(spec, c).value] for c in spec.stored_columns]


# --------------------------------------------------------------------------- reads

def _info(row: Any) -> VersionInfo:
    return VersionInfo(**{k: row._mapping[k] for k in VersionInfo.__dataclass_fields__})


def list_versions(engine: Engine, dataset: str) -> list[VersionInfo]:
    """The dataset's versions, oldest first; none in a store without fti tables yet (nothing published)."""
    try:
        empty = schema_revision(engine) is None
    except Exception:  # noqa: BLE001 - unreachable: check_schema says so in the user's terms
        empty = False
    if empty:
        return []
    check_schema(engine)
    with engine.connect() as conn:
        rows = conn.execute(select(feature_versions).where(feature_versions.c.dataset == dataset)
                            .order_by(feature_versions.c.version)).all()
    return [_info(r) for r in rows]


def get_version(engine: Engine, dataset: str, version: int | None = None) -> VersionInfo:
    """One version's manifest; ``None`` means the latest committed version."""
    check_schema(engine)
    q = select(feature_versions).where(feature_versions.c.dataset == dataset)
    q = q.where(feature_versions.c.version == version) if version is not None else \
        q.order_by(feature_versions.c.version.desc()).limit(1)
    with engine.connect() as conn:
        row = conn.execute(q).first()
    if row is None:
        if version is None:
            raise FeatureStoreError(f"dataset {dataset!r} has no feature version yet: run "
                                    f"`fti features run --spec ...` first")
        raise FeatureStoreError(f"dataset {dataset!r} has no feature version {version} "
                                f"(see `fti features list --spec ...`)")
    return _info(row)


def read_version(engine: Engine, spec: DatasetSpec, version: int) -> pd.DataFrame:
    """All rows of a version as a canonical frame, sorted by record id."""
    check_schema(engine)
    t = feature_rows
    with engine.connect() as conn:
        rows = conn.execute(select(t.c.record_id, t.c.entity_key, t.c.event_time, t.c.payload)
                            .where(and_(t.c.dataset == spec.name, t.c.version == version))).all()
    rows = sorted(rows, key=lambda r: r.record_id)
    return decode_frame(rows, spec)


def stored_checksum(engine: Engine, dataset: str, version: int) -> tuple[str, int]:
    """Recompute a version's checksum from its stored rows."""
    t = feature_rows
    with engine.connect() as conn:
        rows = conn.execute(select(t.c.record_id, t.c.entity_key, t.c.event_time, t.c.payload)
                            .where(and_(t.c.dataset == dataset, t.c.version == version))).all()
    return checksum_lines((r.record_id for r in rows), (r.entity_key for r in rows),
                          (iso_utc(r.event_time) if r.event_time is not None else None for r in rows),
                          (r.payload for r in rows))


def read_history(engine: Engine, spec: DatasetSpec, version: int, entities: Iterable[str],
                 before: datetime) -> pd.DataFrame:
    """Rows of ``entities`` in a version with event time strictly before ``before``."""
    t = feature_rows
    keys = sorted(set(entities))
    rows: list[Any] = []
    with engine.connect() as conn:
        for i in range(0, len(keys), 500):
            rows.extend(conn.execute(
                select(t.c.record_id, t.c.entity_key, t.c.event_time, t.c.payload).where(and_(
                    t.c.dataset == spec.name, t.c.version == version,
                    t.c.entity_key.in_(keys[i:i + 500]), t.c.event_time < naive_utc(before)))).all())
    rows.sort(key=lambda r: r.record_id)
    return decode_frame(rows, spec)


def read_records(engine: Engine, spec: DatasetSpec, version: int, record_ids: Iterable[str]) -> pd.DataFrame:
    t = feature_rows
    ids = sorted(set(record_ids))
    rows: list[Any] = []
    with engine.connect() as conn:
        for i in range(0, len(ids), 500):
            rows.extend(conn.execute(
                select(t.c.record_id, t.c.entity_key, t.c.event_time, t.c.payload).where(and_(
                    t.c.dataset == spec.name, t.c.version == version,
                    t.c.record_id.in_(ids[i:i + 500])))).all())
    rows.sort(key=lambda r: r.record_id)
    return decode_frame(rows, spec)


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)
