"""The registry's access rules as compose runs them, on a real ``mlflow server`` with fti's auth config.

The compose MLflow server runs MLflow's basic-auth app with ``docker/mlflow/basic_auth.ini`` and its
``authorization_function`` (``docker/mlflow/fti_registry_auth.py``). Here the same two files run in a
local server: the read-only user reads everything but cannot create a registered model, an experiment or
a run, tag, or upload an artifact -- which MLflow's default rules would let any logged-in user do.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import httpx
import pytest

from tests.infra.mlflow_server import MlflowServer, start_mlflow_server, stop_mlflow_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
ADMIN = ("fti-admin", "admin-pass-0123456789")
WRITER = ("fti-training", "training-pass-0123456789")
READER = ("fti-inference", "inference-pass-0123456789")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("registry-auth")
    ini = (REPO / "docker/mlflow/basic_auth.ini").read_text()
    assert "sqlite:////mlartifacts/basic_auth.db" in ini
    (root / "basic_auth.ini").write_text(ini.replace("sqlite:////mlartifacts/basic_auth.db",
                                                     f"sqlite:///{root / 'basic_auth.db'}"))
    env = {"MLFLOW_AUTH_CONFIG_PATH": str(root / "basic_auth.ini"),
           "PYTHONPATH": os.pathsep.join([str(REPO / "docker/mlflow"), os.environ.get("PYTHONPATH", "")]),
           "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN[0], "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN[1],
           "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-secret",
           "FTI_REGISTRY_READ_ONLY_USERS": READER[0]}  # as docker-compose.yml sets it
    srv = start_mlflow_server(root, timeout=120, extra_args=["--app-name", "basic-auth"], extra_env=env)
    try:
        for user, password in (WRITER, READER):
            r = httpx.post(f"{srv.url}/api/2.0/mlflow/users/create", auth=ADMIN, timeout=30,
                           json={"username": user, "password": password})
            assert r.status_code == 200, r.text
        yield srv
    finally:
        stop_mlflow_server(srv)


def client(srv: MlflowServer, who: tuple[str, str], monkeypatch: pytest.MonkeyPatch):
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", who[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", who[1])
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    return MlflowClient(tracking_uri=srv.url, registry_uri=srv.url)


def status(fn) -> str:
    from mlflow.exceptions import MlflowException

    try:
        fn()
        return "allowed"
    except MlflowException as exc:
        text = str(exc)
        return next((c for c in ("401", "403") if f"error code {c}" in text), f"other: {text[:200]}")


def test_the_read_only_user_reads_and_writes_nothing(server: MlflowServer, monkeypatch: pytest.MonkeyPatch):
    writer = client(server, WRITER, monkeypatch)
    writer.create_registered_model("claims-fraud")
    experiment = writer.create_experiment("claims")
    run = writer.create_run(experiment)
    version = writer.create_model_version("claims-fraud", f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    writer.set_registered_model_alias("claims-fraud", "champion", version.version)

    reader = client(server, READER, monkeypatch)
    reads = {
        "alias": lambda: reader.get_model_version_by_alias("claims-fraud", "champion"),
        "search_versions": lambda: reader.search_model_versions("name='claims-fraud'"),
        "search_experiments": lambda: reader.search_experiments(),  # a POST .../search
        "search_runs": lambda: reader.search_runs([experiment]),
        "get_run": lambda: reader.get_run(run.info.run_id),
    }
    assert {name: status(fn) for name, fn in reads.items()} == dict.fromkeys(reads, "allowed")
    writes = {
        "create_registered_model": lambda: reader.create_registered_model("intruder"),
        "create_experiment": lambda: reader.create_experiment("intruder"),
        "create_run": lambda: reader.create_run(experiment),
        "register_version": lambda: reader.create_model_version("claims-fraud", "mlflow-artifacts:/x"),
        "move_alias": lambda: reader.set_registered_model_alias("claims-fraud", "champion", version.version),
        "tag_version": lambda: reader.set_model_version_tag("claims-fraud", version.version, "fti.validated", "x"),
        "delete_model": lambda: reader.delete_registered_model("claims-fraud"),
    }
    assert {name: status(fn) for name, fn in writes.items()} == dict.fromkeys(writes, "403")
    # artifact upload goes through MLflow's FastAPI path: refused there too; the writer's upload and a read pass
    path = f"{server.url}/api/2.0/mlflow-artifacts/artifacts/{experiment}/probe.txt"
    assert httpx.put(path, content=b"x", auth=READER, timeout=30).status_code == 403
    assert httpx.put(path, content=b"x", auth=WRITER, timeout=30).status_code == 200
    assert httpx.get(path, auth=READER, timeout=30).status_code == 200
    assert httpx.post(f"{server.url}/graphql", json={"query": "{__typename}"}, auth=READER,
                      timeout=30).status_code == 403
    # what the read-only rule adds: the writer (an ordinary user) still creates what it needs
    writer = client(server, WRITER, monkeypatch)  # the client reads its credentials from the environment
    assert status(lambda: writer.create_registered_model("another")) == "allowed"
    token = base64.b64encode(b"nobody:wrong").decode()
    assert httpx.get(f"{server.url}/api/2.0/mlflow/registered-models/search", timeout=30,
                     headers={"Authorization": f"Basic {token}"}).status_code == 401


def test_the_credential_cache_never_admits_a_wrong_password(server: MlflowServer):
    """basic_auth.ini turns on MLflow's credential cache (a scrypt check per request kept the compose server's
    core busy): a verified user/password is remembered, a wrong one is still refused right after."""
    url = f"{server.url}/api/2.0/mlflow/registered-models/search"
    assert httpx.get(url, auth=READER, timeout=30).status_code == 200
    assert httpx.get(url, auth=(READER[0], READER[1] + "x"), timeout=30).status_code == 401
    assert httpx.get(url, auth=(WRITER[0], READER[1]), timeout=30).status_code == 401
    assert httpx.get(url, auth=READER, timeout=30).status_code == 200


def test_the_server_config_caches_verified_credentials(monkeypatch: pytest.MonkeyPatch):
    from mlflow.server.auth.config import read_auth_config

    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(REPO / "docker/mlflow/basic_auth.ini"))
    config = read_auth_config()
    assert config.auth_cache_ttl_seconds == 60
    assert config.authorization_function == "fti_registry_auth:authenticate"


def test_the_rule_reads_its_users_from_the_environment(monkeypatch: pytest.MonkeyPatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("fti_registry_auth", REPO / "docker/mlflow/fti_registry_auth.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setenv("FTI_REGISTRY_READ_ONLY_USERS", " a, b ,,")
    assert mod.read_only_users() == frozenset({"a", "b"})
    assert mod.is_read("GET", "/api/2.0/mlflow/registered-models/get")
    assert mod.is_read("POST", "/api/2.0/mlflow/runs/search")
    assert not mod.is_read("POST", "/api/2.0/mlflow/registered-models/create")
    assert not mod.is_read("PATCH", "/api/2.0/mlflow/registered-models/update")
    assert not mod.is_read("DELETE", "/api/2.0/mlflow/registered-models/delete")
    assert not mod.is_read("POST", "/graphql/search")
