"""Acceptance (hardening, numbers): generated bodies over the JSON number grammar and Unicode digit
classes -- 0 x 5xx, and every rejection names its field.

Over 10,000 cases in all, through the app in process (``TestClient``, the session's trained store,
a loaded model): ``/predict`` raw records, ``/invocations`` as JSON and as CSV, and the feature
pipeline's source reader (``shared.raw.normalize_frame``). Each case puts one generated token into
one numeric field of an otherwise valid request. Hypothesis runs derandomized (the same cases in CI).
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.raw import normalize_frame
from shared.spec import load_spec
from tests.helpers import copy_store, mlflow_uris_restored, raw_json_records

pytestmark = [pytest.mark.e2e]

CASES = {"predict": 4000, "invocations_json": 3500, "invocations_csv": 1500, "csv_reader": 1500}
RUN = settings(max_examples=1, deadline=None, derandomize=True, database=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                      HealthCheck.function_scoped_fixture])
SEEN: dict[str, int] = {}

_digits = st.text(alphabet="0123456789", min_size=1, max_size=25)
_long_digits = st.integers(min_value=300, max_value=6000).map(lambda n: "9" * n)
_unicode_digits = st.text(alphabet=st.characters(categories=["Nd"]), min_size=1, max_size=12)
_mixed_digits = st.tuples(_digits, _unicode_digits, _digits).map("".join)


@st.composite
def json_number(draw: Any) -> str:
    """A token from JSON's number grammar (-?int frac? exp?), with lengths up to thousands of digits."""
    sign = draw(st.sampled_from(["", "-"]))
    int_part = draw(st.one_of(st.just("0"), st.tuples(st.sampled_from("123456789"), st.text("0123456789",
                                                                                           max_size=20)).map("".join),
                              _long_digits))
    frac = draw(st.one_of(st.just(""), _digits.map(lambda d: "." + d)))
    exp = draw(st.one_of(st.just(""), st.tuples(st.sampled_from(["e", "E"]), st.sampled_from(["", "+", "-"]),
                                                st.text("0123456789", min_size=1, max_size=6)).map("".join)))
    return sign + int_part + frac + exp


# tokens: valid numbers; near-numbers JSON forbids; Unicode digits bare or as strings; special words
TOKEN = st.one_of(
    json_number(), json_number(),
    _unicode_digits, _mixed_digits,
    _unicode_digits.map(json.dumps), _mixed_digits.map(json.dumps),
    json_number().map(json.dumps),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1_000", "0x10", "01", "+1", ".5", "5.",
                     "1e", "--1", "1.5.2", "true", "null", "\"\"", "[]", "{}", "\"1 000\""]),
)
CELL = st.one_of(json_number(), _unicode_digits, _mixed_digits,
                 st.sampled_from(["1_000", "NaN", "inf", "-Infinity", "0x10", "1e400", " 1.5 ", "1,5", "٣.٥"]))


@pytest.fixture(scope="module")
def app_client(claims_store: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Any:

    from inference_service.app import create_app
    from inference_service.config import Settings

    s = copy_store(claims_store, tmp_path_factory.mktemp("fuzz") / "store")
    app = create_app(Settings(spec=s["spec"], data_dir=s["data"], prediction_log=False, reload_interval_seconds=0,
                              allowed_hosts="testserver", max_concurrent_requests=1000))
    with mlflow_uris_restored(), TestClient(app, raise_server_exceptions=False) as client:
        deadline = time.monotonic() + 120
        while client.get("/health/ready").status_code != 200:
            assert time.monotonic() < deadline, client.get("/health/ready").text
            time.sleep(0.2)
        spec = load_spec(s["spec"]).spec
        records = raw_json_records(s["spec"].parent / "raw" / "claims.csv", s["spec"])[:5]
        yield {"client": client, "spec": spec, "records": records, "features": spec.model_features,
               "numeric_raw": [c for c in spec.raw_input_columns if spec.columns[c].type.is_numeric],
               "numeric_features": [f for f in spec.model_features if spec.feature_kind(f) == "numeric"]}
    total = sum(SEEN.values())
    print(f"\ngenerated cases: {SEEN} = {total}")


def _names_field(body: dict[str, Any], field: str) -> bool:
    err = body.get("error") if isinstance(body.get("error"), dict) else body
    text = json.dumps(err)
    problems = err.get("problems") or []
    return any(p.get("column") == field for p in problems) or repr(field) in text or f'"{field}"' in text \
        or f"'{field}'" in text


def _valid_json(text: str) -> bool:
    try:
        json.loads(f"[{text}]", parse_int=float,  # valid JSON has no digit limit (Python's int() has one)
                   parse_constant=lambda t: (_ for _ in ()).throw(ValueError(t)))
        return True
    except (ValueError, RecursionError):
        return False


def _check(kind: str, r: Any, field: str, token: str, *, json_body: bool) -> None:
    SEEN[kind] = SEEN.get(kind, 0) + 1
    assert r.status_code < 500, (kind, field, token[:80], r.status_code, r.text[:300])
    if r.status_code == 200:
        return
    assert r.headers["content-type"].startswith("application/json"), r.text[:200]
    body = r.json()
    if kind == "invocations_json" and token == "NaN":  # MLflow's client writes NaN for missing: read as missing
        assert r.status_code == 400 and _names_field(body, field) and "a value is required" in json.dumps(body), body
        return
    if json_body and not _valid_json(token):
        assert "malformed JSON" in json.dumps(body) or "not valid JSON" in json.dumps(body) \
            or "out of range" in json.dumps(body) or "is not a valid value" in json.dumps(body), body
        return
    if r.status_code in (400, 413):
        assert _names_field(body, field) or "digits is out of range" in json.dumps(body), (kind, token[:80], body)


def test_predict_numbers(app_client: dict[str, Any]) -> None:
    client, records, fields = app_client["client"], app_client["records"], app_client["numeric_raw"]

    @settings(RUN, max_examples=CASES["predict"])
    @given(token=TOKEN, field=st.sampled_from(fields), i=st.integers(0, 4))
    def case(token: str, field: str, i: int) -> None:
        rec = dict(records[i])
        rec[field] = "__TOKEN__"
        body = json.dumps({"records": [rec]}).replace('"__TOKEN__"', token)
        r = client.post("/predict", content=body.encode(), headers={"Content-Type": "application/json"})
        _check("predict", r, field, token, json_body=True)

    case()


def _valid_row(app_client: dict[str, Any]) -> list[Any]:
    """A model-input row every check accepts: each bounded number at its minimum, categories a plain word."""
    from inference_service.invocations import Signature

    cols = {c.name: c for c in Signature.from_spec(app_client["spec"]).columns}
    return [(cols[f].min if cols[f].min is not None else 1.0) if cols[f].numeric else "x"
            for f in app_client["features"]]


def test_invocations_json_numbers(app_client: dict[str, Any]) -> None:
    client, feats, numeric = app_client["client"], app_client["features"], app_client["numeric_features"]
    base = _valid_row(app_client)

    @settings(RUN, max_examples=CASES["invocations_json"])
    @given(token=TOKEN, field=st.sampled_from(numeric), layout=st.sampled_from(["split", "records"]))
    def case(token: str, field: str, layout: str) -> None:
        row = list(base)
        row[feats.index(field)] = "__TOKEN__"
        payload = {"dataframe_split": {"columns": feats, "data": [row]}} if layout == "split" else \
            {"dataframe_records": [dict(zip(feats, row, strict=True))]}
        body = json.dumps(payload).replace('"__TOKEN__"', token)
        r = client.post("/invocations", content=body.encode(), headers={"Content-Type": "application/json"})
        _check("invocations_json", r, field, token, json_body=True)

    case()


def test_invocations_csv_numbers(app_client: dict[str, Any]) -> None:
    client, feats, numeric = app_client["client"], app_client["features"], app_client["numeric_features"]

    @settings(RUN, max_examples=CASES["invocations_csv"])
    @given(cell=CELL, field=st.sampled_from(numeric))
    def case(cell: str, field: str) -> None:
        row = [str(v) for v in _valid_row(app_client)]
        row[feats.index(field)] = cell if "," not in cell else f'"{cell}"'
        body = ",".join(feats) + "\n" + ",".join(row) + "\n"
        r = client.post("/invocations", content=body.encode(), headers={"Content-Type": "text/csv"})
        _check("invocations_csv", r, field, cell, json_body=False)
        if r.status_code == 200:  # only plain ASCII decimals that fit a float, or pandas' missing markers
            from inference_service.invocations import CSV_NA

            assert cell in CSV_NA or (cell.strip().isascii() and math.isfinite(float(cell))), cell

    case()


def test_the_source_reader_numbers(app_client: dict[str, Any]) -> None:
    import pandas as pd

    spec = app_client["spec"]
    numeric = [c for c in app_client["numeric_raw"] if spec.columns[c].type.value != "bool"]
    raw = pd.read_csv(app_client["client"].app.state.runtime.spec.path.parent / "raw" / "claims.csv", dtype=str,
                      keep_default_na=False).head(3)

    @settings(RUN, max_examples=CASES["csv_reader"])
    @given(cell=CELL, field=st.sampled_from(numeric), row=st.integers(0, 2))
    def case(cell: str, field: str, row: int) -> None:
        frame = raw.copy()
        frame.loc[frame.index[row], field] = cell
        SEEN["csv_reader"] = SEEN.get("csv_reader", 0) + 1
        out, problems, _ = normalize_frame(frame, spec)
        mine = [p for p in problems.items if p.column == field]
        accepted = not mine
        if accepted:
            value = out[field].iloc[row]
            assert cell.strip() == "" or cell.strip().lower() == "nan" or (
                cell.strip().isascii() and float(cell) == value), (cell, value)
        else:
            assert all(row in p.rows for p in mine), (cell, mine)

    case()


def test_more_than_ten_thousand_cases_ran() -> None:
    assert sum(CASES.values()) >= 10_000
    assert sum(SEEN.values()) >= 10_000, SEEN
