"""Encode a large response body without one long GIL hold.

``json.JSONEncoder.encode`` turns a 10,000-row answer into text in one C call (~5-10 ms) that holds
the GIL the whole time, so the event loop -- answering ``/health/live`` -- waits behind it. Encoding
the one long list a slice at a time gives the loop the GIL back between slices; the text is the same.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

CHUNK_ITEMS = 256


def encode_last_list(encode: Callable[[Any], str], obj: dict[str, Any], key: str, *, item_separator: str,
                     key_separator: str, chunk: int = CHUNK_ITEMS) -> str:
    """``encode(obj)`` where ``obj[key]`` -- the dict's last member -- is a list, encoded in slices.

    ``item_separator`` and ``key_separator`` must be the encoder's own (``", "`` / ``": "`` by default)."""
    items = obj[key]
    if list(obj)[-1] != key or not isinstance(items, list) or len(items) <= chunk:
        return encode(obj)
    head = {k: v for k, v in obj.items() if k != key}
    parts = [encode(items[i:i + chunk])[1:-1] for i in range(0, len(items), chunk)]
    opening = encode(head)[:-1] + item_separator if head else "{"
    return f"{opening}{encode(key)}{key_separator}[{item_separator.join(parts)}]}}"
