"""Free-port and bounded-wait helpers."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that was free a moment ago.

    The port is released before returning, so another process could grab it
    (small race); callers that start servers retry with a new port on bind errors.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_until(
    predicate: Callable[[], bool],
    *,
    timeout: float,
    interval: float = 0.2,
    abort: Callable[[], bool] | None = None,
) -> bool:
    """Poll ``predicate`` until it returns True or ``timeout`` seconds pass.

    ``abort`` (optional) is checked each round; if it returns True the wait
    stops early (e.g. the server process died). Returns whether ``predicate``
    succeeded. ``predicate`` should return False (not raise) for "not yet".
    """
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if abort is not None and abort():
            return False
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def log_tail(path: Path | str, lines: int = 40) -> str:
    """Last ``lines`` lines of a log file (for failure messages); never raises."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as exc:
        return f"<could not read {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])
