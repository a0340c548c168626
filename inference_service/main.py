"""``fti serve``: run the app under uvicorn (factory mode, so import stays free of work)."""

from __future__ import annotations

import faulthandler
import sys

import uvicorn

from inference_service.config import Settings


def serve(host: str | None = None, port: int | None = None) -> int:
    settings = Settings()
    if host:
        settings = settings.model_copy(update={"host": host})  # the guard decides on the address really used
    from inference_service.app import create_app
    from inference_service.guard import GuardConfigError
    from inference_service.http_protocol import guarded_protocol
    from inference_service.observability import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    faulthandler.enable()  # a crash in native code (a driver, a library) leaves its stack in the log
    try:
        app = create_app(settings)  # fail fast on a bad spec or key setting before binding the port
    except GuardConfigError as exc:
        sys.stderr.write(f"fti: error: {exc}\n")
        return 2
    # The prediction log's thread builds rows in CPU-bound stretches; with the default 5 ms GIL switch
    # interval the event loop waits up to that long behind it on every hand-over (the p99 of /predict).
    sys.setswitchinterval(settings.gil_switch_interval)
    # uvloop + httptools (the C event loop and HTTP parser; the pure-Python ones cost ~2x per request), with
    # header-size and read-time limits (http_protocol). access_log off: ObserveRequests writes one line instead.
    protocol = guarded_protocol(max_header_bytes=settings.max_header_bytes,
                                header_timeout=settings.header_timeout_seconds,
                                body_timeout=settings.body_timeout_seconds)
    uvicorn.run(app, host=settings.host, port=port or settings.port, log_level=settings.log_level.lower(),
                timeout_graceful_shutdown=10, server_header=False, loop="uvloop", http=protocol,
                access_log=False, log_config=None)
    return 0
