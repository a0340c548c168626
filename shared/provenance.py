"""Where code and data came from: commit, package versions, content hashes."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import shared

_REPO_ROOT = Path(__file__).resolve().parent.parent


def code_commit() -> str:
    """The git commit of the running code (``+dirty`` if modified), ``FTI_CODE_COMMIT`` in images."""
    env = os.environ.get("FTI_CODE_COMMIT")
    if env:
        return env
    try:
        sha = subprocess.run(["git", "-C", str(_REPO_ROOT), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(_REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}+dirty" if dirty else sha


def shared_version() -> str:
    return shared.__version__


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
