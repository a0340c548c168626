"""The configuration reference, generated from the settings classes (the one source of truth).

``python -m fti.settings_doc`` prints the table; ``--write`` puts it into README.md between its
markers. ``tests/unit/test_settings_doc.py`` fails when the README and the classes disagree, and when
a setting has no description.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

README = Path(__file__).resolve().parent.parent / "README.md"
BEGIN, END = "<!-- settings:begin -->", "<!-- settings:end -->"


def settings_classes() -> dict[type, str]:
    """Every settings class, and who reads a setting it declares (the orchestration layer may import
    every service). A setting is listed under the class that declares it: subclasses read it too."""
    from feature_pipeline.config import Settings as FeatureSettings
    from fti.threads import ThreadSettings
    from inference_service.batch import BatchSettings
    from inference_service.config import Settings as InferenceSettings
    from monitoring_service.config import Settings as MonitorSettings
    from shared.settings import CommonSettings, MlflowSettings
    from training_pipeline.config import Settings as TrainingSettings

    return {ThreadSettings: "every command", CommonSettings: "every service", FeatureSettings: "features",
            MlflowSettings: "training, inference, monitor", TrainingSettings: "training (train, reproduce)",
            InferenceSettings: "inference (serve, lineage, predict-batch)", BatchSettings: "predict-batch",
            MonitorSettings: "monitor (fti monitor)"}


def _declared_by(cls: type, name: str) -> type:
    for klass in reversed(cls.__mro__):
        if name in getattr(klass, "__annotations__", {}) and klass in settings_classes():
            return klass
    return cls


def env_name(cls: type, name: str, info: FieldInfo) -> str:
    alias = info.validation_alias
    if isinstance(alias, str):
        return alias
    prefix = cls.model_config.get("env_prefix", "")  # type: ignore[attr-defined]
    return f"{prefix}{name}".upper()


def _default(info: FieldInfo) -> str:
    value = info.default
    if value is PydanticUndefined or value is None:
        return "–"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, Path):
        return f"`./{value}`"
    return f"`{value}`"


def _description(env: str, info: FieldInfo) -> str:
    text = (info.description or "").strip()
    text = re.sub(rf"^{re.escape(env)}\s*:\s*", "", text)  # the older "FTI_X: ..." style
    return text.replace("|", "\\|")


def rows() -> list[dict[str, Any]]:
    """One row per environment variable: name, default, description and the commands that read it."""
    readers = settings_classes()
    out: dict[str, dict[str, Any]] = {}
    for cls in readers:
        for name, info in cls.model_fields.items():  # type: ignore[attr-defined]
            env = env_name(cls, name, info)
            out.setdefault(env, {"env": env, "default": _default(info), "description": _description(env, info),
                                 "read_by": readers[_declared_by(cls, name)]})
    return sorted(out.values(), key=lambda r: r["env"])


def render() -> str:
    lines = [BEGIN, "", "| Variable | Default | Read by | |", "|---|---|---|---|"]
    for r in rows():
        lines.append(f"| `{r['env']}` | {r['default']} | {r['read_by']} | {r['description']} |")
    lines += ["", "Generated from the settings classes by `python -m fti.settings_doc --write`; "
              "`tests/unit/test_settings_doc.py` checks it.", "", END]
    return "\n".join(lines)


def current(text: str) -> str | None:
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        return None
    return text[start:end + len(END)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write", action="store_true", help="replace the table in README.md")
    a = p.parse_args(argv)
    table = render()
    if not a.write:
        print(table)
        return 0
    text = README.read_text()
    old = current(text)
    if old is None:
        print(f"README.md has no {BEGIN} ... {END} markers", file=sys.stderr)
        return 3
    README.write_text(text.replace(old, table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
