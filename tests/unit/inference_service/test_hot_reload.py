"""Hot-reload swap logic on a ``Runtime`` with a fake registry/loader (no MLflow, no model files).

The parity certificate is faked too (``certify`` is overridden); the real loader and certificate
run in ``tests/e2e/test_hot_reload.py``. Covered here: a passing candidate is swapped in while a
reference taken before keeps the old model; every kind of failure leaves the served model in place
and is reported; a refused version is not loaded again on every poll (retried when its tags change
or after the back-off); transient errors (a download error, a certificate that could not run) back
off exponentially; the poll loop loads off the event loop; interval 0 disables it.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from inference_service.config import Settings
from inference_service.model_loader import LoadedModel, ModelLoadError
from inference_service.runtime import Runtime
from shared import certificate as certmod
from shared.db import make_engine
from shared.spec import load_spec
from tests.helpers import write_claims_spec


class FakeLoader:
    """A registry with one alias; ``fail[version]`` is raised by load_version; ``delay`` slows loads down."""

    def __init__(self) -> None:
        self.alias_version = "1"
        self.tags: dict[str, dict[str, str]] = {}
        self.fail: dict[str, BaseException] = {}
        self.resolve_error: BaseException | None = None
        self.delay = 0.0
        self.loads: list[str] = []
        self.load_threads: list[str] = []

    def resolve(self, name: str, alias: str) -> Any:
        if self.resolve_error is not None:
            raise self.resolve_error
        return SimpleNamespace(version=self.alias_version, tags=dict(self.tags.get(self.alias_version, {})))

    def load(self, spec: Any, name: str, alias: str) -> LoadedModel:
        mv = self.resolve(name, alias)
        return self.load_version(spec, name, mv.version, alias=alias, model_version=mv)

    def load_version(self, spec: Any, name: str, version: str, *, alias: str = "",
                     model_version: Any = None) -> LoadedModel:
        self.loads.append(version)
        self.load_threads.append(threading.current_thread().name)
        if self.delay:
            time.sleep(self.delay)
        if version in self.fail:
            raise self.fail[version]
        return LoadedModel(pipeline=object(), name=name, version=version, alias=alias, run_id=f"run-{version}",
                           tags={}, features=[], classes=[0, 1], certificate={"version": version})


class FakeCertRuntime(Runtime):
    """``certify`` fails for the versions in ``bad_certificates``, cannot run for ``broken_certificates``."""

    bad_certificates: set[str]
    broken_certificates: set[str]

    def certify(self, model: LoadedModel) -> certmod.Verdict:
        if model.version in self.bad_certificates:
            return certmod.Verdict(False, 64, differing=1, max_abs_diff=1e-12)
        if model.version in self.broken_certificates:
            return certmod.Verdict(False, 0, error="FeatureStoreError: database unreachable")
        return certmod.Verdict(True, 64)


@pytest.fixture(scope="module")
def spec_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_claims_spec(tmp_path_factory.mktemp("hot-reload-spec"), generate=False)


@pytest.fixture
def make_runtime(spec_path: Path, tmp_path: Path) -> Iterator[Any]:
    engines = []

    def make(loader: FakeLoader, **settings: Any) -> FakeCertRuntime:
        cfg = Settings(spec=spec_path, data_dir=tmp_path, prediction_log=False, **settings)
        engine = make_engine(f"sqlite:///{tmp_path / 'features.db'}")
        engines.append(engine)
        runtime = FakeCertRuntime(settings=cfg, spec=load_spec(spec_path), engine=engine, loader=loader)
        runtime.bad_certificates, runtime.broken_certificates = set(), set()
        return runtime

    yield make
    for e in engines:
        e.dispose()


def _served(make_runtime: Any, **settings: Any) -> tuple[FakeCertRuntime, FakeLoader]:
    loader = FakeLoader()
    runtime = make_runtime(loader, **settings)
    runtime.load_once()
    assert runtime.model is not None and runtime.model.version == "1"
    return runtime, loader


def test_passing_candidate_is_swapped_in_and_a_held_reference_keeps_the_old_model(make_runtime: Any) -> None:
    runtime, loader = _served(make_runtime)
    assert runtime.check_alias() == "unchanged" and loader.loads == ["1"]  # same version: nothing loaded
    held = runtime.model  # what a request in flight captured
    loader.alias_version = "2"
    assert runtime.check_alias() == "reloaded"
    assert runtime.model.version == "2" and runtime.model.verdict["passed"] is True
    assert runtime.certificate is runtime.model.verdict
    assert held is not None and held.version == "1" and held.verdict["passed"] is True  # untouched
    state = runtime.reload.as_dict(runtime.model.version)
    assert state["reloads"] == 1 and state["in_sync"] is True and state["last_outcome"] == "reloaded"
    assert state["last_reload"]["from_version"] == "1" and state["last_reload"]["to_version"] == "2"
    assert state["last_reload_error"] is None
    assert runtime.check_alias() == "unchanged" and loader.loads == ["1", "2"]


def test_the_new_version_is_reported_in_sync_from_the_moment_it_is_served(make_runtime: Any) -> None:
    """A reader between the swap and the end of the check (heap freeze, logging) sees in_sync, not the
    alias version of the previous check."""
    runtime, loader = _served(make_runtime)
    assert runtime.check_alias() == "unchanged"
    seen: list[Any] = []
    original = runtime.reload.swapped

    def swapped(*args: Any, **kwargs: Any) -> None:
        original(*args, **kwargs)
        seen.append(runtime.reload.as_dict("2"))  # what /health/ready shows once the swap is visible

    runtime.reload.swapped = swapped  # type: ignore[method-assign]
    loader.alias_version = "2"
    assert runtime.check_alias() == "reloaded"
    assert len(seen) == 1 and seen[0]["in_sync"] is True and seen[0]["alias_version"] == "2"


def test_alias_moved_back_serves_the_older_version(make_runtime: Any) -> None:
    runtime, loader = _served(make_runtime)
    loader.alias_version = "2"
    assert runtime.check_alias() == "reloaded"
    loader.alias_version = "1"  # a rollback is a promotion like any other
    assert runtime.check_alias() == "reloaded" and runtime.model.version == "1"


def test_failed_certificate_keeps_the_old_model_and_is_not_retried_until_tags_change(make_runtime: Any) -> None:
    runtime, loader = _served(make_runtime)
    runtime.bad_certificates = {"2"}
    loader.alias_version = "2"
    assert runtime.check_alias() == "refused"
    assert runtime.model.version == "1"
    state = runtime.reload.as_dict(runtime.model.version)
    assert state["in_sync"] is False and state["alias_version"] == "2"
    err = state["last_reload_error"]
    assert err["model_version"] == "2" and err["kind"] == "refused" and err["failures"] == 1
    assert re.search(r"parity certificate FAILED: 1 of \d+ records differ", err["reason"])
    assert err["certificate"]["passed"] is False and err["certificate"]["differing"] == 1

    for _ in range(5):  # every poll: the same refused version with the same tags is not loaded again
        assert runtime.check_alias() == "waiting"
    assert loader.loads == ["1", "2"]
    assert "not tried again before its tags change" in runtime.reload.as_dict("1")["last_outcome_detail"]

    loader.tags["2"] = {"fti.note": "re-checked"}  # tags changed: tried again (and refused again)
    assert runtime.check_alias() == "refused" and loader.loads == ["1", "2", "2"]
    assert runtime.reload.as_dict("1")["last_reload_error"]["failures"] == 2
    assert runtime.check_alias() == "waiting"

    runtime.bad_certificates = set()  # fixed, and re-tagged: it goes in
    loader.tags["2"] = {"fti.note": "fixed"}
    assert runtime.check_alias() == "reloaded" and runtime.model.version == "2"
    state = runtime.reload.as_dict("2")
    assert state["in_sync"] is True and state["last_reload_error"]["model_version"] == "2"  # history stays


def test_loader_refusal_is_retried_after_the_back_off(make_runtime: Any) -> None:
    runtime, loader = _served(make_runtime, reload_refused_retry_seconds=0.3)
    loader.fail["2"] = ModelLoadError("claims-fraud version 2 was trained in a different environment: "
                                      "scikit-learn: model 1.0.2, here 1.9.1")
    loader.alias_version = "2"
    assert runtime.check_alias() == "refused" and runtime.model.version == "1"
    err = runtime.reload.as_dict("1")["last_reload_error"]
    assert err["kind"] == "refused" and "scikit-learn: model 1.0.2" in err["reason"] and err["certificate"] is None
    assert runtime.check_alias() == "waiting"
    time.sleep(0.35)
    assert runtime.check_alias() == "refused" and loader.loads == ["1", "2", "2"]


def test_transient_load_errors_back_off_exponentially(make_runtime: Any) -> None:
    runtime, loader = _served(make_runtime, reload_interval_seconds=2, reload_refused_retry_seconds=7)
    loader.fail["2"] = ConnectionError("artifact store unreachable")
    loader.alias_version = "2"
    waits = []
    for _ in range(4):
        loader.tags["2"] = {"n": str(len(waits))}  # a tag change skips the wait: see every back-off
        assert runtime.check_alias() == "failed"
        refusal = runtime.reload.last_error
        assert refusal is not None and refusal.kind == "error"
        waits.append(round(refusal.retry_at - refusal.at, 3))
    assert waits == [2, 4, 7, 7]  # interval, doubling, capped by the refused back-off
    assert "ConnectionError: artifact store unreachable" in runtime.reload.as_dict("1")["last_reload_error"]["reason"]
    assert runtime.model.version == "1"


def test_certificate_that_cannot_run_is_a_transient_failure(make_runtime: Any) -> None:
    runtime, loader = _served(make_runtime, reload_interval_seconds=0.1)
    runtime.broken_certificates = {"2"}
    loader.alias_version = "2"
    assert runtime.check_alias() == "failed" and runtime.model.version == "1"
    err = runtime.reload.as_dict("1")["last_reload_error"]
    assert err["kind"] == "error" and "could not be checked: FeatureStoreError" in err["reason"]
    assert runtime.check_alias() == "waiting"
    time.sleep(1.05)  # back-off: the poll interval, 1 s at least
    runtime.broken_certificates = set()
    assert runtime.check_alias() == "reloaded" and runtime.model.version == "2"


def test_registry_unreachable_keeps_serving(make_runtime: Any) -> None:
    runtime, loader = _served(make_runtime)
    loader.resolve_error = ModelLoadError("cannot resolve claims-fraud@champion at http://x: connection refused")
    assert runtime.check_alias() == "registry_error"
    state = runtime.reload.as_dict("1")
    assert "connection refused" in state["last_outcome_detail"] and runtime.model.version == "1"
    loader.resolve_error = None
    loader.alias_version = "2"
    assert runtime.check_alias() == "reloaded"


def test_poll_loop_loads_off_the_event_loop(make_runtime: Any) -> None:
    """While a slow candidate loads (0.6 s, blocking), the event loop keeps running other tasks."""
    runtime, loader = _served(make_runtime, reload_interval_seconds=0.05)
    loader.delay = 0.6

    async def scenario() -> int:
        watcher = asyncio.create_task(runtime.watch_alias())
        ticks = 0
        loader.alias_version = "2"
        deadline = time.monotonic() + 10
        while runtime.model.version != "2":
            assert time.monotonic() < deadline, "not reloaded"
            await asyncio.sleep(0.01)
            ticks += 1
        watcher.cancel()
        return ticks

    ticks = asyncio.run(scenario())
    assert ticks >= 20  # the loop was free during the 0.6 s load
    assert loader.load_threads[-1] != threading.main_thread().name


def test_interval_zero_disables_hot_reload(make_runtime: Any) -> None:
    runtime, loader = _served(make_runtime, reload_interval_seconds=0)
    loader.alias_version = "2"
    asyncio.run(asyncio.wait_for(runtime.watch_alias(), 2))  # returns at once
    assert runtime.model.version == "1" and loader.loads == ["1"]
    assert runtime.reload.as_dict("1")["enabled"] is False
