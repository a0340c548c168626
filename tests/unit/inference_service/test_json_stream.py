"""The record-at-a-time JSON parser equals ``json.loads`` on every body, and stops early at the limit."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inference_service import body as body_codec
from inference_service import invocations as inv
from inference_service import json_stream

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**30, 10**30), st.floats(allow_nan=False,
                                                                                       allow_infinity=False),
                    st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=4)),
                      max_leaves=25)


class Dup(ValueError):
    pass


def _decoder() -> json.JSONDecoder:
    def pairs(p: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(p)
        if len(out) != len(p):
            raise Dup("dup")
        return out
    return json.JSONDecoder(object_pairs_hook=pairs)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(value=values, indent=st.sampled_from([None, 1, 2]), sep=st.sampled_from([(",", ":"), (", ", ": ")]))
def test_equals_json_loads_on_every_value(value: Any, indent: int | None, sep: tuple[str, str]) -> None:
    text = json.dumps(value, indent=indent, separators=sep)
    assert json_stream.loads(text, _decoder(), max_items=10**6, duplicate=lambda k: Dup(k)) == json.loads(text)


@pytest.mark.parametrize("text", ['{"a": 1,}', '{"a" 1}', '[1 2]', '{"a": [1,]}', '{"a": 1} x', "", '{"a": [1]',
                                  '{1: 2}', '{"a": {"b": [1 2]}}'])
def test_malformed_bodies_raise_like_json(text: str) -> None:
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    with pytest.raises(json.JSONDecodeError):
        json_stream.loads(text, _decoder(), max_items=100, duplicate=lambda k: Dup(k))


def test_duplicate_keys_at_every_level_are_refused() -> None:
    for text in ('{"a": 1, "a": 2}', '{"x": {"a": 1, "a": 2}}', '{"x": [{"a": 1, "a": 2}]}'):
        with pytest.raises(Dup):
            json_stream.loads(text, _decoder(), max_items=100, duplicate=lambda k: Dup(k))


def test_the_record_limit_stops_the_parse_at_the_first_record_too_many() -> None:
    rec = {"a": 1.5, "b": "x" * 50}
    text = json.dumps({"records": [rec] * 200_000})
    t0 = time.perf_counter()
    with pytest.raises(json_stream.TooManyItems):
        json_stream.loads(text, _decoder(), max_items=1000, duplicate=lambda k: Dup(k))
    early = time.perf_counter() - t0
    t0 = time.perf_counter()
    json.loads(text)
    full = time.perf_counter() - t0
    print(f"\nrefused after 1,001 of 200,000 records in {early * 1000:.1f} ms (json.loads of all: "
          f"{full * 1000:.1f} ms)")


def test_predict_and_invocations_decoders_use_it_above_64_kib() -> None:
    rec = {"a": 1.5, "b": "x" * 50}
    big = json.dumps({"records": [rec] * 2000}).encode()
    assert len(big) > body_codec.STREAM_MIN_BYTES
    with pytest.raises(body_codec.BodyError) as err:
        body_codec.decode(big, 1000)
    assert err.value.status == 413 and err.value.code == "too_many_records"
    assert body_codec.decode(big, 5000) == json.loads(big)
    split = json.dumps({"dataframe_split": {"columns": ["a"], "data": [[1.0]] * 20_000}}).encode()
    with pytest.raises(inv.InvocationError) as ierr:
        inv.decode_json(split, 10_000)
    assert ierr.value.status == 413
    assert inv.decode_json(split, 30_000) == json.loads(split)


@pytest.mark.parametrize("token", ["1" + "0" * 400, "-" + "9" * 5000, "1e400"])
def test_numbers_beyond_the_float_range_decode_to_infinity_for_validation_to_name(token: str) -> None:
    value = body_codec.decode(('{"records": [{"x": ' + token + "}]}").encode())["records"][0]["x"]
    assert value in (float("inf"), float("-inf"))
    value = inv.decode_json(('{"inputs": {"x": [' + token + "]}}").encode())["inputs"]["x"][0]
    assert value in (float("inf"), float("-inf"))


def test_a_parquet_decompression_bomb_is_refused_from_its_metadata() -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"note": ["x" * (1 << 20) + str(i) for i in range(100)]})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    assert len(buf.getvalue()) < 200_000
    with pytest.raises(inv.InvocationError) as err:
        inv.parquet_columns(buf.getvalue(), 1000)
    assert err.value.status == 413 and "decompresses to" in str(err.value)


def test_a_repeated_parquet_value_is_kept_once() -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    value = "y" * 100_000
    table = pa.table({"note": [value] * 500})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    cols, n = inv.parquet_columns(buf.getvalue(), 1000)
    assert n == 500 and cols["note"][0] == value
    assert len({id(v) for v in cols["note"]}) == 1  # one string object, 500 references
