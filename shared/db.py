"""SQLAlchemy engines for the feature store, with the settings both backends need.

SQLite (the embedded default) gets WAL, a busy timeout and pysqlite's
transaction handling replaced by explicit ``BEGIN``, so a writer can take
``BEGIN IMMEDIATE`` and two feature jobs never interleave. PostgreSQL gets
pre-ping and a connect timeout, so a dead database fails fast with its name.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine, make_url

IMMEDIATE = "fti_sqlite_immediate"


def redact(url: str) -> str:
    """The URL without its password, for logs and manifests."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy URL: a path
        return url


def make_engine(url: str, *, must_exist: bool = False, **kwargs: Any) -> Engine:
    """``must_exist`` (SQLite): never create the file. A reader (the inference service) whose store file is
    deleted while it runs must fail to connect, not open a new empty file beside the old ``-wal``/``-shm``
    files (which SQLite would then apply to the wrong database)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            path = Path(parsed.database).expanduser()
            path.parent.mkdir(parents=True, exist_ok=True)
            if must_exist:
                import sqlite3

                target = path.resolve().as_uri().replace("file://", "file:", 1) + "?mode=rw"
                kwargs["creator"] = lambda: sqlite3.connect(target, uri=True, timeout=30, check_same_thread=False)
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)
        _sqlite_transactions(engine)
        return engine
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() == "postgresql":
        connect_args["connect_timeout"] = 5
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args, **kwargs)


def _sqlite_transactions(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get(IMMEDIATE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def copy_rows(conn: Connection, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    """``rows`` (tuples in ``columns``' order) through PostgreSQL's ``COPY ... FROM STDIN`` on ``conn``, in its
    open transaction; returns how many. Why: batched ``INSERT``\\ s of the feature job's rows ran at a third
    of ``COPY``'s rate (issue 14's measurements). psycopg formats each value with the dumpers it uses for
    bound parameters, so the stored values are those the inserts stored (both jobs' checksums are read back
    from the table in the PostgreSQL tests)."""
    if conn.dialect.name != "postgresql":
        raise ValueError(f"COPY is PostgreSQL's; this connection is {conn.dialect.name}")
    raw = conn.connection.driver_connection
    assert raw is not None  # an open connection's driver connection
    n = 0
    with raw.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for n, row in enumerate(rows, 1):  # noqa: B007 - the count is the result
            copy.write_row(row)
    return n
