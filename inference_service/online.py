"""The online path: raw JSON records -> canonical frame -> features -> probabilities.

History comes from the latest committed feature version, as of each record's
event time (strictly earlier events only), through ``shared`` -- the same code
the feature job ran.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy.engine import Engine

from inference_service import scoring
from shared import feature_table as ft
from shared.features import compute_online
from shared.raw import RawDataError, frame_from_arrays, normalize_records, record_arrays
from shared.spec import DatasetSpec


@dataclass
class Scored:
    """What a request scored. ``records`` (the canonical frame) is built on first use when the
    numpy online path served: the prediction log's thread needs it, the request path does not."""

    _records: pd.DataFrame | None
    features: pd.DataFrame | None  # None when the numpy online path computed them
    proba: np.ndarray
    feature_version: int | None
    arrays: dict[str, np.ndarray] | None = None
    spec: DatasetSpec | None = None

    @property
    def records(self) -> pd.DataFrame:
        if self._records is None:
            assert self.arrays is not None and self.spec is not None
            self._records = frame_from_arrays(self.arrays, len(self.proba), self.spec)
        return self._records

    def column(self, name: str) -> list[Any]:
        if self._records is None and self.arrays is not None:
            return list(self.arrays[name])
        return self.records[name].tolist()


def history_events(engine: Engine, spec: DatasetSpec, version: int | None, records: pd.DataFrame) -> pd.DataFrame:
    if not spec.features.history or version is None:
        return records.iloc[:0]
    before = records[spec.event_time].max()
    return ft.read_history(engine, spec, version, records[spec.entity_key].tolist(), before)


def latest_version(engine: Engine, spec: DatasetSpec) -> int | None:
    if not spec.features.history:
        return None
    return ft.get_version(engine, spec.name).version


def features_for(records: pd.DataFrame, spec: DatasetSpec, engine: Engine, version: int | None, *,
                 replay: bool = False) -> pd.DataFrame:
    return compute_online(records, history_events(engine, spec, version, records), spec, replay=replay)


def score(raw_records: list[Any], spec: DatasetSpec, engine: Engine, model: Any, fast: Any = None) -> Scored:
    """``fast``: a verified :class:`inference_service.online_fast.OnlineFeatures` for this model's inputs."""
    if fast is not None and fast.features == list(model.features):
        arrays, problems = record_arrays(raw_records, spec)
        if problems:
            raise RawDataError(problems.items, row_label="record", context="request")
        proba = scoring.predict_columns(model, fast.columns(arrays), len(raw_records))
        return Scored(None, None, proba, fast.status.get("feature_version"), arrays, spec)
    records, problems = normalize_records(raw_records, spec)
    if problems:
        raise RawDataError(problems.items, row_label="record", context="request")
    version = latest_version(engine, spec)
    feats = features_for(records, spec, engine, version)
    return Scored(records, feats, scoring.predict_proba(model, feats), version)


def certificate_features(records: list[Any], spec: DatasetSpec, engine: Engine, version: int, *,
                         replay: bool = True) -> pd.DataFrame:
    """The online path for recorded records: history from the given feature version.

    ``replay=True`` (certificate records: rows of the feature table) sees what was
    known at each record's time, as the feature job did; ``replay=False`` (a logged
    live prediction) sees the whole version, as the live request did.
    """
    frame, problems = normalize_records(records, spec)
    if problems:
        raise RawDataError(problems.items, row_label="certificate record", context="parity certificate")
    return features_for(frame, spec, engine, version if spec.features.history else None, replay=replay)
