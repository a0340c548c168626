"""Throwaway PostgreSQL server for tests, built from the machine's PostgreSQL binaries.

``start_postgres()`` runs ``initdb`` into a fresh temp dir, starts the server with
``pg_ctl`` on 127.0.0.1:<free port> (unix socket inside the temp dir, fsync off,
trust auth), creates one database and returns a :class:`PostgresServer`.
``stop_postgres()`` stops it (``pg_ctl stop -m fast``, SIGKILL as a last resort)
and deletes the temp dir.

PostgreSQL refuses to run as root, so when we are root every server command
runs as the ``postgres`` system user (created by Debian's package; if absent a
system user ``fti-pgtest`` is created) via ``runuser``.

``create_database()`` / ``drop_database()`` manage extra databases on any server
(also an external one given by ``FTI_TEST_POSTGRES_URL``).
"""

from __future__ import annotations

import glob
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.infra.ports import free_port, log_tail, wait_until

SUPERUSER = "postgres"
"""Superuser name given to ``initdb -U``; the URL user (trust auth, no password)."""

INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl) were not found on PATH nor in "
    "/usr/lib/postgresql/*/bin. Run `bash .ci/run` (installs them) or "
    "`apt-get install postgresql`, or point FTI_TEST_POSTGRES_URL at an existing "
    "server (postgresql+psycopg://user:pass@host:port/db, user needs CREATEDB)."
)


class PostgresNotFound(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


class PostgresStartError(RuntimeError):
    """The throwaway server could not be initialised or started."""


@dataclass
class PostgresServer:
    """A running PostgreSQL server plus one database on it."""

    url: str
    """SQLAlchemy URL of the test database (``postgresql+psycopg://...``)."""
    external: bool = False
    """True if the server came from FTI_TEST_POSTGRES_URL (we never stop it)."""
    port: int | None = None
    base_dir: Path | None = None
    """Temp dir holding ``data/``, the unix socket and ``postgres.log``."""
    bin_dir: Path | None = None
    run_as: str | None = None
    """System user the server runs as (None: the current user)."""
    startup_seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path | None:
        return self.base_dir / "data" if self.base_dir else None

    @property
    def log_path(self) -> Path | None:
        return self.base_dir / "postgres.log" if self.base_dir else None


# ---------------------------------------------------------------- URL helpers


def to_conninfo(url: str) -> str:
    """SQLAlchemy URL (``postgresql+psycopg://...``) -> libpq URI for ``psycopg.connect``."""
    from sqlalchemy.engine import make_url

    return (
        make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    )


def with_database(url: str, dbname: str) -> str:
    """Same server/credentials as ``url``, other database name (SQLAlchemy URL)."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(database=dbname).render_as_string(hide_password=False)


def _connect(url: str, *, timeout: int = 5):
    import psycopg

    return psycopg.connect(to_conninfo(url), autocommit=True, connect_timeout=timeout)


def create_database(server_url: str, dbname: str) -> str:
    """``CREATE DATABASE dbname`` on the server of ``server_url``; return its SQLAlchemy URL."""
    from psycopg import sql

    with _connect(server_url) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    return with_database(server_url, dbname)


def drop_database(server_url: str, dbname: str) -> None:
    """``DROP DATABASE IF EXISTS dbname WITH (FORCE)`` (terminates open sessions; PG >= 13)."""
    from psycopg import sql

    with _connect(server_url) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(dbname)
            )
        )


def can_connect(url: str) -> bool:
    """True if ``SELECT 1`` succeeds on ``url`` within a 2 s connect timeout."""
    import psycopg

    try:
        with _connect(url, timeout=2) as conn:
            conn.execute("SELECT 1")
        return True
    except (psycopg.Error, OSError):
        return False


# ------------------------------------------------------------ local server


def find_pg_bin() -> Path | None:
    """Directory holding ``initdb`` and ``pg_ctl``: PATH first, then the newest
    ``/usr/lib/postgresql/<ver>/bin``. None if not installed."""
    initdb = shutil.which("initdb")
    if initdb and (Path(initdb).parent / "pg_ctl").exists():
        return Path(initdb).parent

    def version_key(path: str) -> tuple[int, ...]:
        ver = Path(path).parent.parent.name
        return tuple(int(p) for p in ver.split(".") if p.isdigit())

    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version_key)
    for initdb in reversed(candidates):
        if (Path(initdb).parent / "pg_ctl").exists():
            return Path(initdb).parent
    return None


def _ensure_service_user() -> str:
    """As root: the system user to run PostgreSQL as (``postgres``, else create ``fti-pgtest``)."""
    for name in ("postgres", "fti-pgtest"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            pass
    subprocess.run(
        [
            "useradd",
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "fti-pgtest",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return "fti-pgtest"


def _as_user(cmd: Sequence[str], user: str | None) -> list[str]:
    """Prefix ``cmd`` so it runs as ``user`` (no-op when ``user`` is None)."""
    if user is None:
        return list(cmd)
    if shutil.which("runuser"):
        return ["runuser", "-u", user, "--", *cmd]
    return ["su", "-s", "/bin/sh", user, "-c", shlex.join(cmd)]


def _run(cmd: list[str], *, cwd: Path, timeout: float, what: str) -> None:
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    try:
        res = subprocess.run(
            cmd,
            check=False,
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        raise PostgresStartError(
            f"{what} timed out after {timeout:.0f}s: {shlex.join(cmd)}"
        ) from exc
    if res.returncode != 0:
        raise PostgresStartError(
            f"{what} failed (exit {res.returncode}): {shlex.join(cmd)}\n"
            f"--- stdout ---\n{res.stdout[-3000:]}\n--- stderr ---\n{res.stderr[-3000:]}"
        )


def start_postgres(
    dbname: str = "fti_test", *, timeout: float = 30.0, attempts: int = 3
) -> PostgresServer:
    """Create and start a throwaway server with database ``dbname``.

    Raises :class:`PostgresNotFound` if the binaries are missing and
    :class:`PostgresStartError` (with the server log tail) if start-up fails.
    Readiness is polled for at most ``timeout`` seconds per attempt; a bind
    race on the chosen port is retried with a new port (``attempts`` times).
    On any failure everything started is stopped and the temp dir removed.
    """
    bin_dir = find_pg_bin()
    if bin_dir is None:
        raise PostgresNotFound(INSTALL_HINT)

    t0 = time.monotonic()
    run_as = _ensure_service_user() if os.geteuid() == 0 else None
    # /tmp as root: the service user must be able to traverse the path, and the
    # socket path must stay short (< 108 bytes).
    base = Path(tempfile.mkdtemp(prefix="fti-pg-", dir="/tmp" if run_as else None))
    server = PostgresServer(
        url="", port=None, base_dir=base, bin_dir=bin_dir, run_as=run_as
    )
    try:
        if run_as:
            pw = pwd.getpwnam(run_as)
            os.chown(base, pw.pw_uid, pw.pw_gid)
        _run(
            _as_user(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(server.data_dir),
                    "-U",
                    SUPERUSER,
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ],
                run_as,
            ),
            cwd=base,
            timeout=120,
            what="initdb",
        )
        server.timings["initdb"] = time.monotonic() - t0
        with open(server.data_dir / "postgresql.conf", "a") as conf:
            conf.write(
                "\n# fti test settings (throwaway cluster)\n"
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{base}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "max_connections = 200\n"
            )

        last_error: Exception | None = None
        for _ in range(attempts):
            port = free_port()
            try:
                _run(
                    _as_user(
                        [
                            str(bin_dir / "pg_ctl"),
                            "-D",
                            str(server.data_dir),
                            "-l",
                            str(server.log_path),
                            "-o",
                            f"-p {port}",
                            "-w",
                            "-t",
                            str(int(timeout)),
                            "start",
                        ],
                        run_as,
                    ),
                    cwd=base,
                    timeout=timeout + 15,
                    what="pg_ctl start",
                )
            except PostgresStartError as exc:
                last_error = exc
                if "already in use" in log_tail(server.log_path, 20):
                    continue  # lost the free-port race: try another port
                raise
            server.port = port
            admin_url = f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{port}/postgres"
            if not wait_until(
                lambda u=admin_url: can_connect(u), timeout=timeout, interval=0.1
            ):
                raise PostgresStartError(
                    f"server on port {port} not accepting TCP connections within {timeout:.0f}s"
                )
            break
        else:
            raise PostgresStartError(
                f"could not start after {attempts} attempts: {last_error}"
            )
        server.timings["start"] = time.monotonic() - t0 - server.timings["initdb"]

        server.url = create_database(admin_url, dbname)
        server.startup_seconds = time.monotonic() - t0
        return server
    except BaseException as exc:
        tail = (
            log_tail(server.log_path)
            if server.log_path and server.log_path.exists()
            else ""
        )
        stop_postgres(server)
        if tail and isinstance(exc, PostgresStartError):
            raise PostgresStartError(
                f"{exc}\n--- postgres.log (tail) ---\n{tail}"
            ) from exc
        raise


def _postmaster_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None


def _is_postgres(pid: int) -> bool:
    """Guard against a stale postmaster.pid naming an unrelated process."""
    try:
        return b"postgres" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def stop_postgres(server: PostgresServer, *, timeout: float = 20.0) -> None:
    """Stop a server made by :func:`start_postgres` and delete its temp dir.

    Never raises for a server that is already gone; external servers are left alone.
    """
    if server.external or server.base_dir is None:
        return
    data_dir = server.data_dir
    try:
        if (
            data_dir is not None
            and (data_dir / "postmaster.pid").exists()
            and server.bin_dir
        ):
            try:
                subprocess.run(
                    _as_user(
                        [
                            str(server.bin_dir / "pg_ctl"),
                            "-D",
                            str(data_dir),
                            "-m",
                            "fast",
                            "-w",
                            "-t",
                            str(int(timeout)),
                            "stop",
                        ],
                        server.run_as,
                    ),
                    check=False,
                    cwd=server.base_dir,
                    capture_output=True,
                    timeout=timeout + 10,
                )
            except subprocess.TimeoutExpired:
                pass
            pid = _postmaster_pid(data_dir)
            if pid is not None and _is_postgres(pid):  # still running: last resort
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
    finally:
        shutil.rmtree(server.base_dir, ignore_errors=True)
