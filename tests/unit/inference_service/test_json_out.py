"""The sliced encoding of a response body is the one-call encoding, byte for byte."""

from __future__ import annotations

import json
import random

import pytest

from inference_service.json_out import encode_last_list

ENCODERS = {
    "mlflow": (json.JSONEncoder().encode, ", ", ": "),
    "compact": (json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode, ",", ":"),
}


def _item(rng: random.Random) -> object:
    kind = rng.randrange(4)
    if kind == 0:
        return [rng.random(), 1 - rng.random()]
    if kind == 1:
        return {"prediction_id": f"{rng.getrandbits(64):x}", "prediction": rng.choice([0, 1, "é", None]),
                "probabilities": {"0": rng.random(), "1": rng.random()}}
    if kind == 2:
        return rng.choice(["x", "\u2028", 'quote"', 3, -0.0, 1e300, True])
    return []


@pytest.mark.parametrize("name", sorted(ENCODERS))
@pytest.mark.parametrize("n", [0, 1, 255, 256, 257, 1000, 10_001])
@pytest.mark.parametrize("with_head", [False, True])
def test_sliced_equals_one_call(name, n, with_head):
    encode, item_sep, key_sep = ENCODERS[name]
    rng = random.Random(n * 7 + with_head)
    obj: dict[str, object] = {"model_name": "m", "model_version": "3", "feature_version": None} if with_head else {}
    obj["predictions"] = [_item(rng) for _ in range(n)]
    assert encode_last_list(encode, obj, "predictions", item_separator=item_sep, key_separator=key_sep) \
        == encode(obj)


def test_a_list_that_is_not_the_last_member_is_encoded_in_one_call():
    encode, item_sep, key_sep = ENCODERS["mlflow"]
    obj = {"predictions": list(range(1000)), "tail": 1}
    assert encode_last_list(encode, obj, "predictions", item_separator=item_sep, key_separator=key_sep) \
        == encode(obj)
