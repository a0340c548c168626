"""Environment fingerprints: what a model was trained in, and whether here is the same.

MLflow only warns when library versions differ at load time; fti refuses,
because a different scikit-learn, numpy, scipy or pandas can change
predictions. Only the packages that can change a prediction are enforced; the
full list of installed distributions is recorded for ``fti reproduce`` reports.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import shared

# Packages whose version can change a prediction (plus the estimator's own library).
ENFORCED = ("scikit-learn", "numpy", "scipy", "pandas", "skops")
_ESTIMATOR_LIBS = {"xgboost": "xgboost", "lightgbm": "lightgbm"}
_REPO_LOCK = Path(__file__).resolve().parent.parent / "uv.lock"


def lock_sha256() -> str:
    """sha256 of the lockfile the environment was built from (``FTI_LOCK_SHA256`` in images)."""
    env = os.environ.get("FTI_LOCK_SHA256")
    if env:
        return env
    try:
        return hashlib.sha256(_REPO_LOCK.read_bytes()).hexdigest()
    except OSError:
        return "unknown"


_SHARED_DIR = Path(shared.__file__).resolve().parent


def shared_source_sha256() -> str:
    """sha256 over every ``.py`` file of the installed ``shared`` package (relative path + bytes).

    ``shared.__version__`` names a release; this names the code. A model is served
    only by the very code that computed its training features: an edit that keeps the
    version string (a hot fix, a vendored copy) is refused like a package mismatch.
    """
    h = hashlib.sha256()
    for path in sorted(_SHARED_DIR.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        h.update(path.relative_to(_SHARED_DIR).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


def installed_distributions() -> dict[str, str]:
    out: dict[str, str] = {}
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if name:
            out[name] = dist.version
    return dict(sorted(out.items()))


def enforced_packages(estimator_class: str | None = None) -> tuple[str, ...]:
    pkgs = list(ENFORCED)
    if estimator_class:
        lib = _ESTIMATOR_LIBS.get(estimator_class.split(".", 1)[0])
        if lib:
            pkgs.append(lib)
    return tuple(pkgs)


def capture(estimator_class: str | None = None) -> dict[str, Any]:
    """The fingerprint of the running process, as a JSON-able dict."""
    dists = installed_distributions()
    return {
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "shared_version": shared.__version__,
        "shared_source_sha256": shared_source_sha256(),
        "lock_sha256": lock_sha256(),
        "image": os.environ.get("FTI_IMAGE", ""),
        "image_digest": os.environ.get("FTI_IMAGE_DIGEST", ""),
        "enforced": {p: dists.get(p, "absent") for p in enforced_packages(estimator_class)},
        "distributions": dists,
    }


@dataclass(frozen=True)
class Difference:
    item: str
    recorded: str
    running: str

    def __str__(self) -> str:
        return f"{self.item}: model {self.recorded}, here {self.running}"


def compare_enforced(recorded: dict[str, Any], running: dict[str, Any]) -> list[Difference]:
    """Differences that can change predictions: enforced packages, ``shared``, Python minor version."""
    diffs: list[Difference] = []
    rec_pk, run_pk = recorded.get("enforced", {}), running.get("enforced", {})
    for pkg in sorted(set(rec_pk) | set(run_pk)):
        a, b = str(rec_pk.get(pkg, "absent")), str(run_pk.get(pkg, "absent"))
        if a != b:
            diffs.append(Difference(pkg, a, b))
    if recorded.get("shared_version") != running.get("shared_version"):
        diffs.append(Difference("shared", str(recorded.get("shared_version")), str(running.get("shared_version"))))
    if recorded.get("shared_source_sha256") != running.get("shared_source_sha256"):
        diffs.append(Difference("shared source (sha256)", str(recorded.get("shared_source_sha256", "absent")),
                                str(running.get("shared_source_sha256", "absent"))))
    def minor(v: Any) -> str:
        return ".".join(str(v).split(".")[:2])

    if minor(recorded.get("python")) != minor(running.get("python")):
        diffs.append(Difference("python", str(recorded.get("python")), str(running.get("python"))))
    return diffs


def compare_all(recorded: dict[str, Any], running: dict[str, Any]) -> list[Difference]:
    """Every difference, for reports: enforced ones first, then other distributions and the lock."""
    diffs = compare_enforced(recorded, running)
    seen = {d.item for d in diffs}
    a, b = recorded.get("distributions", {}), running.get("distributions", {})
    for pkg in sorted(set(a) | set(b)):
        if pkg not in seen and a.get(pkg) != b.get(pkg):
            diffs.append(Difference(pkg, str(a.get(pkg, "absent")), str(b.get(pkg, "absent"))))
    for key in ("lock_sha256", "platform"):
        if recorded.get(key) != running.get(key):
            diffs.append(Difference(key, str(recorded.get(key)), str(running.get(key))))
    return diffs
