"""Test helpers: small claims datasets with their own spec, and the fti CLI in-process or as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
CLAIMS_SPEC = REPO / "specs" / "claims.yaml"
CHURN_SPEC = REPO / "tests" / "data" / "churn" / "spec.yaml"


def write_claims_spec(folder: Path, *, n_policyholders: int = 500, seed: int = 7,
                      overrides: dict[str, Any] | None = None, generate: bool = True) -> Path:
    """Copy the demo spec into ``folder`` with its source at ``folder/raw/claims.csv`` and
    (optionally) generate a small seeded source there. ``overrides`` is merged into the
    spec at the top level, or into ``model`` for keys given as ``model.<key>``."""
    from fti.demo_data import generate_claims, to_csv_bytes

    data = yaml.safe_load(CLAIMS_SPEC.read_text())
    data["source"]["path"] = "raw/claims.csv"
    data["model"]["estimator"]["params"]["max_iter"] = 60  # fast enough for tests, still learns
    for key, value in (overrides or {}).items():
        target = data
        parts = key.split(".")
        for p in parts[:-1]:
            target = target[p]
        target[parts[-1]] = value
    folder.mkdir(parents=True, exist_ok=True)
    spec_path = folder / "claims.yaml"
    spec_path.write_text(yaml.safe_dump(data, sort_keys=False))
    if generate:
        (folder / "raw").mkdir(exist_ok=True)
        (folder / "raw" / "claims.csv").write_bytes(to_csv_bytes(generate_claims(n_policyholders=n_policyholders,
                                                                                  seed=seed)))
    return spec_path


def fti_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FTI_", "MLFLOW_"))}
    env.update({"FTI_DATA_DIR": str(data_dir), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
                "MLFLOW_HTTP_REQUEST_TIMEOUT": "20", "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"})
    env.update(extra)
    return env


def run_fti(args: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the installed ``fti`` console script (a real subprocess)."""
    exe = Path(sys.executable).parent / "fti"
    return subprocess.run([str(exe), *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
