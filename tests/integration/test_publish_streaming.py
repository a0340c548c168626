"""The local and Spark engines' publish on PostgreSQL computes the checksum while it writes the rows
(:func:`feature_pipeline.load.publish_streaming`): the version row is staged with a placeholder checksum in the
publishing transaction. Real PostgreSQL: what other connections see during the write, a duplicate found
mid-write (stopped early, rolled back, the existing version returned), a checksum that fails, a row count
that differs, and the checksum stored at the end."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
import sqlalchemy as sa

from feature_pipeline.load import publish_streaming
from shared import feature_table as ft
from shared.db import make_engine

DATASET = "streamed"
ROWS = 25_000


def _manifest(n: int = ROWS) -> dict[str, Any]:
    now = datetime(2026, 1, 1)
    return {"dataset": DATASET, "checksum": "", "row_count": n, "spec_hash": "s" * 64, "shared_version": "0",
            "code_commit": "c", "source_format": "csv", "source_location": "x.csv", "source_sha256": "0" * 64,
            "as_of": now, "columns": [], "details": {}, "created_at": now}


def _rows(n: int = ROWS, seen: list[int] | None = None) -> Iterator[dict[str, Any]]:
    for i in range(n):
        if seen is not None:
            seen.append(i)
        yield {"record_id": f"r{i:06d}", "entity_key": f"e{i % 97}", "event_time": datetime(2026, 1, 1),
               "payload": f'{{"x":{i}}}'}


def _checksum(apart: bool = True) -> str:
    """The rows' checksum, as the build's pass gives it (asked to run apart: on PostgreSQL it always is)."""
    assert apart, "on PostgreSQL the pass is asked to run in another process"
    n = ROWS
    return ft.checksum_lines([f"r{i:06d}" for i in range(n)], [f"e{i % 97}" for i in range(n)],
                             ["2026-01-01T00:00:00.000000Z"] * n, [f'{{"x":{i}}}' for i in range(n)])[0]


@pytest.fixture
def engine(pg_database: str) -> Iterator[sa.Engine]:
    eng = make_engine(pg_database)
    ft.upgrade(eng)
    try:
        yield eng
    finally:
        eng.dispose()


def _counts(engine: sa.Engine) -> tuple[int, int, list[str]]:
    with engine.connect() as conn:
        versions = conn.execute(sa.text("SELECT checksum FROM fti_feature_versions ORDER BY version")).scalars().all()
        rows = conn.execute(sa.text("SELECT count(*) FROM fti_feature_rows")).scalar_one()
    return len(versions), int(rows), list(versions)


def test_the_checksum_is_stored_and_matches_the_rows(engine: sa.Engine) -> None:
    published = publish_streaming(engine, _manifest(), _rows(), _checksum)
    assert published.created and published.info.version == 1
    assert published.info.checksum == _checksum()
    n_versions, n_rows, checksums = _counts(engine)
    assert (n_versions, n_rows, checksums) == (1, ROWS, [_checksum()])
    assert ft.stored_checksum(engine, DATASET, 1) == (_checksum(), ROWS)  # recomputed from the stored rows


def test_nothing_is_visible_while_the_rows_are_written(engine: sa.Engine) -> None:
    """Another connection, mid-write: no version (not even the staged placeholder) and no row."""
    pause, resume = threading.Event(), threading.Event()

    def rows() -> Iterator[dict[str, Any]]:
        for i, r in enumerate(_rows()):
            if i == ROWS // 2:
                pause.set()
                resume.wait(30)
            yield r

    result: dict[str, Any] = {}
    writer = threading.Thread(target=lambda: result.update(p=publish_streaming(engine, _manifest(), rows(), _checksum)))
    writer.start()
    try:
        assert pause.wait(30)
        assert _counts(engine) == (0, 0, [])
    finally:
        resume.set()
        writer.join(60)
    assert result["p"].created
    assert _counts(engine) == (1, ROWS, [_checksum()])


def test_identical_content_found_mid_write_stops_and_returns_the_existing_version(engine: sa.Engine) -> None:
    first = publish_streaming(engine, _manifest(), _rows(), _checksum)
    seen: list[int] = []
    again = publish_streaming(engine, {**_manifest(), "created_at": datetime(2027, 1, 1)}, _rows(seen=seen),
                              _checksum)
    assert not again.created
    assert again.info == first.info  # the existing version, its row not rewritten
    assert len(seen) < ROWS, "the write stopped once the checksum was known"
    assert _counts(engine) == (1, ROWS, [_checksum()])


def test_identical_content_found_at_the_end_is_rolled_back(engine: sa.Engine) -> None:
    """The checksum arrives after the last row: the duplicate is found before the commit."""
    publish_streaming(engine, _manifest(), _rows(), _checksum)
    late = threading.Event()

    def slow_checksum(apart: bool) -> str:
        late.wait(30)
        return _checksum(apart)

    def rows() -> Iterator[dict[str, Any]]:
        yield from _rows()
        late.set()

    again = publish_streaming(engine, _manifest(), rows(), slow_checksum)
    assert not again.created and again.info.version == 1
    assert _counts(engine) == (1, ROWS, [_checksum()])


def test_a_checksum_that_fails_publishes_nothing(engine: sa.Engine) -> None:
    def broken(apart: bool) -> str:
        raise OSError("a bucket's output file is gone")

    with pytest.raises(OSError, match="output file is gone"):
        publish_streaming(engine, _manifest(), _rows(), broken)
    assert _counts(engine) == (0, 0, [])


def test_a_row_count_that_differs_publishes_nothing(engine: sa.Engine) -> None:
    with pytest.raises(RuntimeError, match="nothing published"):
        publish_streaming(engine, _manifest(ROWS + 1), _rows(), _checksum)
    assert _counts(engine) == (0, 0, [])
    assert publish_streaming(engine, _manifest(), _rows(), _checksum).info.version == 1  # and the next one works
