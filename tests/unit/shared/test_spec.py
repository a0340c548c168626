"""The dataset spec: loading, the content and feature hashes, validation messages, ${VAR} expansion."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.spec import DatasetSpec, LoadedSpec, SpecError, expand_env, load_spec
from tests.helpers import CHURN_SPEC, CLAIMS_SPEC

Mutation = Callable[[dict[str, Any]], None]


def _claims() -> dict[str, Any]:
    return yaml.safe_load(CLAIMS_SPEC.read_text(encoding="utf-8"))


def _write(tmp_path: Path, data: dict[str, Any] | str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _spec(data: dict[str, Any]) -> DatasetSpec:
    return DatasetSpec.model_validate(data)


def _mutated(mutate: Mutation) -> dict[str, Any]:
    data = _claims()
    mutate(data)
    return data


# --------------------------------------------------------------------------- loading


def test_claims_spec_loads() -> None:
    loaded = load_spec(CLAIMS_SPEC)
    spec = loaded.spec
    assert isinstance(loaded, LoadedSpec) and loaded.path == CLAIMS_SPEC.resolve()
    assert (spec.name, spec.record_id, spec.entity_key, spec.event_time, spec.label) == (
        "claims", "claim_id", "policyholder_id", "claim_ts", "is_fraud")
    assert spec.source.ingestion_time == "ingested_at"
    assert loaded.resolve_path(spec.source.path) == (CLAIMS_SPEC.parent.parent / "data" / "raw" / "claims.csv").resolve()
    # the default model features: 12 non-role raw columns, then 5 derived, then 5 history
    assert spec.model_features == [
        "customer_age", "policy_tenure_months", "annual_premium", "vehicle_age", "claim_amount", "incident_type",
        "incident_severity", "region", "channel", "police_report", "witnesses", "days_to_report",
        "amount_to_premium", "log_claim_amount", "claim_hour", "claim_day_of_week", "police_report_missing",
        "prior_claims", "prior_claims_90d", "prior_claim_amount_sum", "prior_claim_amount_max",
        "days_since_last_claim",
    ]
    assert "is_fraud" not in spec.raw_input_columns and "ingested_at" not in spec.raw_input_columns
    assert spec.stored_columns[:2] == ["ingested_at", "customer_age"] and "is_fraud" in spec.stored_columns
    assert {spec.feature_kind("region"), spec.feature_kind("claim_amount"), spec.feature_kind("prior_claims")} == {
        "categorical", "numeric"}
    assert spec.feature_kind("prior_claims") == "numeric"
    assert len(loaded.hash) == 64 and loaded.hash == spec.content_hash


def test_churn_spec_loads() -> None:
    loaded = load_spec(CHURN_SPEC)
    spec = loaded.spec
    assert spec.name == "churn" and spec.source.ingestion_time is None
    assert spec.model.split.method == "stratified" and spec.model.seed == 7
    assert spec.model.estimator.class_path == "sklearn.linear_model.LogisticRegression"
    # a string column is never a model input
    assert "agent_code" not in spec.model_features and "agent_code" in spec.raw_input_columns
    assert spec.model_features[-2:] == ["prior_contacts_30d", "days_since_last_contact"]
    assert loaded.resolve_path(spec.source.path) == CHURN_SPEC.parent / "customers.csv"


def test_load_spec_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SpecError, match="spec file not found") as info:
        load_spec(missing)
    assert str(missing) in str(info.value)


def test_load_spec_invalid_yaml(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: [unclosed\ncolumns: {a: 1\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value).startswith(f"{path}: not valid YAML: ")


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "", "42\n"])
def test_load_spec_top_level_not_a_mapping(tmp_path: Path, text: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value) == f"{path}: the top level must be a mapping of spec fields"


def test_load_spec_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value).startswith(f"{path}: not valid YAML")


def test_load_spec_lists_every_problem_with_its_location(tmp_path: Path) -> None:
    data = _claims()
    data["columns"]["region"]["min"] = 1
    data["columns"]["claim_amount"]["nulable"] = False  # a typo is an error, not ignored
    data["model"]["split"]["test_size"] = 1.5
    path = _write(tmp_path, data)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    lines = str(info.value).splitlines()
    assert lines[0] == f"{path}: invalid spec:"
    assert "  - columns.region: Value error, min/max apply to int, float and bool columns only" in lines
    assert "  - columns.claim_amount.nulable: Extra inputs are not permitted" in lines
    assert "  - model.split.test_size: Input should be less than 1" in lines


# --------------------------------------------------------------------------- content hash


def _hash_of_text(tmp_path: Path, text: str, name: str) -> str:
    return load_spec(_write(tmp_path, text, name)).hash


def test_content_hash_ignores_formatting_comments_and_key_order(tmp_path: Path) -> None:
    original = CLAIMS_SPEC.read_text(encoding="utf-8")
    reference = load_spec(CLAIMS_SPEC).hash
    data = _claims()
    variants = {
        # (sort_keys=True would also sort `columns`, whose order is content: see below)
        "block.yaml": yaml.safe_dump(data, sort_keys=False, indent=4),
        "flow.yaml": yaml.safe_dump(data, sort_keys=False, default_flow_style=True, width=10_000),
        "json.yaml": json.dumps(data, indent=3),  # JSON is YAML
        "commented.yaml": "# a new leading comment\n\n" + original.replace(
            "record_id: claim_id", "record_id: 'claim_id'   # quoted, and commented"),
    }
    for name, text in variants.items():
        assert _hash_of_text(tmp_path, text, name) == reference, name


def test_content_hash_ignores_key_order_inside_a_column_mapping() -> None:
    data = _claims()
    reordered = copy.deepcopy(data)
    reordered["columns"] = {name: dict(reversed(list(col.items()))) for name, col in data["columns"].items()}
    reordered["model"]["estimator"]["params"] = dict(reversed(list(data["model"]["estimator"]["params"].items())))
    reordered = dict(reversed(list(reordered.items())))  # top-level keys too
    assert list(reordered["columns"]["claim_id"]) == ["nullable", "type"]
    assert _spec(reordered).content_hash == _spec(data).content_hash


def test_content_hash_ignores_spelled_out_defaults_and_int_vs_float_bounds() -> None:
    data = _claims()
    explicit = copy.deepcopy(data)
    explicit["spec_version"] = 1
    explicit["columns"]["region"]["nullable"] = True
    explicit["columns"]["region"]["max_length"] = 256
    explicit["columns"]["customer_age"]["min"] = 16.0
    explicit["features"]["derived"][0]["inputs"] = ["claim_amount", "annual_premium"]
    explicit["model"]["split"]["test_size"] = 0.25
    assert _spec(explicit).content_hash == _spec(data).content_hash


def _set(path: str, value: Any) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = data
        for p in parents:
            target = target[int(p)] if isinstance(target, list) else target[p]
        if isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value
    return mutate


VALUE_CHANGES: dict[str, Mutation] = {
    "description": _set("description", "other words"),
    "column description": _set("columns.claim_amount.description", "money"),
    "column min": _set("columns.customer_age.min", 17),
    "column nullable": _set("columns.region.nullable", False),
    "column type": _set("columns.witnesses.type", "float"),
    "max_length": _set("columns.region.max_length", 32),
    "feature flag": _set("columns.vehicle_age.feature", False),
    "source path": _set("source.path", "../data/raw/other.csv"),
    "derived op": _set("features.derived.1.op", "is_missing"),
    "history window": _set("features.history.1.window_days", 91),
    "estimator param": _set("model.estimator.params.max_iter", 201),
    "estimator param int vs float": _set("model.estimator.params.max_iter", 200.0),
    "estimator class": _set("model.estimator.class", "sklearn.linear_model.LogisticRegression"),
    "model name": _set("model.name", "claims-fraud-2"),
    "metric": _set("model.primary_metric", "roc_auc"),
    "split": _set("model.split.test_size", 0.2),
    "seed": _set("model.seed", 43),
    "explicit features": _set("model.features", ["claim_amount", "region"]),
}


@pytest.mark.parametrize("change", sorted(VALUE_CHANGES))
def test_content_hash_changes_with_any_value(change: str) -> None:
    assert _spec(_mutated(VALUE_CHANGES[change])).content_hash != _spec(_claims()).content_hash


def _swap_columns(a: str, b: str) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        names = list(data["columns"])
        i, j = names.index(a), names.index(b)
        names[i], names[j] = names[j], names[i]
        data["columns"] = {n: data["columns"][n] for n in names}
    return mutate


def test_content_hash_changes_when_columns_are_reordered() -> None:
    # Column order decides the default model-feature order, so it is content.
    base, swapped = _spec(_claims()), _spec(_mutated(_swap_columns("customer_age", "vehicle_age")))
    assert swapped.model_features != base.model_features
    assert swapped.content_hash != base.content_hash
    assert swapped.feature_hash != base.feature_hash


def test_content_hash_is_computed_before_env_expansion(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _claims()
    data["source"]["path"] = "${CLAIMS_DIR:-../data/raw}/claims.csv"
    monkeypatch.delenv("CLAIMS_DIR", raising=False)
    h1 = _spec(data).content_hash
    monkeypatch.setenv("CLAIMS_DIR", "/somewhere/else")
    assert _spec(data).content_hash == h1


# --------------------------------------------------------------------------- feature hash

SAME_FEATURES: dict[str, Mutation] = {
    "estimator param": _set("model.estimator.params.max_iter", 7),
    "estimator class": _set("model.estimator.class", "sklearn.linear_model.LogisticRegression"),
    "split": _set("model.split", {"method": "stratified", "test_size": 0.1}),
    "seed": _set("model.seed", 1),
    "metric": _set("model.primary_metric", "log_loss"),
    "model name": _set("model.name", "another"),
    "dataset description": _set("description", "changed"),
    "source path": _set("source.path", "elsewhere.csv"),
}
OTHER_FEATURES: dict[str, Mutation] = {
    "derived op": _set("features.derived.1.op", "is_missing"),
    "derived input": _set("features.derived.0.inputs", ["claim_amount", "policy_tenure_months"]),
    "derived name": _set("features.derived.0.name", "amount_per_premium"),
    "history window": _set("features.history.1.window_days", 30),
    "history op": _set("features.history.3.op", "min"),
    "column bound": _set("columns.claim_amount.min", 1),
    "explicit feature list": _set("model.features", ["claim_amount", "region"]),
    "label": _set("label", "witnesses"),
}


@pytest.mark.parametrize("change", sorted(SAME_FEATURES))
def test_feature_hash_ignores_model_only_changes(change: str) -> None:
    base, changed = _spec(_claims()), _spec(_mutated(SAME_FEATURES[change]))
    assert changed.feature_hash == base.feature_hash
    assert changed.content_hash != base.content_hash


@pytest.mark.parametrize("change", sorted(OTHER_FEATURES))
def test_feature_hash_changes_with_the_features(change: str) -> None:
    assert _spec(_mutated(OTHER_FEATURES[change])).feature_hash != _spec(_claims()).feature_hash


# --------------------------------------------------------------------------- validation messages


def _error_lines(tmp_path: Path, data: dict[str, Any]) -> list[str]:
    path = _write(tmp_path, data)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    lines = str(info.value).splitlines()
    assert lines[0] == f"{path}: invalid spec:"
    return lines[1:]


def _drop(*keys: str) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        for k in keys:
            *parents, last = k.split(".")
            target = data
            for p in parents:
                target = target[p]
            del target[last]
    return mutate


def _add_derived(entry: dict[str, Any]) -> Mutation:
    return lambda data: data["features"]["derived"].append(entry)


def _add_history(entry: dict[str, Any]) -> Mutation:
    return lambda data: data["features"]["history"].append(entry)


def _no_event_time_no_history(data: dict[str, Any]) -> None:
    del data["event_time"]
    data["features"]["history"] = []


TOP = "  - (top level): Value error, "
INVALID: dict[str, tuple[Mutation, str]] = {
    "unknown derived input": (
        _add_derived({"name": "x", "op": "ratio", "inputs": ["claim_amount", "nope"]}),
        TOP + "derived feature 'x': unknown input 'nope'"),
    "label as derived input": (
        _add_derived({"name": "x", "op": "log1p", "inputs": ["is_fraud"]}),
        TOP + "derived feature 'x': 'is_fraud' (label or ingestion time) cannot be an input: "
              "it is unknown when a prediction is made"),
    "ingestion time as derived input": (
        _add_derived({"name": "x", "op": "hour", "inputs": ["ingested_at"]}),
        TOP + "derived feature 'x': 'ingested_at' (label or ingestion time) cannot be an input: "
              "it is unknown when a prediction is made"),
    "label as history input": (
        _add_history({"name": "x", "op": "sum", "input": "is_fraud"}),
        TOP + "history feature 'x': 'is_fraud' (label or ingestion time) cannot be an input"),
    "time op on a number": (
        _add_derived({"name": "h", "op": "hour", "inputs": ["claim_amount"]}),
        TOP + "derived feature 'h': op hour needs a timestamp input"),
    "time op on a derived feature": (
        _add_derived({"name": "m", "op": "month", "inputs": ["log_claim_amount"]}),
        TOP + "derived feature 'm': op month needs a raw timestamp column"),
    "arithmetic on a category": (
        _add_derived({"name": "x", "op": "diff", "inputs": ["claim_amount", "region"]}),
        TOP + "derived feature 'x': op diff needs numeric inputs"),
    "history without event_time": (
        _drop("event_time", "model.split"),
        TOP + "model.split.method 'time' (the default) needs 'event_time'; use 'stratified' or 'random'; "
              "history features need 'event_time'"),
    "history without event_time, stratified split": (
        lambda d: (d.pop("event_time"), d["model"].update(split={"method": "stratified"})),
        TOP + "history features need 'event_time'"),
    "time split without event_time": (
        _no_event_time_no_history,
        TOP + "model.split.method 'time' (the default) needs 'event_time'; use 'stratified' or 'random'"),
    "record_id is entity_key with history features": (
        _set("entity_key", "claim_id"),
        TOP + "history features (prior_claims, prior_claims_90d, prior_claim_amount_sum, prior_claim_amount_max, "
              "days_since_last_claim) need several rows per entity, but record_id and entity_key are both 'claim_id' "
              "(one row per entity): remove features.history, or set entity_key to the column that groups rows"),
    "record_id is label": (
        _set("label", "claim_id"),
        TOP + "column 'claim_id' cannot be both record_id and label"),
    "nullable record_id": (
        _set("columns.claim_id.nullable", True),
        TOP + "record_id 'claim_id' must be declared 'nullable: false'"),
    "nullable event_time": (
        lambda d: d["columns"]["claim_ts"].pop("nullable"),
        TOP + "event_time 'claim_ts' must be declared 'nullable: false'"),
    "undeclared role column": (
        _set("entity_key", "customer"),
        TOP + "entity_key 'customer' is not declared under 'columns'"),
    "record_id of type float": (
        _set("columns.claim_id.type", "float"),
        TOP + "record_id 'claim_id' must have type category, int, string, not float"),
    "derived name clash": (
        _add_derived({"name": "region", "op": "log1p", "inputs": ["claim_amount"]}),
        TOP + "derived feature 'region' clashes with an existing name"),
    "model feature is a timestamp": (
        _set("model.features", ["claim_amount", "claim_ts"]),
        TOP + "model.features: 'claim_ts' is not a feature-table column"),
    "model feature twice": (
        _set("model.features", ["claim_amount", "claim_amount"]),
        TOP + "model.features lists 'claim_amount' twice"),
    "estimator outside the allowed libraries": (
        _set("model.estimator.class", "os.system"),
        "  - model.estimator.class: Value error, estimator class must come from one of "
        "sklearn., xgboost., lightgbm."),
    "estimator prefix lookalike": (
        _set("model.estimator.class", "sklearnx.evil.Model"),
        "  - model.estimator.class: Value error, estimator class must come from one of "
        "sklearn., xgboost., lightgbm."),
    "sql source without table or query": (
        _set("source", {"format": "sql", "url": "${SOURCE_URL}"}),
        "  - source: Value error, a sql source needs exactly one of 'table' or 'query'"),
    "sql source with table and query": (
        _set("source", {"format": "sql", "url": "sqlite://", "table": "t", "query": "SELECT 1"}),
        "  - source: Value error, a sql source needs exactly one of 'table' or 'query'"),
    "sql source without url": (
        _set("source", {"format": "sql", "table": "t"}),
        "  - source: Value error, a sql source needs 'url' (an SQLAlchemy URL, e.g. ${SOURCE_URL})"),
    "csv source with a table": (
        _set("source", {"format": "csv", "path": "x.csv", "table": "t"}),
        "  - source: Value error, a csv source takes 'path' only, not url/table/query"),
    "min greater than max": (
        _set("columns.customer_age.max", 10),
        "  - columns.customer_age: Value error, min (16.0) is greater than max (10.0)"),
    "wrong arity": (
        _add_derived({"name": "x", "op": "ratio", "inputs": ["claim_amount"]}),
        "  - features.derived.5: Value error, op 'ratio' takes 2 input(s), got 1"),
    "count with an input": (
        _add_history({"name": "x", "op": "count", "input": "claim_amount"}),
        "  - features.history.5: Value error, history op 'count' takes no 'input'"),
    "sum without an input": (
        _add_history({"name": "x", "op": "sum"}),
        "  - features.history.5: Value error, history op 'sum' needs 'input'"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_spec_message(tmp_path: Path, case: str) -> None:
    mutate, expected = INVALID[case]
    lines = _error_lines(tmp_path, _mutated(mutate))
    assert lines == [expected]


def test_model_level_problems_are_reported_together(tmp_path: Path) -> None:
    data = _claims()
    data["columns"]["claim_id"]["nullable"] = True
    data["features"]["derived"].append({"name": "x", "op": "ratio", "inputs": ["claim_amount", "nope"]})
    (line,) = _error_lines(tmp_path, data)
    assert line == (TOP + "record_id 'claim_id' must be declared 'nullable: false'; "
                          "derived feature 'x': unknown input 'nope'")


# --------------------------------------------------------------------------- ${VAR} expansion


def test_expand_env_plain_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FTI_T_HOST", "db.example")
    assert expand_env("postgresql://${FTI_T_HOST}:5432/x") == "postgresql://db.example:5432/x"


def test_expand_env_default_used_only_when_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FTI_T_DIR", raising=False)
    assert expand_env("${FTI_T_DIR:-/srv/data}/loans.parquet") == "/srv/data/loans.parquet"
    assert expand_env("${FTI_T_DIR:-}/x") == "/x"  # an empty default is a default
    monkeypatch.setenv("FTI_T_DIR", "/mnt")
    assert expand_env("${FTI_T_DIR:-/srv/data}/loans.parquet") == "/mnt/loans.parquet"


def test_expand_env_several_and_untouched_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FTI_T_A", "1")
    monkeypatch.delenv("FTI_T_B", raising=False)
    # the default runs to the first '}' and $VAR without braces is left alone
    assert expand_env("${FTI_T_A}-${FTI_T_B:-two}-$FTI_T_A-${FTI_T_B:-a:b}") == "1-two-$FTI_T_A-a:b"
    assert expand_env("no variables") == "no variables"


def test_expand_env_unset_variable_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FTI_T_MISSING", raising=False)
    with pytest.raises(SpecError) as info:
        expand_env("sqlite:///${FTI_T_MISSING}/x.db")
    assert str(info.value) == "the spec references ${FTI_T_MISSING} but that environment variable is not set"


def test_resolve_path_expands_and_resolves_relative_to_the_spec(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    data = _claims()
    data["source"]["path"] = "${FTI_T_SUB:-raw}/claims.csv"
    loaded = load_spec(_write(tmp_path, data))
    monkeypatch.delenv("FTI_T_SUB", raising=False)
    assert loaded.resolve_path(loaded.spec.source.path) == (tmp_path / "raw" / "claims.csv").resolve()
    monkeypatch.setenv("FTI_T_SUB", str(tmp_path / "abs"))
    assert loaded.resolve_path(loaded.spec.source.path) == tmp_path / "abs" / "claims.csv"
