"""Parity certificates: proof, stored with a model, that serving computes what training did.

At training, a seeded sample of evaluation rows becomes a certificate: the raw
records (exactly as a client would send them), the model inputs the batch path
computed for them (feature table -> pipeline) and the model's exact outputs.
Before serving, the service runs those raw records through its own online path
(raw -> ``shared`` features -> history lookups in the certified feature version
as of each record's time -> model) and compares bit for bit. Any difference
keeps the model out of service, with the records and fields that differ. Model
inputs are compared as well as outputs: a drift too small to move this model's
outputs is still a broken promise, and would move the next model's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from shared import feature_table as ft
from shared import rowwise
from shared.registry_contract import Artifact
from shared.spec import ColumnType, DatasetSpec

CERTIFICATE_FORMAT = 1
CERTIFICATE_FILE = Artifact.CERTIFICATE


def _json_scalar(value: Any, ctype: ColumnType) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT:
        return None
    if ctype == ColumnType.TIMESTAMP:
        return ft.iso_utc(value)
    if ctype == ColumnType.INT:
        return int(value)
    if ctype == ColumnType.FLOAT:
        return float(value)
    if ctype == ColumnType.BOOL:
        return bool(value)
    return str(value)


def _json_column(series: pd.Series, ctype: ColumnType) -> list[Any]:
    """``_json_scalar`` over a column; UTC timestamp columns are formatted in one vectorised call."""
    if ctype == ColumnType.TIMESTAMP and isinstance(series.dtype, pd.DatetimeTZDtype):
        naive = series.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(dtype="datetime64[us]")
        return [None if t == "NaT" else f"{t}Z" for t in np.datetime_as_string(naive, unit="us").tolist()]
    if series.dtype == np.float64 and ctype in (ColumnType.FLOAT, ColumnType.INT, ColumnType.BOOL):
        convert = {ColumnType.FLOAT: float, ColumnType.INT: int, ColumnType.BOOL: bool}[ctype]
        return [None if v != v else convert(v) for v in series.tolist()]  # v != v: NaN
    return [_json_scalar(v, ctype) for v in series.tolist()]


def raw_records(frame: pd.DataFrame, spec: DatasetSpec) -> list[dict[str, Any]]:
    """Canonical feature-table rows -> the raw JSON records a client sends for them.

    Column by column (the inference service renders every logged prediction's inputs with this, on
    the request path); the values are exactly ``_json_scalar`` of each cell.
    """
    names = spec.raw_input_columns
    columns = [_json_column(frame[c], spec.columns[c].type) for c in names]
    return [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)] if columns \
        else [{} for _ in range(len(frame))]


def raw_records_from_arrays(arrays: dict[str, np.ndarray], spec: DatasetSpec) -> list[dict[str, Any]]:
    """:func:`raw_records` for normalised column arrays (``shared.raw.record_arrays``), without a frame.

    The prediction log renders every logged prediction's inputs with this, in its own thread; the
    values are exactly those :func:`raw_records` gives for the frame built from the same arrays
    (``tests/unit/shared/test_raw_records.py``)."""
    from shared.raw import NAT_MICROS

    names = spec.raw_input_columns
    columns: list[list[Any]] = []
    for c in names:
        ctype = spec.columns[c].type
        values = arrays[c]
        if ctype == ColumnType.TIMESTAMP and values.dtype.kind == "i":
            text = np.datetime_as_string(values.view("datetime64[us]"), unit="us").tolist()
            columns.append([None if m == NAT_MICROS else f"{t}Z" for m, t in zip(values.tolist(), text, strict=True)])
        elif values.dtype == np.float64 and ctype in (ColumnType.FLOAT, ColumnType.INT, ColumnType.BOOL):
            convert = {ColumnType.FLOAT: float, ColumnType.INT: int, ColumnType.BOOL: bool}[ctype]
            columns.append([None if v != v else convert(v) for v in values.tolist()])  # v != v: NaN
        else:
            columns.append([_json_scalar(v, ctype) for v in values.tolist()])
    return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)] if columns \
        else [{} for _ in range(len(next(iter(arrays.values()))) if arrays else 0)]


def _json_features(frame: pd.DataFrame, columns: list[str]) -> list[dict[str, Any]]:
    rows = []
    for row in frame[columns].to_dict(orient="records"):
        rows.append({c: (None if isinstance(v, float) and math.isnan(v) else v) for c, v in row.items()})
    return rows


def sample(frame: pd.DataFrame, spec: DatasetSpec, n: int, seed: int) -> pd.DataFrame:
    ordered = frame.sort_values(spec.record_id, kind="stable").reset_index(drop=True)
    if len(ordered) <= n:
        return ordered
    idx = np.sort(np.random.default_rng(seed).choice(len(ordered), size=n, replace=False))
    return ordered.iloc[idx].reset_index(drop=True)


UNSEEN_CATEGORY = "__fti_unseen_category__"
NEW_ENTITY = "__fti_entity_without_history__"
LATE_RECORDS = 16
_US = pd.Timedelta(microseconds=1)


def late_arrival_rows(eval_frame: pd.DataFrame, pool: pd.DataFrame, spec: DatasetSpec) -> pd.DataFrame:
    """Evaluation rows whose history the known-by rule changed: some earlier event arrived after them.

    Recomputed over ``pool`` (the whole feature version) as if everything were known;
    where a history value differs from the stored one, a late arrival was left out.
    """
    from shared.features import history_step

    history = history_step(spec)
    if history is None or not spec.source.ingestion_time or eval_frame.empty:
        return eval_frame.iloc[:0]
    names = [h.name for h in spec.features.history]
    base = eval_frame.drop(columns=names)
    history.fit(base)
    naive = history.transform_with_history(base, pool, None)
    differs = np.zeros(len(eval_frame), dtype=bool)
    for n in names:
        a, b = eval_frame[n].to_numpy(dtype=np.float64), naive[n].to_numpy(dtype=np.float64)
        differs |= ~((a == b) | (np.isnan(a) & np.isnan(b)))
    return eval_frame[differs]


def coverage_records(pool: pd.DataFrame, spec: DatasetSpec, seed: int) -> tuple[list[dict[str, Any]], list[bool]]:
    """Raw records built from the spec to reach every branch of the shared feature code.

    Starting from real rows: each nullable column missing; each category seen in the
    data, an unseen one and a blank one (the missing marker); each numeric bound; an
    entity without history; an event at the same time as a stored one (excluded: strictly
    before); both sides of each history window's edge; both sides of an event's ingestion
    time (known exactly then, or not yet). Their expected outputs are what training's own
    ``shared`` computes, so any change of that code between training and serving that moves
    a value on any of these branches refuses the model.

    Returns the records and, per record, whether it is checked as a live request (the whole
    version known: event-time ties are only reachable there, since every stored event was
    ingested after it happened) rather than replayed as of its own time.
    """
    if pool.empty:
        return [], []
    ordered = pool.sort_values(spec.record_id, kind="stable").reset_index(drop=True)
    rng = np.random.default_rng(seed)
    bases = raw_records(ordered.iloc[np.sort(rng.choice(len(ordered), size=min(8, len(ordered)),
                                                        replace=False))], spec)
    out: list[dict[str, Any]] = []
    live: list[bool] = []

    def synthetic_key(column: str, k: int, tag: str) -> Any:
        """A key no stored row has, of the column's own type (integer keys stay integers)."""
        if spec.columns[column].type == ColumnType.INT:
            top = pd.to_numeric(ordered[column], errors="coerce").max()
            return int(top if pd.notna(top) else 0) + 1_000_000 + k
        return f"__fti_cov_{k:04d}_{tag}"

    def variant(tag: str, i: int, *, as_live: Any = False, **changes: Any) -> None:  # Any: **{col: value}
        rec = dict(bases[i % len(bases)])
        rec.update(changes)
        rec[spec.record_id] = synthetic_key(spec.record_id, len(out), tag)
        out.append(rec)
        live.append(as_live)

    names = spec.raw_input_columns
    keys = {spec.record_id, spec.entity_key, spec.event_time}
    for j, name in enumerate(c for c in names if c not in keys):
        col = spec.columns[name]
        if col.nullable:
            variant(f"missing_{name}", j, **{name: None})
        if col.type == ColumnType.CATEGORY:
            seen = sorted({str(v) for v in ordered[name].dropna().tolist()})[:24]
            for k, category in enumerate([*seen, UNSEEN_CATEGORY, ""] if col.nullable else [*seen, UNSEEN_CATEGORY]):
                variant(f"category_{name}_{k}", j + k, **{name: category})
        if col.type.is_numeric:
            for bound, value in (("min", col.min), ("max", col.max)):
                if value is not None:
                    v = bool(value) if col.type == ColumnType.BOOL else (int(value) if col.type == ColumnType.INT
                                                                          else float(value))
                    variant(f"{bound}_{name}", j, **{name: v})
            if col.type == ColumnType.FLOAT:
                lo, hi = (col.min if col.min is not None else -math.inf), (col.max if col.max is not None else math.inf)
                # zero, tiny and fractional values: where log1p, ratios and rounding differ
                for tag, v in (("zero", 0.0), ("tiny", 1e-9), ("fraction", 0.3), ("negative_tiny", -1e-9)):
                    if lo <= v <= hi:
                        variant(f"{tag}_{name}", j, **{name: v})
    if spec.entity_key in names:
        variant("new_entity", 0, **{spec.entity_key: NEW_ENTITY if spec.columns[spec.entity_key].type != ColumnType.INT
                                    else synthetic_key(spec.entity_key, 0, "entity")})
    if spec.event_time and spec.features.history:
        # Entities with the most events: ties and window edges are then non-trivial.
        counts = ordered[spec.entity_key].value_counts(sort=True)
        busy = [e for e in counts.index[:4].tolist() if counts[e] > 1]
        windows = sorted({float(h.window_days) for h in spec.features.history if h.window_days})
        for k, entity in enumerate(busy):
            rows = ordered[ordered[spec.entity_key] == entity].sort_values(spec.event_time, kind="stable")
            last = rows.iloc[-1]
            t_last = pd.Timestamp(last[spec.event_time])
            cases: list[tuple[str, pd.Timestamp, bool]] = [
                ("same_time", t_last, False), ("just_after", t_last + _US, False),
                ("same_time_live", t_last, True), ("just_after_live", t_last + _US, True)]
            cases += [(f"window_{w:g}d_{side}", t_last + pd.Timedelta(days=w) + d, False)
                      for w in windows for side, d in (("edge", pd.Timedelta(0)), ("inside", -_US), ("out", _US))]
            if spec.source.ingestion_time:  # the event known exactly at the row's time, or a microsecond later
                known = pd.Timestamp(last[spec.source.ingestion_time])
                if known > t_last:
                    cases += [("known_at_edge", known, False), ("known_just_after", known - _US, False)]
            for tag, t, as_live in cases:
                variant(f"{tag}_{k}", k, as_live=as_live,
                        **{spec.entity_key: bases[0][spec.entity_key].__class__(entity)
                           if bases[0].get(spec.entity_key) is not None else entity,
                           spec.event_time: ft.iso_utc(t)})
    return out, live


def build(eval_frame: pd.DataFrame, spec: DatasetSpec, pipeline: Any, info: ft.VersionInfo, *,
          n: int = 64, seed: int = 0, pool: pd.DataFrame | None = None) -> dict[str, Any]:
    """The certificate: seeded evaluation rows, late-arrival rows and records built to cover every branch.

    ``pool`` is the whole feature version (history for late arrivals and coverage records);
    without it only the evaluation sample is certified.
    """
    rows = sample(eval_frame, spec, n, seed)
    features = spec.model_features
    late = eval_frame.iloc[:0]
    cov_records: list[dict[str, Any]] = []
    cov_live: list[bool] = []
    if pool is not None:
        late = late_arrival_rows(eval_frame, pool, spec)
        late = late[~late[spec.record_id].isin(rows[spec.record_id])]
        late = sample(late, spec, LATE_RECORDS, seed)
        cov_records, cov_live = coverage_records(pool, spec, seed)
    rows = pd.concat([rows, late], ignore_index=True) if len(late) else rows
    records = raw_records(rows, spec)
    model_inputs = rows[features]
    live = [False] * len(records)
    if cov_records and pool is not None:
        from shared.features import compute_online
        from shared.raw import RawDataError, normalize_records

        frame, problems = normalize_records(cov_records, spec)
        if problems:
            raise RawDataError(problems.items, row_label="coverage record", context="parity certificate")
        flags = np.asarray(cov_live, dtype=bool)
        # Either part can be empty (one row per entity: no record has a live history to cover).
        cov = pd.concat([compute_online(part.reset_index(drop=True), pool, spec, replay=replay)
                         for part, replay in ((frame[~flags], True), (frame[flags], False)) if len(part)],
                        ignore_index=True)
        order = [i for i in range(len(cov_records)) if not cov_live[i]] + [i for i in range(len(cov_records))
                                                                             if cov_live[i]]
        records = records + [cov_records[i] for i in order]
        live += [cov_live[i] for i in order]
        model_inputs = pd.concat([model_inputs, cov[features]], ignore_index=True)
    proba = rowwise.predict_proba(pipeline, model_inputs)
    return {
        "format": CERTIFICATE_FORMAT, "dataset": spec.name, "feature_version": info.version,
        "feature_checksum": info.checksum, "model_features": features,
        "classes": [c.item() if hasattr(c, "item") else c for c in getattr(pipeline, "classes_", [])],
        "records": records, "features": _json_features(model_inputs, features),
        "live": [i for i, flag in enumerate(live) if flag],
        "expected": np.asarray(proba, dtype=np.float64).tolist(),
        "preprocessed_sha256": preprocessed_digest(pipeline, model_inputs),
        "coverage": {"sampled": int(len(rows) - len(late)), "late_arrivals": int(len(late)),
                     "constructed": len(cov_records), "live": int(sum(live))},
    }


def preprocessed_digest(pipeline: Any, model_inputs: pd.DataFrame) -> str | None:
    """sha256 of the matrix the estimator sees (the pipeline up to its last step), bit for bit.

    The model-input caster and the encoders run inside the model pipeline, with the serving
    process's ``shared`` code: a change there (the missing-category marker, say) may not move
    this model's outputs today, yet it changes what the model is fed. NaN is written canonically.
    """
    if not hasattr(pipeline, "steps") or len(pipeline.steps) < 2:
        return None
    import hashlib

    Z = np.ascontiguousarray(np.asarray(pipeline[:-1].transform(model_inputs), dtype=np.float64))
    Z = np.where(np.isnan(Z), np.float64(np.nan), Z)
    return hashlib.sha256(Z.tobytes()).hexdigest()


@dataclass
class RecordDiff:
    index: int
    record_id: str
    fields: list[dict[str, Any]] = field(default_factory=list)
    max_abs_diff: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Verdict:
    passed: bool
    checked: int
    differing: int = 0
    max_abs_diff: float = 0.0
    first: list[RecordDiff] = field(default_factory=list)
    error: str | None = None
    coverage: dict[str, int] = field(default_factory=dict)  # sampled / late_arrivals / constructed records

    def summary(self) -> str:
        if self.error:
            if self.checked:
                return f"parity certificate FAILED: {self.error}"
            return f"parity certificate could not be checked: {self.error}"
        if self.passed:
            return f"parity certificate passed: {self.checked} records identical bit for bit"
        ids = ", ".join(d.record_id for d in self.first[:5])
        fields = sorted({f["field"] for d in self.first for f in d.fields})
        where = f"; fields: {', '.join(fields[:8])}" if fields else ""
        return (f"parity certificate FAILED: {self.differing} of {self.checked} records differ "
                f"(max output |diff| {self.max_abs_diff:.3g}{where}; first: {ids})")

    def as_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "checked": self.checked, "differing": self.differing,
                "max_abs_diff": self.max_abs_diff, "error": self.error, "summary": self.summary(),
                "coverage": dict(self.coverage),
                "first_differences": [d.as_dict() for d in self.first]}


def _same(a: Any, b: Any) -> bool:
    if a is None or (isinstance(a, float) and math.isnan(a)):
        return b is None or (isinstance(b, float) and math.isnan(b))
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(b, (int, float)) and isinstance(a, (int, float)) and float(a) == float(b) \
            and math.copysign(1.0, float(a)) == math.copysign(1.0, float(b))
    return bool(a == b)


def verify(cert: dict[str, Any], online: Callable[[list[dict[str, Any]], int, bool], pd.DataFrame],
           predict_proba: Callable[[pd.DataFrame], np.ndarray], spec: DatasetSpec, *, show: int = 10,
           preprocess: Callable[[pd.DataFrame], Any] | None = None) -> Verdict:
    """Run the certificate's raw records through ``online`` and compare with the batch results.

    ``online(records, feature_version, replay)`` must return the model-input frame the
    serving path computes for those records: ``replay=True`` as of each record's time (rows
    of the feature table, most constructed records), ``False`` as a live request (the
    certificate's ``live`` records). ``preprocess`` (the model pipeline up to its estimator)
    is compared with the certified digest of what the estimator was fed.
    """
    if cert.get("format") != CERTIFICATE_FORMAT:
        return Verdict(False, 0, error=f"unknown certificate format {cert.get('format')!r}")
    records, expected = cert["records"], np.asarray(cert["expected"], dtype=np.float64)
    features = cert["model_features"]
    version = int(cert["feature_version"])
    live = {int(i) for i in cert.get("live") or []}
    replayed = [i for i in range(len(records)) if i not in live]
    live_idx = sorted(live)
    parts = [online([records[i] for i in replayed], version, True)] if replayed else []
    if live_idx:
        parts.append(online([records[i] for i in live_idx], version, False))
    feats = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    position = {orig: k for k, orig in enumerate(replayed + live_idx)}
    feats = feats.iloc[[position[i] for i in range(len(records))]].reset_index(drop=True)
    got = np.asarray(predict_proba(feats[features]), dtype=np.float64)
    if got.shape != expected.shape:
        return Verdict(False, len(records), len(records), math.inf,
                       error=f"output shape {got.shape} differs from certified {expected.shape}")
    # A record passes only if its model inputs AND outputs are bit-identical: a drift too
    # small to move this model's outputs today is still a broken parity promise.
    online_rows = feats[features].to_dict(orient="records")
    field_diffs: list[list[dict[str, Any]]] = []
    for i in range(len(records)):
        fields = []
        for name in features:
            want, have = cert["features"][i].get(name), online_rows[i].get(name)
            if not _same(want, have):
                fields.append({"field": name, "certified": want,
                               "online": None if isinstance(have, float) and math.isnan(have) else have})
        field_diffs.append(fields)
    row_diff = np.array([bool(field_diffs[i]) or not np.array_equal(got[i], expected[i])
                         for i in range(len(records))])
    abs_diff = np.abs(got - expected)
    verdict = Verdict(not row_diff.any(), len(records), int(row_diff.sum()),
                      float(np.nanmax(abs_diff)) if abs_diff.size else 0.0,
                      coverage={k: int(v) for k, v in (cert.get("coverage") or {}).items()})
    for i in np.flatnonzero(row_diff)[:show]:
        verdict.first.append(RecordDiff(int(i), str(records[i].get(spec.record_id)), field_diffs[i],
                                        float(abs_diff[i].max())))
    digest = cert.get("preprocessed_sha256")
    if verdict.passed and digest and preprocess is not None:
        Z = np.ascontiguousarray(np.asarray(preprocess(feats[features]), dtype=np.float64))
        Z = np.where(np.isnan(Z), np.float64(np.nan), Z)
        import hashlib

        if hashlib.sha256(Z.tobytes()).hexdigest() != digest:
            verdict.passed = False
            verdict.error = ("the model pipeline feeds its estimator other values than at training on the same "
                             "model inputs (preprocessed-matrix digest differs): the model-input casting or "
                             "encoding code changed")
    return verdict
