"""Read one feature version and split it deterministically."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from shared import feature_table as ft
from shared.spec import DatasetSpec


@dataclass(frozen=True)
class Dataset:
    version: ft.VersionInfo
    train: pd.DataFrame
    test: pd.DataFrame
    X_train: pd.DataFrame
    y_train: np.ndarray
    X_test: pd.DataFrame
    y_test: np.ndarray
    unlabeled: int = 0  # rows of the version without a label yet (kept in the version, not trained on)


def labels(frame: pd.DataFrame, spec: DatasetSpec) -> np.ndarray:
    """Label column -> regression: float64; classification: int64 when every value is integral, else str."""
    col = frame[spec.label]
    if col.isna().any():  # prepare() drops them first: reaching here is a bug, not a data problem
        raise ValueError(f"label {spec.label!r} is missing in {int(col.isna().sum())} rows of a labeled split")
    if spec.model.task == "regression":
        return col.to_numpy(dtype=np.float64)
    if col.dtype.kind == "f" and np.all(np.floor(col.to_numpy()) == col.to_numpy()):
        return col.to_numpy().astype(np.int64)
    return col.astype(str).to_numpy(dtype=object)


def split(frame: pd.DataFrame, spec: DatasetSpec) -> tuple[pd.DataFrame, pd.DataFrame]:
    method, size, seed = spec.model.split.method, spec.model.split.test_size, spec.model.seed
    frame = frame.sort_values(spec.record_id, kind="stable").reset_index(drop=True)
    if method == "time":
        if not spec.event_time:
            raise ValueError("split.method 'time' needs an event_time column; use 'stratified' or 'random'")
        ordered = frame.sort_values([spec.event_time, spec.record_id], kind="stable")
        n_test = max(1, int(round(len(ordered) * size)))
        return ordered.iloc[:-n_test].reset_index(drop=True), ordered.iloc[-n_test:].reset_index(drop=True)
    stratify = labels(frame, spec) if method == "stratified" else None
    train, test = train_test_split(frame, test_size=size, random_state=seed, stratify=stratify)
    return train.reset_index(drop=True), test.reset_index(drop=True)


def load(engine, spec: DatasetSpec, version: int | None) -> Dataset:  # type: ignore[no-untyped-def]
    info = ft.get_version(engine, spec.name, version)
    return prepare(ft.read_version(engine, spec, info.version), spec, info)


def prepare(frame: pd.DataFrame, spec: DatasetSpec, info: ft.VersionInfo) -> Dataset:
    """A feature version's canonical rows -> the deterministic split (``fti train`` and ``fti reproduce``).

    Rows whose label has not arrived yet (a nullable label, missing) stay in the feature version --
    they are what serving sees -- but are not trained or evaluated on; ``unlabeled`` counts them."""
    missing = frame[spec.label].isna()
    unlabeled = int(missing.sum())
    if unlabeled == len(frame):
        raise ValueError(f"feature version {info.version} of {spec.name!r} has no labeled rows: all {len(frame)} "
                         f"have no {spec.label!r} yet; build a version once labels have arrived")
    if unlabeled:
        frame = frame.loc[~missing.to_numpy()].reset_index(drop=True)
    train, test = split(frame, spec)
    y_train, y_test = labels(train, spec), labels(test, spec)
    if len(np.unique(y_train)) < 2:
        what = "a single value" if spec.model.task == "regression" else "a single class"
        raise ValueError(f"the training split of version {info.version} holds {what}; "
                         "more data or another split is needed")
    cols = spec.model_features
    return Dataset(info, train, test, train[cols], y_train, test[cols], y_test, unlabeled)
