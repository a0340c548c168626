"""``/health/live`` latency from a process of its own (the load generator's GIL must not be in the figure).

    python -m bench.probe URL SECONDS OUT.json [--interval 0.01]

One keep-alive connection (a new one after an error), requests back to back with ``interval`` between;
writes ``{"latencies_ms": [...], "errors": n, "statuses": {...}}``. A probe that fails or times out
(5 s) counts as an error with latency 5000 ms.
"""

from __future__ import annotations

import argparse
import http.client
import json
import time
from pathlib import Path
from urllib.parse import urlsplit


def probe(url: str, seconds: float, interval: float) -> dict[str, object]:
    parts = urlsplit(url)
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    errors = 0
    conn: http.client.HTTPConnection | None = None
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.perf_counter()
        try:
            if conn is None:
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
            conn.request("GET", "/health/live")
            resp = conn.getresponse()
            resp.read()
            statuses[str(resp.status)] = statuses.get(str(resp.status), 0) + 1
            latencies.append((time.perf_counter() - t0) * 1000)
        except (OSError, http.client.HTTPException):
            errors += 1
            latencies.append(5000.0)
            if conn is not None:
                conn.close()
            conn = None
        time.sleep(interval)
    if conn is not None:
        conn.close()
    return {"latencies_ms": latencies, "errors": errors, "statuses": statuses}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("seconds", type=float)
    p.add_argument("out", type=Path)
    p.add_argument("--interval", type=float, default=0.01)
    a = p.parse_args()
    a.out.write_text(json.dumps(probe(a.url, a.seconds, a.interval)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
