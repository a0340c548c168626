"""The prediction-log writer on a real SQLite file: batching, flush on close, full queue,
database unavailable then back, rows the database rejects, a database that stays down at shutdown."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from inference_service.prediction_log import PredictionLogWriter
from shared import feature_table as ft
from shared.db import make_engine
from shared.prediction_table import canonical_json, get_prediction, predictions


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = make_engine(f"sqlite:///{tmp_path / 'features.db'}")
    yield eng
    eng.dispose()


def _row(i: int = 0, **over: Any) -> dict[str, Any]:
    row = {"prediction_id": uuid.uuid4().hex, "request_id": uuid.uuid4().hex, "created_at": ft.utcnow(),
           "dataset": "claims", "model_name": "m", "model_version": "1", "feature_version": 1,
           "record_id": f"C{i}", "entity_key": "P1", "event_time": None,
           "inputs": canonical_json({"claim_id": f"C{i}", "x": 0.1 + i}),
           "outputs": canonical_json({"prediction": 1, "probabilities": {"0": 0.3, "1": 0.7}})}
    row.update(over)
    return row


def _count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(predictions)).scalar() or 0)


def _wait(cond: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_rows_are_written_in_batches_of_at_most_batch_size(engine: Engine) -> None:
    ft.upgrade(engine)
    writer = PredictionLogWriter(engine, batch_size=500, flush_interval=0.2)
    rows = [_row(i) for i in range(1200)]
    assert writer.submit(rows) == 0  # queued before the thread starts: the batches are deterministic
    writer.start()
    _wait(lambda: writer.stats()["written"] == 1200)
    stats = writer.close()
    assert stats["batches"] == 3 and stats["written"] == 1200 and stats["submitted"] == 1200
    assert stats["dropped"] == stats["failed"] == stats["lost_on_shutdown"] == stats["queued"] == 0
    assert _count(engine) == 1200
    got = get_prediction(engine, rows[7]["prediction_id"])
    assert got is not None and got.inputs == {"claim_id": "C7", "x": 7.1} and got.record_id == "C7"
    assert got.outputs["probabilities"] == {"0": 0.3, "1": 0.7}


def test_close_flushes_what_is_queued_without_waiting_for_the_interval(engine: Engine) -> None:
    ft.upgrade(engine)
    writer = PredictionLogWriter(engine, batch_size=500, flush_interval=30.0).start()
    writer.submit([_row(i) for i in range(7)])
    time.sleep(0.1)  # the writer now waits (up to 30 s) for the batch to fill
    assert _count(engine) == 0
    t0 = time.monotonic()
    stats = writer.close()
    assert time.monotonic() - t0 < 2.0
    assert stats["written"] == 7 and _count(engine) == 7
    assert writer.submit([_row()]) == 1  # closed: refused, and counted
    assert writer.stats()["dropped"] == 1


def test_a_full_queue_blocks_briefly_then_counts_and_logs_the_drop(engine: Engine,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    ft.upgrade(engine)
    writer = PredictionLogWriter(engine, max_queue=5, block_seconds=0.05)  # not started: nothing drains
    assert writer.submit([_row(i) for i in range(5)]) == 0
    with caplog.at_level(logging.ERROR, logger="inference_service.prediction_log"):
        t0 = time.monotonic()
        assert writer.submit([_row(i) for i in range(3)]) == 3  # a request's rows are kept or dropped together
        assert 0.05 <= time.monotonic() - t0 < 1.0
    assert "dropped 3 row(s) of this request, 3 in total: the buffer is full (5 of 5 rows)" in caplog.text
    assert writer.stats()["dropped"] == 3 and writer.stats()["queued"] == 5
    writer.start()
    stats = writer.close()
    assert stats["written"] == 5 and _count(engine) == 5


def test_rows_wait_while_the_table_is_missing_and_are_written_once_it_exists(engine: Engine) -> None:
    # SQLite says "no such table" as an OperationalError: retried, like a database that is down.
    writer = PredictionLogWriter(engine, flush_interval=0.01, max_backoff=0.05).start()
    rows = [_row(i) for i in range(20)]
    writer.submit(rows)
    _wait(lambda: writer.stats()["retries"] >= 2)
    assert writer.stats()["written"] == 0 and "no such table" in (writer.stats()["last_error"] or "")
    ft.upgrade(engine)
    _wait(lambda: writer.stats()["written"] == 20)
    stats = writer.close()
    assert stats["written"] == 20 and _count(engine) == 20 and stats["failed"] == 0


def test_rows_the_database_rejects_are_counted_and_the_rest_written(engine: Engine,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    ft.upgrade(engine)
    good = [_row(i) for i in range(4)]
    bad = _row(99, outputs=None)  # NOT NULL violation: IntegrityError, not retryable
    writer = PredictionLogWriter(engine)
    writer.submit([good[0], good[1], bad, good[2], good[3]])
    with caplog.at_level(logging.ERROR, logger="inference_service.prediction_log"):
        stats = writer.start().close()
    assert stats["written"] == 4 and stats["failed"] == 1
    assert _count(engine) == 4
    assert bad["prediction_id"] in caplog.text


def test_a_database_still_down_at_shutdown_is_reported_with_the_count(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    eng = make_engine(f"sqlite:///{tmp_path / 'no-tables.db'}")
    try:
        writer = PredictionLogWriter(eng, flush_interval=0.01, max_backoff=0.05).start()
        writer.submit([_row(i) for i in range(3)])
        _wait(lambda: writer.stats()["retries"] >= 1)
        with caplog.at_level(logging.ERROR, logger="inference_service.prediction_log"):
            stats = writer.close(timeout=0.3)
        assert stats["lost_on_shutdown"] == 3 and stats["written"] == 0
        assert "3 row(s) NOT written" in caplog.text
    finally:
        eng.dispose()


def test_rows_of_many_requests_share_a_transaction_and_are_built_in_the_writer_thread(engine: Engine) -> None:
    import threading

    ft.upgrade(engine)
    built_in: set[str] = set()

    def lazy(i: int):
        def build() -> list[dict[str, Any]]:
            built_in.add(threading.current_thread().name)
            return [_row(i)]
        return build

    writer = PredictionLogWriter(engine, batch_size=500, flush_interval=0.5).start()
    for i in range(50):  # 50 one-row requests inside one flush interval
        assert writer.submit_lazy(1, lazy(i)) == 0
    stats = writer.close()
    assert stats["written"] == 50 and stats["batches"] == 1 and _count(engine) == 50
    assert built_in == {"prediction-log-writer"}


def test_a_failing_row_builder_is_counted_and_does_not_stop_the_writer(engine: Engine,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    ft.upgrade(engine)

    def broken() -> list[dict[str, Any]]:
        raise RuntimeError("bug")

    writer = PredictionLogWriter(engine, flush_interval=0.01)
    writer.submit_lazy(2, broken)
    writer.submit([_row(1)])
    with caplog.at_level(logging.ERROR, logger="inference_service.prediction_log"):
        stats = writer.start().close()
    assert stats["failed"] == 2 and stats["written"] == 1 and stats["pending"] == 0
    assert "could not build 2 row(s)" in caplog.text


def test_the_sqlite_multi_row_insert_stores_what_executemany_stores(tmp_path: Path) -> None:
    """The writer's own multi-row INSERT on SQLite (one GIL hand-over per 500 rows) against SQLAlchemy's
    executemany on another file: the same rows, read back byte for byte (timestamps, NULLs, unicode)."""
    from sqlalchemy import insert, text

    rows = [_row(i, created_at=ft.utcnow(), event_time=None if i % 3 else ft.utcnow(),
                 feature_version=None if i % 5 == 0 else i, record_id=f"C{i}-é✓") for i in range(1203)]
    ours = make_engine(f"sqlite:///{tmp_path / 'ours.db'}")
    ref = make_engine(f"sqlite:///{tmp_path / 'ref.db'}")
    try:
        for e in (ours, ref):
            ft.upgrade(e)
        writer = PredictionLogWriter(ours)
        with ours.begin() as conn:
            writer._insert(conn, rows)
        with ref.begin() as conn:
            conn.execute(insert(predictions), rows)
        q = text("SELECT * FROM fti_predictions ORDER BY prediction_id")
        with ours.connect() as a, ref.connect() as b:
            got, want = a.execute(q).all(), b.execute(q).all()
        assert len(got) == len(rows) and got == want
    finally:
        ours.dispose()
        ref.dispose()


def test_prediction_ids_are_uuid7_and_sort_by_time() -> None:
    from shared.prediction_table import new_prediction_id

    first = [new_prediction_id() for _ in range(1000)]
    time.sleep(0.002)
    later = new_prediction_id()
    assert len(set(first)) == 1000
    assert all(len(i) == 32 and uuid.UUID(i).version == 7 and uuid.UUID(i).variant == uuid.RFC_4122 for i in first)
    assert max(first) < later
    assert abs(int(later[:12], 16) - time.time_ns() // 1_000_000) < 5_000  # milliseconds of Unix time
