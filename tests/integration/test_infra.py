"""Smoke tests proving the real-component fixtures in tests/conftest.py work."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_postgres_select_version(postgres_url: str) -> None:
    import sqlalchemy as sa

    assert postgres_url.startswith("postgresql+psycopg://")
    engine = sa.create_engine(postgres_url, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            version = conn.execute(sa.text("SELECT version()")).scalar_one()
    finally:
        engine.dispose()
    assert version.startswith("PostgreSQL ")


def test_pg_database_is_fresh_and_dropped(postgres_url: str, pg_database: str) -> None:
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    name = make_url(pg_database).database
    assert name != make_url(postgres_url).database
    engine = sa.create_engine(pg_database)
    try:
        with engine.begin() as conn:
            assert (
                conn.execute(sa.text("SELECT current_database()")).scalar_one() == name
            )
            # Fresh database: no user tables yet.
            assert (
                conn.execute(
                    sa.text(
                        "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
                    )
                ).scalar_one()
                == 0
            )
            conn.execute(sa.text("CREATE TABLE t (x int)"))
            conn.execute(sa.text("INSERT INTO t VALUES (1), (2)"))
            assert conn.execute(sa.text("SELECT sum(x) FROM t")).scalar_one() == 3
    finally:
        engine.dispose()

    # The helper used by the fixture's finalizer drops it even with a session open.
    from tests.infra.postgres import create_database, drop_database

    other = f"fti_t_{uuid.uuid4().hex[:16]}"
    other_engine = sa.create_engine(create_database(postgres_url, other))
    try:
        held = other_engine.connect()  # an open session must not block the drop
        drop_database(postgres_url, other)
        held.invalidate()
    finally:
        other_engine.dispose()
    admin = sa.create_engine(postgres_url)
    try:
        with admin.connect() as conn:
            names = set(
                conn.execute(sa.text("SELECT datname FROM pg_database")).scalars()
            )
    finally:
        admin.dispose()
    assert other not in names
    assert name in names


def test_mlflow_server_over_http(mlflow_env, tmp_path) -> None:
    import mlflow

    server = mlflow_env
    client = mlflow.MlflowClient(tracking_uri=server.url)
    names = [e.name for e in client.search_experiments()]
    assert "Default" in names

    exp_id = client.create_experiment(f"infra-{uuid.uuid4().hex[:8]}")
    run = client.create_run(exp_id)
    client.log_param(run.info.run_id, "alpha", "0.5")
    client.log_metric(run.info.run_id, "score", 0.75)
    # Server-proxied artifacts: upload and download through the HTTP server.
    client.log_text(run.info.run_id, "hello", "notes/hello.txt")
    client.set_terminated(run.info.run_id)

    fetched = client.get_run(run.info.run_id)
    assert fetched.data.params == {"alpha": "0.5"}
    assert fetched.data.metrics == {"score": 0.75}
    assert fetched.info.artifact_uri.startswith("mlflow-artifacts:")
    local = client.download_artifacts(run.info.run_id, "notes/hello.txt", str(tmp_path))
    assert Path(local).read_text() == "hello"
    # The bytes landed in the server's --artifacts-destination.
    assert list(server.artifacts_dir.rglob("hello.txt"))
