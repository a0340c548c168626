"""Resolve ``name@alias`` in the registry, fetch the model and load it safely.

Model files are code, so the service does not trust the list of types a model
declares about itself: :mod:`shared.model_file` checks every name in the skops file
against fti's exact allow-list, the files against the digest the registry recorded
at training, and rehearses the build under a memory limit. It also refuses a model whose feature definitions differ from the spec being
served, because then the same raw record would mean different features.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared import decision as decisions
from shared import fingerprint
from shared.certificate import CERTIFICATE_FILE
from shared.decision import Decision
from shared.decision import apply as apply_decision
from shared.labels import positive_index
from shared.registry_contract import TAG_PREFIX, Artifact, Tag
from shared.spec import DatasetSpec

log = logging.getLogger(__name__)

class ModelLoadError(RuntimeError):
    """The model cannot be served; the message says why and what to do."""


class ModelFilesTampered(ModelLoadError):
    """The cached files differ from the registry's record of them (``fti.artifact_sha256``)."""


@dataclass(frozen=True)
class LoadedModel:
    pipeline: Any
    name: str
    version: str
    alias: str
    run_id: str
    tags: dict[str, str]
    features: list[str]
    classes: list[Any]
    certificate: dict[str, Any] | None = None
    environment: dict[str, Any] | None = None
    env_overridden: list[str] = field(default_factory=list)
    loaded_at: float = field(default_factory=time.time)
    load_seconds: float = 0.0
    verdict: dict[str, Any] | None = None  # this process's check of ``certificate``, set before it is served
    scorer: Any = None  # inference_service.scoring.Scorer: the fast path if proven equal, else the pipeline
    alias_confirmed: bool = True  # False: loaded from the cache's record of the alias, registry not asked yet
    decision: Decision | None = None  # model.decision's threshold rule (extra_files/decision.json); None: argmax

    @property
    def trained_feature_version(self) -> int | None:
        v = self.tags.get(Tag.FEATURE_VERSION)
        return int(v) if v and v.isdigit() else None

    @property
    def positive_index(self) -> int:
        """Binary: the column of ``predict_proba`` that is the score (``fti.positive_class``; default the last)."""
        if len(self.classes) != 2:
            return -1
        try:
            return positive_index(self.classes, self.tags.get(Tag.POSITIVE_CLASS))
        except ValueError:  # a tag that names no class: the default, as before the tag existed
            return len(self.classes) - 1

    @property
    def is_regressor(self) -> bool:
        """A regression model: its output matrix has one column, the predicted value (no classes)."""
        return not self.classes

    def decide(self, proba: Any) -> Any:
        """Index into ``classes`` of each row's answer: the decision rule's, or argmax without one."""
        return apply_decision(proba, self.positive_index, self.decision.threshold if self.decision else None)

    def lineage(self) -> dict[str, Any]:
        return {k.removeprefix(TAG_PREFIX): v for k, v in sorted(self.tags.items()) if k.startswith(TAG_PREFIX)}


def _client(tracking_uri: str, registry_uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri)


def load_skops_model(model_dir: Path, expected_digest: str | None, memory_limit_mb: int) -> Any:
    """The model's pipeline through :func:`shared.model_file.load_model_dir`; a refusal is a ModelLoadError."""
    from shared.model_file import ModelFileRefused, ModelFileTampered, load_model_dir

    if not expected_digest:
        raise ModelLoadError(f"model has no {Tag.ARTIFACT_SHA256} tag (the digest of its files recorded at "
                             "training): it was not registered by this fti version; retrain it")
    try:
        return load_model_dir(model_dir, expected_digest=expected_digest, memory_limit_mb=memory_limit_mb)
    except ModelFileTampered as exc:
        raise ModelFilesTampered(str(exc)) from None
    except ModelFileRefused as exc:
        raise ModelLoadError(str(exc)) from None


def read_decision(name: str, version: str, model_dir: Path, classes: Any, tags: dict[str, str]) -> Decision | None:
    """The model's decision rule; refused if it cannot apply to this model (it would decide wrongly)."""
    try:
        decision = decisions.read(model_dir)
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"{name} version {version}: its decision rule ({Artifact.DECISION}) is unreadable "
                             f"({exc}); retrain it") from None
    if decision is None:
        return None
    labels = [str(c) for c in classes]
    if len(labels) != 2 or decision.positive_class not in labels:
        raise ModelLoadError(f"{name} version {version}: its decision rule is for positive class "
                             f"{decision.positive_class!r}, the model's classes are {labels[:10]}; retrain it")
    tagged = tags.get(Tag.POSITIVE_CLASS)
    if tagged is not None and tagged != decision.positive_class:
        raise ModelLoadError(f"{name} version {version}: its decision rule is for positive class "
                             f"{decision.positive_class!r}, its {Tag.POSITIVE_CLASS} tag says {tagged!r}; retrain it")
    return decision


def model_input_columns(pipeline: Any) -> list[str]:
    first = pipeline.steps[0][1] if hasattr(pipeline, "steps") else pipeline
    cols = getattr(first, "columns_", None) or list(getattr(pipeline, "feature_names_in_", []))
    return [str(c) for c in cols]


class MlflowLoader:
    """Loads ``models:/<name>@<alias>`` through an on-disk cache keyed by version."""

    defers_fast_path = True  # load(..., prepare_fast=False): the caller verifies the fast path later

    def __init__(self, tracking_uri: str, registry_uri: str, cache_dir: Path, *, allow_env_mismatch: bool = False,
                 fast_path: bool = True, fast_path_tree_rows: int = 128, memory_limit_mb: int = 2048):
        self.tracking_uri = tracking_uri
        self.registry_uri = registry_uri
        self.cache_dir = cache_dir
        self.allow_env_mismatch = allow_env_mismatch
        self.fast_path = fast_path
        self.fast_path_tree_rows = fast_path_tree_rows
        self.memory_limit_mb = memory_limit_mb

    def resolve(self, name: str, alias: str) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return _client(self.tracking_uri, self.registry_uri).get_model_version_by_alias(name, alias)
        except MlflowException as exc:
            text = str(exc)
            if "not found" in text.lower() or "RESOURCE_DOES_NOT_EXIST" in text:
                raise ModelLoadError(f"no model version has alias {name}@{alias} yet: run `fti train --spec ...`") from None
            raise ModelLoadError(f"cannot resolve {name}@{alias} at {self.registry_uri}: {text[:300]}") from exc

    def fetch(self, name: str, version: str) -> Path:
        import mlflow
        import mlflow.artifacts

        target = self.cache_dir / name / str(version)
        if (target / "MLmodel").is_file():
            return target
        tmp = target.with_name(f".{version}.tmp-{time.time_ns()}")
        tmp.mkdir(parents=True, exist_ok=True)
        mlflow.set_registry_uri(self.registry_uri)  # ``models:/`` names resolve through the global registry URI
        try:
            mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(tmp),
                                                tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)
            try:
                tmp.replace(target)
            except OSError:  # another thread (hot reload, lineage recomputation) filled the entry first
                if not (target / "MLmodel").is_file():
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return target

    def load(self, spec: DatasetSpec, name: str, alias: str, *, prepare_fast: bool = True) -> LoadedModel:
        import mlflow

        mlflow.set_registry_uri(self.registry_uri)
        mv = self.resolve(name, alias)
        return self.load_version(spec, name, str(mv.version), alias=alias, model_version=mv,
                                 prepare_fast=prepare_fast)

    def load_version(self, spec: DatasetSpec, name: str, version: str, *, alias: str = "",
                     model_version: Any = None, prepare_fast: bool = True) -> LoadedModel:
        from shared.model_file import prepare_rehearsal

        t0 = time.perf_counter()
        prepare_rehearsal(self.memory_limit_mb)  # the helper's imports overlap the registry calls and download
        mv = model_version or _client(self.tracking_uri, self.registry_uri).get_model_version(name, version)
        tags = dict(mv.tags or {})
        run_id = str(mv.run_id or tags.get(Tag.RUN_ID, ""))
        try:
            return self.load_dir(spec, self.fetch(name, str(mv.version)), name, str(mv.version), alias=alias,
                                 tags=tags, run_id=run_id, t0=t0, prepare_fast=prepare_fast)
        except ModelFilesTampered as exc:  # the cached copy was changed: fetch it once more from the registry
            log.error("%s version %s: %s; fetching it again", name, mv.version, exc)
            self.evict(name, str(mv.version))
            return self.load_dir(spec, self.fetch(name, str(mv.version)), name, str(mv.version), alias=alias,
                                 tags=tags, run_id=run_id, t0=t0, prepare_fast=prepare_fast)

    def load_dir(self, spec: DatasetSpec, model_dir: Path, name: str, version: str, *, alias: str,
                 tags: dict[str, str], run_id: str, t0: float, alias_confirmed: bool = True,
                 prepare_fast: bool = True) -> LoadedModel:
        """Every check, on a model already on disk (no registry call, no mlflow import)."""
        environment = _read_json(model_dir / "extra_files" / Artifact.ENVIRONMENT)
        overridden = self.check_environment(name, version, environment, spec)
        certificate = _read_json(model_dir / "extra_files" / CERTIFICATE_FILE)
        if certificate is None:
            raise ModelLoadError(f"{name} version {version} has no parity certificate "
                                 f"({CERTIFICATE_FILE}); retrain it with this fti version")
        check_certificate_binding(name, version, certificate, tags)
        pipeline = load_skops_model(model_dir, tags.get(Tag.ARTIFACT_SHA256), self.memory_limit_mb)
        features = model_input_columns(pipeline)
        check_contract(spec, name, version, tags, features)
        decision = read_decision(name, version, model_dir, getattr(pipeline, "classes_", []), tags)  # after the digest
        from inference_service import scoring

        scorer = self.prepare_scorer(pipeline, features, certificate) if prepare_fast else \
            scoring.plain_scorer(pipeline, features, "fast path not verified yet" if self.fast_path
                                 else "fast path disabled (FTI_FAST_PATH=false)")
        loaded = LoadedModel(pipeline=pipeline, name=name, version=version, alias=alias, run_id=run_id, tags=tags,
                             features=features,
                             classes=[c.item() if hasattr(c, "item") else c for c in getattr(pipeline, "classes_", [])],
                             certificate=certificate, environment=environment, env_overridden=overridden,
                             load_seconds=time.perf_counter() - t0, scorer=scorer, alias_confirmed=alias_confirmed,
                             decision=decision)
        log.info("loaded %s version %s (%s) in %.2fs", name, loaded.version, alias or "by version",
                 loaded.load_seconds)
        return loaded

    def prepare_scorer(self, pipeline: Any, features: list[str], certificate: dict[str, Any] | None) -> Any:
        from inference_service import scoring

        return scoring.prepare(pipeline, features, certificate, enabled=self.fast_path,
                               tree_max_rows=self.fast_path_tree_rows)

    def evict(self, name: str, version: str) -> None:
        """Delete a version's cached files (and any alias record pointing at it)."""
        shutil.rmtree(self.cache_dir / name / str(version), ignore_errors=True)
        for pointer in (self.cache_dir / name).glob("@*.json"):
            info = _read_json(pointer)
            if info and str(info.get("version")) == str(version):
                pointer.unlink(missing_ok=True)

    # ------------------------------------------------------------------ last served version

    def _pointer(self, name: str, alias: str) -> Path:
        return self.cache_dir / name / f"@{alias}.json"

    def remember(self, model: LoadedModel) -> None:
        """Record which version ``name@alias`` resolved to, with its registry tags, next to the cached files:
        the next start can serve it before the registry answers (:meth:`load_cached`)."""
        if not model.alias:
            return
        path = self._pointer(model.name, model.alias)
        data = {"model_name": model.name, "alias": model.alias, "version": model.version, "run_id": model.run_id,
                "tags": model.tags, "resolved_at": time.time()}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{time.time_ns()}")
            tmp.write_text(json.dumps(data, sort_keys=True))
            tmp.replace(path)
        except OSError as exc:  # a read-only cache only costs the fast start
            log.warning("cannot record the served version in %s: %s", path, exc)

    def load_cached(self, spec: DatasetSpec, name: str, alias: str, *, prepare_fast: bool = True
                    ) -> LoadedModel | None:
        """The version this cache last served for ``name@alias``, with every check, or None if there is none.

        Its ``alias_confirmed`` is False until the registry confirms the alias still points there."""
        t0 = time.perf_counter()
        info = _read_json(self._pointer(name, alias))
        if not info or not isinstance(info.get("tags"), dict):
            return None
        version = str(info.get("version", ""))
        model_dir = self.cache_dir / name / version
        if not version or not (model_dir / "MLmodel").is_file():
            return None
        return self.load_dir(spec, model_dir, name, version, alias=alias, tags=dict(info["tags"]),
                             run_id=str(info.get("run_id", "")), t0=t0, alias_confirmed=False,
                             prepare_fast=prepare_fast)

    def check_environment(self, name: str, version: str, recorded: dict[str, Any] | None,
                          spec: DatasetSpec) -> list[str]:
        """Refuse a model trained with other prediction-relevant packages, unless overridden."""
        if recorded is None:
            raise ModelLoadError(f"{name} version {version} has no environment fingerprint; retrain it")
        running = fingerprint.capture(spec.model.estimator.class_path)
        diffs = [str(d) for d in fingerprint.compare_enforced(recorded, running)]
        if not diffs:
            return []
        if not self.allow_env_mismatch:
            raise ModelLoadError(f"{name} version {version} was trained in a different environment: "
                                 + "; ".join(diffs) + ". Serve it from an image built from the same lock, "
                                 "or set FTI_ALLOW_ENV_MISMATCH=true for a deliberate migration")
        log.warning("ENVIRONMENT MISMATCH OVERRIDDEN (FTI_ALLOW_ENV_MISMATCH=true) for %s version %s: %s",
                    name, version, "; ".join(diffs))
        return diffs


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return data if isinstance(data, dict) else None


def check_certificate_binding(name: str, version: str, certificate: dict[str, Any], tags: dict[str, str]) -> None:
    """The certificate must describe the features this version was trained on (the registry's tags): a
    certificate copied from another version would certify the wrong thing."""
    recorded = tags.get(Tag.FEATURE_CHECKSUM)
    if recorded and certificate.get("feature_checksum") != recorded:
        raise ModelLoadError(f"{name} version {version}: its parity certificate was made on other features "
                             f"(checksum {str(certificate.get('feature_checksum'))[:12]}) than the version was "
                             f"trained on ({recorded[:12]}): the artifacts were mixed up; retrain it")
    recorded_version = tags.get(Tag.FEATURE_VERSION)
    if recorded_version and str(certificate.get("feature_version")) != recorded_version:
        raise ModelLoadError(f"{name} version {version}: its parity certificate names feature version "
                             f"{certificate.get('feature_version')}, the version was trained on {recorded_version}")


def check_contract(spec: DatasetSpec, name: str, version: str, tags: dict[str, str], features: list[str]) -> None:
    if tags.get(Tag.VALIDATED) != "true":
        raise ModelLoadError(f"{name} version {version} is not tagged fti.validated=true "
                             "(its registry round-trip check did not pass)")
    if features != spec.model_features:
        raise ModelLoadError(f"{name} version {version} expects features {features[:6]}..., the spec serves "
                             f"{spec.model_features[:6]}...: serve it with the spec it was trained with")
    model_hash = tags.get(Tag.FEATURE_SPEC_HASH)
    if model_hash != spec.feature_hash:
        raise ModelLoadError(f"{name} version {version} was trained with different feature definitions "
                             f"(feature spec hash {str(model_hash)[:12]} vs {spec.feature_hash[:12]} of the "
                             "served spec): serve it with the spec it was trained with")
