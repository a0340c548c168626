"""Process state of the service: spec, feature-store engine, the loaded model, load status.

A background task first brings the store schema to the head revision (the
service writes the prediction log; skipped when ``FTI_PREDICTION_LOG=false``),
then loads the model, retrying both with back-off. So the process answers
``/health/live`` at once and ``/health/ready`` says 503 (with the reason: store
unreachable, no model yet, a refused model...) until both succeeded.

Then the same task keeps watching the alias (hot reload, every
``FTI_RELOAD_INTERVAL_SECONDS``; 0 turns it off): resolving ``name@alias`` is one
cheap registry call; only when it names another version than the served one is
that version loaded with every check of the first load (fingerprint, skops
allow-list, contract) and its parity certificate verified -- in a worker thread,
never on the event loop. A candidate that passes everything replaces the served
model by one assignment of ``Runtime.model`` (the model carries its own
certificate verdict), so a request, which takes ``runtime.model`` once when it
starts, is scored, labelled and logged by one model from start to end. A candidate
that fails leaves the served model alone; the refusal is reported under ``reload``
in ``/health/ready`` and ``/model`` and not retried until its tags change or the
back-off (``FTI_RELOAD_REFUSED_RETRY_SECONDS``) is over.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import random
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Engine

from inference_service import scoring
from inference_service.config import Settings
from inference_service.cpu_slot import CpuSlot
from inference_service.model_loader import LoadedModel, ModelLoadError
from inference_service.online import certificate_features
from inference_service.prediction_log import PredictionLog
from inference_service.reload import ReloadState, iso, tags_key
from shared import certificate as certmod
from shared import feature_table as ft
from shared.db import redact
from shared.registry_contract import Tag
from shared.spec import LoadedSpec

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    spec: LoadedSpec
    engine: Engine
    loader: Any
    model: LoadedModel | None = None  # replaced only as a whole (one assignment), never mutated
    last_error: str | None = "model not loaded yet"
    attempts: int = 0  # failed load attempts so far
    rejected: dict[str, Any] | None = None  # the last candidate refused by its parity certificate at start
    prediction_log: PredictionLog | None = None
    obs: Any = None  # inference_service.observability.Observability: load and reload counters
    store_ready: bool = False
    started_at: float = field(default_factory=time.time)
    reload: ReloadState = field(init=False)
    online: Any = None  # inference_service.online_fast.OnlineFeatures, verified; replaced as a whole
    store_guard: Any = None  # inference_service.store_guard.StoreGuard: the store is the one opened, unchanged
    integrity_error: str | None = None  # set while the store guard finds a problem: not ready, /predict 503
    cpu_slot: CpuSlot = field(default_factory=CpuSlot)  # shared with the prediction log's writer
    # The version a hot reload replaced, kept loaded: a rollback to it (``fti rollback``) skips the download
    # and the skops load and re-runs only its parity certificate -- seconds matter when rolling back.
    standby: LoadedModel | None = None

    def __post_init__(self) -> None:
        self._swap = threading.Lock()  # read-modify-write of ``model`` (confirm, fast-path upgrade) stays whole
        self.reload = ReloadState(self.settings.reload_interval_seconds, self.settings.reload_refused_retry_seconds)

    @property
    def model_name(self) -> str:
        return self.settings.model_name or self.spec.spec.model.name

    @property
    def certificate(self) -> dict[str, Any] | None:
        """This process's verdict on the served model's parity certificate."""
        model = self.model
        return model.verdict if model is not None else None

    def prepare_store(self) -> None:
        """Upgrade the store schema to the head (creates ``fti_predictions``) when the log is on."""
        if self.prediction_log is not None:
            try:
                ft.upgrade(self.engine)
            except Exception as exc:  # noqa: BLE001 - reported through readiness, retried
                raise ModelLoadError(
                    f"cannot prepare the prediction log in the feature store at "
                    f"{redact(str(self.engine.url))}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                ) from exc
            log.info("feature store schema at revision %s; prediction log on", ft.SCHEMA_HEAD)
        if self.store_guard is not None:
            self.store_guard.remember()
        self.store_ready = True

    def _count_load(self, kind: str, outcome: str, seconds: float | None = None) -> None:
        if self.obs is None:
            return
        self.obs.loads.labels(kind, outcome).inc()
        if seconds is not None:
            self.obs.load_seconds.set(seconds)

    def load_once(self, *, cached: bool = False) -> LoadedModel | None:
        """Load, check and certify the alias's model; with ``cached``, the version this cache served last
        (None if there is none) -- served before the registry confirms the alias (``alias_confirmed``)."""
        # The fast path is verified after the model serves (upgrade_scorer): ready does not wait for it.
        kw = {"prepare_fast": False} if getattr(self.loader, "defers_fast_path", False) else {}
        if cached:
            load_cached = getattr(self.loader, "load_cached", None)
            model = load_cached(self.spec.spec, self.model_name, self.settings.model_alias, **kw) \
                if load_cached else None
            if model is None:
                return None
        else:
            model = self.loader.load(self.spec.spec, self.model_name, self.settings.model_alias, **kw)
        verdict = self.certify(model)
        if not verdict.passed:
            self.rejected = {"model_name": model.name, "model_version": model.version,
                             "certificate": verdict.as_dict()}
            log.error("refusing %s version %s: %s", model.name, model.version, verdict.summary())
            raise ModelLoadError(f"{model.name} version {model.version}: {verdict.summary()}")
        model = dataclasses.replace(model, verdict=verdict.as_dict())
        self.model = model
        self.rejected = None
        self.last_error = None
        log.info("%s version %s: %s", model.name, model.version, verdict.summary())
        if model.alias_confirmed:
            self._remember(model)
        else:
            log.info("serving %s version %s from the local cache (what %s@%s pointed at when last served); "
                     "confirming the alias with the registry now", model.name, model.version, model.name,
                     model.alias)
        return model

    def _remember(self, model: LoadedModel) -> None:
        remember = getattr(self.loader, "remember", None)
        if remember is not None:
            remember(model)

    def certify(self, model: LoadedModel) -> certmod.Verdict:
        """Run the model's parity certificate through this process's online path."""
        assert model.certificate is not None
        spec = self.spec.spec
        try:
            return certmod.verify(model.certificate,
                                  lambda records, version, replay: certificate_features(
                                      records, spec, self.engine, version, replay=replay),
                                  lambda X: scoring.predict_proba(model, X), spec,
                                  preprocess=lambda X: model.pipeline[:-1].transform(X))
        except Exception as exc:  # noqa: BLE001 - a certificate that cannot run is a failed certificate
            log.exception("parity certificate of %s version %s could not run", model.name, model.version)
            return certmod.Verdict(False, 0, error=f"{type(exc).__name__}: {str(exc)[:300]}")

    async def load_until_ready(self) -> None:
        tries = 0
        if self.settings.start_from_cache:
            try:
                if not self.store_ready:
                    await asyncio.to_thread(self.prepare_store)
                model = await asyncio.to_thread(self.load_once, cached=True)
                if model is not None:
                    self._count_load("initial", "loaded", model.load_seconds)
                    return
            except Exception as exc:  # noqa: BLE001 - the cache is a shortcut: fall back to the registry
                log.warning("cannot serve from the local cache (%s); loading from the registry",
                            _reason(exc))
        while self.model is None:
            tries += 1
            try:
                if not self.store_ready:
                    await asyncio.to_thread(self.prepare_store)
                model = await asyncio.to_thread(self.load_once)
                self._count_load("initial", "loaded", model.load_seconds if model is not None else None)
                return
            except ModelLoadError as exc:
                self.last_error = str(exc)
                self._count_load("initial", "refused" if self.rejected is not None else "failed")
            except Exception as exc:  # noqa: BLE001 - keep the process alive, report the cause
                self.last_error = f"{type(exc).__name__}: {str(exc)[:300]}"
                self._count_load("initial", "failed")
                log.debug("load attempt failed", exc_info=True)
            self.attempts = tries  # failed attempts, counted once the reason is known
            wait = self._backoff(tries)
            log.warning("not ready (attempt %d): %s; retrying in %.1fs", tries, self.last_error, wait)
            await asyncio.sleep(wait)

    async def run(self) -> None:
        """The service's background task: load the first model, then watch the alias."""
        store = asyncio.create_task(self.watch_store(), name="store-guard")
        await self.load_until_ready()
        _freeze_heap()
        upgrade = asyncio.create_task(self._upgrade_then_freeze(), name="fast-path-verification")
        try:
            await self.confirm_alias()
            if self.model is None:  # the cached copy was dropped (tampered): load it again from the registry
                await self.load_until_ready()
            await self.watch_alias()
        finally:
            upgrade.cancel()
            store.cancel()

    async def watch_store(self) -> None:
        """Every FTI_FEATURE_REFRESH_SECONDS: is the store still the one opened, its latest version whole?"""
        if self.store_guard is None:
            return
        while True:
            try:
                problem = await asyncio.to_thread(self.store_guard.check)
            except Exception as exc:  # noqa: BLE001 - an unreachable store is reported by the scoring paths
                log.debug("store check could not run: %s", _reason(exc))
                problem = self.integrity_error if self.store_guard.file_problem() else None
            if problem != self.integrity_error:
                if problem:
                    log.error("NOT READY: %s", problem)
                else:
                    log.info("feature store checks pass again: ready")
                self.integrity_error = problem
            await asyncio.sleep(self.settings.feature_refresh_seconds)

    @property
    def public_error(self) -> str | None:
        """``last_error`` as a client may see it: no URL, file path or library text (those go to the log)."""
        return public_reason(self.integrity_error or self.last_error)

    async def _upgrade_then_freeze(self) -> None:
        await asyncio.to_thread(self.upgrade_scorer)
        _freeze_heap()
        if self.settings.online_fast_path:
            await self.watch_features()

    def online_for(self, model: LoadedModel) -> Any:
        """The verified online fast path if it was built for this model's inputs, else None (pandas path)."""
        online = self.online
        if online is None or online.features != list(model.features):
            return None
        return online

    async def watch_features(self) -> None:
        """Keep the online fast path on the latest feature version and the served model's inputs."""
        while True:
            try:
                await asyncio.to_thread(self.refresh_online)
            except Exception:  # noqa: BLE001 - the pandas path serves meanwhile
                log.exception("online fast path refresh failed; the pandas path serves")
                self.online = None
            await asyncio.sleep(self.settings.feature_refresh_seconds)

    def refresh_online(self) -> None:
        """Index, verify and swap in the online fast path when the feature version or the model changed."""
        from inference_service import online_fast

        model = self.model
        if model is None or model.scorer is None:
            return
        if self.store_guard is not None and self.store_guard.file_problem():
            return  # the store file is gone or replaced: read nothing from it (watch_store reports it)
        spec = self.spec.spec
        version = ft.get_version(self.engine, spec.name).version if spec.features.history else None
        current = self.online
        if current is not None and current.status.get("feature_version") == version \
                and current.features == list(model.features) and current.status.get("model") == model.version:
            return
        if current is None and getattr(self, "_online_refused", None) == (version, model.version):
            return  # refused for this version and model: the pandas path serves until either changes
        fast = online_fast.prepare(self.engine, spec, version, list(model.features), model.scorer.numeric,
                                   model.certificate)
        if fast is None:
            self.online = None
            self._online_refused = (version, model.version)
            return
        fast.status["model"] = model.version
        self.online = fast
        _freeze_heap()

    def upgrade_scorer(self) -> None:
        """Verify the served model's fast path (blocking: a worker thread) and switch to it if proven equal.

        Requests meanwhile are scored by the fitted pipeline; the switch is one assignment of
        ``Runtime.model``, and only if that model is still the one served (a reload may have won)."""
        served = self.model
        if served is None or served.scorer is None or served.scorer.fast is not None:
            return
        prepare = getattr(self.loader, "prepare_scorer", None)
        if prepare is None or "not verified yet" not in str(served.scorer.status.get("reason", "")):
            return
        scorer = prepare(served.pipeline, served.features, served.certificate)
        with self._swap:
            current = self.model
            if current is None or current.version != served.version or current.pipeline is not served.pipeline:
                return
            self.model = dataclasses.replace(current, scorer=scorer)
            log.info("%s version %s now scored by the %s", served.name, served.version,
                     "verified fast path" if scorer.fast is not None else "sklearn pipeline (fast path refused)")

    async def confirm_alias(self) -> None:
        """A model served from the cache: ask the registry at once (and until it answers) whether the alias
        still points at it; if it moved, the new version is loaded and checked like any hot reload."""
        tries = 0
        while self.model is not None and not self.model.alias_confirmed:
            outcome = await asyncio.to_thread(self.check_alias)
            if self.obs is not None:
                self.obs.reload_checks.labels(outcome).inc()
            if self.model is not None and self.model.alias_confirmed:
                return
            tries += 1
            await asyncio.sleep(self._backoff(tries))

    def _backoff(self, tries: int) -> float:
        """Capped exponential back-off with jitter: many replicas do not retry in step, and none waits
        longer than FTI_LOAD_RETRY_MAX_SECONDS once the registry is back."""
        first, cap = self.settings.load_retry_seconds, self.settings.load_retry_max_seconds
        return min(first * 2 ** max(tries - 1, 0), cap) * random.uniform(0.5, 1.0)

    async def watch_alias(self) -> None:
        interval = self.settings.reload_interval_seconds
        if interval <= 0:
            log.info("hot reload off (FTI_RELOAD_INTERVAL_SECONDS=0): serving %s version %s until restarted",
                     self.model_name, self.model.version if self.model else "-")
            return
        log.info("hot reload on: checking %s@%s every %gs", self.model_name, self.settings.model_alias, interval)
        while True:
            await asyncio.sleep(interval)
            try:
                outcome = await asyncio.to_thread(self.check_alias)
                if self.obs is not None:
                    self.obs.reload_checks.labels(outcome).inc()
                    if outcome in ("reloaded", "refused", "failed"):
                        self._count_load("reload", "loaded" if outcome == "reloaded" else outcome,
                                         self.model.load_seconds if outcome == "reloaded" and self.model else None)
            except Exception:  # noqa: BLE001 - check_alias reports its own failures; never stop watching
                log.exception("hot reload: unexpected error while checking %s@%s", self.model_name,
                              self.settings.model_alias)

    def check_alias(self) -> str:
        """One hot-reload check (blocking: run it in a worker thread). Returns the outcome:
        ``unchanged``, ``reloaded``, ``refused``, ``failed``, ``waiting`` or ``registry_error``."""
        served = self.model
        if served is None:  # the first load is still going on (load_until_ready owns that)
            return "not_loaded"
        name, alias, state = self.model_name, self.settings.model_alias, self.reload
        now = time.time()
        try:
            mv = self.loader.resolve(name, alias)
        except Exception as exc:  # noqa: BLE001 - registry down or alias removed: keep serving, report it
            reason = _reason(exc)
            if state.last_outcome != "registry_error":
                log.error("hot reload: cannot resolve %s@%s (still serving version %s): %s", name, alias,
                          served.version, reason)
            return state.outcome("registry_error", now, reason)
        version = str(mv.version)
        if state.last_outcome == "registry_error":
            log.info("hot reload: %s@%s resolves again (version %s)", name, alias, version)
        if version == served.version:
            recorded = dict(mv.tags or {}).get(Tag.ARTIFACT_SHA256)
            if not served.alias_confirmed and recorded != served.tags.get(Tag.ARTIFACT_SHA256):
                return self._drop_tampered(served, now)
            if not served.alias_confirmed:
                with self._swap:
                    current = self.model
                    if current is not None and current.version == version:
                        self.model = dataclasses.replace(current, alias_confirmed=True,
                                                         tags=dict(mv.tags or current.tags))
                        self._remember(self.model)
                log.info("%s@%s confirmed: the registry still points at version %s", name, alias, version)
            return state.outcome("unchanged", now, alias_version=version)
        tags = tags_key(getattr(mv, "tags", None))
        waiting = state.waiting(version, tags, now)
        if waiting is not None:
            return state.outcome("waiting", now, f"version {version} was {waiting.kind} at {iso(waiting.at)}; "
                                 f"not tried again before its tags change or {iso(waiting.retry_at)}",
                                 alias_version=version)
        log.info("hot reload: %s@%s now points at version %s (serving %s); loading and checking it", name, alias,
                 version, served.version)
        t0 = time.perf_counter()
        standby = self.standby
        recorded = dict(mv.tags or {}).get(Tag.ARTIFACT_SHA256)
        try:
            if standby is not None and standby.version == version and recorded is not None and \
                    recorded == standby.tags.get(Tag.ARTIFACT_SHA256):  # the same files it was verified with
                log.info("hot reload: version %s is the standby (served before, same artifact digest); "
                         "re-running its parity certificate", version)
                candidate = dataclasses.replace(standby, alias=alias, tags=dict(mv.tags or standby.tags),
                                                alias_confirmed=True)
            else:
                candidate = self.loader.load_version(self.spec.spec, name, version, alias=alias, model_version=mv)
        except ModelLoadError as exc:
            return self._refused(served, version, "refused", str(exc), tags, now)
        except Exception as exc:  # noqa: BLE001 - e.g. artifact download failed: retried with back-off
            return self._refused(served, version, "error", _reason(exc), tags, now)
        verdict = self.certify(candidate)
        if not verdict.passed:  # a certificate that could not run (store unreachable...) may pass later
            return self._refused(served, version, "error" if verdict.error else "refused",
                                 f"{name} version {version}: {verdict.summary()}", tags, now,
                                 certificate=verdict.as_dict())
        candidate = dataclasses.replace(candidate, verdict=verdict.as_dict())
        seconds = time.perf_counter() - t0
        # Recorded before the swap: whoever sees the new version also sees the reload that brought it.
        state.swapped(name, served.version, version, time.time(), seconds, verdict.summary())
        with self._swap:
            self.model = candidate  # the swap: requests that already hold ``served`` finish with it
            self.standby = served
        self._remember(candidate)
        log.info("hot reload: now serving %s version %s (was %s; loaded and checked in %.2fs; %s)", name,
                 version, served.version, seconds, verdict.summary())
        _freeze_heap()  # the new model's objects; the old model's frozen objects stay (a small, bounded leak)
        return state.outcome("reloaded", now, f"version {served.version} -> {version}", alias_version=version)

    def _drop_tampered(self, served: LoadedModel, now: float) -> str:
        """The cached copy differs from what the registry recorded: stop serving it, delete it; ``run``
        then loads the version afresh from the registry with every check (not ready until then)."""
        name, version = served.name, served.version
        reason = (f"the cached copy of {name} version {version} does not match the digest the registry recorded "
                  f"at training ({Tag.ARTIFACT_SHA256}); it was dropped and is fetched again")
        log.error("%s", reason)
        with self._swap:
            self.model = None
            self.last_error = reason
        evict = getattr(self.loader, "evict", None)
        if evict is not None:
            evict(name, version)
        return self.reload.outcome("refused", now, reason, alias_version=version)

    def _refused(self, served: LoadedModel, version: str, kind: str, reason: str, tags: str, now: float,
                 certificate: dict[str, Any] | None = None) -> str:
        refusal = self.reload.refuse(served.name, version, kind, reason, tags, now, certificate)
        log.error("hot reload: %s %s version %s (attempt %d); still serving version %s; not retried before "
                  "its tags change or %.0fs have passed: %s", "refused" if kind == "refused" else "could not load",
                  served.name, version, refusal.failures, served.version, refusal.retry_at - now, reason)
        return self.reload.outcome("refused" if kind == "refused" else "failed", now, reason,
                                   alias_version=version)


def _freeze_heap() -> None:
    """Move every object alive now (libraries, the model) out of the garbage collector's reach.

    A full collection otherwise walks millions of long-lived pandas/scikit-learn objects and
    stalls the event loop for tens of milliseconds: the tail of the latency distribution."""
    gc.collect()
    gc.freeze()


_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"<>),]+", re.IGNORECASE)
_PATH = re.compile(r"(?<![\w.])/(?:[\w.@+-]+/)+[\w.@+-]*")
_LIBRARY_TEXT = re.compile(r"(HTTPConnectionPool|HTTPSConnectionPool|Max retries exceeded|urllib3|"
                           r"NewConnectionError|ConnectionRefusedError|Traceback)")


def public_reason(text: str | None) -> str | None:
    """A not-ready reason without internal addresses, paths or library messages (all of it is in the log)."""
    if not text:
        return text
    if _LIBRARY_TEXT.search(text):
        head = text.split(":", 1)[0] if ":" in text[:80] else "a dependency"
        return f"{head[:80]}: a dependency (model registry or feature store) cannot be reached; see the server log"
    return _PATH.sub("<path>", _URL.sub("<url>", text))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ModelLoadError):
        return str(exc)
    return f"{type(exc).__name__}: {str(exc)[:300]}"
