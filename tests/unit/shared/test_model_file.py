"""shared.model_file: exact-name allow-list, declared sizes, memory rehearsal, tree structure, digest.

Real scikit-learn pipelines (fti's own ``build_pipeline`` for each documented estimator family)
and real skops files; the malicious ones come from ``tests/malicious_models.py`` and are first
shown to be live (a loader that trusts the file's own list runs them)."""

from __future__ import annotations

import io
import json
import os
import signal
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import skops.io
import yaml

from shared import model_file
from shared.model_file import (
    ModelFileRefused,
    ModelFileTampered,
    artifact_digest,
    audit,
    load_model_dir,
    rehearse,
)
from shared.spec import load_spec
from tests.malicious_models import CATALOGUE, naive_load
from training_pipeline.model import build_pipeline

ROOT = Path(__file__).resolve().parents[3]

FAMILIES: dict[str, dict[str, Any]] = {
    "sklearn.ensemble.HistGradientBoostingClassifier": {"max_iter": 5},
    "sklearn.linear_model.LogisticRegression": {},
    "sklearn.ensemble.RandomForestClassifier": {"n_estimators": 3},
    "sklearn.ensemble.ExtraTreesClassifier": {"n_estimators": 3},
    "sklearn.ensemble.GradientBoostingClassifier": {"n_estimators": 3},
    "sklearn.tree.DecisionTreeClassifier": {},
    "sklearn.neighbors.KNeighborsClassifier": {},
    "sklearn.naive_bayes.GaussianNB": {},
    "sklearn.neural_network.MLPClassifier": {"max_iter": 5},
    "sklearn.linear_model.SGDClassifier": {"loss": "log_loss"},
}


def _frame(spec: Any, n: int = 120, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({f: rng.normal(size=n) if spec.feature_kind(f) == "numeric" else rng.choice(list("abcd"), n)
                         for f in spec.model_features})


def _pipeline(family: str, params: dict[str, Any], labels: np.ndarray) -> Any:
    spec = load_spec(ROOT / "specs" / "claims.yaml").spec
    est = spec.model.estimator.model_copy(update={"class_path": family, "params": params})
    spec = spec.model_copy(update={"model": spec.model.model_copy(update={"estimator": est})})
    X = _frame(spec, len(labels))
    return build_pipeline(spec).fit(X, labels), X


def _model_dir(folder: Path, skops_bytes: bytes) -> Path:
    folder.mkdir(parents=True)
    (folder / "MLmodel").write_text(yaml.safe_dump({"flavors": {"sklearn": {
        "serialization_format": "skops", "pickled_model": "model.skops"}}}))
    (folder / "model.skops").write_bytes(skops_bytes)
    (folder / "extra_files").mkdir()
    (folder / "extra_files" / "certificate.json").write_text("{}")
    return folder


@pytest.fixture(scope="module")
def genuine() -> tuple[bytes, Any, pd.DataFrame]:
    rng = np.random.default_rng(1)
    pipe, X = _pipeline("sklearn.ensemble.HistGradientBoostingClassifier", {"max_iter": 5},
                        rng.integers(0, 2, 120))
    return skops.io.dumps(pipe), pipe, X


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("labels", ["binary-int", "three-strings", "bool"])
def test_every_documented_family_loads_through_the_allow_list(tmp_path, family, labels):
    rng = np.random.default_rng(2)
    y = {"binary-int": rng.integers(0, 2, 120), "three-strings": rng.choice(["good", "bad", "ugly"], 120),
         "bool": rng.choice([True, False], 120)}[labels]
    pipe, X = _pipeline(family, FAMILIES[family], y)
    folder = _model_dir(tmp_path / "m", skops.io.dumps(pipe))
    loaded = load_model_dir(folder, expected_digest=artifact_digest(folder), memory_limit_mb=0)
    assert np.array_equal(loaded.predict_proba(X), pipe.predict_proba(X))


@pytest.mark.parametrize("crafted", [c for c in CATALOGUE if c.live == "load"], ids=lambda c: c.name)
def test_each_code_payload_is_live_when_the_file_is_trusted(tmp_path, genuine, crafted):
    """The catalogue is real: trusting the file's own type list runs the payload."""
    marker = tmp_path / "marker"
    path = tmp_path / "m.skops"
    path.write_bytes(crafted.build(genuine[0], marker))
    naive_load(path)
    assert list(tmp_path.glob("marker*")), f"{crafted.name}: the payload did not run under a naive load"


@pytest.mark.parametrize("crafted", CATALOGUE, ids=lambda c: c.name)
def test_every_crafted_file_is_refused_before_any_of_it_runs(tmp_path, genuine, crafted):
    marker = tmp_path / "marker"
    folder = _model_dir(tmp_path / "m", crafted.build(genuine[0], marker))
    with pytest.raises(ModelFileRefused, match="refused") as err:
        load_model_dir(folder, expected_digest=artifact_digest(folder), memory_limit_mb=256)
    assert not list(tmp_path.glob("marker*"))
    if crafted.live == "build":
        assert "point outside the tree" in str(err.value)
    if crafted.live != "build":  # refused from the file alone, before anything is imported or built
        with pytest.raises(ModelFileRefused):
            audit(folder / "model.skops")


def test_at_least_twelve_crafted_models_cover_every_library_named_in_the_issue():
    assert len(CATALOGUE) >= 12
    text = " ".join(c.what for c in CATALOGUE)
    for lib in ("numpy", "scipy", "sklearn", "builtins", "operator", "functools", "importlib", "TiB"):
        assert lib in text, lib


@pytest.mark.slow  # ~12 s: builds a model that really needs more than the limit
def test_an_allow_listed_file_that_needs_too_much_memory_is_refused_by_the_rehearsal(tmp_path, genuine):
    """Only allow-listed types, a 200 MB array that compresses to almost nothing: the audit lets it
    through (it is a plausible model), the rehearsal under 64 MB refuses it, the service never builds it."""
    _, pipe, X = genuine
    pipe.fti_padding_ = np.zeros(25_000_000)
    buf = skops.io.dumps(pipe, compression=zipfile.ZIP_DEFLATED)
    del pipe.fti_padding_
    assert len(buf) < 2_000_000
    folder = _model_dir(tmp_path / "m", buf)
    audit(folder / "model.skops")
    with pytest.raises(ModelFileRefused, match="64 MB memory limit"):
        load_model_dir(folder, memory_limit_mb=64)
    with pytest.raises(ModelFileRefused, match="64 MB memory limit"):  # the interpreter-per-load fallback
        rehearse(folder / "model.skops", 64, method="spawn")
    assert load_model_dir(folder, memory_limit_mb=1024).predict_proba(X).shape == (len(X), 2)


def test_the_forked_rehearsal_builds_a_genuine_model_while_other_threads_run(tmp_path, genuine):
    """The fork keeps only the caller's thread (what the clean helper does for every default rehearsal)."""
    folder = _model_dir(tmp_path / "m", genuine[0])
    stop = threading.Event()
    busy = threading.Thread(target=lambda: [sum(range(1000)) for _ in iter(stop.is_set, True)], daemon=True)
    busy.start()
    try:
        for _ in range(3):
            rehearse(folder / "model.skops", 512, method="fork")
    finally:
        stop.set()
        busy.join()


def test_by_default_every_thread_rehearses_in_one_clean_helper(tmp_path, genuine):
    """The helper is another process, started once: two threads rehearse at once (the server's reload
    thread and a request's), and later rehearsals reuse it."""
    folder = _model_dir(tmp_path / "m", genuine[0])
    errors: list[BaseException] = []

    def run() -> None:
        try:
            rehearse(folder / "model.skops", 512)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    helper = model_file._ZYGOTE.pid
    assert helper is not None and helper != os.getpid()
    rehearse(folder / "model.skops", 512)
    assert model_file._ZYGOTE.pid == helper


def test_a_helper_started_early_serves_the_next_rehearsal(tmp_path, genuine):
    """``prepare_rehearsal`` (called before a model's download) starts the helper without waiting; the
    rehearsal then uses that one. A limit of 0 (no rehearsal) starts nothing."""
    folder = _model_dir(tmp_path / "m", genuine[0])
    model_file._ZYGOTE.close()
    model_file.prepare_rehearsal(0)
    assert model_file._ZYGOTE.pid is None
    model_file.prepare_rehearsal(512)
    early = model_file._ZYGOTE.pid
    assert early is not None
    rehearse(folder / "model.skops", 512)
    assert model_file._ZYGOTE.pid == early


def test_a_helper_that_dies_is_started_again_and_a_build_over_time_is_refused(tmp_path, genuine):
    folder = _model_dir(tmp_path / "m", genuine[0])
    rehearse(folder / "model.skops", 512)
    killed = model_file._ZYGOTE.pid
    assert killed is not None
    os.kill(killed, signal.SIGKILL)
    rehearse(folder / "model.skops", 512)  # the dead helper is noticed, a new one builds it
    helper = model_file._ZYGOTE.pid
    assert helper not in (None, killed)
    with pytest.raises(ModelFileRefused, match="took over 0s"):
        rehearse(folder / "model.skops", 512, timeout=0.001)
    rehearse(folder / "model.skops", 512)  # the helper killed only the late child
    assert model_file._ZYGOTE.pid == helper


@pytest.mark.parametrize(("behaviour", "reason"), [
    ("crash", "killed by signal 11"), ("hang", "took over 2s"), ("exit", "building it under a 512 MB")])
def test_a_rehearsal_that_crashes_hangs_or_dies_refuses_the_model_and_leaves_this_process_alone(
        tmp_path, genuine, monkeypatch, behaviour, reason):
    folder = _model_dir(tmp_path / "m", genuine[0])

    def build(path, limit):  # runs in the forked child only
        if behaviour == "crash":
            os.kill(os.getpid(), signal.SIGSEGV)
        if behaviour == "hang":
            time.sleep(60)
        os._exit(9)

    monkeypatch.setattr(model_file, "_build_limited", build)
    forked: list[int] = []
    real_fork = os.fork

    def fork() -> int:
        pid = real_fork()
        if pid:
            forked.append(pid)
        return pid

    monkeypatch.setattr(os, "fork", fork)
    started = time.monotonic()
    with pytest.raises(ModelFileRefused, match=reason):
        rehearse(folder / "model.skops", 512, method="fork", timeout=2.0)
    assert time.monotonic() - started < 30
    assert len(forked) == 1
    with pytest.raises(ChildProcessError):  # the rehearsal's child was reaped: nothing left behind
        os.waitpid(forked[0], os.WNOHANG)


def test_a_changed_file_is_refused_as_tampered_and_names_the_digests(tmp_path, genuine):
    folder = _model_dir(tmp_path / "m", genuine[0])
    digest = artifact_digest(folder)
    load_model_dir(folder, expected_digest=digest, memory_limit_mb=0)
    cert = folder / "extra_files" / "certificate.json"
    cert.write_text(json.dumps({"swapped": True}))
    with pytest.raises(ModelFileTampered, match="differ from what the registry recorded"):
        load_model_dir(folder, expected_digest=digest, memory_limit_mb=0)
    assert artifact_digest(folder) != digest


def test_the_digest_ignores_only_dot_files_and_the_download_metadata(tmp_path, genuine):
    """MLflow writes registered_model_meta (name, version number) into each download: a copy of a
    version registered under another number has the same digest; anything else counts."""
    folder = _model_dir(tmp_path / "m", genuine[0])
    digest = artifact_digest(folder)
    (folder / ".lock").write_text("x")
    assert artifact_digest(folder) == digest
    (folder / "registered_model_meta").write_text("model_name: m\nmodel_version: '2'\n")
    assert artifact_digest(folder) == digest
    (folder / "extra_files" / "registered_model_meta").write_text("x")
    assert artifact_digest(folder) != digest
    (folder / "extra_files" / "registered_model_meta").unlink()
    (folder / "extra").write_text("x")
    assert artifact_digest(folder) != digest


@pytest.mark.parametrize("mlmodel, why", [
    ({"flavors": {"sklearn": {"serialization_format": "cloudpickle", "pickled_model": "model.pkl"}}}, "not skops"),
    ({"flavors": {"sklearn": {"serialization_format": "skops", "pickled_model": "../../etc/passwd"}}},
     "not a file of the model directory"),
    ({"flavors": {"python_function": {}}}, "not skops"),
])
def test_mlmodel_must_name_a_skops_file_inside_the_model(tmp_path, genuine, mlmodel, why):
    folder = _model_dir(tmp_path / "m", genuine[0])
    (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    with pytest.raises(ModelFileRefused, match=why):
        load_model_dir(folder, memory_limit_mb=0)


def _with_schema(genuine_bytes: bytes, schema_text: str) -> bytes:
    src = zipfile.ZipFile(io.BytesIO(genuine_bytes))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, schema_text if info.filename == "schema.json" else src.read(info.filename))
    return out.getvalue()


@pytest.mark.parametrize("schema_text, why", [
    ("[" * 100_000 + "]" * 100_000, "not a valid skops schema"),
    ('{"protocol": 2, "x": NaN}', "not a valid skops schema"),
    ('{"protocol": 2, "x": ' + "9" * 5000 + "}", "not a valid skops schema"),
    ('{"protocol": true}', "protocol"),
    ('{"protocol": 2, "__class__": "dict", "__module__": "builtins"}', "without a loader"),
    ("not json", "not a valid skops schema"),
])
def test_malformed_schemas_are_refused_with_a_reason(tmp_path, genuine, schema_text, why):
    folder = _model_dir(tmp_path / "m", _with_schema(genuine[0], schema_text))
    with pytest.raises(ModelFileRefused, match=why):
        load_model_dir(folder, memory_limit_mb=0)


def test_not_a_zip_is_refused(tmp_path):
    folder = _model_dir(tmp_path / "m", b"\x80\x04cos\nsystem\n.")  # a pickle, renamed
    with pytest.raises(ModelFileRefused, match="not a skops archive"):
        load_model_dir(folder, memory_limit_mb=0)


def test_the_refusal_names_the_refused_type_and_where_the_list_lives(tmp_path, genuine):
    bad = _with_schema(genuine[0], json.dumps({"protocol": 2, "__class__": "system", "__module__": "os",
                                               "__loader__": "ObjectNode"}))
    folder = _model_dir(tmp_path / "m", bad)
    with pytest.raises(ModelFileRefused) as err:
        load_model_dir(folder, memory_limit_mb=0)
    assert "os.system (ObjectNode) is not in fti's model allow-list (shared/model_file.py" in str(err.value)


def test_the_rehearsal_is_not_fooled_by_memory_the_caller_freed_but_kept(tmp_path, genuine):
    """The limit is the rehearsal child's address space plus the limit; room the child already holds is
    not counted. A child forked from this process inherits 900 MB of freed malloc heap and a 400 MB array
    in an uncollected cycle: forked from here (``method="fork"``), the 200 MB model passes a 64 MB
    rehearsal -- what a CI run saw. The default rehearsal forks from the clean helper instead."""
    import gc

    _, pipe, _ = genuine
    pipe.fti_padding_ = np.zeros(25_000_000)
    buf = skops.io.dumps(pipe, compression=zipfile.ZIP_DEFLATED)
    del pipe.fti_padding_
    folder = _model_dir(tmp_path / "m", buf)

    class Cycle:
        pass

    gc.collect()
    blocks = [bytes(100_000) for _ in range(9_000)]  # 900 MB in the malloc heap (below its mmap threshold)
    kept = blocks[-1]  # held: the freed room below it stays in the heap, free for the next malloc
    del blocks
    junk = Cycle()
    junk.me, junk.data = junk, np.ones(50_000_000)  # 400 MB, reachable only through its own cycle
    del junk
    try:
        with pytest.raises(ModelFileRefused, match="64 MB memory limit"):
            rehearse(folder / "model.skops", 64)
    finally:
        del kept
        gc.collect()

