"""``fti rollback``: move the alias back to the champion the current one replaced.

The gate records on every version it judged which version was champion then
(``fti.gate.champion_version``), so "the previous champion" is read from the registry, not
remembered by any process. The target must be a validated fti version (``fti.validated``, an
artifact digest); serving verifies it again (digest, allow-list, certificate) before it answers
with it, and keeps the current model until then. The version rolled away from is tagged
(``fti.rollback.to``/``.at``) so the registry tells the story, and the move is recorded in
``fti_retrain_decisions`` when the feature store is reachable.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from shared import feature_table as ft
from shared.registry_contract import Tag

log = logging.getLogger(__name__)


class RollbackError(RuntimeError):
    """Nothing to roll back to, or the target is not a version fti can serve."""


@dataclass(frozen=True)
class Rolled:
    name: str
    alias: str
    from_version: str
    to_version: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def rollback(client: Any, name: str, alias: str, *, to: str | None = None) -> Rolled:
    from mlflow.exceptions import MlflowException

    try:
        current = client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        raise RollbackError(f"{name}@{alias} does not exist: nothing to roll back ({str(exc)[:200]})") from None
    tags = dict(current.tags or {})
    target = to or tags.get(Tag.GATE_CHAMPION_VERSION) or ""
    if not target:
        raise RollbackError(f"{name} version {current.version} became {alias} with no champion before it; "
                            "name a version with --to VERSION")
    if str(target) == str(current.version):
        raise RollbackError(f"{name}@{alias} is version {target} already")
    try:
        tv = client.get_model_version(name, str(target))
    except MlflowException:
        raise RollbackError(f"{name} has no version {target} (deleted?); name another with --to VERSION") from None
    ttags = dict(tv.tags or {})
    if ttags.get(Tag.VALIDATED) != "true" or not ttags.get(Tag.ARTIFACT_SHA256):
        raise RollbackError(f"{name} version {target} was never validated by fti training (no "
                            f"{Tag.VALIDATED}/{Tag.ARTIFACT_SHA256}); it cannot be served")
    client.set_registered_model_alias(name, alias, str(target))
    client.set_model_version_tag(name, str(current.version), Tag.ROLLED_BACK_TO, str(target))
    client.set_model_version_tag(name, str(current.version), Tag.ROLLED_BACK_AT, ft.iso_utc(ft.utcnow()))
    log.info("%s@%s: version %s -> %s", name, alias, current.version, target)
    return Rolled(name, alias, str(current.version), str(target))


__all__ = ["Rolled", "RollbackError", "rollback"]
