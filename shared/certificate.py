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
from shared.spec import ColumnType, DatasetSpec

CERTIFICATE_FORMAT = 1
CERTIFICATE_FILE = "certificate.json"


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


def build(eval_frame: pd.DataFrame, spec: DatasetSpec, pipeline: Any, info: ft.VersionInfo, *,
          n: int = 64, seed: int = 0) -> dict[str, Any]:
    rows = sample(eval_frame, spec, n, seed)
    features = spec.model_features
    proba = pipeline.predict_proba(rows[features])
    return {
        "format": CERTIFICATE_FORMAT, "dataset": spec.name, "feature_version": info.version,
        "feature_checksum": info.checksum, "model_features": features,
        "classes": [c.item() if hasattr(c, "item") else c for c in pipeline.classes_],
        "records": raw_records(rows, spec), "features": _json_features(rows, features),
        "expected": np.asarray(proba, dtype=np.float64).tolist(),
    }


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

    def summary(self) -> str:
        if self.error:
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
                "first_differences": [d.as_dict() for d in self.first]}


def _same(a: Any, b: Any) -> bool:
    if a is None or (isinstance(a, float) and math.isnan(a)):
        return b is None or (isinstance(b, float) and math.isnan(b))
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(b, (int, float)) and isinstance(a, (int, float)) and float(a) == float(b) \
            and math.copysign(1.0, float(a)) == math.copysign(1.0, float(b))
    return bool(a == b)


def verify(cert: dict[str, Any], online: Callable[[list[dict[str, Any]], int], pd.DataFrame],
           predict_proba: Callable[[pd.DataFrame], np.ndarray], spec: DatasetSpec, *, show: int = 10) -> Verdict:
    """Run the certificate's raw records through ``online`` and compare with the batch results.

    ``online(records, feature_version)`` must return the model-input frame the
    serving path computes for those records.
    """
    if cert.get("format") != CERTIFICATE_FORMAT:
        return Verdict(False, 0, error=f"unknown certificate format {cert.get('format')!r}")
    records, expected = cert["records"], np.asarray(cert["expected"], dtype=np.float64)
    features = cert["model_features"]
    feats = online(records, int(cert["feature_version"]))
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
                      float(np.nanmax(abs_diff)) if abs_diff.size else 0.0)
    for i in np.flatnonzero(row_diff)[:show]:
        verdict.first.append(RecordDiff(int(i), str(records[i].get(spec.record_id)), field_diffs[i],
                                        float(abs_diff[i].max())))
    return verdict
