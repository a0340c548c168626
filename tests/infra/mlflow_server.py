"""A real ``mlflow server`` subprocess for tests.

Started from the running interpreter (``sys.executable -m mlflow server``) on
127.0.0.1:<free port> with a SQLite backend store and server-proxied artifacts
in a temp dir, one uvicorn worker and no job-execution consumers (see
shared/reference/gotchas.md §1). It runs in its own session/process group so
that :func:`stop_mlflow_server` can signal and wait for the whole group.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.infra.ports import free_port, log_tail, wait_until


class MlflowServerError(RuntimeError):
    """The MLflow server did not become healthy."""


@dataclass
class MlflowServer:
    """Handle of a running MLflow tracking/registry server."""

    url: str
    """Base URL, ``http://127.0.0.1:PORT`` (tracking and registry URI)."""
    log_path: Path
    """Combined stdout/stderr of the server process group."""
    process: subprocess.Popen
    root: Path
    """Temp dir holding ``mlflow.db``, ``artifacts/`` and the log."""
    port: int
    startup_seconds: float = 0.0

    @property
    def backend_store_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def artifacts_dir(self) -> Path:
        return self.root / "artifacts"


def mlflow_server_command(root: Path, port: int) -> list[str]:
    """The ``mlflow server`` command line (flags checked against mlflow 3.17.2)."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--serve-artifacts",
        "--workers",
        "1",
    ]


def _no_proxy_opener() -> urllib.request.OpenerDirector:
    # Never send loopback health checks through an HTTP(S)_PROXY from the environment.
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def is_healthy(url: str, *, timeout: float = 2.0) -> bool:
    """True if ``GET {url}/health`` answers 200."""
    try:
        with _no_proxy_opener().open(f"{url}/health", timeout=timeout) as resp:
            return resp.status == 200
    except (OSError, http.client.HTTPException):  # URLError, refused, timeout, reset
        return False


def process_group_alive(pgid: int) -> bool:
    """True while any non-zombie process is in process group ``pgid``."""
    try:
        entries = os.listdir("/proc")
    except OSError:  # no procfs: fall back to signal 0 (counts zombies too)
        try:
            os.killpg(pgid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ..." - comm may contain spaces/parens.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) >= 3 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def terminate_process_group(proc: subprocess.Popen, *, grace: float = 20.0) -> None:
    """SIGTERM the group led by ``proc``; wait ≤ ``grace`` s for every member; then SIGKILL.

    ``proc`` must have been started with ``start_new_session=True`` (pgid == pid).
    """
    pgid = proc.pid

    def gone() -> bool:
        proc.poll()  # reap the leader so it does not linger as a zombie
        return not process_group_alive(pgid)

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        if gone():
            break
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        wait_until(gone, timeout=wait, interval=0.1)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def start_mlflow_server(
    root: Path, *, timeout: float = 60.0, attempts: int = 3,
    extra_args: list[str] | None = None, extra_env: dict[str, str] | None = None,
) -> MlflowServer:
    """Start ``mlflow server`` with its state in ``root``; return once ``/health`` is 200.

    Polls ``/health`` for at most ``timeout`` s per attempt. If the process exits
    because the port was taken (free-port race) it retries on a new port;
    any other failure raises :class:`MlflowServerError` with the log tail.
    """
    root = Path(root)
    (root / "artifacts").mkdir(parents=True, exist_ok=True)
    log_path = root / "mlflow-server.log"
    env = {
        **os.environ,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "PYTHONUNBUFFERED": "1",
        **(extra_env or {}),
    }
    t0 = time.monotonic()
    for attempt in range(1, attempts + 1):
        port = free_port()
        with open(log_path, "ab") as log:
            log.write(
                f"--- fti test fixture: attempt {attempt}, port {port} ---\n".encode()
            )
            log.flush()
            proc = subprocess.Popen(
                mlflow_server_command(root, port) + list(extra_args or []),
                cwd=root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        url = f"http://127.0.0.1:{port}"
        server = MlflowServer(
            url=url, log_path=log_path, process=proc, root=root, port=port
        )
        try:
            ok = wait_until(
                lambda url=url: is_healthy(url),
                timeout=timeout,
                interval=0.25,
                abort=lambda proc=proc: proc.poll() is not None,
            )
        except BaseException:
            terminate_process_group(proc)
            raise
        if ok:
            server.startup_seconds = time.monotonic() - t0
            return server
        exited = proc.poll()
        terminate_process_group(proc)
        tail = log_tail(log_path, 60)
        if (
            exited is not None
            and "address already in use" in tail.lower()
            and attempt < attempts
        ):
            continue
        reason = (
            f"exited with code {exited}"
            if exited is not None
            else f"not healthy within {timeout:.0f}s"
        )
        raise MlflowServerError(
            f"mlflow server on {url} {reason}.\n--- {log_path} (tail) ---\n{tail}"
        )
    raise AssertionError("unreachable")


def stop_mlflow_server(server: MlflowServer, *, grace: float = 20.0) -> None:
    """SIGTERM the server's process group, wait ≤ ``grace`` s for all of it, then SIGKILL."""
    terminate_process_group(server.process, grace=grace)
