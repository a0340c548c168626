"""Shared pytest fixtures on REAL components (no mocks).

Session-scoped:
  * ``postgres_server`` / ``postgres_url`` - a throwaway PostgreSQL cluster
    (or the server in ``FTI_TEST_POSTGRES_URL``); the URL is a SQLAlchemy URL
    ``postgresql+psycopg://USER@127.0.0.1:PORT/DBNAME``.
  * ``mlflow_server`` - a real ``mlflow server`` subprocess (SQLite backend,
    proxied artifacts); ``.url`` and ``.log_path``.
  * ``claims_store`` - one trained claims store for the session (``fti features run`` +
    ``fti train`` on a small seeded source, SQLite + local MLflow); read it, or mutate a
    ``tests.helpers.copy_store`` of it.
Function-scoped:
  * ``pg_database`` - URL of a fresh, uniquely named database, dropped afterwards.
  * ``mlflow_env`` - points MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI at
    ``mlflow_server`` with short HTTP retries/timeouts; returns the server.

Servers start lazily, only when a test requests them. Start-up times are
printed in the terminal summary. Helpers (``free_port``, ``wait_until``,
``create_database``...) live in ``tests/infra/``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.infra.mlflow_server import MlflowServer
    from tests.infra.postgres import PostgresServer

_STARTUP_TIMES = pytest.StashKey[dict]()


def pytest_configure(config: pytest.Config) -> None:
    """The tests, and every process they start, run with the thread limit every ``fti`` command applies
    (``fti.threads``): on a loaded 2-core host default BLAS/OpenMP threads made a 1.4 s fit take 47 s."""
    from fti.threads import apply

    apply()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``FTI_TEST_PHASE=parallel`` leaves out the tests marked ``alone``, ``FTI_TEST_PHASE=serial`` keeps only
    them (scripts/test.sh runs the two phases one after the other): a latency bound such as "rolled back and
    served within 10 s" measures the system, not a second worker's load. Unset: every test runs."""
    phase = os.environ.get("FTI_TEST_PHASE", "")
    if phase not in ("parallel", "serial"):
        return
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        (keep if (item.get_closest_marker("alone") is not None) == (phase == "serial") else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def _record_startup(config: pytest.Config, name: str, seconds: float) -> None:
    config.stash.setdefault(_STARTUP_TIMES, {})[name] = seconds


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    times = config.stash.get(_STARTUP_TIMES, {})
    if times:
        parts = ", ".join(f"{k} {v:.2f}s" for k, v in times.items())
        terminalreporter.write_line(f"fti test infra start-up: {parts}")


# ------------------------------------------------------------------ PostgreSQL


@pytest.fixture(scope="session")
def postgres_server(request: pytest.FixtureRequest) -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole session.

    ``FTI_TEST_POSTGRES_URL`` (a SQLAlchemy URL) selects an existing server;
    otherwise a throwaway cluster is started from the local binaries and
    removed at the end. Missing binaries FAIL the requesting tests (never skip).
    """
    from tests.infra.postgres import (
        PostgresNotFound,
        PostgresServer,
        start_postgres,
        stop_postgres,
    )

    external = os.environ.get("FTI_TEST_POSTGRES_URL")
    if external:
        yield PostgresServer(url=external, external=True)
        return
    try:
        server = start_postgres()
    except PostgresNotFound as exc:
        pytest.fail(str(exc), pytrace=False)
    _record_startup(request.config, "postgres", server.startup_seconds)
    try:
        yield server
    finally:
        stop_postgres(server)


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    """SQLAlchemy URL of the session's test database (shared by all tests: clean up after you)."""
    return postgres_server.url


@pytest.fixture
def pg_database(postgres_url: str) -> Iterator[str]:
    """SQLAlchemy URL of a brand-new database, dropped (WITH FORCE) after the test."""
    from tests.infra.postgres import create_database, drop_database

    name = f"fti_t_{uuid.uuid4().hex[:16]}"
    url = create_database(postgres_url, name)
    try:
        yield url
    finally:
        drop_database(postgres_url, name)


# ---------------------------------------------------------------------- MLflow


@pytest.fixture(scope="session")
def mlflow_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MlflowServer]:
    """A real ``mlflow server`` for the whole session (``.url``, ``.log_path``)."""
    from tests.infra.mlflow_server import start_mlflow_server, stop_mlflow_server

    server = start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"))
    _record_startup(request.config, "mlflow", server.startup_seconds)
    try:
        yield server
    finally:
        stop_mlflow_server(server)


@pytest.fixture(scope="session")
def claims_store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One trained claims store for the whole session (see ``tests.helpers.train_claims_store``)."""
    import time

    from tests.helpers import train_claims_store

    t0 = time.perf_counter()
    store = train_claims_store(tmp_path_factory.mktemp("claims-store"))
    _record_startup(request.config, "claims store (features + train)", time.perf_counter() - t0)
    return store


@pytest.fixture
def mlflow_env(
    monkeypatch: pytest.MonkeyPatch, mlflow_server: MlflowServer
) -> MlflowServer:
    """Point the MLflow client at ``mlflow_server`` for one test; returns the server.

    Sets MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI, bounds client retries
    (MLFLOW_HTTP_REQUEST_MAX_RETRIES=1, MLFLOW_HTTP_REQUEST_TIMEOUT=10) and
    keeps loopback traffic off any HTTP proxy from the environment.
    """
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", mlflow_server.url)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    for var in ("NO_PROXY", "no_proxy"):
        current = os.environ.get(var, "")
        monkeypatch.setenv(
            var, ",".join(p for p in (current, "127.0.0.1,localhost") if p)
        )
    return mlflow_server


@pytest.fixture(autouse=True)
def _isolate_mlflow_globals() -> Iterator[None]:
    """Undo in-process ``mlflow.set_tracking_uri`` / ``set_registry_uri`` after each test.

    MLflow keeps both URIs in module globals and mirrors them into os.environ, so a
    test pointing at its own local store would otherwise redirect every later test.
    """
    import sys

    saved_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    yield
    if "mlflow" in sys.modules:
        from mlflow.tracking._model_registry import utils as registry_utils
        from mlflow.tracking._tracking_service import utils as tracking_utils

        tracking_utils._tracking_uri = None
        registry_utils._registry_uri = None
    for key, value in saved_env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
