"""The configuration reference in the README is the one generated from the settings classes, every
setting is described, and the docs name no FTI_ setting that does not exist (``FTI_MODEL_ALIAS`` was
documented while training read ``FTI_ALIAS``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fti import settings_doc

REPO = Path(__file__).resolve().parents[2]

# Read by docker compose and the build scripts, not by fti's settings classes.
COMPOSE_AND_BUILD = {
    "FTI_BASE_IMAGE", "FTI_POSTGRES_IMAGE", "FTI_VERSION", "FTI_CODE_COMMIT", "FTI_LOCK_SHA256", "FTI_PIP_NO_INDEX",
    "FTI_COMPOSE_FILES", "FTI_COMPOSE_VERSION", "FTI_DEBIAN_MIRROR", "FTI_DEBIAN_SECURITY_MIRROR",
    "FTI_DEMO_POLICYHOLDERS", "FTI_DEMO_SPEC", "FTI_FEATURE_DB", "FTI_MLFLOW_DB", "FTI_INFERENCE_BIND",
    "FTI_INFERENCE_PORT", "FTI_REGISTRY_ADMIN_PASSWORD", "FTI_REGISTRY_ADMIN_USER", "FTI_REGISTRY_INFERENCE_PASSWORD",
    "FTI_REGISTRY_SECRET_KEY", "FTI_REGISTRY_TRAINING_PASSWORD", "FTI_REGISTRY_USERS", "FTI_REGISTRY_READ_ONLY_USERS", "FTI_REPO_ROOT",
    "FTI_UVTOOL_DIR", "FTI_UV_VERSION", "FTI_TEST_WORKERS", "FTI_IMAGE", "FTI_MLFLOW_BIND", "FTI_MLFLOW_PORT", "FTI_MLFLOW_ALLOWED_HOSTS",
}


def test_the_readme_table_is_generated_from_the_settings_classes() -> None:
    current = settings_doc.current((REPO / "README.md").read_text())
    assert current is not None, "README.md lost its settings markers"
    assert current == settings_doc.render(), "run `python -m fti.settings_doc --write` and commit README.md"


def test_every_setting_has_a_description() -> None:
    assert [r["env"] for r in settings_doc.rows() if not r["description"]] == []


def test_one_name_per_setting() -> None:
    """The same field name never maps to two environment variables in two classes."""
    seen: dict[str, str] = {}
    for cls in settings_doc.settings_classes():
        for name, info in cls.model_fields.items():
            env = settings_doc.env_name(cls, name, info)
            assert seen.setdefault(name, env) == env, (name, seen[name], env)


def _mentioned(paths: list[Path]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in paths:
        for name in re.findall(r"\bFTI_[A-Z0-9]+(?:_[A-Z0-9]+)*\b", path.read_text()):
            found.setdefault(name, set()).add(path.name)
    return found


def test_the_docs_name_only_settings_that_exist() -> None:
    known = {r["env"] for r in settings_doc.rows()} | COMPOSE_AND_BUILD
    docs = [REPO / "README.md", REPO / ".env.example", *sorted((REPO / "docs").glob("*.md"))]
    unknown = {k: v for k, v in _mentioned(docs).items() if k not in known}
    assert unknown == {}


def test_the_compose_and_build_names_are_really_used_there() -> None:
    """The list above cannot rot: each name is read by compose, a Dockerfile or a script."""
    used = _mentioned([REPO / "docker-compose.yml", *sorted((REPO / "scripts").glob("*")),
                       *[p for p in (REPO / "docker").rglob("*") if p.is_file()], REPO / ".env.example",
                       REPO / "docs" / "reproducibility.md"])
    assert COMPOSE_AND_BUILD - set(used) == set()


def test_the_old_alias_name_is_refused_with_the_new_one(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from training_pipeline.config import Settings

    monkeypatch.setenv("FTI_ALIAS", "staging")
    with pytest.raises(ValidationError, match="FTI_ALIAS was renamed FTI_MODEL_ALIAS"):
        Settings()
    monkeypatch.delenv("FTI_ALIAS")
    monkeypatch.setenv("FTI_MODEL_ALIAS", "staging")
    assert Settings().model_alias == "staging"
