"""A ``/predict`` request's prediction-log rows, built from the bytes it received and answered.

Why from bytes: the request path hands the log nothing but what it already holds -- the request
body it read, the response body it encoded, the request id, the time, the decision threshold --
so handing a request over costs a few microseconds, and the rows can be built in another process
(:mod:`inference_service.log_process`) without pickling any live object. The builder decodes the
request body as ``/predict`` did (:func:`inference_service.body.decode_accepted`), normalises the records
as serving did (:func:`shared.raw.record_arrays`, the code both online paths run) and renders
them with :func:`shared.certificate.raw_records_from_arrays`; ids, predictions, probabilities and
versions are read back from the response JSON (floats are written in shortest round-trip form,
so they read back identical). ``tests/unit/inference_service/test_log_rows.py`` checks the rows
equal those rendered from the live objects of the request, on both online paths.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from inference_service import body as body_codec
from shared.certificate import raw_records_from_arrays
from shared.prediction_table import canonical_json, outputs
from shared.raw import record_arrays
from shared.spec import DatasetSpec

EPOCH = datetime(1970, 1, 1)
_HEAD = struct.Struct("<IIIIqd")  # rows, len(request id), len(request body), len(response body), micros, threshold


def epoch_micros(when: datetime) -> int:
    """A naive UTC ``datetime`` as integer microseconds since the epoch (exact)."""
    delta = when - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


class RequestChunk:
    """One request's log rows, built on demand: alone (``chunk()``) or with the other chunks of a batch
    (:meth:`build_many`, which renders the records of many requests in one go -- a record rendered
    alone costs ~45 us of fixed per-call work)."""

    __slots__ = ("created_micros", "n", "request_body", "request_id", "response_body", "spec", "threshold")

    def __init__(self, spec: DatasetSpec, n: int, request_body: bytes, response_body: bytes, request_id: str,
                 created_micros: int, threshold: float | None):
        self.spec, self.n = spec, n
        self.request_body, self.response_body = request_body, response_body
        self.request_id, self.created_micros, self.threshold = request_id, created_micros, threshold

    # ------------------------------------------------------------------ wire form (to the writer process)

    def frame(self) -> bytes:
        return self.encode_frame(self.n, self.request_body, self.response_body, self.request_id,
                                 self.created_micros, self.threshold)

    @staticmethod
    def encode_frame(n: int, request_body: bytes, response_body: bytes, request_id: str, created_micros: int,
                     threshold: float | None) -> bytes:
        """:meth:`frame` without building a chunk (what the request path hands over)."""
        rid = request_id.encode()
        head = _HEAD.pack(n, len(rid), len(request_body), len(response_body), created_micros,
                          math.nan if threshold is None else threshold)
        return b"".join((head, rid, request_body, response_body))

    @classmethod
    def parse(cls, spec: DatasetSpec, data: bytes) -> Iterator[RequestChunk]:
        """The chunks of a message of concatenated frames."""
        view = memoryview(data)
        at = 0
        while at < len(view):
            n, lr, lq, lp, micros, threshold = _HEAD.unpack_from(view, at)
            at += _HEAD.size
            rid = bytes(view[at:at + lr]).decode()
            at += lr
            req = bytes(view[at:at + lq])
            at += lq
            resp = bytes(view[at:at + lp])
            at += lp
            yield cls(spec, n, req, resp, rid, micros, None if math.isnan(threshold) else threshold)

    # ------------------------------------------------------------------ the rows

    def _records(self) -> list[Any]:
        return body_codec.decode_accepted(self.request_body)["records"]

    def _arrays(self, records: list[Any]) -> dict[str, np.ndarray]:
        arrays, problems = record_arrays(records, self.spec)
        if problems:  # serving accepted these records: a disagreement here is a bug, never a user error
            raise ValueError(f"the logged request no longer normalises: {problems.items[:3]}")
        return arrays

    def _columns(self, arrays: dict[str, np.ndarray]) -> tuple[list[str], list[Any]]:
        """The entity keys and event times of normalised records, as the rows store them."""
        spec = self.spec
        entities = [str(e) for e in arrays[spec.entity_key].tolist()]
        if spec.event_time:
            times: list[Any] = np.asarray(arrays[spec.event_time], dtype=np.int64).view("datetime64[us]") \
                .astype(object).tolist()
        else:
            times = [None] * len(entities)
        return entities, times

    def _rows(self, entities: list[str], times: list[Any], inputs: list[str]) -> list[dict[str, Any]]:
        """This request's rows from its records' entity keys, event times and inputs' canonical JSON."""
        answer = json.loads(self.response_body)
        predictions = answer["predictions"]
        if len(predictions) != self.n or len(inputs) != self.n:
            raise ValueError(f"expected {self.n} rows, got {len(predictions)} predictions and {len(inputs)} records")
        now = EPOCH + timedelta(microseconds=self.created_micros)
        common = {"request_id": self.request_id, "created_at": now, "dataset": self.spec.name,
                  "model_name": answer["model_name"], "model_version": answer["model_version"],
                  "feature_version": answer["feature_version"]}
        threshold = self.threshold
        return [{"prediction_id": p["prediction_id"], **common, "record_id": str(p["record_id"]),
                 "entity_key": entities[i], "event_time": times[i], "inputs": inputs[i],
                 "outputs": canonical_json(outputs(p["prediction"], p.get("probabilities"), threshold))}
                for i, p in enumerate(predictions)]

    def __call__(self) -> list[dict[str, Any]]:
        arrays = self._arrays(self._records())
        entities, times = self._columns(arrays)
        inputs = [canonical_json(r) for r in raw_records_from_arrays(arrays, self.spec)]
        return self._rows(entities, times, inputs)

    @staticmethod
    def build_many(chunks: list[RequestChunk]) -> list[dict[str, Any]]:
        """Every chunk's rows, in order, the same as each chunk's own: the records of all chunks (of one spec)
        are normalised and rendered in one go. Why: normalising a request's records costs ~0.4 ms of fixed
        per-call work (column by column), which for single-record requests was the writer's whole cost.
        Normalisation is per record (each value by its column's rule), so a record's arrays are the same
        alone or in a batch (``tests/unit/inference_service/test_log_rows.py``)."""
        spec = chunks[0].spec if chunks else None
        if any(c.spec is not spec for c in chunks):
            return [row for c in chunks for row in c()]
        assert spec is not None
        parts = [c._records() for c in chunks]
        arrays = chunks[0]._arrays([r for part in parts for r in part])
        entities, times = chunks[0]._columns(arrays)  # once for the batch, not once per request
        inputs = [canonical_json(r) for r in raw_records_from_arrays(arrays, spec)]
        out: list[dict[str, Any]] = []
        at = 0
        for c, part in zip(chunks, parts, strict=True):
            n = len(part)
            out.extend(c._rows(entities[at:at + n], times[at:at + n], inputs[at:at + n]))
            at += n
        return out
