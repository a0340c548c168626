"""The load generator: Debian's ``wrk`` (closed loop), POSTing a fixed body through ``wrk_post.lua``."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

LUA_SCRIPT = Path(__file__).resolve().parent / "wrk_post.lua"

_UNITS_TO_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


class WrkError(RuntimeError):
    pass


def wrk_path() -> str:
    exe = shutil.which("wrk")
    if exe is None:
        raise WrkError("wrk is not installed: `apt-get install wrk` (Debian), then run the benchmark again")
    return exe


def wrk_version() -> str:
    """The installed wrk's banner, or "not installed" (benchmarks that do not use it still describe the machine)."""
    if shutil.which("wrk") is None:
        return "not installed"
    # `wrk -v` prints the version banner (plus usage) and exits non-zero.
    res = subprocess.run([wrk_path(), "-v"], capture_output=True, text=True, timeout=10)
    for line in (res.stdout + res.stderr).splitlines():
        if line.startswith("wrk"):
            return line.strip()
    return "unknown"


def run_wrk(url: str, body_file: Path, *, connections: int, threads: int, duration_s: int,
            timeout_s: int, log_path: Path | None = None) -> dict[str, Any]:
    """One wrk run; returns the parsed numbers (latencies in ms) plus the command line."""
    if not url.startswith("http://127.0.0.1:"):
        raise WrkError(f"refusing to send load anywhere but 127.0.0.1: {url}")
    threads = max(1, min(threads, connections))
    argv = [wrk_path(), f"-t{threads}", f"-c{connections}", f"-d{duration_s}s", f"--timeout={timeout_s}s",
            "--latency", "-s", str(LUA_SCRIPT), url, "--", str(body_file)]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + timeout_s + 60,
                         start_new_session=True)
    if log_path is not None:
        with log_path.open("a") as log:
            log.write(f"$ {' '.join(argv)}\n{res.stdout}{res.stderr}\n")
    if res.returncode != 0:
        raise WrkError(f"wrk exited with {res.returncode}: {res.stderr.strip()[-2000:] or res.stdout[-2000:]}")
    return parse_wrk_output(res.stdout) | {"argv": argv[1:], "threads": threads, "connections": connections}


def parse_wrk_output(text: str) -> dict[str, Any]:
    """Numbers from wrk's text output (``Requests/sec``, the ``--latency`` percentiles, error lines)
    and from the BENCH_JSON line our Lua ``done()`` prints (exact counts, microsecond latencies)."""
    data: dict[str, Any] | None = None
    for line in text.splitlines():
        if line.startswith("BENCH_JSON "):
            data = json.loads(line[len("BENCH_JSON "):])
    if data is None:
        raise WrkError(f"wrk output has no BENCH_JSON line (is {LUA_SCRIPT.name} in use?):\n{text[-2000:]}")
    text_rps = _search_float(r"^Requests/sec:\s+([0-9.]+)", text)
    text_pcts = {m.group(1): _to_ms(float(m.group(2)), m.group(3))
                 for m in re.finditer(r"^\s+(50|75|90|99)%\s+([0-9.]+)(us|ms|s|m|h)\s*$", text, re.M)}
    non2xx_text = _search_float(r"^\s*Non-2xx or 3xx responses:\s+(\d+)", text)
    socket_errors = data["errors"]
    duration_s = data["duration_us"] / 1e6
    requests = int(data["requests"])
    lat = data["latency_us"]
    non_2xx = int(data["non_2xx"])
    socket_total = sum(int(socket_errors[k]) for k in ("connect", "read", "write", "timeout"))
    return {
        "requests": requests,
        "responses_seen": int(data["responses"]),
        "duration_s": duration_s,
        "req_per_s": requests / duration_s if duration_s > 0 else 0.0,
        "req_per_s_wrk_text": text_rps,
        "latency_ms": {k: lat[k] / 1000.0 for k in ("min", "mean", "stdev", "p50", "p75", "p90", "p99", "p99_9", "max")},
        "latency_ms_wrk_text": text_pcts,
        "non_2xx": non_2xx,
        "non_2xx_or_3xx_wrk_text": int(non2xx_text) if non2xx_text is not None else 0,
        "socket_errors": {k: int(socket_errors[k]) for k in ("connect", "read", "write", "timeout")},
        "first_bad_status": int(data["first_bad_status"]) or None,
        "first_bad_body": data["first_bad_body"] or None,
        "bytes": int(data["bytes"]),
        "has_errors": bool(non_2xx or socket_total or requests == 0),
    }


def _search_float(pattern: str, text: str) -> float | None:
    m = re.search(pattern, text, re.M)
    return float(m.group(1)) if m else None


def _to_ms(value: float, unit: str) -> float:
    return value * _UNITS_TO_MS[unit]
