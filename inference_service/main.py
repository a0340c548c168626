"""``fti serve``: run the app under uvicorn (factory mode, so import stays free of work)."""

from __future__ import annotations

import uvicorn

from inference_service.config import Settings


def serve(host: str | None = None, port: int | None = None) -> int:
    settings = Settings()
    from inference_service.app import create_app

    app = create_app(settings)  # fail fast on a bad spec before binding the port
    uvicorn.run(app, host=host or settings.host, port=port or settings.port, log_level=settings.log_level.lower(),
                timeout_graceful_shutdown=10, server_header=False)
    return 0
