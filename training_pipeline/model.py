"""The model pipeline: shared caster -> preprocessing -> the spec's estimator."""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.base import is_classifier, is_regressor
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, RobustScaler, StandardScaler
from sklearn.utils import get_tags

from shared.spec import DatasetSpec, PreprocessingSpec
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
    if spec.model.task == "regression":
        if not is_regressor(est):
            raise ValueError(f"{spec.model.estimator.class_path} is not a regressor: model.task is 'regression' "
                             "(e.g. sklearn.ensemble.HistGradientBoostingRegressor)")
    elif not is_classifier(est) or not hasattr(est, "predict_proba"):
        hint = "; for a numeric target set model.task: regression" if is_regressor(est) else ""
        raise ValueError(f"{spec.model.estimator.class_path} is not a classifier with predict_proba{hint}")
    if "random_state" in est.get_params() and "random_state" not in params:
        est.set_params(random_state=spec.model.seed)
    return est


TREE_MODULES = ("sklearn.ensemble.", "sklearn.tree.", "xgboost.", "lightgbm.")  # scale-invariant estimators


@dataclass(frozen=True)
class NumericSteps:
    impute: str  # none | median | mean | most_frequent | constant
    fill_value: float | None
    scale: str  # none | standard | robust


@dataclass(frozen=True)
class CategoricalSteps:
    encode: str  # onehot | ordinal | native
    min_frequency: int | None


def resolve_preprocessing(spec: DatasetSpec, estimator: Any) -> dict[str, NumericSteps | CategoricalSteps]:
    """Each model feature's preprocessing, ``auto`` resolved (see :class:`shared.spec.PreprocessingSpec`)."""
    prep = spec.model.preprocessing or PreprocessingSpec()
    legacy = spec.spec_version == 1
    path = spec.model.estimator.class_path
    trees = path.startswith(TREE_MODULES)
    allow_nan = bool(get_tags(estimator).input_tags.allow_nan)

    def impute(v: str) -> str:
        return v if v != "auto" else "median" if legacy or not allow_nan else "none"

    def scale(v: str) -> str:
        return v if v != "auto" else "standard" if legacy or not trees else "none"

    def encode(v: str) -> str:
        if v != "auto":
            return v
        if legacy or not trees:
            return "onehot"
        return "native" if "HistGradientBoosting" in path else "ordinal"

    out: dict[str, NumericSteps | CategoricalSteps] = {}
    for name in spec.model_features:
        col = prep.columns.get(name)
        if spec.feature_kind(name) == "numeric":
            imp = impute(col.impute if col is not None and col.impute is not None else prep.numeric.impute)
            fill = (col.fill_value if col is not None and col.fill_value is not None
                    else prep.numeric.fill_value if col is None or col.impute is None else None)
            out[name] = NumericSteps(imp, fill if imp == "constant" else None,
                                     scale(col.scale if col is not None and col.scale is not None
                                           else prep.numeric.scale))
        else:
            enc = encode(col.encode if col is not None and col.encode is not None else prep.categorical.encode)
            mf = col.min_frequency if col is not None and col.min_frequency is not None \
                else prep.categorical.min_frequency
            if mf is None and enc == "onehot":
                mf = 5
            out[name] = CategoricalSteps(enc, mf if enc != "native" else None)
    refuse_nan = [n for n, s in out.items() if isinstance(s, NumericSteps) and s.impute == "none"
                  and not _never_missing(spec, n)]
    if refuse_nan and not allow_nan:
        raise ValueError(f"model.preprocessing: impute 'none' leaves missing values in {refuse_nan[:5]}, and "
                         f"{path.rsplit('.', 1)[-1]} does not accept missing values: choose an imputation "
                         "(median, mean, most_frequent or constant)")
    return out


def _never_missing(spec: DatasetSpec, name: str) -> bool:
    col = spec.columns.get(name)
    return col is not None and not col.nullable


def _numeric_transformer(steps: NumericSteps) -> Any:
    parts: list[tuple[str, Any]] = []
    if steps.impute != "none":
        kwargs: dict[str, Any] = {"fill_value": steps.fill_value} if steps.impute == "constant" else {}
        parts.append(("impute", SimpleImputer(strategy=steps.impute, keep_empty_features=True, **kwargs)))
    if steps.scale == "standard":
        parts.append(("scale", StandardScaler()))
    elif steps.scale == "robust":
        parts.append(("scale", RobustScaler()))
    # Neither: an identity step. Not ColumnTransformer's "passthrough", whose fitted form holds a
    # functools.partial that fti's model-file allow-list refuses (shared.model_file builds no callable).
    return Pipeline(parts or [("as_is", StandardScaler(with_mean=False, with_std=False))])


def _categorical_transformer(steps: CategoricalSteps, estimator: Any) -> Any:
    if steps.encode == "onehot":
        return OneHotEncoder(handle_unknown="ignore", sparse_output=False, min_frequency=steps.min_frequency)
    if steps.encode == "ordinal":  # an unseen category: -1, below every code
        return OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1,
                              min_frequency=steps.min_frequency)
    # native: codes for HistGradientBoosting's own categorical splits; unseen -> NaN (its missing bin);
    # at most max_bins codes (rarer categories share the infrequent one).
    return OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=np.nan,
                          max_categories=int(getattr(estimator, "max_bins", 255)))


def build_pipeline(spec: DatasetSpec) -> Pipeline:
    """caster -> ColumnTransformer (one block per distinct preprocessing, in feature order) -> estimator.

    With the defaults of ``spec_version: 1`` this is exactly fti's original pipeline (blocks
    ``numeric`` and ``categorical``), so models trained before ``model.preprocessing`` reproduce."""
    features = spec.model_features
    numeric = [f for f in features if spec.feature_kind(f) == "numeric"]
    categorical = [f for f in features if spec.feature_kind(f) == "categorical"]
    estimator = make_estimator(spec)
    resolved = resolve_preprocessing(spec, estimator)
    groups: dict[NumericSteps | CategoricalSteps, list[str]] = {}
    for name in numeric + categorical:
        groups.setdefault(resolved[name], []).append(name)
    transformers: list[tuple[str, Any, list[str]]] = []
    native_out: list[str] = []
    counts = {"numeric": 0, "categorical": 0}
    for steps, cols in groups.items():
        kind = "numeric" if isinstance(steps, NumericSteps) else "categorical"
        counts[kind] += 1
        name = kind if counts[kind] == 1 else f"{kind}_{counts[kind]}"
        if isinstance(steps, NumericSteps):
            transformers.append((name, _numeric_transformer(steps), cols))
        else:
            transformers.append((name, _categorical_transformer(steps, estimator), cols))
            if steps.encode == "native":
                native_out.extend(f"{name}__{c}" for c in cols)
    if native_out:
        given = spec.model.estimator.params.get("categorical_features")
        if given not in (None, "from_dtype"):
            raise ValueError("model.estimator.params.categorical_features is set, and model.preprocessing encodes "
                             "categories natively (which sets it): remove one of the two")
        estimator.set_params(categorical_features=native_out)
    pipe = Pipeline([
        ("cast", ModelInputCaster(numeric=numeric, categorical=categorical)),
        ("preprocess", ColumnTransformer(transformers, remainder="drop", verbose_feature_names_out=True)),
        ("model", estimator),
    ])
    return pipe.set_output(transform="pandas")
