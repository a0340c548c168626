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


def copy_claims_source(csv: Path, rows: int) -> int:
    """Grow the claims CSV at ``csv`` to at least ``rows`` rows: whole copies of it, each with its own claim
    and policyholder ids (suffix ``-00001``...), so every entity's history is as the generator made it.
    Returns the row count. Streams: memory holds one copy at a time."""
    import pandas as pd

    base = pd.read_csv(csv, dtype=str, keep_default_na=False)
    copies = -(-rows // len(base))
    with open(csv, "w", encoding="utf-8", newline="") as fh:
        for k in range(copies):
            part = base.copy()
            part["claim_id"] = part["claim_id"] + f"-{k:05d}"
            part["policyholder_id"] = part["policyholder_id"] + f"-{k:05d}"
            part.to_csv(fh, index=False, header=k == 0)
    return copies * len(base)


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


class Server:
    """A real ``fti serve`` (uvicorn) subprocess on a free loopback port."""

    def __init__(self, spec: Path, env: dict[str, str], log_path: Path):
        from tests.infra.ports import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = log_path.open("wb")
        exe = Path(sys.executable).parent / "fti"
        self.proc = subprocess.Popen([str(exe), "serve", "--spec", str(spec), "--host", "127.0.0.1",
                                      "--port", str(self.port)], env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)

    def wait_ready(self, timeout: float = 90) -> dict[str, Any]:
        import time

        import httpx

        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log_path.read_text()[-3000:]}")
            try:
                r = httpx.get(f"{self.url}/health/ready", timeout=5)
                if r.status_code == 200:
                    return r.json()
                last = r.text
            except httpx.HTTPError as exc:
                last = exc
            time.sleep(0.3)
        raise TimeoutError(f"not ready after {timeout}s: {last}; log: {self.log_path.read_text()[-3000:]}")

    def stop(self, grace: float = 35.0) -> int:
        """SIGTERM, then SIGKILL after ``grace`` s. The server's own shutdown may take up to ~30 s (uvicorn's
        graceful wait, then the prediction log's 15 s close and its last retry's back-off); a shorter grace
        killed a server whose log could not write before it said which rows it held (a CI run, under load)."""
        import signal

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()
        return self.proc.returncode


def raw_json_records(csv_path: Path, spec_path: Path) -> list[dict[str, Any]]:
    """Source CSV rows -> the JSON records a client would send (typed per the spec, null for missing)."""
    import pandas as pd

    from shared.spec import ColumnType, load_spec

    spec = load_spec(spec_path).spec
    frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    out = []
    for row in frame.to_dict(orient="records"):
        rec: dict[str, Any] = {}
        for name in spec.raw_input_columns:
            value = row[name].strip()
            ctype = spec.columns[name].type
            if value == "":
                rec[name] = None
            elif ctype == ColumnType.INT:
                rec[name] = int(value)
            elif ctype == ColumnType.FLOAT:
                rec[name] = float(value)
            elif ctype == ColumnType.BOOL:
                rec[name] = value.lower() in ("true", "1", "yes", "y", "t")
            else:
                rec[name] = value
        out.append(rec)
    return out


def register_cache_edit(tracking_uri: str, cache_dir: Path, name: str, version: str) -> str:
    """Make an edited model-cache entry look *registered* that way: the version's ``fti.artifact_sha256``
    (in the registry and in the cache's alias records) becomes the digest of the edited files.

    Tests that need a model whose certificate or fingerprint is wrong use it after editing the cache;
    without it the edit is what it is in production -- a tampered copy, dropped and fetched again."""
    import json

    from mlflow import MlflowClient

    from shared.model_file import artifact_digest
    from shared.registry_contract import Tag

    digest = artifact_digest(cache_dir / name / str(version))
    MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri).set_model_version_tag(
        name, str(version), Tag.ARTIFACT_SHA256, digest)
    for pointer in (cache_dir / name).glob("@*.json"):
        info = json.loads(pointer.read_text())
        if str(info.get("version")) == str(version):
            info["tags"][Tag.ARTIFACT_SHA256] = digest
            pointer.write_text(json.dumps(info, sort_keys=True))
    return digest


def train_claims_store(root: Path, *, n_policyholders: int = 300) -> dict[str, Any]:
    """``fti features run`` + ``fti train`` on a small seeded claims source under ``root`` (real subprocesses)."""
    spec = write_claims_spec(root / "spec", n_policyholders=n_policyholders)
    data = root / "data"
    env = fti_env(data, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    for args in (["features", "run", "--spec", str(spec)], ["train", "--spec", str(spec)]):
        res = run_fti(args, env)
        assert res.returncode == 0, res.stderr[-3000:]
    return {"root": root, "spec": spec, "data": data, "env": env, "uri": f"sqlite:///{data / 'mlflow.db'}",
            "name": "claims-fraud"}


def copy_store(store: dict[str, Any], target: Path) -> dict[str, Any]:
    """A private copy of a trained store (spec, source, feature store, registry, model cache) to mutate.

    The registry's artifact locations are absolute paths inside ``store['root']``; the copy keeps reading
    the original artifacts (never written by the tests), while its databases are its own."""
    import shutil

    shutil.copytree(store["root"], target, dirs_exist_ok=True)
    spec = target / store["spec"].relative_to(store["root"])
    data = target / store["data"].relative_to(store["root"])
    env = fti_env(data, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    return {**store, "root": target, "spec": spec, "data": data, "env": env,
            "uri": f"sqlite:///{data / 'mlflow.db'}"}


class mlflow_uris_restored:  # noqa: N801 - used as a context manager
    """Undo ``mlflow.set_tracking_uri``/``set_registry_uri`` (module globals mirrored into os.environ) on
    exit: module-scoped fixtures run outside the per-test reset of ``tests/conftest.py``."""

    def __enter__(self) -> None:
        self.saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}

    def __exit__(self, *exc: object) -> None:
        from mlflow.tracking._model_registry import utils as registry_utils
        from mlflow.tracking._tracking_service import utils as tracking_utils

        tracking_utils._tracking_uri = None
        registry_utils._registry_uri = None
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def assert_served_equals_registered(data_dir: Path, spec: Any, records: list[dict[str, Any]],
                                    preds: list[dict[str, Any]], *, feature_version: int = 1,
                                    model_version: int = 1) -> Any:
    """``/predict``'s answers for ``records`` are, bit for bit, the registered model version's
    ``predict_proba`` (a regressor's ``predict``) on the stored feature rows, each row scored alone;
    returns the pipeline."""
    import mlflow
    import numpy as np

    from shared import feature_table as ft
    from shared.db import make_engine

    frame = ft.read_version(make_engine(f"sqlite:///{data_dir / 'features.db'}"), spec, feature_version)
    frame = frame.set_index(frame[spec.record_id].astype(str))
    mlflow.set_tracking_uri(f"sqlite:///{data_dir / 'mlflow.db'}")
    pipeline = mlflow.sklearn.load_model(f"models:/{spec.model.name}/{model_version}")
    ids = [str(rec[spec.record_id]) for rec in records]
    assert [p["record_id"] for p in preds] == ids
    X = frame.loc[ids, spec.model_features]
    if not hasattr(pipeline, "predict_proba"):  # a regressor: the value, each row alone
        expected = np.array([float(pipeline.predict(X.iloc[[i]])[0]) for i in range(len(X))])
        got = np.array([p["prediction"] for p in preds], dtype=np.float64)
        assert np.array_equal(got, expected) and all("probabilities" not in p for p in preds)
        return pipeline
    expected = np.vstack([pipeline.predict_proba(X.iloc[[i]]) for i in range(len(X))])
    got = np.array([[p["probabilities"][c] for c in pipeline.classes_] for p in preds])
    assert np.array_equal(got, expected)
    return pipeline


def bundled_sklearn_csv(name: str, folder: Path) -> tuple[Path, str]:
    """A dataset bundled with scikit-learn (nothing downloaded) as the CSV a user would have: an id
    column, readable labels for the classification sets; returns (path, label column)."""
    from sklearn import datasets

    loader = {"breast_cancer": datasets.load_breast_cancer, "wine": datasets.load_wine,
              "diabetes": datasets.load_diabetes}[name]
    bunch = loader(as_frame=True)
    frame = bunch.frame.copy()
    frame.columns = [c.replace(" ", "_").replace("/", "_").replace("(", "").replace(")", "") for c in frame.columns]
    label = {"breast_cancer": "diagnosis", "wine": "cultivar", "diabetes": "progression"}[name]
    target = frame.pop("target")
    frame[label] = target if name == "diabetes" else target.map(dict(enumerate(bunch.target_names)))
    frame.insert(0, "sample_id", [f"{name}-{i:04d}" for i in range(len(frame))])
    folder.mkdir(parents=True)
    path = folder / f"{name}.csv"
    frame.to_csv(path, index=False)
    return path, label


def wait_fast_path(url: str, timeout: float = 90) -> dict[str, Any]:
    """``/model``'s scorer once the fast path is verified (it is checked after the service is ready);
    fails if verification ends any other way."""
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while (scorer := httpx.get(f"{url}/model", timeout=10).json()["scorer"]).get("mode") != "fast":
        assert time.monotonic() < deadline and "not verified yet" in str(scorer.get("reason")), scorer
        time.sleep(0.5)
    return dict(scorer)


def logged_lineage(url: str, prediction_id: str, timeout: float = 30) -> dict[str, Any]:
    """``GET /predictions/{id}`` once the prediction log (written in the background) holds the row."""
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while (got := httpx.get(f"{url}/predictions/{prediction_id}", timeout=60)).status_code == 404:
        assert time.monotonic() < deadline, got.text
        time.sleep(0.3)
    assert got.status_code == 200, got.text
    return dict(got.json())


def skops_model_dir(folder: Path, skops_bytes: bytes) -> Path:
    """An MLflow sklearn model directory holding ``skops_bytes`` (and an empty certificate), as a registry
    download looks to :func:`shared.model_file.load_model_dir`."""
    import yaml

    (folder / "extra_files").mkdir(parents=True)
    (folder / "MLmodel").write_text(yaml.safe_dump({"flavors": {"sklearn": {
        "serialization_format": "skops", "pickled_model": "model.skops"}}}))
    (folder / "model.skops").write_bytes(skops_bytes)
    (folder / "extra_files" / "certificate.json").write_text("{}")
    return folder
