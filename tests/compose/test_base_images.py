"""The local base images built by ``scripts/build-base-images.sh`` (see docker/README.md).

On hosts that cannot pull from a registry, these stand in for ``python:3.11-slim-bookworm``
and ``postgres:15``. The session fixture runs the script once (idempotent: it skips images
that exist; a cold build takes minutes). Skipped only when the Docker daemon is unreachable.

Every container, volume and name created here starts with ``fti-test-base-<random>`` and is
removed in a finalizer.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

pytestmark = [pytest.mark.compose, pytest.mark.slow, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "build-base-images.sh"
BASE_IMAGE = os.environ.get("FTI_BASE_IMAGE", "fti-local/python:3.11-bookworm")
PG_IMAGE = os.environ.get("FTI_POSTGRES_IMAGE", "fti-local/postgres:15")
PREFIX = f"fti-test-base-{uuid.uuid4().hex[:8]}"
HEALTHY_WITHIN_S = 60


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"docker {' '.join(args)} exited {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
        )
    return proc


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def docker_daemon() -> None:
    if shutil.which("docker") is None:
        pytest.skip("no docker CLI on this machine (docker info cannot run)")
    try:
        proc = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.skip("docker info timed out: no usable Docker daemon")
    if proc.returncode != 0:
        pytest.skip(f"docker info failed, no usable Docker daemon: {proc.stderr.strip()[-300:]}")


@pytest.fixture(scope="session")
def base_images(docker_daemon: None) -> None:
    """Run scripts/build-base-images.sh once per session (a no-op when the images exist)."""
    started = time.monotonic()
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=1700, cwd=ROOT)
    if proc.returncode != 0:
        pytest.fail(
            f"scripts/build-base-images.sh exited {proc.returncode} after {time.monotonic() - started:.0f}s:\n"
            + "\n".join(proc.stderr.splitlines()[-40:]),
            pytrace=False,
        )
    assert f"export FTI_BASE_IMAGE={BASE_IMAGE}" in proc.stdout, proc.stdout
    for image in (BASE_IMAGE, PG_IMAGE):
        docker("image", "inspect", image)


@pytest.fixture
def cleanup() -> Iterator[Callable[[str, str], None]]:
    """Register ('container'|'volume', name) for forced removal at teardown."""
    registered: list[tuple[str, str]] = []
    yield lambda kind, name: registered.append((kind, name))
    for kind, name in reversed(registered):
        if kind == "container":
            docker("rm", "--force", "--volumes", name, check=False)
        else:
            docker("volume", "rm", "--force", name, check=False)


@dataclass
class Pg:
    name: str
    port: int
    user: str
    password: str
    db: str
    ready_seconds: float

    def connect(self, password: str | None = None) -> psycopg.Connection:
        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=self.user,
            password=self.password if password is None else password,
            dbname=self.db,
            connect_timeout=10,
        )


def start_postgres(
    register: Callable[[str, str], None],
    suffix: str,
    *,
    user: str = "fti_user",
    password: str = "s3cret pass",  # a space: quoting must be right all the way through
    db: str = "fti_db",
    extra: tuple[str, ...] = (),
) -> Pg:
    """Start the postgres image with the official contract's env vars and wait for healthy."""
    name = f"{PREFIX}-{suffix}"
    register("container", name)
    docker(
        "run", "--detach", "--rm", "--name", name,
        "--env", f"POSTGRES_USER={user}",
        "--env", f"POSTGRES_PASSWORD={password}",
        "--env", f"POSTGRES_DB={db}",
        "--publish", "127.0.0.1::5432",
        # What a compose healthcheck would do; -h forces TCP, so the unix-socket-only
        # server of the init phase does not count as ready.
        "--health-cmd", f"pg_isready -h 127.0.0.1 -p 5432 -U {user} -d {db}",
        "--health-interval", "1s", "--health-timeout", "5s", "--health-retries", "120",
        *extra,
        PG_IMAGE,
    )  # fmt: skip
    started = time.monotonic()
    status = ""
    while time.monotonic() - started < HEALTHY_WITHIN_S:
        proc = docker("inspect", "--format", "{{.State.Status}} {{.State.Health.Status}}", name, check=False)
        status = proc.stdout.strip()
        if status == "running healthy":
            break
        if proc.returncode != 0 or not status.startswith(("running", "created")):
            break
        time.sleep(0.5)
    ready = time.monotonic() - started
    if status != "running healthy":
        logs = docker("logs", "--tail", "40", name, check=False)
        pytest.fail(
            f"{name} not healthy within {HEALTHY_WITHIN_S}s (status {status!r}):\n{logs.stdout}{logs.stderr}",
            pytrace=False,
        )
    mapping = docker("port", name, "5432/tcp").stdout.split()[0]  # 127.0.0.1:49153
    return Pg(name=name, port=int(mapping.rsplit(":", 1)[1]), user=user, password=password, db=db, ready_seconds=ready)


@pytest.fixture(scope="module")
def pg(base_images: None) -> Iterator[Pg]:
    registered: list[tuple[str, str]] = []
    try:
        yield start_postgres(lambda kind, name: registered.append((kind, name)), "pg")
    finally:
        for _, name in registered:
            docker("rm", "--force", "--volumes", name, check=False)


# ------------------------------------------------------------------ python image


def test_python_image_has_python3_ssl_venv(base_images: None) -> None:
    code = (
        "import ssl, venv, sys, sqlite3, zoneinfo; print(sys.version); "
        "zoneinfo.ZoneInfo('Europe/Paris'); "
        "print(ssl.create_default_context().cert_store_stats()['x509_ca'])"
    )
    proc = docker("run", "--rm", "--name", f"{PREFIX}-py", BASE_IMAGE, "python3", "-c", code)
    version, ca_count = proc.stdout.split("\n")[:2]
    assert version.startswith("3.11."), proc.stdout
    assert int(ca_count) > 100, "the CA bundle (ca-certificates) is missing"


def test_python_image_has_python_alias_and_default_cmd(base_images: None) -> None:
    proc = docker("run", "--rm", "--name", f"{PREFIX}-alias", BASE_IMAGE, "python", "--version")
    assert proc.stdout.strip().startswith("Python 3.11."), proc.stdout + proc.stderr
    config = docker("image", "inspect", "--format", "{{json .Config.Cmd}} {{json .Config.Env}}", BASE_IMAGE).stdout
    assert '["python3"]' in config and "LANG=C.UTF-8" in config, config


def test_python_image_creates_a_venv_with_pip(base_images: None) -> None:
    proc = docker(
        "run", "--rm", "--name", f"{PREFIX}-venv", BASE_IMAGE,
        "sh", "-c", "python3 -m venv /tmp/venv && /tmp/venv/bin/python -m pip --version",
    )  # fmt: skip
    assert proc.stdout.startswith("pip "), proc.stdout + proc.stderr


# ------------------------------------------------------------------ postgres image


def test_postgres_becomes_healthy_within_60s(pg: Pg) -> None:
    assert pg.ready_seconds < HEALTHY_WITHIN_S
    proc = docker("exec", pg.name, "pg_isready", "-h", "127.0.0.1", "-U", pg.user, "-d", pg.db)
    assert "accepting connections" in proc.stdout


def test_postgres_accepts_the_configured_user_password_and_db(pg: Pg) -> None:
    with pg.connect() as conn:
        user, db, version, collate = conn.execute(
            "SELECT current_user, current_database(), current_setting('server_version_num'), datcollate "
            "FROM pg_database WHERE datname = current_database()"
        ).fetchone()
        is_superuser = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]
        password_hash = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = current_user").fetchone()[0]
    assert (user, db) == (pg.user, pg.db)
    assert version.startswith("15")
    assert collate == "en_US.utf8"  # the official image's default locale
    assert is_superuser
    assert password_hash.startswith("SCRAM-SHA-256$")


def test_postgres_refuses_a_wrong_password(pg: Pg) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        pg.connect(password="wrong").close()


def test_postgres_server_runs_as_non_root(pg: Pg) -> None:
    # The entrypoint starts as root (to fix PGDATA ownership, like the official image) and
    # execs the server as `postgres` via setpriv: PID 1 is postgres, not root. (`docker exec`
    # itself still runs as root by default, as with the official image.)
    status = docker("exec", pg.name, "cat", "/proc/1/status").stdout
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    comm = docker("exec", pg.name, "cat", "/proc/1/comm").stdout.strip()
    postgres_uid = docker("exec", pg.name, "id", "-u", "postgres").stdout.strip()
    assert comm == "postgres"
    assert set(uids) == {postgres_uid} and postgres_uid != "0", status
    assert docker("exec", "--user", "postgres", pg.name, "id", "-u").stdout.strip() != "0"


def test_postgres_without_password_fails_clearly(base_images: None, cleanup) -> None:
    name = f"{PREFIX}-nopw"
    cleanup("container", name)
    proc = docker("run", "--rm", "--name", name, PG_IMAGE, check=False, timeout=60)
    assert proc.returncode != 0
    assert "superuser password is not specified" in proc.stderr
    assert "POSTGRES_PASSWORD" in proc.stderr


def test_postgres_docker_stop_is_a_fast_shutdown(base_images: None, cleanup) -> None:
    server = start_postgres(cleanup, "stop")
    conn = server.connect()  # an open client session would block a "smart" (SIGTERM) shutdown
    try:
        conn.execute("SELECT 1")
        started = time.monotonic()
        docker("stop", "--time", "30", server.name, timeout=60)
        elapsed = time.monotonic() - started
        # Fast shutdown terminates the session ("terminating connection due to administrator command").
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    finally:
        conn.close()
    assert elapsed < 10, f"docker stop took {elapsed:.1f}s (SIGKILL after the 30 s grace period?)"


def test_postgres_runs_initdb_scripts_once_and_keeps_data(base_images: None, cleanup, tmp_path: Path) -> None:
    initdb = tmp_path / "initdb"
    initdb.mkdir(mode=0o755)
    initdb.chmod(0o755)
    (initdb / "01-schema.sql").write_text("CREATE TABLE marker (n int); INSERT INTO marker VALUES (42);\n")
    (initdb / "02-note.sh").write_text('echo "fti-initdb-sh ran as $(id -un) for $POSTGRES_DB"\n')
    (initdb / "03-readme.txt").write_text("ignored\n")
    for f in initdb.iterdir():
        f.chmod(0o644)
    # Executable: run as a child process (like docker/postgres/init/10-fti-databases.sh).
    (initdb / "04-more.sh").write_text(
        '#!/bin/sh\nset -eu\npsql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" '
        '-c "CREATE DATABASE extra_db OWNER \\"$POSTGRES_USER\\""\n'
    )
    (initdb / "04-more.sh").chmod(0o755)
    volume = f"{PREFIX}-data"
    cleanup("volume", volume)
    mounts = ("--volume", f"{volume}:/var/lib/postgresql/data", "--volume", f"{initdb}:/docker-entrypoint-initdb.d:ro")

    first = start_postgres(cleanup, "init1", extra=mounts)
    with first.connect() as conn:
        assert conn.execute("SELECT n FROM marker").fetchall() == [(42,)]
        assert conn.execute("SELECT 1 FROM pg_database WHERE datname = 'extra_db'").fetchone() == (1,)
    logs = docker("logs", first.name)
    assert "fti-initdb-sh ran as postgres for fti_db" in logs.stdout + logs.stderr
    assert "ignoring /docker-entrypoint-initdb.d/03-readme.txt" in logs.stderr
    docker("stop", first.name, timeout=60)

    # Second start on the same data: no initialisation, scripts not re-run, data kept;
    # the password is the one stored at initdb (the env var only matters on first start).
    second = start_postgres(cleanup, "init2", extra=mounts, password="s3cret pass")
    with second.connect() as conn:
        assert conn.execute("SELECT n FROM marker").fetchall() == [(42,)]
    logs = docker("logs", second.name)
    assert "skipping initialisation" in logs.stderr
    assert "fti-initdb-sh" not in logs.stdout + logs.stderr
