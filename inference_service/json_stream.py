"""Parse a large JSON body a record at a time, counting records as it goes.

``json.loads`` parses a whole body in one C call that holds the GIL: ~100 ms for 10 MB, during
which no other thread (the event loop answering ``/health/live``) runs, and a body with too many
records is only refused once all of it is parsed. Scoring bodies have a fixed shape -- an object
whose members are arrays of records or rows, or objects of such arrays -- so the two outer levels
are walked here and each element is parsed on its own (``JSONDecoder.raw_decode``, still C): the
GIL is released between elements (every ``sys.getswitchinterval()``), and parsing stops at the
first element past ``max_items``.

The result equals ``decoder.decode(text)`` for every body (same hooks, same errors: duplicate keys
at the outer levels are refused like the decoder's ``object_pairs_hook`` refuses them inside).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from json.decoder import WHITESPACE, scanstring  # type: ignore[attr-defined]  # public, not in typeshed
from typing import Any


class TooManyItems(ValueError):
    def __init__(self, limit: int):
        super().__init__(f"more than {limit} items")
        self.limit = limit


def _ws(text: str, i: int) -> int:
    return WHITESPACE.match(text, i).end()


def loads(text: str, decoder: json.JSONDecoder, *, max_items: int,
          duplicate: Callable[[str], Exception]) -> Any:
    """``decoder.decode(text)``, walking the top two levels; ``TooManyItems`` once an array at those
    levels holds more than ``max_items`` elements; ``duplicate(key)`` is raised for a repeated key there."""
    i = _ws(text, 0)
    value, i = _value(text, i, decoder, 0, max_items, duplicate)
    i = _ws(text, i)
    if i != len(text):
        raise json.JSONDecodeError("Extra data", text, i)
    return value


def _value(text: str, i: int, decoder: json.JSONDecoder, level: int, max_items: int,
           duplicate: Callable[[str], Exception]) -> tuple[Any, int]:
    if i >= len(text):
        raise json.JSONDecodeError("Expecting value", text, i)
    c = text[i]
    if level < 2 and c == "{":
        return _object(text, i + 1, decoder, level, max_items, duplicate)
    if level < 3 and c == "[":
        return _array(text, i + 1, decoder, max_items)
    return decoder.raw_decode(text, i)


def _object(text: str, i: int, decoder: json.JSONDecoder, level: int, max_items: int,
            duplicate: Callable[[str], Exception]) -> tuple[dict[str, Any], int]:
    out: dict[str, Any] = {}
    i = _ws(text, i)
    if text.startswith("}", i):
        return out, i + 1
    while True:
        if not text.startswith('"', i):
            raise json.JSONDecodeError("Expecting property name enclosed in double quotes", text, i)
        key, i = scanstring(text, i + 1, True)
        i = _ws(text, i)
        if not text.startswith(":", i):
            raise json.JSONDecodeError("Expecting ':' delimiter", text, i)
        i = _ws(text, i + 1)
        value, i = _value(text, i, decoder, level + 1, max_items, duplicate)
        if key in out:
            raise duplicate(key)
        out[key] = value
        i = _ws(text, i)
        if text.startswith("}", i):
            return out, i + 1
        if not text.startswith(",", i):
            raise json.JSONDecodeError("Expecting ',' delimiter", text, i)
        i = _ws(text, i + 1)


def _array(text: str, i: int, decoder: json.JSONDecoder, max_items: int) -> tuple[list[Any], int]:
    out: list[Any] = []
    i = _ws(text, i)
    if text.startswith("]", i):
        return out, i + 1
    raw_decode = decoder.raw_decode
    while True:
        item, i = raw_decode(text, i)
        out.append(item)
        if len(out) > max_items:
            raise TooManyItems(max_items)
        i = _ws(text, i)
        if text.startswith("]", i):
            return out, i + 1
        if not text.startswith(",", i):
            raise json.JSONDecodeError("Expecting ',' delimiter", text, i)
        i = _ws(text, i + 1)
