"""``fti serve``: run the app under uvicorn (factory mode, so import stays free of work)."""

from __future__ import annotations

import sys

import uvicorn

from inference_service.config import Settings


def serve(host: str | None = None, port: int | None = None) -> int:
    settings = Settings()
    from inference_service.app import create_app
    from inference_service.observability import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings)  # fail fast on a bad spec before binding the port
    # The prediction log's thread builds rows in CPU-bound stretches; with the default 5 ms GIL switch
    # interval the event loop waits up to that long behind it on every hand-over (the p99 of /predict).
    sys.setswitchinterval(settings.gil_switch_interval)
    # uvloop + httptools: the C event loop and HTTP parser (the pure-Python ones cost ~2x per request).
    # access_log off: ObserveRequests writes one structured line per request instead.
    uvicorn.run(app, host=host or settings.host, port=port or settings.port, log_level=settings.log_level.lower(),
                timeout_graceful_shutdown=10, server_header=False, loop="uvloop", http="httptools",
                access_log=False, log_config=None)
    return 0
