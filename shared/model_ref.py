"""The one grammar for naming a registered model, used by every command that takes one.

``NAME/VERSION``, ``NAME@ALIAS``, ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``
-- MLflow's own URI forms, with or without the scheme. Versions are ASCII digits
and normalised (``claims-fraud/03`` is version ``3``); a bare ``NAME`` is refused with
the two forms it could have meant, so no command guesses an alias the user did not write.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_NAME = r"[^/@\s](?:[^/@]*[^/@\s])?"  # MLflow names: anything but '/' and '@', no surrounding blanks
_ALIAS = r"[A-Za-z_][A-Za-z0-9_-]*"
_VERSION_RE = re.compile(rf"(?P<name>{_NAME})/(?P<version>[0-9]+)")
_ALIAS_RE = re.compile(rf"(?P<name>{_NAME})@(?P<alias>{_ALIAS})")
SCHEME = "models:/"


class ModelRefError(ValueError):
    """Not a model reference; the message shows the accepted forms."""


@dataclass(frozen=True)
class ModelRef:
    """A registered model version, by number or by alias (exactly one of the two)."""

    name: str
    version: str | None = None
    alias: str | None = None

    def __post_init__(self) -> None:
        if (self.version is None) == (self.alias is None):
            raise ValueError("a model reference has exactly one of version and alias")

    def __str__(self) -> str:
        return f"{self.name}@{self.alias}" if self.alias is not None else f"{self.name}/{self.version}"

    @property
    def uri(self) -> str:
        """MLflow's ``models:/`` URI for this reference."""
        return f"{SCHEME}{self}"


def parse(text: str, *, what: str = "model reference") -> ModelRef:
    """``text`` in one of the four forms -> :class:`ModelRef`; anything else -> :class:`ModelRefError`."""
    if not isinstance(text, str):
        raise ModelRefError(f"{what} must be text, not {type(text).__name__}")
    body = text[len(SCHEME):] if text.startswith(SCHEME) else text
    m = _VERSION_RE.fullmatch(body)
    if m:
        number = int(m["version"])
        if number < 1:
            raise ModelRefError(f"{what} {text!r}: model versions start at 1 (NAME/VERSION, NAME@ALIAS, "
                                "models:/NAME/VERSION or models:/NAME@ALIAS)")
        return ModelRef(m["name"], version=str(number))
    m = _ALIAS_RE.fullmatch(body)
    if m:
        return ModelRef(m["name"], alias=m["alias"])
    hint = ""
    if body and re.fullmatch(_NAME, body):
        hint = f" -- did you mean {body}@champion or {body}/1?"
    raise ModelRefError(f"{what} {text!r} is not NAME/VERSION, NAME@ALIAS, models:/NAME/VERSION or "
                        f"models:/NAME@ALIAS (e.g. claims-fraud/3 or claims-fraud@champion){hint}")


__all__ = ["SCHEME", "ModelRef", "ModelRefError", "parse"]
