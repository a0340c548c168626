"""The model pipeline: shared caster -> preprocessing -> the spec's estimator."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from sklearn.base import is_classifier
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from shared.spec import DatasetSpec
from shared.transformers import ModelInputCaster


def estimator_class(path: str) -> type:
    module, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"model.estimator.class {path!r} cannot be imported: {exc}") from exc
    if not inspect.isclass(cls):
        raise ValueError(f"model.estimator.class {path!r} is not a class")
    return cls


def make_estimator(spec: DatasetSpec) -> Any:
    cls = estimator_class(spec.model.estimator.class_path)
    params = dict(spec.model.estimator.params)
    try:
        est = cls(**params)
    except TypeError as exc:
        raise ValueError(f"model.estimator.params do not fit {cls.__name__}: {exc}") from exc
    if not is_classifier(est) or not hasattr(est, "predict_proba"):
        raise ValueError(f"{spec.model.estimator.class_path} is not a classifier with predict_proba")
    if "random_state" in est.get_params() and "random_state" not in params:
        est.set_params(random_state=spec.model.seed)
    return est


def build_pipeline(spec: DatasetSpec) -> Pipeline:
    features = spec.model_features
    numeric = [f for f in features if spec.feature_kind(f) == "numeric"]
    categorical = [f for f in features if spec.feature_kind(f) == "categorical"]
    transformers: list[tuple[str, Any, list[str]]] = []
    if numeric:
        transformers.append(("numeric", Pipeline([
            ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
            ("scale", StandardScaler()),
        ]), numeric))
    if categorical:
        transformers.append(("categorical", OneHotEncoder(handle_unknown="ignore", sparse_output=False,
                                                          min_frequency=5), categorical))
    pipe = Pipeline([
        ("cast", ModelInputCaster(numeric=numeric, categorical=categorical)),
        ("preprocess", ColumnTransformer(transformers, remainder="drop", verbose_feature_names_out=True)),
        ("model", make_estimator(spec)),
    ])
    return pipe.set_output(transform="pandas")
