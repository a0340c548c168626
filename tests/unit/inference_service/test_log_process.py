"""The prediction log's writer process on a real SQLite store: rows written by a child at a lower CPU
priority, equal to those the request's chunk builds; close writes everything; the child survives the
signals a process group gets; a backlog past the capacity blocks then drops, counted; a killed child's
rows are counted and the log goes on in a thread; a server that vanishes still gets its rows written."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from inference_service.log_process import ProcessLogWriter
from inference_service.log_rows import RequestChunk, epoch_micros
from shared import feature_table as ft
from shared.db import make_engine
from shared.prediction_table import new_prediction_id, predictions
from shared.spec import load_spec
from tests.helpers import raw_json_records, write_claims_spec


@pytest.fixture(scope="module")
def claims(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("logproc")
    spec_path = write_claims_spec(folder, n_policyholders=40)
    return {"spec": load_spec(spec_path).spec,
            "records": raw_json_records(folder / "raw" / "claims.csv", spec_path)[:60]}


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = make_engine(f"sqlite:///{tmp_path / 'features.db'}")
    with eng.connect():
        pass  # the file exists (the writer process opens it with must_exist)
    yield eng
    eng.dispose()


class Requests:
    """``/predict``-shaped hand-overs: the request body, the encoded answer, and the chunk they make."""

    def __init__(self, spec: Any, records: list[dict[str, Any]]):
        self.spec, self.records, self.chunks = spec, records, []
        self.at = 0

    def send(self, writer: Any, n: int = 1) -> int:
        part = [self.records[(self.at + i) % len(self.records)] for i in range(n)]
        self.at += n
        preds = [{"prediction_id": new_prediction_id(), "record_id": r[self.spec.record_id], "prediction": 1,
                  "probabilities": {"0": 0.25, "1": 0.75}} for r in part]
        body = json.dumps({"model_name": "m", "model_version": "4", "feature_version": 1, "predictions": preds},
                          separators=(",", ":")).encode()
        raw = json.dumps({"records": part}).encode()
        now = datetime(2026, 12, 6, 12, 0, 0, self.at)
        self.chunks.append(RequestChunk(self.spec, n, raw, body, f"req{self.at}", epoch_micros(now), None))
        return writer.log_request(n, raw, body, f"req{self.at}", now, None)


def _stored(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(predictions).order_by(predictions.c.prediction_id))]


def _wait(cond: Any, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"{what}: not met in {timeout}s"
        time.sleep(0.02)


def test_rows_are_built_and_written_by_a_child_process_at_a_lower_priority(claims: dict[str, Any],
                                                                          engine: Engine) -> None:
    ft.upgrade(engine)
    writer = ProcessLogWriter(engine, claims["spec"], flush_interval=0.01).start()
    reqs = Requests(claims["spec"], claims["records"])
    try:
        pid = writer.stats()["writer_pid"]
        assert pid and pid != os.getpid() and writer.stats()["mode"] == "process"
        for n in (1, 1, 5, 1, 20):
            assert reqs.send(writer, n) == 0
        _wait(lambda: writer.stats()["written"] == 28, what="28 rows written")
        assert os.getpriority(os.PRIO_PROCESS, pid) >= 10
        assert os.sched_getscheduler(pid) == os.SCHED_IDLE
        assert writer.stats()["writer_cpu_seconds"] > 0  # the child's CPU, not ours
    finally:
        stats = writer.close()
    assert stats["pending"] == 0 and stats["written"] == 28 and stats["dropped"] == stats["failed"] == 0
    want = sorted((row for c in reqs.chunks for row in c()), key=lambda r: r["prediction_id"])
    assert _stored(engine) == want
    assert not writer._proc.is_alive() and writer._proc.exitcode == 0


def test_close_writes_every_accepted_row_without_waiting_for_the_interval(claims: dict[str, Any],
                                                                        engine: Engine) -> None:
    ft.upgrade(engine)
    writer = ProcessLogWriter(engine, claims["spec"], flush_interval=30.0).start()
    reqs = Requests(claims["spec"], claims["records"])
    for _ in range(40):
        reqs.send(writer)
    stats = writer.close(timeout=20.0)
    assert stats["written"] == 40 and stats["pending"] == 0 and len(_stored(engine)) == 40


def test_the_child_ignores_the_signals_its_process_group_gets(claims: dict[str, Any], engine: Engine) -> None:
    """Ctrl-C (SIGINT) and a cgroup-wide SIGTERM reach every process of the group: the child stops only when the
    server closes it, after writing what it holds."""
    ft.upgrade(engine)
    writer = ProcessLogWriter(engine, claims["spec"], flush_interval=0.01).start()
    reqs = Requests(claims["spec"], claims["records"])
    try:
        _wait(lambda: writer._child_counts()["ready"] == 1, what="the child ready")
        for sig in (signal.SIGINT, signal.SIGTERM):
            os.kill(writer._proc.pid, sig)
        for _ in range(10):
            reqs.send(writer)
        _wait(lambda: writer.stats()["written"] == 10, what="10 rows written")
        assert writer._proc.is_alive()
    finally:
        stats = writer.close()
    assert stats["written"] == 10 and stats["pending"] == 0


def test_a_backlog_past_the_capacity_blocks_briefly_then_drops_counted(claims: dict[str, Any], engine: Engine,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Rows handed to the child and not yet written count against the capacity (no table yet: the child
    retries); then the table appears and every accepted row is written."""
    writer = ProcessLogWriter(engine, claims["spec"], max_queue=10, flush_interval=0.01, block_seconds=0.2).start()
    reqs = Requests(claims["spec"], claims["records"])
    try:
        assert reqs.send(writer, 5) == 0 and reqs.send(writer, 5) == 0
        _wait(lambda: writer._child_counts()["received"] == 10, what="the child holds 10 rows")
        assert reqs.send(writer, 5) == 5  # no room: dropped after waiting
        assert "dropped 5 row(s)" in caplog.text
        s = writer.stats()
        assert s["dropped"] == 5 and s["pending"] == 10 and s["written"] == 0
        _wait(lambda: writer.stats()["last_error"] is not None, what="the child's error reported")
        assert "fti_predictions" in writer.stats()["last_error"]  # no such table
        ft.upgrade(engine)
        _wait(lambda: writer.stats()["written"] == 10, what="10 rows written once the table exists")
    finally:
        stats = writer.close()
    assert stats["written"] == 10 and stats["dropped"] == 5 and stats["pending"] == 0


def test_a_killed_child_s_rows_are_counted_and_the_log_goes_on_in_a_thread(claims: dict[str, Any],
                                                                          engine: Engine) -> None:
    writer = ProcessLogWriter(engine, claims["spec"], flush_interval=0.01,  # no table: the child holds rows
                              fallback_flush_interval=0.005).start()
    reqs = Requests(claims["spec"], claims["records"])
    try:
        for _ in range(4):
            reqs.send(writer)
        _wait(lambda: writer._child_counts()["received"] == 4, what="the child holds 4 rows")
        os.kill(writer._proc.pid, signal.SIGKILL)
        _wait(lambda: writer.stats()["mode"] == "thread (fallback)", what="the fallback taken")
        assert writer._fallback is not None and writer._fallback.flush_interval == 0.005  # the thread's interval
        s = writer.stats()
        assert s["failed"] == 4 and "died" in s["last_error"] and "4 row(s)" in s["last_error"], s
        ft.upgrade(engine)
        for _ in range(3):
            assert reqs.send(writer) == 0
        _wait(lambda: writer.stats()["written"] == 3, what="the fallback writes")
    finally:
        stats = writer.close()
    assert stats["written"] == 3 and stats["failed"] == 4 and stats["pending"] == 0 and stats["submitted"] == 7
    assert {r["request_id"] for r in _stored(engine)} == {c.request_id for c in reqs.chunks[4:]}


def test_a_server_that_vanishes_still_gets_the_rows_it_handed_over_written(claims: dict[str, Any],
                                                                         engine: Engine) -> None:
    """The pipe closes without a close message (the server was killed, or exited without its shutdown): the
    child writes what it received, then exits."""
    ft.upgrade(engine)
    writer = ProcessLogWriter(engine, claims["spec"], flush_interval=0.01).start()
    reqs = Requests(claims["spec"], claims["records"])
    for _ in range(12):
        reqs.send(writer)
    _wait(lambda: writer._child_counts()["received"] == 12, what="the child holds 12 rows")
    writer._stop.set()
    writer._conn.close()
    writer._proc.join(30)
    assert writer._proc.exitcode == 0 and len(_stored(engine)) == 12


def test_a_burst_while_the_child_starts_is_bounded_by_the_server_not_dropped_by_the_child(
        claims: dict[str, Any], engine: Engine) -> None:
    """Rows in a pipe write that blocks (the child still importing, or busy) count against the capacity: the
    server blocks or drops, counted; the child never has more than it can hold, so it drops nothing."""
    writer = ProcessLogWriter(engine, claims["spec"], max_queue=4000, batch_size=50, flush_interval=0.005,
                              block_seconds=0.05).start()  # no table yet: the child holds what it gets
    reqs = Requests(claims["spec"], claims["records"])
    # 12,000 rows (~5 MB of frames: more than the pipe holds) at once, three times the capacity
    dropped = sum(reqs.send(writer, 200) for _ in range(60))
    _wait(lambda: writer._child_counts()["received"] == 12000 - dropped, what="the child got the accepted rows")
    time.sleep(0.3)
    assert writer._child_counts()["dropped"] == 0
    ft.upgrade(engine)
    _wait(lambda: writer.stats()["written"] == 12000 - dropped, what="the accepted rows written")
    stats = writer.close()
    assert writer._child_counts()["dropped"] == 0 and dropped > 0
    assert stats["dropped"] == dropped and stats["written"] == 12000 - dropped == stats["submitted"], stats
    assert stats["pending"] == 0 and len(_stored(engine)) == 12000 - dropped


def test_a_child_that_dies_before_it_is_ready_leaves_the_log_to_a_thread(claims: dict[str, Any],
                                                                         engine: Engine) -> None:
    ft.upgrade(engine)
    writer = ProcessLogWriter(engine, claims["spec"], flush_interval=0.01).start()
    reqs = Requests(claims["spec"], claims["records"])
    reqs.send(writer, 3)  # handed over before the child was ready
    os.kill(writer._proc.pid, signal.SIGKILL)
    try:
        assert writer.wait_ready(30) is False
        assert writer.stats()["mode"] == "thread (fallback)" and "died" in writer.stats()["last_error"]
        assert reqs.send(writer, 2) == 0
        _wait(lambda: writer.stats()["written"] + writer.stats()["failed"] == 5, what="all 5 rows accounted")
    finally:
        stats = writer.close()
    assert stats["written"] + stats["failed"] == 5 and stats["pending"] == 0, stats
    assert stats["written"] >= 2  # the rows handed over after the fallback, at least


def test_the_pump_sends_on_a_time_budget_not_per_batch_of_rows(claims: dict[str, Any], engine: Engine,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Each send makes the pump take the interpreter from the event loop mid-request: under a steady stream
    it sends once per flush interval, however many rows arrive (it used to send every 500 rows, in
    messages of 64 frames), and every row still arrives."""
    from inference_service import log_process

    sends: list[int] = []
    real = log_process._write_message

    def counting(fd: int, kind: bytes, pieces: list[bytes]) -> None:
        if kind == log_process._FRAMES:
            sends.append(len(pieces))
        real(fd, kind, pieces)

    monkeypatch.setattr(log_process, "_write_message", counting)
    ft.upgrade(engine)
    writer = ProcessLogWriter(engine, claims["spec"], flush_interval=0.4, batch_size=50).start()
    assert writer.wait_ready(60) and writer.mode == "process"
    reqs = Requests(claims["spec"], claims["records"])
    started = time.monotonic()
    try:
        while time.monotonic() - started < 1.5:  # ~1.5 s of hand-overs, far more than 50 rows a send
            for _ in range(50):
                assert reqs.send(writer) == 0
            time.sleep(0.005)
        elapsed = time.monotonic() - started
    finally:
        stats = writer.close()
    frames = len(reqs.chunks)
    assert frames > 1000 and sum(sends) == frames, (frames, sends)
    assert len(sends) <= elapsed / 0.4 + 2, sends  # one send per interval (+ the last one at close)
    assert stats["written"] == frames and len(_stored(engine)) == frames


def test_pipe_messages_survive_partial_writes_and_more_pieces_than_one_writev() -> None:
    """Messages larger than the pipe (the writer blocks part-way) and with more pieces than IOV_MAX arrive
    whole and in order; the reader says when the pipe closed, also mid-message."""
    import threading

    from inference_service import log_process

    r, w = os.pipe()
    sent = [[os.urandom(n % 97 + 1) for n in range(3000)], [b"x" * (3 << 20)], [b"tail"]]
    got: list[Any] = []
    reader = threading.Thread(target=lambda: got.extend(iter(lambda: log_process.read_message(r), None)))
    reader.start()
    try:
        for pieces in sent:
            log_process._write_message(w, log_process._FRAMES, pieces)
        os.write(w, log_process._MSG.pack(log_process._FRAMES, 100) + b"cut short")  # then the server dies
    finally:
        os.close(w)
        reader.join(30)
        os.close(r)
    assert got == [(log_process._FRAMES, b"".join(p)) for p in sent]


def test_a_take_is_cut_into_messages_of_bounded_size(monkeypatch: pytest.MonkeyPatch) -> None:
    from inference_service import log_process

    monkeypatch.setattr(log_process, "MAX_MESSAGE", 10)
    frames = [b"a" * 4, b"b" * 4, b"c" * 4, b"d" * 30, b"e", b"f" * 9]
    spans = list(log_process._messages(frames))
    assert spans == [(0, 2), (2, 3), (3, 4), (4, 6)]
    assert [f for k, end in spans for f in frames[k:end]] == frames
    assert list(log_process._messages([])) == []
