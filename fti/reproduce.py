"""``fti reproduce NAME/VERSION``: retrain a registered model from its recorded lineage and compare.

It lives in ``fti``, the one layer allowed to import several services, because it spans two stages:
it rebuilds the feature version with the feature pipeline's code (:mod:`feature_pipeline.featureset`)
and retrains with the training pipeline's (:mod:`training_pipeline.pipeline`).

What is read (all written by ``fti train``):

* the model version's tags -- ``fti.dataset``, ``fti.feature_version``, ``fti.feature_checksum``,
  ``fti.feature_as_of``, ``fti.source_sha256``, ``fti.spec_hash``, ``fti.feature_spec_hash``,
  ``fti.code_commit``, ``fti.seed``, ``fti.env.*``, ``fti.run_id``;
* the run -- its params and metrics, the exact spec file it used (artifact ``spec/<file>``) and the
  feature version's manifest (artifact ``lineage/feature_version.json``);
* the registered model -- the pipeline itself plus ``extra_files/certificate.json`` and
  ``extra_files/environment.json``.

What is done:

1. **Spec**: the logged spec (the exact one used), or ``--spec PATH`` to ask "what if" (another seed,
   hyperparameter, feature...). The two are diffed field by field (dotted paths).
2. **Features**: the recorded feature version is looked up in the feature store and its checksum
   recomputed from the stored rows; independently the source is re-read and the feature set rebuilt
   as of the recorded cutoff (:func:`feature_pipeline.featureset.build`, nothing is published) and compared
   with the recorded checksum, row by row when the stored version exists. "Source changed" (sha256)
   and "features differ" (checksum) are reported separately: an append-only source that grew after
   the cutoff changes its sha256 but not the as-of rebuild.
3. **Retrain** with the same code path as ``fti train`` (:func:`training_pipeline.pipeline.fit_evaluate`)
   on the stored rows if they verify (else on the rebuild).
4. **Compare**: certificate predictions, the original model vs the retrained one on the whole
   evaluation set, params, metrics (exact), spec and feature-spec hashes, environment, code commit.

Where the source is read from: a spec downloaded from MLflow has lost the folder its relative
``source.path`` resolves against, so for csv/parquet sources the file the feature version recorded
(``source_location`` in its manifest) is read. With ``--spec PATH`` the spec's own rule applies
(relative to PATH's folder); if that file does not exist and the spec's ``source.path`` is the one the
model was trained with, the recorded location is used instead (the report says so). SQL sources are
read from the spec's URL (with ``${VAR}`` expanded from the environment).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import and_, select

from feature_pipeline import featureset
from feature_pipeline.extract import Extracted, SourceError, extract, file_location
from shared import feature_table as ft
from shared import fingerprint, model_ref, rowwise
from shared.certificate import CERTIFICATE_FILE
from shared.db import make_engine
from shared.model_file import ModelFileRefused, load_model_dir, prepare_rehearsal
from shared.model_ref import ModelRefError
from shared.provenance import code_commit
from shared.raw import RawDataError
from shared.registry_contract import ENV_TAG_PREFIX, Artifact, Tag
from shared.spec import DatasetSpec, LoadedSpec, SpecError, load_spec
from training_pipeline import register as reg
from training_pipeline.config import Settings
from training_pipeline.data import prepare
from training_pipeline.pipeline import Fitted, fit_evaluate, flat_params, log_and_register

log = logging.getLogger(__name__)

IDENTICAL = "IDENTICAL"
DIFFERENT = "DIFFERENT"
REQUIRED_TAGS = (Tag.DATASET, Tag.FEATURE_VERSION, Tag.FEATURE_CHECKSUM, Tag.FEATURE_AS_OF,
                 Tag.SPEC_HASH)
SHOW = 5  # ids / fields named per line of the text report
KEEP = 200  # ids kept per list in the JSON report
_ABSENT = object()


class ReproduceError(ValueError):
    """Something the user can fix (unknown model/version, missing artifacts, no data): exit 3."""


# --------------------------------------------------------------------------- report


@dataclass
class Report:
    model: str
    version: str
    run_id: str
    differences: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    spec: dict[str, Any] = field(default_factory=dict)
    features: dict[str, Any] = field(default_factory=dict)
    predictions: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    code: dict[str, Any] = field(default_factory=dict)
    registered: dict[str, Any] | None = None
    seconds: float = 0.0

    @property
    def verdict(self) -> str:
        return DIFFERENT if self.differences else IDENTICAL

    @property
    def exit_code(self) -> int:
        return 1 if self.differences else 0

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version, "run_id": self.run_id, "verdict": self.verdict,
                "exit_code": self.exit_code, "differences": self.differences, "notes": self.notes,
                "spec": self.spec, "features": self.features, "predictions": self.predictions,
                "params": self.params, "metrics": self.metrics, "environment": self.environment,
                "code": self.code, "registered": self.registered, "seconds": round(self.seconds, 3)}

    def render(self) -> str:
        lines = [f"fti reproduce {self.model}/{self.version} (run {self.run_id}): {self.verdict}"]
        f, p = self.features, self.predictions
        spec_from = self.spec.get("from", "")
        lines.append(f"  retrained on {f.get('trained_on', '?')} with {spec_from}")
        for key, label in (("certificate", "certificate records"), ("evaluation", "evaluation rows")):
            c = p.get(key) or {}
            if c.get("rows") is not None:
                state = "bit-identical" if c.get("identical") else \
                    f"{c.get('differing')} differ, max |diff| {_num(c.get('max_abs_diff'))}"
                lines.append(f"  predictions on {c['rows']} {label}: {state}")
        lines.append(f"  params: {'equal' if self.params.get('equal') else 'differ'}; "
                     f"metrics: {'equal' if self.metrics.get('equal') else 'differ'} (exact)")
        stored, rebuild = f.get("stored") or {}, f.get("rebuild") or {}
        lines.append(f"  features: stored version {f.get('version')}: "
                     + ("verified" if stored.get("verified") else "not verified" if stored.get("present")
                        else "gone")
                     + "; rebuild as of " + str(f.get("as_of")) + ": "
                     + ("identical" if rebuild.get("equal") else "differs" if "checksum" in rebuild
                        else "not possible"))
        if self.differences:
            lines.append("differences:")
            lines += [f"  - {d}" for d in self.differences]
        if self.notes:
            lines.append("notes:")
            lines += [f"  - {n}" for n in self.notes]
        if self.registered:
            r = self.registered
            lines.append(f"registered: {r['model']} version {r['version']} (run {r['run_id']}, feature version "
                         f"{r['feature_version']}; promote policy 'never': the alias did not move)")
        return "\n".join(lines)


def _num(x: Any) -> str:
    return "n/a" if x is None else f"{float(x):.3g}"


def _short(h: Any) -> str:
    return str(h)[:12] if h else "(none)"


# --------------------------------------------------------------------------- spec diff


def spec_changes(recorded: DatasetSpec, reproduced: DatasetSpec) -> list[tuple[str, Any, Any]]:
    """Field-level differences between two specs as (dotted path, recorded, reproduced).

    Lists of named entries (derived / history features) are matched by name, so removing one
    feature reports that feature, not every later index. Order changes are reported as
    ``<path> (order)`` (column order decides the default model-feature order)."""
    return _diff(_canonical(recorded), _canonical(reproduced), "")


def _canonical(spec: DatasetSpec) -> dict[str, Any]:
    return spec.model_dump(mode="json", by_alias=True)


def _same_json(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # 200 and 200.0 differ, as in the hash


def _named(items: Any) -> bool:
    return isinstance(items, list) and all(isinstance(x, dict) and "name" in x for x in items) \
        and len({x["name"] for x in items}) == len(items)


def _diff_mapping(a: dict[str, Any], b: dict[str, Any], path: str, fmt: str) -> list[tuple[str, Any, Any]]:
    out: list[tuple[str, Any, Any]] = []
    for k in [*a, *(k for k in b if k not in a)]:
        p = fmt.format(path=path, key=k)
        out += _diff(a.get(k, _ABSENT), b.get(k, _ABSENT), p)
    common_a = [k for k in a if k in b]
    common_b = [k for k in b if k in a]
    if common_a != common_b:
        out.append((f"{path} (order)", common_a, common_b))
    return out


def _diff(a: Any, b: Any, path: str) -> list[tuple[str, Any, Any]]:
    if a is _ABSENT or b is _ABSENT:
        return [(path, a, b)]
    if isinstance(a, dict) and isinstance(b, dict):
        return _diff_mapping(a, b, path, "{path}.{key}" if path else "{key}")
    if _named(a) and _named(b) and (a or b):
        return _diff_mapping({x["name"]: x for x in a}, {x["name"]: x for x in b}, path, "{path}[{key}]")
    return [] if _same_json(a, b) else [(path, a, b)]


def _fmt(v: Any) -> str:
    if v is _ABSENT:
        return "(absent)"
    if isinstance(v, str):
        return v
    return json.dumps(v, sort_keys=True, separators=(",", ":"))


def describe_change(path: str, a: Any, b: Any) -> str:
    if a is _ABSENT:
        return f"{path} added: {_fmt(b)}"
    if b is _ABSENT:
        return f"{path} removed (was {_fmt(a)})"
    return f"{path} {_fmt(a)} -> {_fmt(b)}"


_LOCATION_FIELDS = {"source.path", "source.url", "source.table", "source.query"}


def inert_change(path: str) -> bool:
    """Spec fields that cannot change a model: where the source lives (its content is compared by sha256
    and feature checksum) and descriptions."""
    return path in _LOCATION_FIELDS or path == "description" or path.endswith(".description")


def feature_compatible(a: DatasetSpec, b: DatasetSpec) -> bool:
    """Would both specs build the same feature rows from the same source content?

    Compares everything but ``model``, descriptions and the source's location."""
    da, db = _canonical(a), _canonical(b)
    for d in (da, db):
        d.pop("model", None)
        d.pop("description", None)
        for key in ("path", "url", "table", "query"):
            d["source"].pop(key, None)
        d["columns"] = [[name, {k: v for k, v in col.items() if k != "description"}]
                        for name, col in d["columns"].items()]
    return _same_json(da, db)


# --------------------------------------------------------------------------- feature rows diff


def _stored_rows(engine: Any, dataset: str, version: int) -> dict[str, tuple[str, str, str]]:
    t = ft.feature_rows
    with engine.connect() as conn:
        rows = conn.execute(select(t.c.record_id, t.c.entity_key, t.c.event_time, t.c.payload)
                            .where(and_(t.c.dataset == dataset, t.c.version == version))).all()
    return {r.record_id: (r.entity_key, ft.iso_utc(r.event_time) if r.event_time is not None else "", r.payload)
            for r in rows}


def rows_by_id(rows: list[dict[str, Any]]) -> dict[str, tuple[str, str, str]]:
    """Built rows (:class:`feature_pipeline.featureset.Built`) -> record id -> (entity key, event time, payload)."""
    return {r["record_id"]: (r["entity_key"], ft.iso_utc(r["event_time"]) if r["event_time"] is not None else "",
                             r["payload"]) for r in rows}


def diff_rows(recorded: dict[str, tuple[str, str, str]], rebuilt: dict[str, tuple[str, str, str]],
              raw_columns: set[str]) -> dict[str, Any]:
    """Rows added / removed / changed (split into changed raw values vs changed computed features only)."""
    added = sorted(set(rebuilt) - set(recorded))
    removed = sorted(set(recorded) - set(rebuilt))
    raw_changed: list[dict[str, Any]] = []
    computed_changed: list[dict[str, Any]] = []
    for rid in sorted(set(recorded) & set(rebuilt)):
        a, b = recorded[rid], rebuilt[rid]
        if a == b:
            continue
        pa, pb = json.loads(a[2]), json.loads(b[2])
        fields = {k: [pa.get(k), pb.get(k)] for k in sorted(set(pa) | set(pb)) if pa.get(k) != pb.get(k)}
        if a[0] != b[0]:
            fields["(entity_key)"] = [a[0], b[0]]
        if a[1] != b[1]:
            fields["(event_time)"] = [a[1], b[1]]
        entry = {"record_id": rid, "fields": fields}
        raw = any(k in raw_columns or k.startswith("(") for k in fields)
        (raw_changed if raw else computed_changed).append(entry)
    return {"added": added, "removed": removed, "changed_raw": raw_changed, "changed_computed": computed_changed,
            "n_added": len(added), "n_removed": len(removed), "n_changed": len(raw_changed) + len(computed_changed)}


def _describe_rows(d: dict[str, Any]) -> str:
    parts = []
    if d["changed_raw"]:
        shown = "; ".join(f"{e['record_id']}: " + ", ".join(f"{k} {_fmt(v[0])} -> {_fmt(v[1])}"
                                                              for k, v in list(e["fields"].items())[:3])
                          for e in d["changed_raw"][:SHOW])
        more = f" (+{len(d['changed_raw']) - SHOW} more)" if len(d["changed_raw"]) > SHOW else ""
        parts.append(f"{len(d['changed_raw'])} row(s) changed in their raw values ({shown}{more})")
    if d["changed_computed"]:
        ids = ", ".join(e["record_id"] for e in d["changed_computed"][:SHOW])
        more = f" +{len(d['changed_computed']) - SHOW} more" if len(d["changed_computed"]) > SHOW else ""
        names = sorted({k for e in d["changed_computed"] for k in e["fields"]})
        parts.append(f"{len(d['changed_computed'])} row(s) changed only in computed features "
                     f"{', '.join(names[:6])} ({ids}{more})")
    for key in ("added", "removed"):
        if d[key]:
            more = f" +{len(d[key]) - SHOW} more" if len(d[key]) > SHOW else ""
            parts.append(f"{len(d[key])} row(s) {key} ({', '.join(d[key][:SHOW])}{more})")
    return "; ".join(parts) or "no row differs (the manifest-level checksum inputs differ)"


# --------------------------------------------------------------------------- predictions


def compare_predictions(expected: np.ndarray, got: np.ndarray, ids: list[str]) -> dict[str, Any]:
    expected = np.asarray(expected, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    if expected.shape != got.shape:
        return {"rows": int(expected.shape[0]), "identical": False, "differing": int(expected.shape[0]),
                "max_abs_diff": None, "error": f"shapes differ: {expected.shape} vs {got.shape}",
                "first_differing": []}
    row_diff = ~np.all((expected == got) | (np.isnan(expected) & np.isnan(got)), axis=1)
    abs_diff = np.abs(got - expected)
    return {"rows": int(len(expected)), "identical": bool(np.array_equal(expected, got)),
            "differing": int(row_diff.sum()),
            "max_abs_diff": float(np.nanmax(abs_diff)) if abs_diff.size else 0.0,
            "first_differing": [ids[i] for i in np.flatnonzero(row_diff)[:KEEP]]}


def _prediction_difference(label: str, c: dict[str, Any]) -> str | None:
    if c.get("error"):
        return f"predictions ({label}): {c['error']}"
    if c["identical"]:
        return None
    ids = ", ".join(c["first_differing"][:SHOW])
    return (f"predictions: {c['differing']} of {c['rows']} {label} differ, max |diff| {_num(c['max_abs_diff'])} "
            f"(first: {ids})")


# --------------------------------------------------------------------------- MLflow lookups


def parse_ref(ref: str) -> tuple[str, str | None, str | None]:
    """(name, version, alias) of a reference in the one grammar of :mod:`shared.model_ref`."""
    try:
        parsed = model_ref.parse(ref)
    except ModelRefError as exc:
        raise ReproduceError(str(exc)) from None
    return parsed.name, parsed.version, parsed.alias


def _not_found(exc: Exception) -> bool:
    return "RESOURCE_DOES_NOT_EXIST" in str(getattr(exc, "error_code", "")) or "not found" in str(exc).lower() \
        or "does not exist" in str(exc).lower()


def _model_version(client: Any, name: str, version: str | None, alias: str | None) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if _not_found(exc):
            raise ReproduceError(f"there is no registered model named {name!r} in the registry "
                                 f"({reg_uri()}); check the name and MLFLOW_REGISTRY_URI") from None
        raise
    try:
        if alias is not None:
            return client.get_model_version_by_alias(name, alias)
        return client.get_model_version(name, version)
    except MlflowException as exc:
        if not _not_found(exc):
            raise
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
        what = f"alias @{alias}" if alias is not None else f"version {version}"
        raise ReproduceError(f"model {name!r} has no {what} (registered versions: "
                             f"{', '.join(map(str, versions)) or 'none'})") from None


def reg_uri() -> str:
    import mlflow

    return str(mlflow.get_registry_uri())


def _download_spec(client: Any, run_id: str, dst: Path) -> Path:
    files = [f for f in client.list_artifacts(run_id, "spec") if not f.is_dir]
    specs = [f for f in files if f.path.endswith((".yaml", ".yml"))]
    if len(specs) != 1:
        raise ReproduceError(f"run {run_id} has {len(specs)} spec artifacts under spec/ (expected exactly one; "
                             "it was not trained by `fti train`); pass --spec PATH to reproduce it with a spec file")
    return Path(client.download_artifacts(run_id, specs[0].path, str(dst)))


def _download_json(client: Any, run_id: str, path: str, dst: Path) -> dict[str, Any] | None:
    try:
        return json.loads(Path(client.download_artifacts(run_id, path, str(dst))).read_text())
    except Exception:  # noqa: BLE001 - optional artifact
        return None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- the command


@dataclass
class _Data:
    frame: pd.DataFrame
    info: ft.VersionInfo
    description: str
    published: bool
    # The recorded version's rows decoded with the recorded spec (for scoring the original model when
    # the reproduction's rows lack a column it needs, e.g. a --spec that removes a feature).
    original: pd.DataFrame | None = None


def reproduce(ref: str, settings: Settings, *, spec_path: str | None = None, register: bool = False) -> Report:
    import mlflow
    from mlflow import MlflowClient

    t0 = time.perf_counter()
    name, version, alias = parse_ref(ref)
    reg.configure(settings)
    client = MlflowClient()
    mv = _model_version(client, name, version, alias)
    version = str(mv.version)
    tags = dict(mv.tags or {})
    missing = [t for t in REQUIRED_TAGS if not tags.get(t)]
    if missing:
        raise ReproduceError(f"{name}/{version} lacks the lineage tags {', '.join(missing)}: it was not "
                             "registered by `fti train`, so there is nothing to reproduce it from")
    run_id = str(mv.run_id or tags.get(Tag.RUN_ID) or "")
    if not run_id:
        raise ReproduceError(f"{name}/{version} has no source run (run_id): cannot read its params and spec")
    run = client.get_run(run_id)
    report = Report(name, version, run_id)

    with tempfile.TemporaryDirectory(prefix="fti-reproduce-") as tmp_dir:
        tmp = Path(tmp_dir)
        # --- what was recorded
        log.info("[1/5] reading the lineage of %s/%s (run %s)", name, version, run_id)
        recorded_spec = load_spec(_download_spec(client, run_id, tmp / "spec"))
        model_dir = tmp / "model"
        prepare_rehearsal(settings.model_load_memory_mb)  # the helper's imports overlap the download
        try:
            mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(model_dir))
        except Exception as exc:  # noqa: BLE001 - any failure here means the artifacts are not there
            raise ReproduceError(f"cannot download the artifacts of {name}/{version}: {exc}") from exc
        certificate = _read_json(model_dir / "extra_files" / CERTIFICATE_FILE)
        if certificate is None:
            raise ReproduceError(f"{name}/{version} has no extra_files/{CERTIFICATE_FILE}: it was trained by an "
                                 "older fti; its predictions cannot be compared record by record")
        environment = _read_json(model_dir / "extra_files" / Artifact.ENVIRONMENT)
        try:  # before anything is rebuilt: a refused model file is the answer
            original = load_model_dir(model_dir, expected_digest=tags.get(Tag.ARTIFACT_SHA256),
                                      memory_limit_mb=settings.model_load_memory_mb)
        except ModelFileRefused as exc:
            raise ReproduceError(f"{name}/{version}: {exc}") from None
        manifest_artifact = _download_json(client, run_id, Artifact.FEATURE_VERSION, tmp / "lineage")

        loaded = load_spec(spec_path) if spec_path else recorded_spec
        spec = loaded.spec
        _compare_specs(report, recorded_spec, loaded, tags, spec_path)

        # --- feature data
        log.info("[2/5] checking feature version %s and rebuilding it from the source as of %s",
                 tags[Tag.FEATURE_VERSION], tags[Tag.FEATURE_AS_OF])
        data = _feature_data(report, settings, tags, recorded_spec, loaded, spec_path, manifest_artifact)
        if register and not data.published:
            raise ReproduceError(
                "--register: the reproduction would train on an unpublished rebuild of the features, and a "
                "registered model must name a stored feature version (serving looks up history in it): publish "
                f"it with `fti features run --spec ... --as-of {tags[Tag.FEATURE_AS_OF]}` and run `fti reproduce` "
                "again, or use `fti train`")

        # --- retrain
        dataset = prepare(data.frame, spec, data.info)
        fitted = fit_evaluate(spec, dataset)
        log.info("[3/5] retrained on %s: %d train / %d evaluation rows in %.1fs", data.description,
                 len(dataset.X_train), len(dataset.X_test), fitted.seconds)

        # --- compare
        _compare_predictions(report, spec, certificate, original, dataset, fitted, data.original)
        _compare_params_metrics(report, loaded, run, dataset, fitted)
        _compare_environment(report, environment, tags, spec)
        running_commit = code_commit()
        report.code = {"recorded": tags.get(Tag.CODE_COMMIT), "running": running_commit,
                       "same": tags.get(Tag.CODE_COMMIT) == running_commit}
        if not report.code["same"]:
            report.notes.append(f"code: trained at commit {tags.get(Tag.CODE_COMMIT)}, reproduced at "
                                f"{running_commit}")
        log.info("[4/5] compared predictions, params, metrics, spec, features and environment: %s",
                 report.verdict)

        # --- optionally register the reproduction (never moves the alias)
        if register:
            report.registered = _register(report, settings, loaded, dataset, fitted, name, version)
        log.info("[5/5] %s", "registered " + str(report.registered) if register else "nothing registered")
    report.seconds = time.perf_counter() - t0
    return report


def _compare_specs(report: Report, recorded: LoadedSpec, loaded: LoadedSpec, tags: dict[str, str],
                   spec_path: str | None) -> None:
    spec = loaded.spec
    changes = spec_changes(recorded.spec, spec)
    report.spec = {
        "from": f"--spec {spec_path}" if spec_path else "the spec logged with the run",
        "hash": {"recorded": tags.get(Tag.SPEC_HASH), "reproduced": loaded.hash,
                 "equal": tags.get(Tag.SPEC_HASH) == loaded.hash},
        "feature_hash": {"recorded": tags.get(Tag.FEATURE_SPEC_HASH), "reproduced": spec.feature_hash,
                         "equal": tags.get(Tag.FEATURE_SPEC_HASH) in (None, spec.feature_hash)},
        "changes": [{"path": p, "recorded": None if a is _ABSENT else a, "reproduced": None if b is _ABSENT else b}
                    for p, a, b in changes],
    }
    if recorded.hash != tags.get(Tag.SPEC_HASH):
        report.differences.append(f"spec: the spec logged with the run hashes to {_short(recorded.hash)}, not to "
                                  f"the recorded fti.spec_hash {_short(tags.get(Tag.SPEC_HASH))}")
    for p, a, b in changes:
        if inert_change(p):
            report.notes.append(f"spec: {describe_change(p, a, b)} (where the data lives or documentation only: "
                                "not a difference, the data itself is compared by sha256 and checksum)")
        else:
            report.differences.append(f"spec: {describe_change(p, a, b)}")
    if not changes and not report.spec["hash"]["equal"] and recorded.hash == tags.get(Tag.SPEC_HASH):
        report.differences.append(f"spec: content hash {_short(tags.get(Tag.SPEC_HASH))} -> {_short(loaded.hash)}")
    if not report.spec["feature_hash"]["equal"]:
        report.notes.append(f"spec: feature hash {_short(tags.get(Tag.FEATURE_SPEC_HASH))} -> "
                            f"{_short(spec.feature_hash)}: the model inputs are defined differently (the "
                            "inference service would refuse to serve one model with the other spec)")


def _source_location(report: Report, recorded: LoadedSpec, loaded: LoadedSpec, spec_path: str | None,
                     recorded_location: str | None) -> Path | None:
    """Where to read a csv/parquet source from (None: let the spec decide, e.g. SQL)."""
    if loaded.spec.source.format not in ("csv", "parquet"):
        return None
    same_path = loaded.spec.source.path == recorded.spec.source.path and \
        loaded.spec.source.format == recorded.spec.source.format
    if spec_path:
        own = file_location(loaded)
        if own is not None and own.is_file():
            if recorded_location and same_path and Path(recorded_location) != own:
                report.notes.append(f"source: read from {own} (relative to --spec); the feature version was "
                                    f"built from {recorded_location}")
            return own
        if same_path and recorded_location:
            report.notes.append(f"source: {own} (relative to --spec) does not exist; read the file the feature "
                                f"version recorded instead: {recorded_location}")
            return Path(recorded_location)
        return own
    if recorded_location:
        return Path(recorded_location)
    return None


def _feature_data(report: Report, settings: Settings, tags: dict[str, str], recorded: LoadedSpec,
                  loaded: LoadedSpec, spec_path: str | None, manifest_artifact: dict[str, Any] | None) -> _Data:
    spec = loaded.spec
    dataset_name = tags[Tag.DATASET]
    fv = int(tags[Tag.FEATURE_VERSION])
    recorded_checksum = tags[Tag.FEATURE_CHECKSUM]
    as_of = featureset.parse_as_of(tags[Tag.FEATURE_AS_OF])
    feats: dict[str, Any] = {"dataset": dataset_name, "version": fv, "recorded_checksum": recorded_checksum,
                             "as_of": tags[Tag.FEATURE_AS_OF]}
    report.features = feats
    engine = make_engine(settings.feature_store_url)
    try:
        # (1) the stored version
        stored_info: ft.VersionInfo | None = None
        stored_ok = False
        try:
            stored_info = ft.get_version(engine, dataset_name, fv)
            checksum, n = ft.stored_checksum(engine, dataset_name, fv)
            stored_ok = checksum == recorded_checksum == stored_info.checksum and n == stored_info.row_count
            feats["stored"] = {"present": True, "checksum": checksum, "rows": n, "verified": stored_ok}
            if not stored_ok:
                report.differences.append(
                    f"features: stored version {fv} of {dataset_name!r} no longer matches the recorded checksum "
                    f"({_short(recorded_checksum)}; recomputed from its rows: {_short(checksum)}): its rows were "
                    "modified in the database, or the store was recreated")
        except ft.FeatureStoreError as exc:
            feats["stored"] = {"present": False, "error": str(exc)}
            report.notes.append(f"features: stored version {fv} is not available ({exc}); using the rebuild")

        # (2) the rebuild from the source as of the recorded cutoff
        manifest = stored_info.as_dict() if stored_info is not None else (manifest_artifact or {})
        recorded_location = manifest.get("source_location") if manifest.get("source_format") in ("csv", "parquet") \
            else None
        location = _source_location(report, recorded, loaded, spec_path, recorded_location)
        built: featureset.Built | None = None
        rebuild: dict[str, Any] = {}
        feats["rebuild"] = rebuild
        try:
            src: Extracted = extract(loaded, location=location)
            rebuild.update({"source_location": src.location, "source_sha256": src.sha256,
                            "recorded_source_sha256": tags.get(Tag.SOURCE_SHA256)})
            built = featureset.build(loaded, src, as_of=as_of)
        except SourceError as exc:
            rebuild["error"] = f"source not readable: {exc}"
        except RawDataError as exc:
            rebuild["error"] = f"the source no longer builds: {exc}"
            report.differences.append(f"source changed: rebuilding as of {feats['as_of']} fails: {exc}")
        if built is not None:
            _report_rebuild(report, engine, built, rebuild, recorded, loaded, stored_info, tags)
        elif "error" in rebuild and not rebuild["error"].startswith("the source no longer"):
            report.notes.append(f"features: cannot rebuild from the source ({rebuild['error']}); "
                                "whether the source still gives the recorded features is unknown")

        # (3) which rows to train on
        compatible = feature_compatible(recorded.spec, spec)
        if stored_info is not None and stored_ok and (compatible or (built and built.checksum == recorded_checksum)):
            data = _Data(ft.read_version(engine, spec, fv), stored_info,
                         f"stored feature version {fv} (checksum verified)", True)
        elif built is not None:
            match = _stored_with_checksum(engine, dataset_name, built.checksum)
            if match is not None:
                data = _Data(ft.read_version(engine, spec, match.version), match,
                             f"stored feature version {match.version} (same checksum as the rebuild)", True)
            else:
                info = ft.VersionInfo(**{**built.manifest, "version": 0})
                data = _Data(featureset.rows_frame(built.rows, spec), info,
                             f"the rebuild as of {feats['as_of']} (not published)", False)
        elif stored_info is not None and compatible:
            data = _Data(ft.read_version(engine, spec, fv), stored_info,
                         f"stored feature version {fv} (checksum NOT verified)", True)
        elif stored_info is not None:
            raise ReproduceError(f"the spec changes how features are built, and the source cannot be read to "
                                 f"rebuild them: {rebuild.get('error')}")
        else:
            raise ReproduceError(f"no data to retrain {report.model}/{report.version} on: feature version {fv} of "
                                 f"{dataset_name!r} is gone from the feature store ({settings.feature_store_url}) "
                                 f"and the source cannot be rebuilt ({rebuild.get('error')}); restore one of them "
                                 "(or point FTI_DATABASE_URL at the right store)")
        if data.original is None and stored_info is not None and (stored_ok or compatible):
            data.original = data.frame if (data.published and data.info.version == fv and compatible) \
                else ft.read_version(engine, recorded.spec, fv)
    finally:
        engine.dispose()
    feats["trained_on"] = data.description
    return data


def _stored_with_checksum(engine: Any, dataset: str, checksum: str) -> ft.VersionInfo | None:
    try:
        for info in ft.list_versions(engine, dataset):
            if info.checksum == checksum and ft.stored_checksum(engine, dataset, info.version)[0] == checksum:
                return info
    except ft.FeatureStoreError:
        return None
    return None


def _report_rebuild(report: Report, engine: Any, built: featureset.Built, rebuild: dict[str, Any],
                    recorded: LoadedSpec, loaded: LoadedSpec, stored_info: ft.VersionInfo | None,
                    tags: dict[str, str]) -> None:
    feats = report.features
    recorded_checksum = tags[Tag.FEATURE_CHECKSUM]
    sha_changed = bool(tags.get(Tag.SOURCE_SHA256)) and rebuild["source_sha256"] != tags.get(Tag.SOURCE_SHA256)
    equal = built.checksum == recorded_checksum
    rebuild.update({"source_changed": sha_changed, "checksum": built.checksum, "equal": equal,
                    "rows": built.manifest["row_count"], "stats": built.stats})
    no_ingestion = built.stats.get("ingestion_time") is None
    if sha_changed and equal:
        report.notes.append(
            f"source changed since training (sha256 {_short(tags.get(Tag.SOURCE_SHA256))} -> "
            f"{_short(rebuild['source_sha256'])}), but rebuilding it as of {feats['as_of']} gives the recorded "
            f"features: only rows known after the cutoff ({built.stats.get('after_cutoff')} now, "
            f"{built.stats.get('late_arrivals')} of them late arrivals with an earlier event time) or the row "
            "order changed")
    elif sha_changed:
        report.differences.append(f"source changed: sha256 {_short(tags.get(Tag.SOURCE_SHA256))} -> "
                                  f"{_short(rebuild['source_sha256'])} ({rebuild['source_location']})")
    if equal:
        return
    detail = ""
    if stored_info is not None and feature_compatible(recorded.spec, loaded.spec):
        d = diff_rows(_stored_rows(engine, stored_info.dataset, stored_info.version), rows_by_id(built.rows),
                      set(loaded.spec.columns))
        rebuild["rows_diff"] = {k: (v[:KEEP] if isinstance(v, list) else v) for k, v in d.items()}
        detail = ": " + _describe_rows(d)
        if not no_ingestion and (d["changed_raw"] or d["added"] or d["removed"]):
            report.notes.append(
                f"source: rows known at the cutoff (ingested by {feats['as_of']}) were changed, added or deleted "
                "after the fact: the source's history was rewritten in place. Append edits as new rows with a "
                "later ingestion time instead, so that as-of rebuilds hold (docs/reproducibility.md)")
    elif stored_info is None:
        detail = " (the stored version is gone, so the differing rows cannot be named)"
    else:
        detail = " (the spec builds features differently; see the spec differences)"
    why = ""
    if not sha_changed and feature_compatible(recorded.spec, loaded.spec):
        why = " although the source sha256 is unchanged (feature code or library changed?)"
    report.differences.append(f"features: rebuilding as of {feats['as_of']} gives checksum "
                              f"{_short(built.checksum)}, recorded {_short(recorded_checksum)}{why}{detail}")
    if no_ingestion and feature_compatible(recorded.spec, loaded.spec):
        report.notes.append(
            "source: the spec declares no source.ingestion_time column, so an as-of rebuild keeps every row with "
            "event time <= the cutoff, including rows that arrived (or were edited in place) after it; record "
            "an ingestion time and append edits as new rows to make as-of rebuilds hold (docs/reproducibility.md)")


def _compare_predictions(report: Report, spec: DatasetSpec, certificate: dict[str, Any], original: Any,
                         dataset: Any, fitted: Fitted, original_rows: pd.DataFrame | None) -> None:
    pipe = fitted.pipeline
    features = spec.model_features
    # (a) the certificate: the original model's exact outputs on its recorded model inputs
    cert_features = list(certificate.get("model_features") or [])
    missing = [f for f in features if f not in cert_features]
    ids = [str(r.get(spec.record_id)) for r in certificate.get("records", [])]
    if missing:
        cert: dict[str, Any] = {"rows": len(ids), "identical": False, "differing": len(ids), "max_abs_diff": None,
                "error": f"the retrained model uses features the certificate lacks: {', '.join(missing[:5])}",
                "first_differing": []}
    else:
        X = pd.DataFrame(certificate["features"], columns=cert_features)[features]
        cert = compare_predictions(np.asarray(certificate["expected"]), rowwise.predict_proba(pipe, X), ids)
    report.predictions["certificate"] = cert

    # (b) the original registered model vs the retrained one on the whole evaluation set
    wanted = [str(c) for c in getattr(original, "feature_names_in_", [])] or features
    absent = [c for c in wanted if c not in dataset.test.columns]
    eval_ids = [str(x) for x in dataset.test[spec.record_id]]
    if not absent:
        ev = compare_predictions(rowwise.predict_proba(original, dataset.test[wanted]), fitted.proba, eval_ids)
    elif original_rows is not None and all(c in original_rows.columns for c in wanted):
        # The reproduction's rows lack a column the original needs (the spec changed the features): score the
        # original on its own recorded rows for the same record ids; ids it never saw count as differing.
        by_id = original_rows.set_index(original_rows[spec.record_id].astype(str))
        known = [i for i in eval_ids if i in by_id.index]
        expected = np.full(fitted.proba.shape, np.nan)
        if known:
            where = {rid: k for k, rid in enumerate(eval_ids)}
            expected[[where[i] for i in known]] = rowwise.predict_proba(original, by_id.loc[known, wanted])
        ev = compare_predictions(expected, fitted.proba, eval_ids)
        ev["scored_original_on"] = "its recorded feature rows (the reproduction lacks " + ", ".join(absent[:5]) + ")"
    else:
        ev = {"rows": len(eval_ids), "identical": False, "differing": len(eval_ids), "max_abs_diff": None,
              "error": f"the original model needs columns the evaluation rows lack: {', '.join(absent[:5])}",
              "first_differing": []}
    classes_a = [c.item() if hasattr(c, "item") else c for c in getattr(original, "classes_", [])]
    classes_b = [c.item() if hasattr(c, "item") else c for c in getattr(pipe, "classes_", [])]
    if classes_a != classes_b:
        ev["error"] = f"classes differ: {classes_a} vs {classes_b}"
        ev["identical"] = False
    report.predictions["evaluation"] = ev
    for label, c in (("certificate records", cert), ("evaluation rows", ev)):
        msg = _prediction_difference(label, c)
        if msg:
            report.differences.append(msg)


def _compare_params_metrics(report: Report, loaded: LoadedSpec, run: Any, dataset: Any, fitted: Fitted) -> None:
    recorded_params = dict(run.data.params or {})
    reproduced = {k: str(v) for k, v in flat_params(loaded, len(dataset.X_train), len(dataset.X_test), dataset.unlabeled).items()}
    changes = [{"name": k, "recorded": recorded_params.get(k), "reproduced": reproduced.get(k)}
               for k in sorted(set(recorded_params) | set(reproduced)) if recorded_params.get(k) != reproduced.get(k)]
    report.params = {"equal": not changes, "changes": changes, "count": len(reproduced)}
    for c in changes:
        report.differences.append(f"params: {c['name']} {c['recorded'] or '(absent)'} -> "
                                  f"{c['reproduced'] or '(absent)'}")

    recorded_metrics = {k: float(v) for k, v in (run.data.metrics or {}).items() if not k.startswith("gate_")}
    got = {k: float(v) for k, v in fitted.metrics.items() if math.isfinite(v)}
    m_changes = [{"name": k, "recorded": recorded_metrics.get(k), "reproduced": got.get(k)}
                 for k in sorted(set(recorded_metrics) | set(got)) if recorded_metrics.get(k) != got.get(k)]
    report.metrics = {"equal": not m_changes, "changes": m_changes, "recorded": recorded_metrics, "reproduced": got}
    for c in m_changes:
        report.differences.append(f"metrics: {c['name']} {c['recorded']!r} -> {c['reproduced']!r}")


def _compare_environment(report: Report, environment: dict[str, Any] | None, tags: dict[str, str],
                         spec: DatasetSpec) -> None:
    running = fingerprint.capture(spec.model.estimator.class_path)
    if environment is None:  # older models: the fti.env.* tags only
        environment = {"python": tags.get(Tag.ENV_PYTHON), "lock_sha256": tags.get(Tag.ENV_LOCK_SHA256),
                       "shared_version": tags.get(Tag.SHARED_VERSION),
                       "enforced": {k.removeprefix(ENV_TAG_PREFIX): v for k, v in tags.items()
                                    if k.startswith(ENV_TAG_PREFIX) and k not in (Tag.ENV_PYTHON, Tag.ENV_LOCK_SHA256,
                                                                             Tag.ENV_IMAGE)}}
        diffs = fingerprint.compare_enforced(environment, running)
        report.notes.append("environment: the model has no environment.json; compared the fti.env.* tags only")
    else:
        diffs = fingerprint.compare_all(environment, running)
    enforced = {d.item for d in fingerprint.compare_enforced(environment, running)}
    report.environment = {"same": not diffs,
                          "differences": [{"item": d.item, "recorded": d.recorded, "running": d.running,
                                           "can_change_predictions": d.item in enforced} for d in diffs]}
    for d in diffs:
        report.notes.append(f"environment: {d.item} {d.recorded} -> {d.running}"
                            + (" (can change predictions)" if d.item in enforced else ""))
    identical = all((report.predictions.get(k) or {}).get("identical") for k in ("certificate", "evaluation"))
    if diffs and identical:
        report.notes.append("environment differs, yet predictions are bit-identical here; bit-identity is only "
                            "promised on the same image (lock) and CPU, so this is not a difference")
    elif diffs:
        report.notes.append("environment differs: that alone can explain prediction differences (bit-identity "
                            "is only promised on the same image and CPU)")


def _register(report: Report, settings: Settings, loaded: LoadedSpec, dataset: Any, fitted: Fitted,
              name: str, version: str) -> dict[str, Any]:
    result = log_and_register(loaded, settings, dataset, fitted, promote="never",
                              extra_tags={Tag.REPRODUCES: f"{name}/{version}",
                                          Tag.REPRODUCE_VERDICT: report.verdict})
    return {"model": result.model_name, "version": result.version, "run_id": result.run_id,
            "feature_version": result.feature_version, "promoted": result.decision.promoted}


__all__ = ["DIFFERENT", "IDENTICAL", "Report", "ReproduceError", "SpecError", "diff_rows", "feature_compatible",
           "inert_change", "parse_ref", "reproduce", "rows_by_id",
           "spec_changes"]
