"""``fti predict-batch`` through the real CLI, on real stores (SQLite files, the PostgreSQL fixture, a local
MLflow store): in real subprocesses, and through ``fti.cli.main`` in this process where another CLI start-up
would only cost time.

One module-scoped project: a small claims source, feature version 1, ``fti train`` on it (version 1 of the
model becomes champion), then feature version 2 (an earlier ``--as-of``, fewer rows). The tests then score
whole feature versions and check the table against the registered model scored in this process, bit for
bit; that a rerun writes nothing and ``--replace`` rewrites the same content; the ``--model`` and
``--feature-version`` arguments; the exit-3 errors (a certificate that fails at the model level among them);
and that a run killed with SIGKILL in the middle of writing leaves nothing behind on SQLite and PostgreSQL,
after which two concurrent reruns write the batch exactly once (and, on SQLite, that a killed ``--replace``
leaves the old batch whole).
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers import REPO, fti_env, run_fti, write_claims_spec

pytestmark = pytest.mark.integration

N_POLICYHOLDERS = 300
CLI_TIMEOUT = 240
V2_AS_OF = "2025-06-30T00:00:00Z"  # feature version 2: the claims known by then (fewer rows than version 1)
PROGRESS = re.compile(r"^predict-batch: (\d+)/(\d+) rows scored and written \(")


@dataclass
class Project:
    root: Path
    spec: Path
    name: str
    data_dir: Path
    env: dict[str, str]

    @property
    def store_url(self) -> str:
        return f"sqlite:///{self.data_dir / 'features.db'}"

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.data_dir / 'mlflow.db'}"

    def cli(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return run_fti(list(args), env or self.env, timeout=CLI_TIMEOUT)

    def batch(self, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
        res = self.cli("predict-batch", "--spec", str(self.spec), "--json", *args, env=env)
        assert res.returncode == 0, _explain(res)
        try:
            return {**json.loads(res.stdout), "_stderr": res.stderr}
        except ValueError:
            raise AssertionError(f"`fti predict-batch --json` did not print JSON:\n{_explain(res)}") from None


def _explain(res: subprocess.CompletedProcess[str]) -> str:
    return f"exit {res.returncode}\n--- stdout ---\n{res.stdout[-5000:]}\n--- stderr ---\n{res.stderr[-5000:]}"


def _publish(spec: Path, data_dir: Path, url: str, as_of: str | None = None) -> Any:
    """The feature job in-process (saves a CLI start-up): one feature version in the store at ``url``."""
    from feature_pipeline.config import Settings
    from feature_pipeline.pipeline import run
    from shared.spec import load_spec

    return run(load_spec(spec), Settings(data_dir=data_dir, database_url=url), as_of=as_of).info


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    root = tmp_path_factory.mktemp("predict-batch")
    name = f"claims-{uuid.uuid4().hex[:12]}"
    spec = write_claims_spec(root / "spec", n_policyholders=N_POLICYHOLDERS, overrides={"model.name": name})
    data_dir = root / "data"
    # Small data: OpenMP threads only add contention (HistGradientBoosting).
    p = Project(root, spec, name, data_dir, fti_env(data_dir, OMP_NUM_THREADS="1"))
    assert _publish(spec, data_dir, p.store_url).version == 1
    res = p.cli("train", "--spec", str(spec))
    assert res.returncode == 0, _explain(res)
    v2 = _publish(spec, data_dir, p.store_url, as_of=V2_AS_OF)
    assert v2.version == 2 and 0 < v2.row_count < 1200
    return p


@pytest.fixture
def local_mlflow(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    """This process reads the project's MLflow store (environment only: no leaking mlflow globals)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", project.tracking_uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", project.tracking_uri)


def _engine(url: str) -> Any:
    from shared.db import make_engine

    return make_engine(url)


def _stored(url: str, batch_id: str | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(manifest rows, prediction rows) as plain dicts, optionally of one batch."""
    from sqlalchemy import select

    from shared import batch_table as bt

    engine = _engine(url)
    try:
        with engine.connect() as conn:
            b, t = bt.prediction_batches, bt.batch_predictions
            qb, qt = select(b), select(t).order_by(t.c.prediction_id)
            if batch_id is not None:
                qb, qt = qb.where(b.c.batch_id == batch_id), qt.where(t.c.batch_id == batch_id)
            return ([dict(r._mapping) for r in conn.execute(qb)], [dict(r._mapping) for r in conn.execute(qt)])
    finally:
        engine.dispose()


def _by_hand_checksum(rows: list[dict[str, Any]]) -> str:
    """The documented checksum (docs/batch.md), computed without ``shared.batch_table``."""
    h = hashlib.sha256()
    for r in sorted(rows, key=lambda r: r["record_id"]):
        as_of = r["as_of"].strftime("%Y-%m-%dT%H:%M:%S.%fZ") if r["as_of"] is not None else ""
        h.update("\t".join([r["prediction_id"], r["dataset"], r["record_id"], r["entity_key"], as_of,
                            r["model_name"], r["model_version"], str(r["feature_version"]), r["prediction"],
                            r["outputs"]]).encode() + b"\n")
    return h.hexdigest()


_MODELS: dict[str, Any] = {}  # the registered model, loaded once per module by MLflow itself


def _assert_complete_and_exact(project: Project, url: str, batch_id: str, version: int) -> tuple[Any, list[Any]]:
    """The batch holds every record of the feature version once, with its keys, and the outputs of the
    registered model (version 1) scored in this process on the version's model inputs, bit for bit; its
    manifest checksum is recomputable from the table. Returns (feature version manifest, batch rows)."""
    import mlflow

    from shared import batch_table as bt
    from shared import feature_table as ft
    from shared.spec import load_spec

    spec = load_spec(project.spec).spec
    engine = _engine(url)
    try:
        info = ft.get_version(engine, spec.name, version)
        frame = ft.read_version(engine, spec, version)
        recomputed = bt.stored_checksum(engine, batch_id)
    finally:
        engine.dispose()
    manifests, rows = _stored(url, batch_id)
    assert len(manifests) == 1
    m = manifests[0]
    assert m["batch_id"] == batch_id == bt.batch_id(spec.name, version, project.name, "1")
    assert (m["row_count"], m["feature_checksum"]) == (info.row_count, info.checksum)

    # Complete: every record of the version exactly once, with its keys and as-of time.
    assert len(rows) == info.row_count == len(frame)
    by_id = {r["record_id"]: r for r in rows}
    assert sorted(by_id) == sorted(frame[spec.record_id])
    for rid, ent, ts in zip(frame[spec.record_id], frame[spec.entity_key], frame[spec.event_time], strict=True):
        r = by_id[rid]
        assert (r["entity_key"], r["as_of"], r["feature_version"]) == \
            (ent, ts.tz_localize(None).to_pydatetime(), version)
        assert r["prediction_id"] == bt.prediction_id(spec.name, version, project.name, "1", rid)
        assert (r["model_name"], r["model_version"], r["dataset"]) == (project.name, "1", spec.name)

    # Exact: the registered model scored in this process on the version's model inputs, bit for bit.
    model = _MODELS.get(project.name) or _MODELS.setdefault(
        project.name, mlflow.sklearn.load_model(f"models:/{project.name}/1"))
    want = model.predict_proba(frame[spec.model_features])
    outputs = [json.loads(by_id[rid]["outputs"]) for rid in frame[spec.record_id]]
    labels = [str(c) for c in model.classes_]
    got = np.array([[o["probabilities"][k] for k in labels] for o in outputs], dtype=np.float64)
    assert got.shape == want.shape and np.array_equal(got, want)
    classes = [c.item() for c in model.classes_]
    assert [o["prediction"] for o in outputs] == [classes[i] for i in want.argmax(axis=1)]
    assert [by_id[rid]["prediction"] for rid in frame[spec.record_id]] == [str(o["prediction"]) for o in outputs]

    # The manifest checksum is recomputable from the table, by the contract and by hand.
    assert recomputed == (m["checksum"], info.row_count)
    assert _by_hand_checksum(rows) == m["checksum"]
    return info, rows


# --------------------------------------------------------------------------- complete, exact, rerunnable


@pytest.mark.slow
def test_a_feature_version_is_scored_completely_bit_for_bit_and_a_rerun_writes_nothing(
        project: Project, local_mlflow: None, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    first = project.batch()  # defaults: the latest feature version (2), the champion (version 1)
    assert first["status"] == "written", first
    assert (first["feature_version"], first["model_name"], first["model_version"]) == (2, project.name, "1")
    assert re.search(r"parity certificate passed at the model level: \d+ rows identical bit for bit", first["_stderr"])
    assert re.search(r"^predict-batch: (\d+)/\1 rows scored and written \(100\.0%\)", first["_stderr"], re.M)

    info, rows = _assert_complete_and_exact(project, project.store_url, first["batch_id"], 2)
    manifests, _ = _stored(project.store_url, first["batch_id"])
    m = manifests[0]
    assert m["checksum"] == first["checksum"] and m["details"]["alias"] == "champion"

    # A rerun: reports the batch, writes nothing (same manifest row, same rows). The rerun and --replace run
    # `fti.cli.main` in this process to save two CLI start-ups; the kill test below reruns in subprocesses.
    code, out, err = _main(project, monkeypatch, capsys)
    assert code == 0, err
    assert out.startswith(f"batch {m['batch_id']} already exists: {info.row_count} rows"), out
    assert "nothing written" in out and "rows scored and written" not in err
    manifests2, rows2 = _stored(project.store_url, m["batch_id"])
    assert manifests2 == manifests and rows2 == rows

    # --replace: deleted and rewritten in one transaction; identical content, a new manifest time.
    code, out, err = _main(project, monkeypatch, capsys, "--replace", "--json")
    assert code == 0, err
    replaced = json.loads(out)
    assert replaced["status"] == "replaced", replaced
    assert f"--replace: deleted batch {m['batch_id']} ({info.row_count} rows) in this transaction" in err
    assert (replaced["batch_id"], replaced["checksum"], replaced["row_count"]) == \
        (m["batch_id"], m["checksum"], info.row_count)
    manifests3, rows3 = _stored(project.store_url, m["batch_id"])
    assert len(manifests3) == 1 and manifests3[0]["created_at"] > m["created_at"]
    assert manifests3[0]["details"]["replaced"] is True
    assert rows3 == rows
    all_manifests, _ = _stored(project.store_url)
    assert len([b for b in all_manifests if b["feature_version"] == 2 and b["model_version"] == "1"]) == 1


def test_model_version_and_feature_version_select_what_is_scored(project: Project, local_mlflow: None,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    # In this process (`fti.cli.main`): the subprocess cases above and below cover the process boundary.
    code, stdout, err = _main(project, monkeypatch, capsys, "--model", f"{project.name}/1", "--feature-version", "1",
                              "--json")
    assert code == 0, err
    out = json.loads(stdout)
    assert out["status"] == "written", out
    assert (out["feature_version"], out["model_name"], out["model_version"]) == (1, project.name, "1")
    info, _ = _assert_complete_and_exact(project, project.store_url, out["batch_id"], 1)
    assert (out["row_count"], out["feature_checksum"]) == (info.row_count, info.checksum)
    assert out["details"]["alias"] is None  # loaded by version, not through the alias
    assert f"{info.row_count}/{info.row_count} rows scored and written (100.0%)" in err


# --------------------------------------------------------------------------- exit 3


def _main(project: Project, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str,
          **env: str) -> tuple[int, str, str]:
    """The CLI's ``main`` in this process (a CLI start-up costs seconds; the subprocess case is tested too)."""
    from fti.cli import main

    for key in list(os.environ):
        if key.startswith(("FTI_", "MLFLOW_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("FTI_DATA_DIR", str(project.data_dir))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", project.tracking_uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", project.tracking_uri)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    capsys.readouterr()
    code = main(["predict-batch", "--spec", str(project.spec), *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_user_errors_exit_3_with_what_to_do(project: Project, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from shared import feature_table as ft

    # Through a real subprocess: the exit code and the message, no traceback.
    res = project.cli("predict-batch", "--spec", str(project.spec), "--feature-version", "99")
    assert res.returncode == 3, _explain(res)
    assert "fti: error: dataset 'claims' has no feature version 99 (see `fti features list" in res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""

    cases = [
        (["--model", f"{project.name}/99"], {},
         f"model {project.name}/99 is not in the registry at sqlite:///"),
        (["--model", f"{project.name}@nope"], {}, f"no model version has alias {project.name}@nope yet: run `fti train"),
        (["--model", f"{project.name}/latest"], {}, f"--model '{project.name}/latest' is not NAME/VERSION, "
         "NAME@ALIAS, models:/NAME/VERSION or models:/NAME@ALIAS"),
        ([], {"FTI_MODEL_ALIAS": "staging"}, f"no model version has alias {project.name}@staging yet"),
        ([], {"FTI_DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}"},
         "has no fti tables yet: run `fti features run --spec ...` first"),
    ]
    # A store at revision 0002 (before the batch tables): migrate first.
    old = tmp_path / "old.db"
    engine = _engine(f"sqlite:///{old}")
    try:
        ft.upgrade(engine, "0002")
    finally:
        engine.dispose()
    cases.append(([], {"FTI_DATABASE_URL": f"sqlite:///{old}"},
                  "schema is at revision 0002, this needs 0003 or later: run `fti features migrate`"))
    for args, env, message in cases:
        code, out, err = _main(project, monkeypatch, capsys, *args, **env)
        malformed = "is not NAME/VERSION" in message  # a usage error; the rest are the user's to fix
        assert code == (2 if malformed else 3), (args, env, out, err)
        assert err.startswith("fti: error: ") and message in err, (args, env, err)
        assert out == ""
    code, out, err = _main(project, monkeypatch, capsys, "--model", f"{project.name}/99")
    assert "(registered versions of" in err and ": 1)" in err


@pytest.mark.slow
def test_a_model_failing_its_certificate_at_the_model_level_is_refused_before_anything_is_written(
        project: Project, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        tmp_path: Path) -> None:
    from inference_service.model_loader import MlflowLoader

    # A private model cache holding version 1 with one certified output moved by one ulp.
    cache = tmp_path / "model-cache"
    model_dir = MlflowLoader(project.tracking_uri, project.tracking_uri, cache).fetch(project.name, "1")
    cert_path = model_dir / "extra_files" / "certificate.json"
    cert = json.loads(cert_path.read_text())
    cert["expected"][5][1] = float(np.nextafter(cert["expected"][5][1], 2.0))
    cert_path.write_text(json.dumps(cert))
    from mlflow import MlflowClient

    from shared.registry_contract import Tag
    from tests.helpers import register_cache_edit

    client = MlflowClient(tracking_uri=project.tracking_uri, registry_uri=project.tracking_uri)
    genuine = client.get_model_version(project.name, "1").tags[Tag.ARTIFACT_SHA256]
    register_cache_edit(project.tracking_uri, cache, project.name, "1")  # as if registered with this certificate
    try:
        before = _stored(project.store_url)
        # --replace too: the refusal comes before the existing batch (if any) would be deleted.
        code, out, err = _main(project, monkeypatch, capsys, "--model", f"{project.name}/1", "--feature-version", "1",
                               "--replace", FTI_MODEL_CACHE_DIR=str(cache))
        assert code == 3, err
        assert f"fti: error: refusing {project.name} version 1: on its parity certificate's model inputs it does not " \
               "give the certified outputs (1 of " in err and " rows differ" in err, err
        assert "Nothing was written" in err and out == ""
        assert _stored(project.store_url) == before
    finally:
        client.set_model_version_tag(project.name, "1", Tag.ARTIFACT_SHA256, genuine)


# --------------------------------------------------------------------------- killed mid-run, concurrent reruns


def _popen(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    exe = Path(sys.executable).parent / "fti"
    return subprocess.Popen([str(exe), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO, start_new_session=True)


def _lines(stream: Any) -> queue.Queue[str | None]:
    q: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in stream:
            q.put(line.rstrip("\n"))
        q.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return q


def _kill_in_the_middle_of_writing(project: Project, env: dict[str, str], url: str, total: int,
                                   expect: tuple[list[Any], list[Any]], extra: tuple[str, ...] = ()) -> None:
    """Start `fti predict-batch` (small chunks), wait until it has written >= 100 rows inside its transaction,
    check that others still see exactly ``expect`` (manifests, rows), SIGKILL its process group, check again."""
    proc = _popen(["predict-batch", "--spec", str(project.spec), *extra], env)
    lines, seen = _lines(proc.stderr), []
    try:
        deadline = time.monotonic() + CLI_TIMEOUT
        while True:
            line = lines.get(timeout=max(deadline - time.monotonic(), 0.1))
            assert line is not None, f"exited {proc.wait()} before writing:\n" + "\n".join(seen[-40:])
            seen.append(line)
            match = PROGRESS.match(line)
            if match and int(match.group(1)) >= 100:
                break
        assert int(match.group(2)) == total and int(match.group(1)) < total // 2, line
        # In the middle of the transaction: nothing of it is visible to anyone else.
        assert _stored(url) == expect
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert _stored(url) == expect, "a killed run left a partial batch behind"


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_killed_mid_write_leaves_nothing_then_concurrent_reruns_write_the_batch_once(
        project: Project, backend: str, request: pytest.FixtureRequest, tmp_path: Path, local_mlflow: None) -> None:
    url = request.getfixturevalue("pg_database") if backend == "postgresql" else f"sqlite:///{tmp_path / 'kill.db'}"
    info = _publish(project.spec, tmp_path, url)
    env = {**project.env, "FTI_DATABASE_URL": url}
    # Tiny chunks, a progress line per chunk: the write phase lasts seconds and says where it is.
    slow = {**env, "FTI_BATCH_CHUNK_ROWS": "2", "FTI_BATCH_PROGRESS_SECONDS": "0"}

    _kill_in_the_middle_of_writing(project, slow, url, info.row_count, expect=([], []))

    # Two reruns at once: one writes the whole batch, the other reports it; nothing is duplicated.
    # Chunks of 25 rows: the write phase lasts long enough for the two to overlap, most of the time.
    reruns = [_popen(["predict-batch", "--spec", str(project.spec), "--json"], {**env, "FTI_BATCH_CHUNK_ROWS": "25"})
              for _ in range(2)]
    results = []
    for p in reruns:
        out, err = p.communicate(timeout=CLI_TIMEOUT)
        assert p.returncode == 0, f"exit {p.returncode}\n{out}\n{err[-4000:]}"
        results.append(json.loads(out))
    assert sorted(r["status"] for r in results) == ["exists", "written"], results
    assert len({(r["batch_id"], r["checksum"], r["row_count"]) for r in results}) == 1
    manifests, rows = _stored(url)
    assert len(manifests) == 1 and manifests[0]["row_count"] == len(rows) == info.row_count
    # Chunks of 25 rows (the scorer's small-batch regime) give the registered model's outputs bit for bit too.
    _assert_complete_and_exact(project, url, results[0]["batch_id"], info.version)
    if backend == "sqlite":
        # --replace killed half-way: its delete is rolled back with the rest, the old batch stays whole.
        before = _stored(url)
        _kill_in_the_middle_of_writing(project, slow, url, info.row_count, expect=before, extra=("--replace",))
        from sqlalchemy import text

        engine = _engine(url)
        try:
            with engine.connect() as conn:
                assert conn.execute(text("PRAGMA integrity_check")).scalar() == "ok"
        finally:
            engine.dispose()

