"""The dataset spec: one YAML file describes a dataset, its features and its model.

A user brings their own tabular data by writing a spec; no code changes. The
spec is validated by pydantic and versioned by a content hash of its canonical
form (comments and key order do not change the hash; any value does).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SPEC_FORMAT_VERSION = 1
ALLOWED_ESTIMATOR_MODULES = ("sklearn.", "xgboost.", "lightgbm.")

_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class SpecError(ValueError):
    """The spec file is missing, unreadable or invalid; the message says what to fix."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnType(StrEnum):
    """Logical type of a raw column. Model-facing dtypes follow from it.

    ``int``, ``float`` and ``bool`` become float64 (missing -> NaN),
    ``category`` and ``string`` become object columns of ``str`` (missing -> NaN),
    ``timestamp`` becomes UTC ``datetime64[us]``.
    """

    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    CATEGORY = "category"
    STRING = "string"
    TIMESTAMP = "timestamp"

    @property
    def is_numeric(self) -> bool:
        return self in (ColumnType.INT, ColumnType.FLOAT, ColumnType.BOOL)

    @property
    def is_text(self) -> bool:
        return self in (ColumnType.CATEGORY, ColumnType.STRING)


class ColumnSpec(_Model):
    type: ColumnType
    nullable: bool = True
    min: float | None = None
    max: float | None = None
    max_length: int = Field(default=256, ge=1, le=65536)
    # ``False`` keeps the column in the feature table (e.g. as input of a history
    # aggregate) without feeding it to the model.
    feature: bool = True
    description: str | None = None

    @model_validator(mode="after")
    def _bounds_fit_type(self) -> ColumnSpec:
        if (self.min is not None or self.max is not None) and not self.type.is_numeric:
            raise ValueError("min/max apply to int, float and bool columns only")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


class SourceSpec(_Model):
    """Where the raw data lives. Relative paths resolve against the spec file's folder.

    ``path``, ``url`` and ``query`` may reference environment variables as
    ``${VAR}`` or ``${VAR:-default}`` so credentials never live in the spec.
    """

    format: Literal["csv", "parquet", "sql"]
    path: str | None = None
    url: str | None = None
    table: str | None = None
    query: str | None = None
    # Optional column holding when each row became known to the source. With it,
    # ``--as-of`` also excludes rows ingested after the cutoff (late arrivals).
    ingestion_time: str | None = None

    @model_validator(mode="after")
    def _one_location(self) -> SourceSpec:
        if self.format in ("csv", "parquet"):
            if not self.path:
                raise ValueError(f"a {self.format} source needs 'path'")
            if self.url or self.table or self.query:
                raise ValueError(f"a {self.format} source takes 'path' only, not url/table/query")
        else:
            if not self.url:
                raise ValueError("a sql source needs 'url' (an SQLAlchemy URL, e.g. ${SOURCE_URL})")
            if bool(self.table) == bool(self.query):
                raise ValueError("a sql source needs exactly one of 'table' or 'query'")
            if self.path:
                raise ValueError("a sql source takes url + table/query, not 'path'")
        return self


class DerivedOp(StrEnum):
    RATIO = "ratio"  # inputs[0] / inputs[1]; NaN when the denominator is 0 or missing
    DIFF = "diff"  # inputs[0] - inputs[1]
    PRODUCT = "product"  # inputs[0] * inputs[1]
    LOG1P = "log1p"  # log(1 + x); NaN for x <= -1
    IS_MISSING = "is_missing"  # 1.0 when the input is missing, else 0.0
    HOUR = "hour"  # hour of a timestamp (UTC)
    DAY_OF_WEEK = "day_of_week"  # Monday=0 (UTC)
    MONTH = "month"


_DERIVED_ARITY = {
    DerivedOp.RATIO: 2,
    DerivedOp.DIFF: 2,
    DerivedOp.PRODUCT: 2,
    DerivedOp.LOG1P: 1,
    DerivedOp.IS_MISSING: 1,
    DerivedOp.HOUR: 1,
    DerivedOp.DAY_OF_WEEK: 1,
    DerivedOp.MONTH: 1,
}
_TIME_OPS = {DerivedOp.HOUR, DerivedOp.DAY_OF_WEEK, DerivedOp.MONTH}


class DerivedFeature(_Model):
    name: Annotated[str, Field(pattern=_NAME)]
    op: DerivedOp
    inputs: list[str] = Field(min_length=1, max_length=2)

    @model_validator(mode="after")
    def _arity(self) -> DerivedFeature:
        want = _DERIVED_ARITY[self.op]
        if len(self.inputs) != want:
            raise ValueError(f"op '{self.op}' takes {want} input(s), got {len(self.inputs)}")
        return self


class HistoryOp(StrEnum):
    COUNT = "count"  # number of earlier events
    SUM = "sum"
    MEAN = "mean"
    MAX = "max"
    MIN = "min"
    DAYS_SINCE_LAST = "days_since_last"  # days since the latest earlier event; NaN if none


class HistoryFeature(_Model):
    """An aggregate over the same entity's events strictly before the row's event time."""

    name: Annotated[str, Field(pattern=_NAME)]
    op: HistoryOp
    input: str | None = None
    window_days: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _input_needed(self) -> HistoryFeature:
        needs_input = self.op in (HistoryOp.SUM, HistoryOp.MEAN, HistoryOp.MAX, HistoryOp.MIN)
        if needs_input and not self.input:
            raise ValueError(f"history op '{self.op}' needs 'input'")
        if not needs_input and self.input:
            raise ValueError(f"history op '{self.op}' takes no 'input'")
        return self


class FeaturesSpec(_Model):
    derived: list[DerivedFeature] = Field(default_factory=list)
    history: list[HistoryFeature] = Field(default_factory=list)


class EstimatorSpec(_Model):
    """A scikit-learn compatible classifier, by dotted class path, and its parameters."""

    class_path: str = Field(alias="class", pattern=r"^[A-Za-z_][\w.]*\.[A-Za-z_]\w*$")

    @field_validator("class_path")
    @classmethod
    def _known_library(cls, v: str) -> str:
        # The spec is data, not code: only estimator libraries may be named here.
        if not v.startswith(ALLOWED_ESTIMATOR_MODULES):
            raise ValueError(f"estimator class must come from one of {', '.join(ALLOWED_ESTIMATOR_MODULES)}")
        return v
    params: dict[str, Any] = Field(default_factory=dict)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class SplitSpec(_Model):
    """Deterministic train/evaluation split.

    ``time``: the latest ``test_size`` fraction by event time is the evaluation
    set (ties broken by record id). ``stratified``: a seeded stratified split.
    """

    method: Literal["time", "stratified", "random"] = "time"
    test_size: float = Field(default=0.25, gt=0, lt=1)


PrimaryMetric = Literal["roc_auc", "average_precision", "log_loss", "f1", "accuracy", "rmse", "mae", "r2"]
REGRESSION_METRICS = frozenset({"rmse", "mae", "r2"})


class DecisionSpec(_Model):
    """Binary labels: how training chooses the score threshold above which a record is the positive class
    (:mod:`shared.decision`). Without it the decision is argmax (a threshold of 0.5).

    ``f_beta``: the best F-beta (``beta`` > 1 weighs recall more). ``precision`` / ``recall``: reach
    ``target`` with the best recall / precision. ``cost``: the least expected cost given
    ``false_positive_cost`` and ``false_negative_cost``. ``top_k``: flag the ``top_k`` share of records
    with the highest scores (a review capacity)."""

    objective: Literal["f_beta", "precision", "recall", "cost", "top_k"]
    beta: float | None = Field(default=None, gt=0, le=100)
    target: float | None = Field(default=None, gt=0, le=1)
    false_positive_cost: float | None = Field(default=None, ge=0, le=1e12)
    false_negative_cost: float | None = Field(default=None, ge=0, le=1e12)
    top_k: float | None = Field(default=None, gt=0, le=1)

    @model_validator(mode="after")
    def _settings_match_objective(self) -> DecisionSpec:
        wanted = {"f_beta": {"beta"}, "precision": {"target"}, "recall": {"target"},
                  "cost": {"false_positive_cost", "false_negative_cost"}, "top_k": {"top_k"}}[self.objective]
        given = {k for k in ("beta", "target", "false_positive_cost", "false_negative_cost", "top_k")
                 if getattr(self, k) is not None}
        optional = {"beta"}  # f_beta defaults to beta 1 (F1)
        missing = sorted(wanted - given - optional)
        extra = sorted(given - wanted)
        problems = []
        if missing:
            problems.append(f"objective {self.objective!r} needs {', '.join(missing)}")
        if extra:
            problems.append(f"{', '.join(extra)} does not apply to objective {self.objective!r}")
        if self.objective == "cost" and not missing and not (self.false_positive_cost or self.false_negative_cost):
            problems.append("at least one of false_positive_cost and false_negative_cost must be above 0")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def policy(self) -> dict[str, Any]:
        """The settings :mod:`shared.decision` reads (``beta`` filled in)."""
        out: dict[str, Any] = {k: v for k, v in self.model_dump().items() if v is not None}
        if self.objective == "f_beta":
            out.setdefault("beta", 1.0)
        return out


Impute = Literal["auto", "none", "median", "mean", "most_frequent", "constant"]
Scale = Literal["auto", "none", "standard", "robust"]
Encode = Literal["auto", "onehot", "ordinal", "native"]


class NumericPrep(_Model):
    """How numeric model inputs (float64, NaN for missing) are prepared for the estimator."""

    impute: Impute = "auto"
    fill_value: float | None = None  # impute: constant
    scale: Scale = "auto"


class CategoricalPrep(_Model):
    """How categorical model inputs (strings; a missing value is a category of its own) are encoded."""

    encode: Encode = "auto"
    # onehot / ordinal: categories seen fewer times in training share one "infrequent" code
    min_frequency: int | None = Field(default=None, ge=1)


class ColumnPrep(_Model):
    """Per-column override of :class:`NumericPrep` or :class:`CategoricalPrep` (unset: the type's setting)."""

    impute: Impute | None = None
    fill_value: float | None = None
    scale: Scale | None = None
    encode: Encode | None = None
    min_frequency: int | None = Field(default=None, ge=1)


class PreprocessingSpec(_Model):
    """``model.preprocessing``: the steps between the model-input caster and the estimator.

    ``auto`` resolves in :mod:`training_pipeline.model`: with ``spec_version: 1`` to fti's original
    fixed steps (median, standard scaling, one-hot with ``min_frequency`` 5), so that every model
    trained before reproduces; with ``spec_version: 2`` to what suits the estimator (no imputation
    for one that accepts NaN, no scaling before trees, native categories for HistGradientBoosting)."""

    numeric: NumericPrep = Field(default_factory=NumericPrep)
    categorical: CategoricalPrep = Field(default_factory=CategoricalPrep)
    columns: dict[str, ColumnPrep] = Field(default_factory=dict)


#: (section, key) -> default: settings added after the spec format shipped, left out of the content hash
#: while they hold their default.
_ADDED_LATER = {("model", "positive_class"): None, ("model", "repeats"): 1, ("model", "decision"): None,
                ("model", "preprocessing"): None, ("model", "task"): "classification"}


class ModelSpec(_Model):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,100}$")]
    # classification: a classifier with predict_proba (the label's classes); regression: a regressor
    # predicting a number (an int or float label).
    task: Literal["classification", "regression"] = "classification"
    estimator: EstimatorSpec
    # Feature-table columns fed to the model, in this order. Default: every raw
    # column marked ``feature: true`` (except key/time/label/record id), then the
    # derived features, then the history features.
    features: list[str] | None = None
    primary_metric: PrimaryMetric = "roc_auc"
    split: SplitSpec = Field(default_factory=SplitSpec)
    seed: int = Field(default=42, ge=0, le=2**32 - 1)
    # Binary labels: the class whose probability is the score and whose detection the metrics describe
    # (roc_auc, average_precision, f1, precision, recall, brier). Default: the last in sorted order.
    positive_class: str | int | bool | None = None
    # Fits with seeds seed, seed+1, ... on the same split, to report each metric's mean and standard
    # deviation (metrics ``repeats.<metric>.mean``/``.sd``); the registered model is the ``seed`` one.
    repeats: int = Field(default=1, ge=1, le=20)
    # Binary labels: the threshold rule chosen on the evaluation split (see DecisionSpec); default argmax.
    decision: DecisionSpec | None = None
    # The steps between the caster and the estimator; see PreprocessingSpec (unset: all ``auto``).
    preprocessing: PreprocessingSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _regression_metric_default(cls, data: Any) -> Any:
        """A regression spec that names no primary metric is scored by RMSE (roc_auc means nothing there)."""
        if isinstance(data, dict) and data.get("task") == "regression" and "primary_metric" not in data:
            return {**data, "primary_metric": "rmse"}
        return data

    @model_validator(mode="after")
    def _task_settings(self) -> ModelSpec:
        problems = []
        regression = self.task == "regression"
        if regression != (self.primary_metric in REGRESSION_METRICS):
            wanted = "rmse, mae or r2" if regression else "roc_auc, average_precision, log_loss, f1 or accuracy"
            problems.append(f"primary_metric {self.primary_metric!r} does not apply to task {self.task!r}: "
                            f"use {wanted}")
        if regression:
            for key in ("positive_class", "decision"):
                if getattr(self, key) is not None:
                    problems.append(f"model.{key} applies to classification; remove it for task 'regression'")
            if self.split.method == "stratified":
                problems.append("split.method 'stratified' needs classes; use 'random' or 'time' for regression")
        if problems:
            raise ValueError("; ".join(problems))
        return self


_PERIOD = r"^[1-9][0-9]{0,5}(s|min|h|D|W)$"  # a pandas fixed frequency: 30min, 6h, 1D, 2W


class RetrainSpec(_Model):
    """When the monitor retrains (any trigger), and what a candidate must pass (``docs/monitoring.md``)."""

    # Trigger: drift in at least ``drift_windows`` of the last ``of_last`` complete windows of the champion.
    drift_windows: int = Field(default=2, ge=1, le=100)
    of_last: int = Field(default=3, ge=1, le=100)
    # Trigger: at least this many served predictions have a label that training has not seen.
    min_new_labels: int | None = Field(default=None, ge=1)
    # Trigger: this long since the champion's training data was cut (log time), e.g. 7D.
    every: Annotated[str, Field(pattern=_PERIOD)] | None = None
    # No new retraining until this much log time after the last one (flapping guard).
    cooldown: Annotated[str, Field(pattern=_PERIOD)] = "1D"
    # Non-inferiority: the candidate may be worse than the champion by at most this (in the gate metric).
    margin: float = Field(default=0.0, ge=0.0, le=1.0)
    # Data-quality gate on the new feature version, before any training.
    min_rows: int = Field(default=200, ge=1)
    max_missing_rate: float = Field(default=0.5, gt=0.0, le=1.0)
    label_rate: tuple[float, float] | None = None  # binary labels: the positive share must lie in [lo, hi]


class MonitoringSpec(_Model):
    """How ``fti monitor`` cuts the prediction log into windows and when a window drifts."""

    window_rows: int | None = Field(default=5000, ge=1)
    window_period: Annotated[str, Field(pattern=_PERIOD)] | None = None  # set it (and window_rows: null)
    min_rows: int = Field(default=500, ge=1)  # below: "insufficient data"
    alpha: float = Field(default=0.01, gt=0.0, lt=1.0)  # false-discovery rate over a window's features
    min_psi: float = Field(default=0.02, ge=0.0)  # the smallest change worth an alarm
    # A window drifts when more than this share of its monitored features drift, or its prediction drifts.
    min_drift_share: float = Field(default=0.0, ge=0.0, lt=1.0)
    retrain: RetrainSpec | None = None

    @model_validator(mode="after")
    def _one_window(self) -> MonitoringSpec:
        if (self.window_rows is None) == (self.window_period is None):
            raise ValueError("monitoring: set exactly one of window_rows and window_period")
        return self


class DatasetSpec(_Model):
    """The whole spec file."""

    # 2: ``model.preprocessing: auto`` suits the estimator (1: fti's original fixed steps, for old specs)
    spec_version: Literal[1, 2] = 1
    name: Annotated[str, Field(pattern=_NAME)]
    description: str | None = None
    source: SourceSpec
    record_id: str
    entity_key: str
    event_time: str | None = None
    label: str
    columns: dict[str, ColumnSpec] = Field(min_length=1)
    features: FeaturesSpec = Field(default_factory=FeaturesSpec)
    model: ModelSpec
    # How the served model is watched (fti monitor); not part of what produced a model (not in its hash).
    monitoring: MonitoringSpec = Field(default_factory=MonitoringSpec)

    @field_validator("columns")
    @classmethod
    def _column_names(cls, value: dict[str, ColumnSpec]) -> dict[str, ColumnSpec]:
        for name in value:
            if not re.match(_NAME, name):
                raise ValueError(f"column name {name!r} must match {_NAME}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> DatasetSpec:
        errors: list[str] = []
        cols = self.columns

        def need(name: str, role: str, types: set[ColumnType] | None = None) -> None:
            if name not in cols:
                errors.append(f"{role} {name!r} is not declared under 'columns'")
            elif types is not None and cols[name].type not in types:
                allowed = ", ".join(sorted(t.value for t in types))
                errors.append(f"{role} {name!r} must have type {allowed}, not {cols[name].type}")

        keyish = {ColumnType.STRING, ColumnType.CATEGORY, ColumnType.INT}
        need(self.record_id, "record_id", keyish)
        need(self.entity_key, "entity_key", keyish)
        if self.event_time is not None:
            need(self.event_time, "event_time", {ColumnType.TIMESTAMP})
        if self.model.task == "regression":
            need(self.label, "label", {ColumnType.INT, ColumnType.FLOAT})
        elif self.label in cols and cols[self.label].type == ColumnType.FLOAT:
            errors.append(f"label {self.label!r} is a float: a classifier needs classes; set model.task: regression "
                          "to predict the number, or declare the label int, bool or category")
        else:
            need(self.label, "label", {ColumnType.INT, ColumnType.BOOL, ColumnType.CATEGORY, ColumnType.STRING})
        for role, name in (("record_id", self.record_id), ("entity_key", self.entity_key),
                           ("event_time", self.event_time)):
            if name in cols and cols[name].nullable:
                errors.append(f"{role} {name!r} must be declared 'nullable: false'")
        if self.source.ingestion_time is not None:
            need(self.source.ingestion_time, "source.ingestion_time", {ColumnType.TIMESTAMP})
        # One row per entity (a customer table, a loan application): record_id may be the entity key.
        # History features then have no earlier row to aggregate, so they are refused rather than empty.
        one_row_per_entity = self.record_id == self.entity_key
        if one_row_per_entity and self.features.history:
            errors.append(f"history features ({', '.join(h.name for h in self.features.history)}) need several "
                          f"rows per entity, but record_id and entity_key are both {self.record_id!r} (one row per "
                          "entity): remove features.history, or set entity_key to the column that groups rows")
        roles = [("record_id", self.record_id), ("label", self.label),
                 ("event_time", self.event_time), ("source.ingestion_time", self.source.ingestion_time)]
        if not one_row_per_entity:
            roles.insert(1, ("entity_key", self.entity_key))
        by_col: dict[str, list[str]] = {}
        for role, col in roles:
            if col is not None:
                by_col.setdefault(col, []).append(role)
        for col, rs in by_col.items():
            if len(rs) > 1:
                errors.append(f"column {col!r} cannot be both {' and '.join(rs)}")
        if self.model.split.method == "time" and self.event_time is None:
            errors.append("model.split.method 'time' (the default) needs 'event_time'; "
                          "use 'stratified' or 'random'")
        forbidden_inputs = {self.label, self.source.ingestion_time} - {None}

        names = set(cols)
        for d in self.features.derived:
            if d.name in names:
                errors.append(f"derived feature {d.name!r} clashes with an existing name")
            for i in d.inputs:
                if i in forbidden_inputs:
                    errors.append(f"derived feature {d.name!r}: {i!r} (label or ingestion time) cannot be "
                                  "an input: it is unknown when a prediction is made")
                elif i not in names:
                    errors.append(f"derived feature {d.name!r}: unknown input {i!r}")
                elif d.op in _TIME_OPS and i not in cols:
                    errors.append(f"derived feature {d.name!r}: op {d.op} needs a raw timestamp column")
                elif d.op in _TIME_OPS and cols.get(i) and cols[i].type != ColumnType.TIMESTAMP:
                    errors.append(f"derived feature {d.name!r}: op {d.op} needs a timestamp input")
                elif d.op not in _TIME_OPS and i in cols and not cols[i].type.is_numeric \
                        and d.op != DerivedOp.IS_MISSING:
                    errors.append(f"derived feature {d.name!r}: op {d.op} needs numeric inputs")
            names.add(d.name)
        if self.features.history and self.event_time is None:
            errors.append("history features need 'event_time'")
        for h in self.features.history:
            if h.name in names:
                errors.append(f"history feature {h.name!r} clashes with an existing name")
            if h.input is not None:
                if h.input in forbidden_inputs:
                    errors.append(f"history feature {h.name!r}: {h.input!r} (label or ingestion time) "
                                  "cannot be an input")
                elif h.input not in cols:
                    errors.append(f"history feature {h.name!r}: unknown input {h.input!r} (raw columns only)")
                elif not cols[h.input].type.is_numeric:
                    errors.append(f"history feature {h.name!r}: input {h.input!r} must be numeric")
            names.add(h.name)

        if self.model.features is not None:
            available = set(self.default_model_features_unchecked()) | {
                n for n, c in cols.items() if n not in self._reserved()
            }
            seen: set[str] = set()
            for f in self.model.features:
                if f in seen:
                    errors.append(f"model.features lists {f!r} twice")
                seen.add(f)
                if f not in available:
                    errors.append(f"model.features: {f!r} is not a feature-table column")
                elif f in cols and cols[f].type in (ColumnType.TIMESTAMP, ColumnType.STRING):
                    errors.append(f"model.features: {f!r} has type {cols[f].type}; use a derived feature")
            if not self.model.features:
                errors.append("model.features is empty")
        elif not self.default_model_features_unchecked():
            errors.append("the model has no input features")
        if self.model.preprocessing is not None and not errors:
            errors.extend(self._preprocessing_problems(self.model.preprocessing))
        if errors:
            raise ValueError("; ".join(errors))
        return self

    def _preprocessing_problems(self, prep: PreprocessingSpec) -> list[str]:
        problems: list[str] = []
        native_ok = "HistGradientBoosting" in self.model.estimator.class_path

        def check(where: str, impute: str | None, fill: float | None, encode: str | None) -> None:
            if fill is not None and impute != "constant":
                problems.append(f"{where}: fill_value applies to impute 'constant' only")
            if impute == "constant" and fill is None:
                problems.append(f"{where}: impute 'constant' needs fill_value")
            if encode == "native" and not native_ok:
                problems.append(f"{where}: encode 'native' needs a HistGradientBoosting estimator "
                                f"(the model is {self.model.estimator.class_path}); use onehot or ordinal")

        check("model.preprocessing.numeric", prep.numeric.impute, prep.numeric.fill_value, None)
        check("model.preprocessing.categorical", None, None, prep.categorical.encode)
        if prep.categorical.min_frequency is not None and prep.categorical.encode == "native":
            problems.append("model.preprocessing.categorical: min_frequency applies to onehot and ordinal")
        features = set(self.model_features)
        for name, col in prep.columns.items():
            where = f"model.preprocessing.columns.{name}"
            if name not in features:
                problems.append(f"{where}: {name!r} is not a model feature")
                continue
            numeric = self.feature_kind(name) == "numeric"
            wrong = [k for k in (("encode", "min_frequency") if numeric else ("impute", "fill_value", "scale"))
                     if getattr(col, k) is not None]
            if wrong:
                kind = "numeric" if numeric else "categorical"
                problems.append(f"{where}: {', '.join(wrong)} does not apply to a {kind} feature")
            if not numeric:
                check(where, None, None, col.encode)
            elif col.impute is None:  # the type's imputation, and its fill_value unless this column sets one
                check(where, prep.numeric.impute, col.fill_value if col.fill_value is not None
                      else prep.numeric.fill_value, None)
            else:
                check(where, col.impute, col.fill_value, None)
        return problems

    # --- derived views -------------------------------------------------------

    def _reserved(self) -> set[str]:
        reserved = {self.record_id, self.entity_key, self.label}
        if self.event_time:
            reserved.add(self.event_time)
        if self.source.ingestion_time:
            reserved.add(self.source.ingestion_time)
        return reserved

    def default_model_features_unchecked(self) -> list[str]:
        reserved = self._reserved()
        raw = [
            n for n, c in self.columns.items()
            if n not in reserved and c.feature and c.type not in (ColumnType.TIMESTAMP, ColumnType.STRING)
        ]
        return raw + [d.name for d in self.features.derived] + [h.name for h in self.features.history]

    @property
    def model_features(self) -> list[str]:
        """Feature-table columns the model consumes, in order."""
        return list(self.model.features) if self.model.features else self.default_model_features_unchecked()

    @property
    def raw_input_columns(self) -> list[str]:
        """Columns a prediction request carries: every raw column except the label
        and the ingestion time (which only the source knows)."""
        skip = {self.label, self.source.ingestion_time}
        return [n for n in self.columns if n not in skip]

    @property
    def stored_columns(self) -> list[str]:
        """Payload columns of a feature-table row (keys are stored separately)."""
        # The ingestion time is stored: replaying a past row's history needs to know what was known then.
        keys = {self.record_id, self.entity_key, self.event_time}
        raw = [n for n in self.columns if n not in keys]
        return raw + [d.name for d in self.features.derived] + [h.name for h in self.features.history]

    def feature_kind(self, name: str) -> Literal["numeric", "categorical"]:
        """How the model treats a feature-table column."""
        col = self.columns.get(name)
        if col is None:  # derived and history features are numeric by construction
            return "numeric"
        if col.type.is_numeric:
            return "numeric"
        return "categorical"

    @property
    def feature_hash(self) -> str:
        """sha256 of what decides feature values and model inputs (not the estimator or split).

        Serving refuses a model whose feature hash differs from the spec it was
        given: same raw record in must mean same features out.
        """
        data = self.model_dump(mode="json", by_alias=True,
                               include={"record_id", "entity_key", "event_time", "label", "columns", "features"})
        # Descriptions are documentation: editing one must not orphan a served model.
        data["columns"] = [[name, {k: v for k, v in col.items() if k != "description"}]
                           for name, col in data["columns"].items()]
        data["model_features"] = self.model_features
        return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    @property
    def content_hash(self) -> str:
        """sha256 of the canonical JSON of the spec as written (before ${VAR} expansion)."""
        data = self.model_dump(mode="json", by_alias=True, exclude={"monitoring"})
        # Settings added after a spec format shipped are left out while unset, so a spec that does not
        # use them keeps the hash its models were registered with (fti reproduce compares it).
        for (section, key), default in _ADDED_LATER.items():
            if data.get(section, {}).get(key, default) == default:
                data[section].pop(key, None)
        # Column order decides the default feature order, so it is part of the content.
        data["columns"] = [[name, col] for name, col in data["columns"].items()]
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


class LoadedSpec(BaseModel):
    """A validated spec plus where it came from (for resolving relative paths)."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    spec: DatasetSpec
    path: Path

    @property
    def hash(self) -> str:
        return self.spec.content_hash

    def resolve_path(self, value: str) -> Path:
        p = Path(expand_env(value))
        return p if p.is_absolute() else (self.path.parent / p).resolve()


def expand_env(value: str) -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}``; an unset variable without default is an error."""

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if os.environ.get(name):  # like the shell's ${VAR:-default}: empty counts as unset
            return os.environ[name]
        if default is not None:
            return default
        raise SpecError(f"the spec references ${{{name}}} but that environment variable is not set")

    return _ENV_REF.sub(sub, value)


def load_spec(path: str | os.PathLike[str]) -> LoadedSpec:
    """Read and validate a spec file, with errors that say where the problem is."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"spec file not found: {p} (pass --spec PATH to a YAML spec, e.g. specs/claims.yaml)")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SpecError(f"{p}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise SpecError(f"{p}: the top level must be a mapping of spec fields")
    try:
        spec = DatasetSpec.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False, include_input=False):
            loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
            lines.append(f"  - {loc}: {err['msg']}")
        raise SpecError(f"{p}: invalid spec:\n" + "\n".join(lines)) from None
    return LoadedSpec(spec=spec, path=p.resolve())
