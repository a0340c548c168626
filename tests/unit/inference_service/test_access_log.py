"""Quiet logs: health probes and scrapes answered 200 are not access-logged unless asked; a failing probe
and every other request are."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from inference_service.observability import Observability, ObserveRequests


def _app(status_for: dict[str, int]) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": status_for.get(scope["path"], 200), "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})
    return app


def _paths_logged(log_probes: bool, status_for: dict[str, int], paths: list[str]) -> list[str]:
    obs = Observability(lambda: None)
    mw = ObserveRequests(_app(status_for), obs, log_probes=log_probes)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        return None

    async def run() -> None:
        for path in paths:
            await mw({"type": "http", "method": "GET", "path": path, "headers": []}, receive, send)

    logging.getLogger("fti.access").setLevel(logging.INFO)
    asyncio.run(run())
    return [json.loads(line)["path"] for line in obs.access_lines]


PATHS = ["/health/live", "/health/ready", "/ping", "/metrics", "/model", "/predict"]


def test_probes_answered_200_are_not_logged_by_default() -> None:
    assert _paths_logged(False, {}, PATHS) == ["/model", "/predict"]


def test_a_failing_probe_is_logged() -> None:
    assert _paths_logged(False, {"/health/ready": 503}, PATHS) == ["/health/ready", "/model", "/predict"]


@pytest.mark.parametrize("status_for", [{}, {"/ping": 503}])
def test_fti_access_log_probes_logs_them_all(status_for: dict[str, int]) -> None:
    assert _paths_logged(True, status_for, PATHS) == PATHS
