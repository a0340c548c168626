"""``fti spec init``'s guesses, and the errors that say what to pass instead."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from fti.spec_init import SpecInitError, column_type, draft
from shared.spec import DatasetSpec


@pytest.mark.parametrize(("cells", "kind"), [
    (["1", "-2", "", "30"], "int"),
    (["1.5", "2e3", "-0.25", ""], "float"),
    (["1_000", "2"] * 5, "category"),  # not a number by the feature job's rules either
    (["yes", "no", "YES", ""], "bool"),
    (["true", "true"], "category"),  # one value only: nothing says it is a boolean
    (["2024-03-05 14:22:31", "2024-03-06T01:00:00Z", ""], "timestamp"),
    (["a", "b", "a", "b", "a", "b"], "category"),
    ([f"name {i}" for i in range(200)], "string"),
    (["", ""], "string"),
])
def test_column_types_follow_the_feature_jobs_rules(cells, kind):
    assert column_type(pd.Series(cells, dtype=str)) == kind


def _csv(tmp_path: Path, frame: pd.DataFrame) -> Path:
    path = tmp_path / "data.csv"
    frame.to_csv(path, index=False)
    return path


def test_a_draft_loads_and_notes_what_it_guessed(tmp_path):
    frame = pd.DataFrame({"id": range(40), "age": [20 + i for i in range(40)], "plan": ["a", "b"] * 20,
                          "churned": ["yes", "no", "no", ""] * 10})
    spec, notes = draft(_csv(tmp_path, frame), "churned")
    parsed = DatasetSpec.model_validate(spec)
    assert parsed.record_id == parsed.entity_key == "id"
    assert spec["columns"]["churned"]["type"] == "bool" and spec["columns"]["churned"]["nullable"] is True
    assert "min" not in spec["columns"]["age"] and spec["columns"]["age"]["description"] == "observed 20 to 59"
    assert any("10 rows have no 'churned' yet" in n for n in notes)
    assert any("set model.positive_class" in n for n in notes)


@pytest.mark.parametrize(("frame", "kwargs", "message"), [
    (pd.DataFrame({"a": [1, 1], "y": [0, 1]}), {}, "pass --record-id COLUMN"),
    (pd.DataFrame({"id": [1, 2], "y": ["a", "b"]}), {"task": "regression"}, "needs a numeric label"),
    (pd.DataFrame({"id": [1, 2], "y": [1, 1]}), {}, "needs two or more"),
    (pd.DataFrame({"id": [1, 2], "y": [0, 1]}), {"event_time": "when"}, "--event-time 'when' is not a column"),
    (pd.DataFrame({"id": [1, 2], "y": [0, 1]}), {"event_time": "id"}, "does not hold ISO timestamps"),
    (pd.DataFrame({"my id": [1, 2], "y": [0, 1]}), {}, "rename them in the header"),
])
def test_what_cannot_be_drafted_says_what_to_pass(tmp_path, frame, kwargs, message):
    with pytest.raises(SpecInitError, match=message):
        draft(_csv(tmp_path, frame), "y", **kwargs)


@pytest.mark.parametrize(("values", "task", "estimator"), [
    ([0.5 + i for i in range(30)], "regression", "HistGradientBoostingRegressor"),  # non-integer numbers
    (list(range(30)), "regression", "HistGradientBoostingRegressor"),  # many distinct integers
    ([i % 5 for i in range(30)], "classification", "HistGradientBoostingClassifier"),  # a few integer codes
])
def test_the_task_is_inferred_from_the_label_and_drafts_a_valid_spec(tmp_path, values, task, estimator):
    frame = pd.DataFrame({"id": range(30), "x": [i * 0.1 for i in range(30)], "y": values})
    spec, notes = draft(_csv(tmp_path, frame), "y")
    parsed = DatasetSpec.model_validate(spec)
    assert parsed.model.task == task and parsed.model.estimator.class_path.endswith(estimator)
    if task == "regression":
        assert parsed.model.primary_metric == "rmse" and parsed.model.split.method == "random"
        assert any("a regression (--task classification" in n for n in notes)
    forced, _ = draft(_csv(tmp_path, frame), "y", task="classification")
    assert DatasetSpec.model_validate(forced).model.task == "classification"
