"""docker-compose.yml, read as data: each image is built by one service only, every fti image a service
runs is built here, and MLflow's health check allows the ~2 min start measured on a loaded 2-core host."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def _services() -> dict[str, dict]:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]


def _tag(image: str) -> str:
    return re.sub(r"\$\{[^}]*\}", "V", image)


def test_each_image_is_built_by_one_service() -> None:
    built = Counter(_tag(s["image"]) for s in _services().values() if "build" in s)
    assert [tag for tag, n in built.items() if n > 1] == []


def test_every_image_a_service_uses_is_built_here_or_public() -> None:
    services = _services()
    built = {_tag(s["image"]) for s in services.values() if "build" in s}
    for name, s in services.items():
        tag = _tag(s["image"])
        assert "build" in s or tag in built or not tag.startswith("fti/"), name


def test_mlflow_health_check_allows_five_minutes() -> None:
    dockerfile = (REPO / "docker" / "mlflow" / "Dockerfile").read_text()
    period = re.search(r"HEALTHCHECK[^\n]*--start-period=(\d+)s", dockerfile)
    assert period and int(period.group(1)) >= 300
