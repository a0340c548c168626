"""Server processes for the serving benchmark: spawn on a fresh loopback port in a process group of
their own, time the first 200 on the readiness path, measure the whole tree's memory, always stop
(SIGTERM to the group, then SIGKILL)."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"  # all benchmark traffic stays on loopback
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds spent busy on all cores since boot (/proc/stat: everything but idle and iowait)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _CLK_TCK


def free_port(host: str = HOST) -> int:
    """A TCP port that was free a moment ago (released before returning; callers retry on a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def http_request(port: int, method: str, path: str, body: bytes | None = None,
                 timeout: float = 60.0) -> tuple[int, bytes]:
    """One plain HTTP/1.1 request to 127.0.0.1:port (no proxies, no retries)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@dataclass
class TargetConfig:
    """How to start one of the compared servers."""

    name: str                       # "fti" or "mlflow"
    argv_template: list[str]        # "{port}" is replaced by the port
    env: dict[str, str]
    ready_paths: tuple[str, ...] = ("/ping",)  # first one answering non-404 wins; later ones are fallbacks
    cwd: Path | None = None
    description: str = ""

    def argv(self, port: int) -> list[str]:
        return [a.replace("{port}", str(port)) for a in self.argv_template]


class ServerError(RuntimeError):
    pass


@dataclass
class ServerProcess:
    config: TargetConfig
    log_path: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    spawned_at: float = 0.0
    ready_seconds: float | None = None
    ready_path: str | None = None
    ready_body: Any = None
    _log: Any = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        self.port = free_port()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._log.write(f"\n=== bench: spawn {self.config.argv(self.port)}\n".encode())
        self._log.flush()
        self.spawned_at = time.monotonic()
        self.proc = subprocess.Popen(self.config.argv(self.port), env=self.config.env, cwd=self.config.cwd,
                                     stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError as exc:
            return f"<no log: {exc}>"

    def wait_ready(self, timeout: float = 120.0, interval: float = 0.02) -> float:
        """Poll the readiness path until it answers 200; returns seconds from spawn to that answer.

        A path answering 404 is skipped for the next one in ``ready_paths`` (e.g. fti's
        ``/health/ready`` while its ``/ping`` does not exist yet); the one used is recorded."""
        assert self.proc is not None
        paths = list(self.config.ready_paths)
        deadline = self.spawned_at + timeout
        last: Any = "no answer yet"
        while True:
            now = time.monotonic()
            if self.proc.poll() is not None:
                raise ServerError(f"{self.config.name} exited with {self.proc.returncode} before it was ready; "
                                  f"log tail:\n{self.log_tail()}")
            if now > deadline:
                raise ServerError(f"{self.config.name} not ready after {timeout:.0f}s (last: {last}); "
                                  f"log tail:\n{self.log_tail()}")
            try:
                status, body = http_request(self.port, "GET", paths[0], timeout=5)
                t = time.monotonic()
                if status == 200:
                    self.ready_seconds = t - self.spawned_at
                    self.ready_path = paths[0]
                    self.ready_body = _maybe_json(body)
                    return self.ready_seconds
                if status == 404 and len(paths) > 1:
                    paths.pop(0)
                    continue
                last = f"{paths[0]} -> {status} {body[:200]!r}"
            except OSError as exc:  # refused while starting, reset, timeout
                last = f"{paths[0]}: {exc!r}"
            time.sleep(interval)

    def pids(self) -> list[int]:
        """The server's whole process tree: its process group plus any descendant."""
        return process_tree(self.proc.pid) if self.proc is not None else []

    def cpu_seconds(self) -> float:
        """user + system CPU time consumed so far by the live members of the process tree."""
        total = 0
        for pid in self.pids():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2:].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
        return total / _CLK_TCK

    def memory(self) -> dict[str, Any]:
        """VmRSS (and PSS, which does not double-count shared pages) summed over the process tree."""
        procs = []
        for pid in self.pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            rss_kb = _kb(status, "VmRSS:")
            pss_kb = None
            try:
                pss_kb = _kb(Path(f"/proc/{pid}/smaps_rollup").read_text(), "Pss:")
            except OSError:
                pass
            procs.append({"pid": pid, "cmdline": cmdline.strip()[:200], "rss_bytes": rss_kb * 1024,
                          "pss_bytes": None if pss_kb is None else pss_kb * 1024})
        return {"rss_bytes": sum(p["rss_bytes"] for p in procs),
                "pss_bytes": sum(p["pss_bytes"] or 0 for p in procs) if all(p["pss_bytes"] is not None for p in procs)
                else None,
                "processes": procs}

    def stop(self, grace: float = 20.0) -> int | None:
        """SIGTERM to the whole group, wait for every member, then SIGKILL whatever is left."""
        if self.proc is None:
            return None
        pgid = self.proc.pid
        _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and (self.proc.poll() is None or _group_alive(pgid)):
            time.sleep(0.05)
        if self.proc.poll() is None or _group_alive(pgid):
            _signal_group(pgid, signal.SIGKILL)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and _group_alive(pgid):
                time.sleep(0.05)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Zombies of our own direct child still count as group members until reaped.
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def process_tree(root: int) -> list[int]:
    """``root``, its descendants, and the members of the process group it leads (from ``/proc``)."""
    parents: dict[int, int] = {}
    groups: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        pid = int(entry)
        parents[pid] = int(fields[1])
        groups[pid] = int(fields[2])
    tree = {root} if root in parents else set()
    changed = True
    while changed:
        changed = False
        for pid, ppid in parents.items():
            if ppid in tree and pid not in tree:
                tree.add(pid)
                changed = True
    tree |= {pid for pid, pgid in groups.items() if pgid == root}
    return sorted(tree)


def _kb(text: str, key: str) -> int:
    for line in text.splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    return 0


def _maybe_json(body: bytes) -> Any:
    import json

    try:
        return json.loads(body)
    except ValueError:
        return body[:500].decode(errors="replace")


def start_ready(config: TargetConfig, log_path: Path, *, timeout: float = 120.0, attempts: int = 3) -> ServerProcess:
    """Start a server and wait for it; a new port is tried if it died (e.g. lost a port race)."""
    last: Exception | None = None
    for _ in range(attempts):
        server = ServerProcess(config, log_path)
        server.start()
        try:
            server.wait_ready(timeout=timeout)
            return server
        except ServerError as exc:
            server.stop()
            last = exc
            if "address already in use" not in server.log_tail().lower():
                raise
    assert last is not None
    raise last


def _tree_rss_kib(root: int) -> int:
    """The summed VmRSS of ``root`` and its descendants (pages shared between them counted in each: an upper
    bound of what the pass holds)."""
    total = 0
    for pid in process_tree(root):
        try:
            total += _kb(Path(f"/proc/{pid}/status").read_text(), "VmRSS:")
        except OSError:
            continue
    return total


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of ``root`` and its live descendants (``/proc/<pid>/stat``; children that
    already exited and were reaped are counted in their parent's cutime/cstime)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in process_tree(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15]) / tick  # utime stime cutime cstime
    return total


class TreeRss:
    """Samples a process tree's summed RSS every 0.2 s (the pass's worker processes included)."""

    def __init__(self, pid: int):
        self.pid, self.peak_kib, self.stop = pid, 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            self.peak_kib = max(self.peak_kib, _tree_rss_kib(self.pid))
            self.stop.wait(0.2)

    def __enter__(self) -> TreeRss:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
