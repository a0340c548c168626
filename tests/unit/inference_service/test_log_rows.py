"""The prediction log builds a request's rows from the bytes it received and answered
(:class:`inference_service.log_rows.RequestChunk`): those rows must be the ones rendered from what
serving computed -- the normalised records of either online path (the numpy arrays, or the pandas
frame) and the predictions before they were encoded."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inference_service.json_out import encode_last_list
from inference_service.log_rows import RequestChunk, epoch_micros
from shared.certificate import raw_records, raw_records_from_arrays
from shared.prediction_table import canonical_json, new_prediction_id, outputs
from shared.raw import normalize_records, record_arrays
from shared.spec import load_spec
from tests.helpers import raw_json_records, write_claims_spec

_DUMPS = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode  # as the route

# probabilities whose shortest repr is long, tiny, or has many digits: they must read back identical
AWKWARD = [0.1 + 0.2, 5e-324, 1e-300, 1 / 3, 0.9999999999999999, 2.0 ** -52, 0.5]


@pytest.fixture(scope="module")
def claims(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("logrows")
    spec_path = write_claims_spec(folder, n_policyholders=40)
    loaded = load_spec(spec_path)
    records = raw_json_records(folder / "raw" / "claims.csv", spec_path)[:40]
    spec = loaded.spec
    records[3] = {**records[3], "police_report": None, "region": None, "vehicle_age": None}
    records[4] = {**records[4], spec.event_time: "2024-03-01T23:30:00+05:45"}  # an offset: normalised to UTC
    records[5] = {**records[5], "region": "Zürich — ünïcode ✓", spec.label: 1}  # a label is accepted and ignored
    records[6] = {**records[6], "claim_amount": 1e308}
    return {"spec": spec, "records": records}


def _answer(spec: Any, records: list[dict[str, Any]], *, regression: bool = False) -> tuple[dict[str, Any], bytes]:
    """A response as ``/predict`` encodes it (the route's encoder), and the predictions before encoding."""
    preds: list[dict[str, Any]] = []
    for i, r in enumerate(records):
        p = AWKWARD[i % len(AWKWARD)]
        item: dict[str, Any] = {"prediction_id": new_prediction_id(), "record_id": r[spec.record_id]}
        if regression:
            item["prediction"] = p * 1e5
        else:
            item.update(prediction=int(p > 0.4), score=p, probabilities={"0": 1 - p, "1": p})
        preds.append(item)
    result = {"model_name": "claims-fraud", "model_version": "12", "feature_version": 3,
              "trained_on_feature_version": 2, "predictions": preds}
    body = encode_last_list(_DUMPS, result, "predictions", item_separator=",", key_separator=":").encode()
    return result, body


def _expected(spec: Any, records: list[dict[str, Any]], result: dict[str, Any], request_id: str, now: datetime,
              threshold: float | None, path: str) -> list[dict[str, Any]]:
    """The rows rendered from what serving holds in memory, on the given online path."""
    if path == "numpy":
        arrays, problems = record_arrays(records, spec)
        assert not problems
        inputs = raw_records_from_arrays(arrays, spec)
        entities = list(arrays[spec.entity_key])
        times = np.asarray(arrays[spec.event_time], dtype=np.int64).view("datetime64[us]").astype(object).tolist()
    else:
        frame, problems = normalize_records(records, spec)
        assert not problems
        inputs = raw_records(frame, spec)
        entities = frame[spec.entity_key].tolist()
        col = frame[spec.event_time]
        times = col.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(dtype="datetime64[us]").astype(object).tolist()
    return [{"prediction_id": p["prediction_id"], "request_id": request_id, "created_at": now, "dataset": spec.name,
             "model_name": result["model_name"], "model_version": result["model_version"],
             "feature_version": result["feature_version"], "record_id": str(p["record_id"]),
             "entity_key": str(entities[i]), "event_time": times[i], "inputs": canonical_json(inputs[i]),
             "outputs": canonical_json(outputs(p["prediction"], p.get("probabilities"), threshold))}
            for i, p in enumerate(result["predictions"])]


@pytest.mark.parametrize("path", ["numpy", "pandas"])
@pytest.mark.parametrize("threshold", [None, 0.37])
def test_rows_from_the_bytes_are_the_rows_of_what_serving_computed(claims: dict[str, Any], path: str,
                                                                   threshold: float | None) -> None:
    spec, records = claims["spec"], claims["records"]
    now = datetime(2026, 12, 6, 21, 3, 4, 567_891)
    result, body = _answer(spec, records)
    raw = json.dumps({"records": records}).encode()
    chunk = RequestChunk(spec, len(records), raw, body, "req-1", epoch_micros(now), threshold)
    got = chunk()
    assert got == _expected(spec, records, result, "req-1", now, threshold, path)
    assert got[4]["event_time"] == datetime(2024, 3, 1, 17, 45)  # the offset applied
    assert json.loads(got[0]["outputs"])["probabilities"]["1"] == AWKWARD[0]


def test_a_regression_answer_is_logged_as_its_value(claims: dict[str, Any]) -> None:
    spec, records = claims["spec"], claims["records"][:7]
    result, body = _answer(spec, records, regression=True)
    now = datetime(2026, 1, 1)
    chunk = RequestChunk(spec, 7, json.dumps({"records": records}).encode(), body, "r", epoch_micros(now), None)
    assert chunk() == _expected(spec, records, result, "r", now, None, "numpy")
    assert json.loads(chunk()[1]["outputs"]) == {"prediction": AWKWARD[1] * 1e5}


def test_chunks_built_together_are_the_rows_each_builds_alone_and_survive_the_wire(claims: dict[str, Any]) -> None:
    """What the writer stores for a batch of requests (build_many) is what each request's chunk builds alone,
    for requests of one and of several records; frames parsed back are the same chunks."""
    spec, records = claims["spec"], claims["records"][:30]
    chunks = []
    for start, n in ((0, 1), (1, 1), (2, 5), (7, 1), (8, 22)):
        part = records[start:start + n]
        _, body = _answer(spec, part)
        chunks.append(RequestChunk(spec, n, json.dumps({"records": part}).encode(), body, f"req{start}",
                                   1_765_000_000_000_000 + start, 0.4 if start % 2 else None))
    alone = [row for c in chunks for row in c()]
    assert len(alone) == 30 and RequestChunk.build_many(chunks) == alone
    wire = b"".join(c.frame() for c in chunks)
    parsed = list(RequestChunk.parse(spec, wire))
    assert [(c.n, c.request_id, c.created_micros, c.threshold, c.request_body, c.response_body) for c in parsed] == \
        [(c.n, c.request_id, c.created_micros, c.threshold, c.request_body, c.response_body) for c in chunks]
    assert RequestChunk.build_many(parsed) == alone


def test_a_request_that_no_longer_normalises_is_an_error_not_a_wrong_row(claims: dict[str, Any],
                                                                         tmp_path: Path) -> None:
    spec = claims["spec"]
    _, body = _answer(spec, claims["records"][:1])
    bad = json.dumps({"records": [{"nope": 1}]}).encode()
    with pytest.raises(ValueError, match="no longer normalises"):
        RequestChunk(spec, 1, bad, body, "r", 0, None)()
