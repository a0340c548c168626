"""Lineage of one logged prediction, and its recomputation.

Used by ``GET /predictions/{prediction_id}`` and by ``fti lineage``. The chain
walks from the logged row back to what produced it::

    prediction (fti_predictions: inputs, outputs, model version, feature version read)
      -> model version in the registry (+ which version the alias points at now)
      -> training run (tag fti.run_id)
      -> feature version trained on: number, as-of, checksum (model tags, checked against the manifest)
      -> source content hash (fti.source_sha256)
      -> spec hash, code commit, environment (fti.env.*, fti.lib.*)

and then recomputes the prediction: it loads that exact model version (with
every check the service applies at start, :meth:`MlflowLoader.load_version`),
runs the logged inputs through the online path with history read from the
logged feature version, and reports ``recomputed: true`` only if the
prediction, every probability and the decision threshold (``model.decision``)
are exactly equal (``==`` on floats).

Every step is best-effort: a registry or store that cannot be read gives an
entry in ``problems`` (and ``recomputed: false`` if the recomputation could not
run) rather than no answer at all. Only an unknown prediction id is an error.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from inference_service import scoring
from inference_service.model_loader import LoadedModel, _client
from inference_service.online import certificate_features
from shared import feature_table as ft
from shared.prediction_table import LoggedPrediction, get_prediction
from shared.registry_contract import ENV_TAG_PREFIX, GATE_TAG_PREFIX, LIB_TAG_PREFIX, Tag
from shared.spec import LoadedSpec, load_spec

log = logging.getLogger(__name__)


class PredictionNotFound(LookupError):
    def __init__(self, prediction_id: str):
        super().__init__(f"no logged prediction has id {prediction_id[:64]!r}")
        self.prediction_id = prediction_id


def _ms_iso(ms: Any) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(int(ms) / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _err(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:300]}"


def _manifest_summary(info: ft.VersionInfo) -> dict[str, Any]:
    return {"version": info.version, "checksum": info.checksum, "as_of": ft.iso_utc(info.as_of),
            "row_count": info.row_count, "spec_hash": info.spec_hash, "code_commit": info.code_commit,
            "shared_version": info.shared_version, "source_format": info.source_format,
            "source_location": info.source_location, "source_sha256": info.source_sha256,
            "created_at": ft.iso_utc(info.created_at)}


def spec_from_run(loader: Any, run_id: str, folder: Path) -> LoadedSpec:
    """The spec file training logged with its run (artifact ``spec/``)."""
    import mlflow.artifacts

    local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="spec", dst_path=str(folder),
                                                     tracking_uri=loader.tracking_uri))
    files = sorted(p for p in local.rglob("*") if p.suffix in (".yaml", ".yml"))
    if not files:
        raise FileNotFoundError(f"training run {run_id} has no spec file under its 'spec' artifacts")
    return load_spec(files[0])


def recompute(logged: LoggedPrediction, spec: LoadedSpec, engine: Engine, model: LoadedModel) -> dict[str, Any]:
    """Run the logged inputs through the online path again; exact comparison with the logged outputs."""
    # Recomputed as it was served: a live request saw the whole feature version (no known-by replay).
    feats = certificate_features([logged.inputs], spec.spec, engine, logged.feature_version,  # type: ignore[arg-type]
                                 replay=False)
    probas = scoring.predict_proba(model, feats)
    if model.is_regressor:  # the value, compared exactly
        value = float(probas[0, 0])
        logged_value = logged.outputs.get("prediction")
        same = isinstance(logged_value, (int, float)) and not isinstance(logged_value, bool) \
            and float(logged_value) == value
        return {"equal": bool(same), "prediction": value, "same_prediction": bool(same),
                "max_abs_diff": abs(float(logged_value) - value) if isinstance(logged_value, (int, float)) else None,
                "history_feature_version": logged.feature_version}
    proba = probas[0]
    labels = [str(c) for c in model.classes]
    probabilities = dict(zip(labels, proba.tolist(), strict=True))
    prediction = model.classes[int(model.decide(probas)[0])]  # with the model's decision rule, as served
    threshold = model.decision.threshold if model.decision is not None else None
    same_rule = logged.outputs.get("threshold") == threshold
    logged_probs = logged.outputs.get("probabilities") or {}
    same_probs = set(logged_probs) == set(probabilities) and all(
        isinstance(logged_probs[k], (int, float)) and float(logged_probs[k]) == v for k, v in probabilities.items())
    same_prediction = prediction == logged.outputs.get("prediction")
    diffs = [abs(float(logged_probs[k]) - v) for k, v in probabilities.items()
             if isinstance(logged_probs.get(k), (int, float))]
    return {"equal": bool(same_probs and same_prediction and same_rule), "prediction": prediction,
            "probabilities": probabilities, "same_prediction": bool(same_prediction),
            "same_probabilities": bool(same_probs), "max_abs_diff": max(diffs) if diffs else None,
            "decision": model.decision.public() if model.decision is not None else None,
            "same_decision_rule": bool(same_rule), "history_feature_version": logged.feature_version}


def build(prediction_id: str, *, engine: Engine, loader: Any, spec: LoadedSpec | None, alias: str = "champion",
          served: LoadedModel | None = None, do_recompute: bool = True,
          spec_origin: str = "served spec") -> dict[str, Any]:
    """The lineage chain of ``prediction_id`` (see the module docstring). Raises :class:`PredictionNotFound`."""
    logged = get_prediction(engine, prediction_id)
    if logged is None:
        raise PredictionNotFound(prediction_id)
    problems: list[str] = []
    out: dict[str, Any] = {"prediction_id": logged.prediction_id, "prediction": logged.as_dict()}

    # ---- model version in the registry, and where the alias points now
    tags: dict[str, str] = {}
    model: dict[str, Any] = {"name": logged.model_name, "version": logged.model_version, "alias": alias}
    client = None
    try:
        client = _client(loader.tracking_uri, loader.registry_uri)
        mv = client.get_model_version(logged.model_name, logged.model_version)
        tags = dict(mv.tags or {})
        model.update({"status": getattr(mv, "status", None), "registered_at": _ms_iso(mv.creation_timestamp),
                      "aliases": sorted(getattr(mv, "aliases", None) or []), "source": mv.source,
                      "validated": tags.get(Tag.VALIDATED) == "true",
                      "decision_threshold": tags.get(Tag.DECISION_THRESHOLD),
                      "gate": {k.removeprefix(GATE_TAG_PREFIX): v for k, v in sorted(tags.items())
                               if k.startswith(GATE_TAG_PREFIX)}})
    except Exception as exc:  # noqa: BLE001 - report, keep going
        problems.append(f"model version {logged.model_name}/{logged.model_version}: {_err(exc)}")
    if client is not None:
        try:
            now = client.get_model_version_by_alias(logged.model_name, alias)
            model["alias_now"] = str(now.version)
        except Exception as exc:  # noqa: BLE001 - no alias is an answer, not a failure
            model["alias_now"] = None
            if "not found" not in str(exc).lower() and "RESOURCE_DOES_NOT_EXIST" not in str(exc):
                problems.append(f"alias {alias}: {_err(exc)}")
        model["is_alias_now"] = model.get("alias_now") == logged.model_version
    out["model"] = model

    # ---- training run
    run_id = tags.get(Tag.RUN_ID) or None
    run: dict[str, Any] = {"run_id": run_id}
    if run_id and client is not None:
        try:
            r = client.get_run(run_id)
            run.update({"run_name": r.info.run_name, "experiment_id": r.info.experiment_id, "status": r.info.status,
                        "start_time": _ms_iso(r.info.start_time), "end_time": _ms_iso(r.info.end_time),
                        "same_as_registry_source_run": str(getattr(mv, "run_id", "") or "") == run_id})
        except Exception as exc:  # noqa: BLE001
            problems.append(f"training run {run_id}: {_err(exc)}")
    elif tags:
        problems.append("the model version has no fti.run_id tag")
    out["training_run"] = run

    # ---- feature versions: trained on (tags vs manifest) and history read at prediction time
    trained_v = tags.get(Tag.FEATURE_VERSION)
    trained: dict[str, Any] = {"version": int(trained_v) if trained_v and trained_v.isdigit() else None,
                               "as_of": tags.get(Tag.FEATURE_AS_OF), "checksum": tags.get(Tag.FEATURE_CHECKSUM)}
    dataset = tags.get(Tag.DATASET) or logged.dataset
    manifest = None
    if trained["version"] is not None:
        try:
            manifest = ft.get_version(engine, dataset, trained["version"])
            trained["manifest"] = _manifest_summary(manifest)
            trained["manifest_matches_model_tags"] = (manifest.checksum == trained["checksum"]
                                                      and ft.iso_utc(manifest.as_of) == trained["as_of"]
                                                      and manifest.source_sha256 == tags.get(Tag.SOURCE_SHA256))
            if not trained["manifest_matches_model_tags"]:
                problems.append(f"feature version {trained['version']}: manifest differs from the model's tags")
        except Exception as exc:  # noqa: BLE001
            problems.append(f"feature version {trained['version']} manifest: {_err(exc)}")
    history: dict[str, Any] = {"version": logged.feature_version}
    if logged.feature_version is not None:
        try:
            history.update(_manifest_summary(ft.get_version(engine, logged.dataset, logged.feature_version)))
        except Exception as exc:  # noqa: BLE001
            problems.append(f"feature version {logged.feature_version} manifest: {_err(exc)}")
    out["features"] = {"dataset": dataset, "trained_on": trained, "history_read_from": history}

    # ---- source, spec, code, environment
    out["source"] = {"sha256": tags.get(Tag.SOURCE_SHA256),
                     "format": manifest.source_format if manifest else None,
                     "location": manifest.source_location if manifest else None}
    out["spec"] = {"hash": tags.get(Tag.SPEC_HASH), "feature_hash": tags.get(Tag.FEATURE_SPEC_HASH),
                   "feature_job_spec_hash": manifest.spec_hash if manifest else None}
    out["code"] = {"commit": tags.get(Tag.CODE_COMMIT), "shared_version": tags.get(Tag.SHARED_VERSION),
                   "feature_job_commit": manifest.code_commit if manifest else None,
                   "estimator": tags.get(Tag.ESTIMATOR), "seed": tags.get(Tag.SEED)}
    out["environment"] = {k.removeprefix(ENV_TAG_PREFIX): v for k, v in sorted(tags.items()) if k.startswith(ENV_TAG_PREFIX)}
    out["libraries"] = {k.removeprefix(LIB_TAG_PREFIX): v for k, v in sorted(tags.items()) if k.startswith(LIB_TAG_PREFIX)}

    # ---- recompute
    out["recomputed"] = False
    if do_recompute:
        out["recomputation"] = _recompute_step(logged, spec, spec_origin, engine, loader, served, run_id, problems)
        out["recomputed"] = bool(out["recomputation"].get("equal"))
    out["problems"] = problems
    return out


def _recompute_step(logged: LoggedPrediction, spec: LoadedSpec | None, spec_origin: str, engine: Engine,
                    loader: Any, served: LoadedModel | None, run_id: str | None,
                    problems: list[str]) -> dict[str, Any]:
    step: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="fti-lineage-") as tmp:
        try:
            if spec is None:
                if not run_id:
                    raise ValueError("no spec given and the model version names no training run to take it from")
                spec, spec_origin = spec_from_run(loader, run_id, Path(tmp)), "training run artifact"
            step["spec"] = {"origin": spec_origin, "path": str(spec.path), "hash": spec.hash,
                            "feature_hash": spec.spec.feature_hash}
            if spec.spec.name != logged.dataset:
                raise ValueError(f"the spec describes dataset {spec.spec.name!r}, the prediction was made for "
                                 f"{logged.dataset!r}")
            model, how = _model(logged, spec, loader, served)
            step["model_loaded_from"] = how
            step.update(recompute(logged, spec, engine, model))
        except Exception as exc:  # noqa: BLE001 - a recomputation that cannot run is reported, not raised
            log.warning("recomputing prediction %s failed: %s", logged.prediction_id, _err(exc))
            step["equal"] = False
            step["error"] = _err(exc)
            problems.append(f"recomputation: {_err(exc)}")
    return step


def _model(logged: LoggedPrediction, spec: LoadedSpec, loader: Any,
           served: LoadedModel | None) -> tuple[LoadedModel, str]:
    if served is not None and served.name == logged.model_name and served.version == logged.model_version:
        return served, "the served model (in memory)"
    load: Callable[..., LoadedModel] | None = getattr(loader, "load_version", None)
    if load is None:
        raise RuntimeError("this service's model loader cannot load a model by version")
    return load(spec.spec, logged.model_name, logged.model_version), \
        "the registry (load_version: skops allow-list, validated tag, feature contract, environment)"
