"""Strict JSON request decoding: what ``json.loads`` lets through that a model must not see.

Rejected with 400: ``NaN``/``Infinity`` tokens, duplicate keys in one object,
nesting deeper than a tabular record needs, and bodies that are not UTF-8.
Numbers that overflow a float (``1e400``, a 5,000-digit integer) decode to an
infinity, which record validation refuses naming the field.
"""

from __future__ import annotations

import json
import math
from typing import Any

from inference_service import json_stream

MAX_DEPTH = 8


class BodyError(ValueError):
    def __init__(self, message: str, status: int = 400, code: str = "bad_request"):
        super().__init__(message)
        self.status = status
        self.code = code


def _reject_constant(token: str) -> Any:
    raise BodyError(f"{token} is not valid JSON; send null for a missing value")


def bounded_int(text: str) -> int | float:
    """JSON integers: any number of digits is valid JSON, but beyond 4,300 digits Python refuses to convert
    (``ValueError``, a 500 if unhandled) and beyond ~310 no float holds it: such a number becomes an
    infinity, which validation then refuses naming the field and record."""
    if len(text) > 400:
        return -math.inf if text.startswith("-") else math.inf
    return int(text)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise BodyError(f"duplicate key {k[:64]!r} in one JSON object")
        out[k] = v
    return out


def _depth_ok(raw: bytes) -> bool:
    depth = 0
    in_string = escaped = False
    for b in raw:
        if in_string:
            if escaped:
                escaped = False
            elif b == 0x5C:
                escaped = True
            elif b == 0x22:
                in_string = False
        elif b == 0x22:
            in_string = True
        elif b in (0x5B, 0x7B):
            depth += 1
            if depth > MAX_DEPTH:
                return False
        elif b in (0x5D, 0x7D):
            depth -= 1
    return True


def check_content_type(content_type: str | None) -> None:
    if not content_type:
        raise BodyError("Content-Type header is missing; send application/json", 415, "unsupported_media_type")
    main, _, params = content_type.partition(";")
    if main.strip().lower() != "application/json":
        raise BodyError(f"unsupported Content-Type {main.strip()[:60]!r}; send application/json", 415,
                        "unsupported_media_type")
    for p in params.split(";"):
        key, _, value = p.partition("=")
        if key.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise BodyError("only UTF-8 bodies are accepted", 415, "unsupported_media_type")


STREAM_MIN_BYTES = 64 * 1024  # above this, parse a record at a time (json_stream): the GIL is not held throughout


def _duplicate(key: str) -> BodyError:
    return BodyError(f"duplicate key {key[:64]!r} in one JSON object")


def decode(raw: bytes, max_records: int | None = None) -> Any:
    """The JSON body, strictly; with ``max_records``, a body holding more records is refused (413) as soon
    as the parser reaches the first one too many, not after parsing all of it."""
    if not raw.strip():
        raise BodyError("the request body is empty; send a JSON object")
    small = len(raw) <= STREAM_MIN_BYTES
    if small and not _depth_ok(raw):  # larger bodies: the record-at-a-time parser bounds the nesting it walks
        raise BodyError(f"JSON nested deeper than {MAX_DEPTH} levels")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyError(f"the body is not valid UTF-8 (byte {exc.start})") from None
    if text.startswith("\ufeff"):
        raise BodyError("the body starts with a byte-order mark; send plain UTF-8")
    # numbers beyond the float range become infinities here and are refused by validation, naming the field
    decoder = json.JSONDecoder(parse_constant=_reject_constant, parse_int=bounded_int,
                               object_pairs_hook=_no_duplicates)
    try:
        if small:
            return decoder.decode(text)
        return json_stream.loads(text, decoder, max_items=max_records or 10**9, duplicate=_duplicate)
    except BodyError:
        raise
    except json_stream.TooManyItems as exc:
        raise BodyError(f"more than {exc.limit} records; the limit is {exc.limit} (FTI_MAX_BATCH_ROWS)", 413,
                        "too_many_records") from None
    except (json.JSONDecodeError, RecursionError) as exc:
        msg = exc.msg if isinstance(exc, json.JSONDecodeError) else "too deeply nested"
        pos = f" at position {exc.pos}" if isinstance(exc, json.JSONDecodeError) else ""
        raise BodyError(f"malformed JSON: {msg}{pos}") from None


_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_int=bounded_int, object_pairs_hook=_no_duplicates)


def decode_accepted(raw: bytes) -> Any:
    """A body :func:`decode` already accepted, decoded again to the same value without its guards (the
    nesting walk alone cost the prediction log's writer 25 us a request): the prediction log's rows."""
    return _DECODER.decode(raw.decode("utf-8"))


async def read_limited(scope: dict[str, Any], receive: Any, max_bytes: int) -> tuple[str | None, bytes | None, bool]:
    """An ASGI request's content type and body, read up to ``max_bytes``.

    Returns ``(content_type, body, too_large)``: ``too_large`` as soon as ``Content-Length`` or the
    bytes received exceed the limit (the rest is not read); ``body`` None when the client left.
    Shared by the scoring lanes the middleware answers itself (``/invocations``, ``/predict``).
    """
    content_type = None
    for k, v in scope["headers"]:
        if k == b"content-type":
            content_type = v.decode("latin-1")
        elif k == b"content-length" and v.isdigit() and int(v) > max_bytes:
            return content_type, None, True
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return content_type, None, False
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            return content_type, None, True
        chunks.append(chunk)
        if not message.get("more_body", False):
            return content_type, b"".join(chunks), False

