"""The pure parts of ``fti reproduce``: spec diffs, feature-row diffs, prediction comparison, references."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from fti.reproduce import (
    ReproduceError,
    compare_predictions,
    describe_change,
    diff_rows,
    feature_compatible,
    inert_change,
    parse_ref,
    spec_changes,
)
from shared.spec import DatasetSpec, load_spec
from tests.helpers import CLAIMS_SPEC


@pytest.fixture(scope="module")
def base() -> dict[str, Any]:
    return load_spec(CLAIMS_SPEC).spec.model_dump(mode="json", by_alias=True)


def _spec(data: dict[str, Any]) -> DatasetSpec:
    return DatasetSpec.model_validate(json.loads(json.dumps(data)))


def _changes(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return [describe_change(*c) for c in spec_changes(_spec(a), _spec(b))]


def test_identical_specs_have_no_changes(base: dict[str, Any]) -> None:
    assert spec_changes(_spec(base), _spec(base)) == []
    assert feature_compatible(_spec(base), _spec(base))


def test_model_changes_are_named_by_dotted_path_and_keep_features_compatible(base: dict[str, Any]) -> None:
    other = json.loads(json.dumps(base))
    other["model"]["seed"] = 7
    other["model"]["estimator"]["params"]["max_iter"] = 61
    other["model"]["estimator"]["params"]["max_depth"] = 3
    assert sorted(_changes(base, other)) == ["model.estimator.params.max_depth added: 3",
                                             "model.estimator.params.max_iter 200 -> 61", "model.seed 42 -> 7"]
    assert feature_compatible(_spec(base), _spec(other))


def test_int_and_float_params_differ_as_in_the_hash(base: dict[str, Any]) -> None:
    other = json.loads(json.dumps(base))
    other["model"]["estimator"]["params"]["max_iter"] = 200.0
    assert _changes(base, other) == ["model.estimator.params.max_iter 200 -> 200.0"]


def test_named_feature_lists_are_matched_by_name(base: dict[str, Any]) -> None:
    other = json.loads(json.dumps(base))
    other["features"]["derived"] = [d for d in other["features"]["derived"] if d["name"] != "claim_hour"]
    other["features"]["history"][0]["window_days"] = 30.0
    changes = _changes(base, other)
    assert changes[0].startswith("features.derived[claim_hour] removed (was ")
    assert changes[1] == "features.history[prior_claims].window_days null -> 30.0"
    assert len(changes) == 2
    assert not feature_compatible(_spec(base), _spec(other))


def test_column_order_is_a_change(base: dict[str, Any]) -> None:
    other = json.loads(json.dumps(base))
    cols = list(other["columns"].items())
    cols[4], cols[5] = cols[5], cols[4]
    other["columns"] = dict(cols)
    (change,) = spec_changes(_spec(base), _spec(other))
    assert change[0] == "columns (order)"
    assert not feature_compatible(_spec(base), _spec(other))


def _row(entity: str, payload: dict[str, Any], ts: str = "2024-01-01T00:00:00.000000Z") -> tuple[str, str, str]:
    return entity, ts, json.dumps(payload, sort_keys=True)


def test_diff_rows_separates_raw_edits_from_computed_consequences() -> None:
    before = {"A": _row("p", {"amount": 1.0, "prior_sum": 0.0}), "B": _row("p", {"amount": 2.0, "prior_sum": 1.0}),
              "C": _row("q", {"amount": 3.0, "prior_sum": 0.0})}
    after = {"A": _row("p", {"amount": 5.0, "prior_sum": 0.0}), "B": _row("p", {"amount": 2.0, "prior_sum": 5.0}),
             "D": _row("q", {"amount": 4.0, "prior_sum": 0.0})}
    d = diff_rows(before, after, raw_columns={"amount"})
    assert d["added"] == ["D"] and d["removed"] == ["C"]
    assert d["changed_raw"] == [{"record_id": "A", "fields": {"amount": [1.0, 5.0]}}]
    assert d["changed_computed"] == [{"record_id": "B", "fields": {"prior_sum": [1.0, 5.0]}}]
    assert d["n_changed"] == 2


def test_compare_predictions_counts_rows_and_max_diff() -> None:
    a = np.array([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8]])
    same = compare_predictions(a, a.copy(), ["x", "y", "z"])
    assert same["identical"] and same["differing"] == 0 and same["max_abs_diff"] == 0.0
    b = a.copy()
    b[1] = [0.49, 0.51]
    diff = compare_predictions(a, b, ["x", "y", "z"])
    assert not diff["identical"] and diff["differing"] == 1 and diff["first_differing"] == ["y"]
    assert diff["max_abs_diff"] == pytest.approx(0.01)
    assert compare_predictions(a, a[:2], ["x", "y", "z"])["error"].startswith("shapes differ")


@pytest.mark.parametrize(("ref", "expected"), [
    ("claims-fraud/3", ("claims-fraud", "3", None)),
    ("models:/claims-fraud/12", ("claims-fraud", "12", None)),
    ("claims-fraud@champion", ("claims-fraud", None, "champion")),
])
def test_parse_ref(ref: str, expected: tuple[str, str | None, str | None]) -> None:
    assert parse_ref(ref) == expected


@pytest.mark.parametrize("ref", ["claims-fraud", "claims-fraud/v3", "/3", "a/b/3"])
def test_parse_ref_rejects(ref: str) -> None:
    with pytest.raises(ReproduceError, match="NAME/VERSION"):
        parse_ref(ref)


def test_source_location_and_descriptions_are_inert(base: dict[str, Any]) -> None:
    other = json.loads(json.dumps(base))
    other["source"]["path"] = "/elsewhere/claims.csv"
    other["description"] = "moved"
    other["columns"]["region"]["description"] = "sales region"
    changes = spec_changes(_spec(base), _spec(other))
    assert sorted(p for p, _, _ in changes) == ["columns.region.description", "description", "source.path"]
    assert all(inert_change(p) for p, _, _ in changes)
    assert feature_compatible(_spec(base), _spec(other))
    assert not inert_change("source.ingestion_time") and not inert_change("model.seed")
