"""The monitoring contract: drift reports and retraining decisions (store schema revision 0004).

Two tables beside the prediction log, so a report joins with the predictions it read and the
feature versions they used without a second store:

* ``fti_drift_reports`` -- one row per (model version, window): the window's bounds, its row
  count, the verdict columns a dashboard filters on (status, drift share, drifted features,
  prediction drift, realized performance) and the full report as canonical JSON. The
  ``report_id`` is the sha256 of that JSON (its first 32 hex digits): the same window gives the
  same bytes, so re-running the monitor over the same log writes nothing new.
* ``fti_retrain_decisions`` -- every retraining-policy decision: what triggered it (or why
  nothing did), the report ids it read, the candidate and champion scores, the verdict, and the
  alias move. Replayable: the reports it names are kept, and the decision records the policy it
  applied.

Written by the monitor (``monitoring_service``), read by it and by ``fti monitor`` commands.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    select,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine

from shared import feature_table as ft

MONITOR_TABLES_REVISION = "0004"

drift_reports = Table(
    "fti_drift_reports", ft.metadata,
    Column("report_id", String(32), nullable=False),
    Column("dataset", String(64), nullable=False),
    Column("model_name", String(128), nullable=False),
    Column("model_version", String(32), nullable=False),
    Column("window_kind", String(16), nullable=False),  # "rows" or "period"
    Column("window_start", DateTime, nullable=False),  # created_at of the first logged prediction
    Column("window_end", DateTime, nullable=False),  # ... of the last
    Column("rows", Integer, nullable=False),
    Column("status", String(32), nullable=False),  # "ok" or "insufficient data"
    Column("drift_share", Float, nullable=True),
    Column("drifted", JSON, nullable=False),
    Column("prediction_drift", Boolean, nullable=True),
    Column("labeled_rows", Integer, nullable=False),
    Column("performance", JSON, nullable=True),
    Column("report", Text, nullable=False),
    Column("created_at", DateTime, nullable=False),
    PrimaryKeyConstraint("report_id", name="pk_fti_drift_reports"),
    Index("ix_fti_drift_reports_model", "model_name", "window_end"),
)

retrain_decisions = Table(
    "fti_retrain_decisions", ft.metadata,
    Column("decision_id", String(32), nullable=False),
    Column("dataset", String(64), nullable=False),
    Column("model_name", String(128), nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("action", String(32), nullable=False),  # none / cooldown / busy / retrained / refused / rollback / failed
    Column("trigger", JSON, nullable=False),
    Column("report_ids", JSON, nullable=False),
    Column("champion_version", String(32), nullable=True),
    Column("candidate_version", String(32), nullable=True),
    Column("champion_score", Float, nullable=True),
    Column("candidate_score", Float, nullable=True),
    Column("verdict", Text, nullable=False),
    Column("details", JSON, nullable=False),
    PrimaryKeyConstraint("decision_id", name="pk_fti_retrain_decisions"),
    Index("ix_fti_retrain_decisions_model", "model_name", "created_at"),
)


def report_id(report_json: str) -> str:
    return hashlib.sha256(report_json.encode()).hexdigest()[:32]


def save_report(engine: Engine, row: dict[str, Any]) -> bool:
    """Insert a report row unless its id is there already; True if it was new."""
    dialect = engine.dialect.name
    table = drift_reports
    stmt: Any
    if dialect == "postgresql":
        stmt = pg_insert(table).values(**row).on_conflict_do_nothing(index_elements=["report_id"])
    elif dialect == "sqlite":
        stmt = sqlite_insert(table).values(**row).on_conflict_do_nothing(index_elements=["report_id"])
    else:  # pragma: no cover - fti supports SQLite and PostgreSQL
        with engine.connect() as conn:
            if conn.execute(select(table.c.report_id).where(table.c.report_id == row["report_id"])).first():
                return False
        stmt = table.insert().values(**row)
    with engine.begin() as conn:
        return bool(conn.execute(stmt).rowcount)


def save_reports(engine: Engine, rows: list[dict[str, Any]]) -> int:
    """Insert report rows (one transaction) unless their ids are there already; how many were new."""
    if not rows:
        return 0
    dialect = engine.dialect.name
    table = drift_reports
    if dialect not in ("postgresql", "sqlite"):  # pragma: no cover - fti supports SQLite and PostgreSQL
        return sum(save_report(engine, r) for r in rows)
    new = 0
    with engine.begin() as conn:
        for row in rows:
            stmt = (pg_insert if dialect == "postgresql" else sqlite_insert)(table).values(**row) \
                .on_conflict_do_nothing(index_elements=["report_id"])
            new += int(bool(conn.execute(stmt).rowcount))
    return new


WindowKey = tuple[str, datetime, datetime, int]  # (window kind, first and last created_at, rows)


def reported_windows(engine: Engine, model_name: str, model_version: str) -> dict[WindowKey, dict[Any, str]]:
    """The windows of a model version already reported: key -> {the feature version its labels came from:
    report id} (a window is reported again when a newer feature version may hold more of its labels)."""
    ft.check_schema(engine, minimum=MONITOR_TABLES_REVISION)
    t = drift_reports
    out: dict[WindowKey, dict[Any, str]] = {}
    with engine.connect() as conn:
        rows = conn.execute(select(t.c.window_kind, t.c.window_start, t.c.window_end, t.c.rows, t.c.performance,
                                   t.c.report_id)
                            .where(t.c.model_name == model_name, t.c.model_version == str(model_version))
                            .order_by(t.c.created_at, t.c.report_id))
        for kind, start, end, n, performance, rid in rows:
            perf = performance if isinstance(performance, dict) else json.loads(performance or "{}")
            key = (str(kind), ft.naive_utc(start), ft.naive_utc(end), int(n))
            out.setdefault(key, {})[perf.get("labels_from_feature_version")] = str(rid)
    return out


def list_reports(engine: Engine, model_name: str, *, limit: int = 100) -> list[dict[str, Any]]:
    """The latest reports of a model, newest window first."""
    ft.check_schema(engine, minimum=MONITOR_TABLES_REVISION)
    t = drift_reports
    with engine.connect() as conn:
        rows = conn.execute(select(t).where(t.c.model_name == model_name)
                            .order_by(t.c.window_end.desc(), t.c.report_id).limit(limit)).all()
    return [dict(r._mapping) for r in rows]


def get_report(engine: Engine, rid: str) -> dict[str, Any] | None:
    ft.check_schema(engine, minimum=MONITOR_TABLES_REVISION)
    with engine.connect() as conn:
        row = conn.execute(select(drift_reports).where(drift_reports.c.report_id == rid)).first()
    return dict(row._mapping) if row is not None else None


def _decision_id(row: dict[str, Any], salt: str = "") -> str:
    """sha256 (first 32 hex digits) of the row's canonical JSON, plus ``salt``."""
    payload = json.dumps({k: (ft.iso_utc(v) if isinstance(v, datetime) else v) for k, v in row.items()},
                         sort_keys=True, default=str)
    return hashlib.sha256((payload + salt).encode()).hexdigest()[:32]


def save_decision(engine: Engine, row: dict[str, Any]) -> str:
    did = _decision_id(row)
    with engine.begin() as conn:
        conn.execute(retrain_decisions.insert().values(decision_id=did, **row))
    return did


# A retraining travels through these states in its one row: the monitor requests it, the feature
# pipeline builds and checks a version, the training pipeline trains and gates -- each in its own
# process or container, handing over through this table (no process starts another).
IN_FLIGHT = ("requested", "building", "features_ready", "training")
FINAL = ("retrained", "refused", "failed")


def _lock_id(model_name: str) -> str:
    return "lock-" + hashlib.sha256(model_name.encode()).hexdigest()[:27]


def request(engine: Engine, row: dict[str, Any], *, stale_after: timedelta = timedelta(hours=6)) -> str | None:
    """Insert a ``requested`` retraining unless one of the model is in flight (then None). A fixed-id
    lock row makes two monitors deciding at once insert one request; a lock older than ``stale_after``
    (a crashed worker) is taken over."""
    from sqlalchemy import delete
    from sqlalchemy.exc import IntegrityError

    t = retrain_decisions
    lock = _lock_id(row["model_name"])
    now = ft.utcnow()
    with engine.begin() as conn:
        held = conn.execute(select(t.c.created_at).where(t.c.decision_id == lock)).first()
        if held is not None and now - held.created_at > stale_after:
            conn.execute(delete(t).where(t.c.decision_id == lock))
            conn.execute(t.update().where(t.c.model_name == row["model_name"], t.c.action.in_(IN_FLIGHT))
                         .values(action="failed", verdict="abandoned: no progress for " + str(stale_after)))
    did = _decision_id(row, now.isoformat())
    try:
        with engine.begin() as conn:
            conn.execute(t.insert().values(decision_id=lock, dataset=row["dataset"], model_name=row["model_name"],
                                           created_at=now, action="lock", trigger={}, report_ids=[],
                                           verdict=f"retraining {did} in flight", details={}))
            conn.execute(t.insert().values(**{**row, "decision_id": did, "action": "requested", "created_at": now}))
    except IntegrityError:
        return None
    return did


def claim(engine: Engine, decision_id: str, from_action: str, to_action: str) -> bool:
    """Move a retraining from one state to the next; False if another worker moved it first."""
    t = retrain_decisions
    with engine.begin() as conn:
        done = conn.execute(t.update().where(t.c.decision_id == decision_id, t.c.action == from_action)
                            .values(action=to_action))
    return bool(done.rowcount)


def update(engine: Engine, decision_id: str, **fields: Any) -> None:
    """Change a retraining's fields; a final ``action`` also releases the model's lock."""
    from sqlalchemy import delete

    t = retrain_decisions
    with engine.begin() as conn:
        conn.execute(t.update().where(t.c.decision_id == decision_id).values(**fields))
        if fields.get("action") in FINAL:
            row = conn.execute(select(t.c.model_name).where(t.c.decision_id == decision_id)).first()
            if row is not None:
                conn.execute(delete(t).where(t.c.decision_id == _lock_id(row.model_name)))


def pending(engine: Engine, dataset: str, action: str) -> dict[str, Any] | None:
    """The oldest retraining of ``dataset`` waiting in state ``action``."""
    t = retrain_decisions
    with engine.connect() as conn:
        row = conn.execute(select(t).where(t.c.dataset == dataset, t.c.action == action)
                           .order_by(t.c.created_at, t.c.decision_id).limit(1)).first()
    return dict(row._mapping) if row is not None else None


def get_decision(engine: Engine, decision_id: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(select(retrain_decisions).where(retrain_decisions.c.decision_id == decision_id)).first()
    return dict(row._mapping) if row is not None else None


def list_decisions(engine: Engine, model_name: str, *, limit: int = 100) -> list[dict[str, Any]]:
    """A model's decisions, newest first (the in-flight lock row is bookkeeping, not a decision)."""
    ft.check_schema(engine, minimum=MONITOR_TABLES_REVISION)
    t = retrain_decisions
    with engine.connect() as conn:
        rows = conn.execute(select(t).where(t.c.model_name == model_name, t.c.action != "lock")
                            .order_by(t.c.created_at.desc(), t.c.decision_id).limit(limit)).all()
    return [dict(r._mapping) for r in rows]


__all__ = ["FINAL", "IN_FLIGHT", "MONITOR_TABLES_REVISION", "claim", "drift_reports", "get_decision", "get_report",
           "list_decisions", "list_reports", "pending", "report_id", "reported_windows", "request", "retrain_decisions",
           "save_decision", "save_report", "save_reports", "update", "WindowKey"]
