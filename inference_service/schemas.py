"""OpenAPI descriptions of the request and response bodies, derived from the spec.

The body is decoded and validated by ``shared.raw`` (so serving and the feature
job agree on every value); these schemas document that contract precisely.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from shared.spec import ColumnType, DatasetSpec

_JSON_TYPES = {
    ColumnType.INT: {"type": "integer"},
    ColumnType.FLOAT: {"type": "number"},
    ColumnType.BOOL: {"type": "boolean"},
    ColumnType.CATEGORY: {"type": "string"},
    ColumnType.STRING: {"type": "string"},
    ColumnType.TIMESTAMP: {"type": "string", "format": "date-time"},
}


def record_schema(spec: DatasetSpec) -> dict[str, Any]:
    props: dict[str, Any] = {}
    for name in spec.raw_input_columns:
        col = spec.columns[name]
        base: dict[str, Any] = dict(_JSON_TYPES[col.type])
        if col.type.is_text:
            base["maxLength"] = col.max_length
        if col.min is not None:
            base["minimum"] = col.min
        if col.max is not None:
            base["maximum"] = col.max
        if col.description:
            base["description"] = col.description
        props[name] = base if not col.nullable else {"anyOf": [base, {"type": "null"}]}
    return {"type": "object", "properties": props, "required": list(spec.raw_input_columns),
            "additionalProperties": False,
            "description": f"One raw {spec.name} record: every field of the source except the label "
                           "(send null for a missing value)."}


def predict_request_schema(spec: DatasetSpec, max_rows: int) -> dict[str, Any]:
    return {"type": "object", "required": ["records"], "additionalProperties": False,
            "properties": {"records": {"type": "array", "minItems": 1, "maxItems": max_rows,
                                       "items": record_schema(spec)}}}


class Prediction(BaseModel):
    prediction_id: str
    record_id: str
    prediction: int | str | float = Field(description="regression: the predicted value; classification: the "
                                          "decided class -- with a decision rule (see `decision`), the positive "
                                          "class when `score >= threshold`, otherwise the most probable class")
    score: float | None = Field(default=None, description="with a decision rule only: the positive class's "
                                "probability, the number compared with the threshold")
    probabilities: dict[str, float] | None = Field(default=None, description="classification: class label -> "
                                                   "probability (absent for regression)")


class DecisionRule(BaseModel):
    objective: str = Field(description="model.decision.objective the threshold was chosen for at training")
    threshold: float = Field(description="chosen on the evaluation split; a score >= threshold is positive")
    positive_class: str


class PredictResponse(BaseModel):
    model_name: str
    model_version: str
    feature_version: int | None = Field(description="feature version the history features were read from")
    trained_on_feature_version: int | None
    decision: DecisionRule | None = Field(default=None, description="binary models trained with "
                                          "model.decision: the rule that turned scores into predictions")
    predictions: list[Prediction]


class ErrorBody(BaseModel):
    code: str
    message: str
    problems: list[dict[str, Any]] | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
