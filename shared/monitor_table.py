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
from datetime import datetime
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


def save_decision(engine: Engine, row: dict[str, Any]) -> str:
    payload = json.dumps({k: (ft.iso_utc(v) if isinstance(v, datetime) else v) for k, v in row.items()},
                         sort_keys=True, default=str)
    did = hashlib.sha256(payload.encode()).hexdigest()[:32]
    with engine.begin() as conn:
        conn.execute(retrain_decisions.insert().values(decision_id=did, **row))
    return did


def list_decisions(engine: Engine, model_name: str, *, limit: int = 100) -> list[dict[str, Any]]:
    ft.check_schema(engine, minimum=MONITOR_TABLES_REVISION)
    t = retrain_decisions
    with engine.connect() as conn:
        rows = conn.execute(select(t).where(t.c.model_name == model_name)
                            .order_by(t.c.created_at.desc(), t.c.decision_id).limit(limit)).all()
    return [dict(r._mapping) for r in rows]


__all__ = ["MONITOR_TABLES_REVISION", "drift_reports", "get_report", "list_decisions", "list_reports",
           "report_id", "retrain_decisions", "save_decision", "save_report"]
