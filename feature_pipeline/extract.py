"""Read a spec's source as of nothing: every row, plus the source's content hash.

Values are read as text from CSV (the spec, not pandas, decides types) and as
stored from Parquet and SQL. The as-of cutoff is applied after normalisation,
when timestamps are typed (see :mod:`feature_pipeline.featureset`).

Only the feature job reads sources; ``fti reproduce`` (:mod:`fti.reproduce`) also
rebuilds a recorded feature version from its source, and calls this module from
``fti``, the layer allowed to import several services.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from sqlalchemy import text

from shared.db import make_engine, redact
from shared.provenance import sha256_file
from shared.spec import LoadedSpec, expand_env

log = logging.getLogger(__name__)


class SourceError(RuntimeError):
    """The source cannot be read; the message names it and says what to check."""


@dataclass(frozen=True)
class Extracted:
    frame: pd.DataFrame
    location: str
    sha256: str
    row_base: int  # add to a 0-based row index to get the user's row number
    row_label: str


def file_location(loaded: LoadedSpec) -> Path | None:
    """Where a csv/parquet source lives by the spec's own rule (relative to the spec's folder)."""
    src = loaded.spec.source
    if src.format not in ("csv", "parquet") or src.path is None:
        return None
    return loaded.resolve_path(src.path)


def extract(loaded: LoadedSpec, *, location: Path | None = None) -> Extracted:
    """Read every row of the source.

    ``location`` overrides where a csv/parquet file is read from (``fti reproduce``
    reads the file a feature version recorded, because a spec copy downloaded from
    MLflow has lost the folder its relative ``source.path`` resolves against).
    """
    src = loaded.spec.source
    if src.format in ("csv", "parquet"):
        path = location if location is not None else file_location(loaded)
        assert path is not None
        if not path.is_file():
            raise SourceError(f"source file not found: {path} (spec {loaded.path}: source.path)"
                              + ("; for the demo run `fti data generate --spec ...` first"
                                 if loaded.spec.name == "claims" else ""))
        digest = sha256_file(path)
        if src.format == "csv":
            return Extracted(_read_csv(path), str(path), digest, 2, "line")
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several types for corrupt files
            raise SourceError(f"cannot read Parquet file {path}: {exc}") from exc
        return Extracted(frame.reset_index(drop=True), str(path), digest, 0, "row")
    return _read_sql(loaded)


def source_sha256(path: Path) -> str:
    return sha256_file(path)


def read_csv_chunks(path: Path, chunk_rows: int) -> Iterator[tuple[int, pd.DataFrame]]:
    """(offset, chunk) of a CSV source, read as :func:`extract` reads it whole (text values, UTF-8 with or
    without a BOM), at least one chunk (the header alone gives an empty one)."""
    if path.stat().st_size == 0:
        raise SourceError(f"{path} is empty (0 bytes): expected a header line and rows")
    offset = 0
    with _csv_errors(path):
        reader = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[], encoding="utf-8-sig",
                             chunksize=chunk_rows)
        with reader:
            for chunk in reader:
                yield offset, chunk.reset_index(drop=True)
                offset += len(chunk)
        if offset == 0:
            yield 0, pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[], encoding="utf-8-sig", nrows=0)


@contextlib.contextmanager
def _csv_errors(path: Path) -> Iterator[None]:
    """pandas' CSV errors as :class:`SourceError`, saying what is wrong with the file."""
    try:
        yield
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                          "re-save it as UTF-8") from exc
    except pd.errors.EmptyDataError as exc:
        raise SourceError(f"{path} has no header line and no rows") from exc
    except pd.errors.ParserError as exc:
        raise SourceError(f"{path} is not a well-formed CSV file: {exc}") from exc


def read_parquet_chunks(path: Path, chunk_rows: int) -> Iterator[tuple[int, pd.DataFrame]]:
    """(offset, chunk) of a Parquet source, by record batches, as :func:`extract` reads it whole."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        offset = 0
        for batch in pf.iter_batches(batch_size=chunk_rows):
            chunk = batch.to_pandas().reset_index(drop=True)
            yield offset, chunk
            offset += len(chunk)
        if offset == 0:
            yield 0, pf.schema_arrow.empty_table().to_pandas()
    except SourceError:
        raise
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise SourceError(f"cannot read Parquet file {path}: {exc}") from exc


def _read_csv(path: Path) -> pd.DataFrame:
    if path.stat().st_size == 0:
        raise SourceError(f"{path} is empty (0 bytes): expected a header line and rows")
    with _csv_errors(path):
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[], encoding="utf-8-sig")


def _read_sql(loaded: LoadedSpec) -> Extracted:
    src = loaded.spec.source
    assert src.url is not None
    url = expand_env(src.url)
    query = expand_env(src.query) if src.query else None
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            if query is not None:
                frame = pd.read_sql(text(query), conn)
            else:
                from sqlalchemy import MetaData, Table, select
                assert src.table is not None  # the spec requires query or table
                table = Table(src.table, MetaData(), autoload_with=conn)
                frame = pd.read_sql(select(table), conn)
    except Exception as exc:
        raise SourceError(f"cannot read the SQL source {redact(url)} "
                          f"({'query' if query else 'table ' + repr(src.table)}): {exc}") from exc
    finally:
        engine.dispose()
    # A SQL source has no file to hash: hash its rows in a canonical text form.
    h = hashlib.sha256()
    for line in frame.astype(str).sort_values(list(frame.columns)).itertuples(index=False):
        h.update(("\t".join(line) + "\n").encode())
    return Extracted(frame, redact(url), h.hexdigest(), 0, "row")
