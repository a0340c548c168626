"""Plain cells of a text column, decided a whole column at a time; every other cell goes cell by cell.

Why: :mod:`shared.raw` reads each cell with Python-level rules (what is missing, what is a number, which
timestamps are valid and whether they carry an offset). Those rules are the definition, and a CSV
source of a million rows spent most of the feature job's partition phase in them. Almost every cell
in a real file is *plain*: a decimal number without spaces, a timestamp in one strict ISO form, a
word that starts with a visible ASCII character, or an empty cell. For a plain cell the rules' result is known
without running them:

* numbers: a cell matching the ASCII decimal pattern with no surrounding space is ``float(cell)``
  (Arrow's correctly rounded cast, or numpy's cast of the object array, which calls ``float`` itself);
  an empty cell is missing; ``bool``
  columns: the exact lower-case words of the true and false sets;
* text: a cell whose first character is visible ASCII (``!``..``~``) is not blank, so it is kept as is;
* timestamps: ``YYYY-MM-DD``, optionally ``[T ]hh:mm:ss[.f{1,9}]`` and then ``Z`` or ``+hh:mm`` /
  ``-hh:mm``, parsed by pandas' ISO 8601 parser (the one ``pd.Timestamp`` uses), kept only where it
  gave a time within the business bounds; anything it refused goes cell by cell, which then names
  the problem.

Everything else -- nulls, padded or exotic text, other number spellings, out-of-range or invalid
dates -- is left to the cell-by-cell rules, so the result is theirs by construction.
``tests/unit/shared/test_raw_plain.py`` checks both ways give the same arrays, the same problems
and the same row numbers, on generated columns full of awkward cells.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

_DECIMAL = r"^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$"
_TIMESTAMP = (r"^[0-9]{4}-[0-9]{2}-[0-9]{2}"
              r"(?:[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?(?:Z|[+-][0-9]{2}:[0-9]{2})?)?$")
_OFFSET = r"(?:Z|[+-][0-9]{2}:[0-9]{2})$"
_VISIBLE_FIRST = r"^[!-~]"
MIN_ROWS = 64  # below this, the column-wide set-up costs more than it saves


@dataclass(frozen=True)
class Plain:
    """The plain cells of a column (``mask``), their values, and for timestamps which carry an offset."""

    mask: np.ndarray
    values: np.ndarray | None = None
    missing: np.ndarray | None = None
    aware: np.ndarray | None = None


def arrow_strings(values: Any) -> Any | None:
    """The column as an Arrow string array, or None when it holds anything but text and nulls (numbers
    from a typed source, lone surrogates, ...): such a column goes cell by cell."""
    import pyarrow as pa

    try:
        if isinstance(values, pd.Series) and isinstance(values.dtype, pd.StringDtype) \
                and values.dtype.storage == "pyarrow":
            arr = pa.array(values)
        else:
            arr = pa.array(np.asarray(values, dtype=object), type=pa.string(), from_pandas=True)
    except (pa.ArrowException, TypeError, ValueError, OverflowError, UnicodeError):
        return None
    if not pa.types.is_string(arr.type) and not pa.types.is_large_string(arr.type):
        return None
    return arr


def _matches(arr: Any, pattern: str) -> np.ndarray:
    import pyarrow.compute as pc

    hit = pc.fill_null(pc.match_substring_regex(arr, pattern=pattern), False)
    return np.asarray(hit.to_numpy(zero_copy_only=False), dtype=bool)


def _equals_any(arr: Any, words: list[str]) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    hit = pc.fill_null(pc.is_in(arr, value_set=pa.array(words, type=arr.type)), False)
    return np.asarray(hit.to_numpy(zero_copy_only=False), dtype=bool)


def numeric(arr: Any, raw: np.ndarray, *, is_bool: bool, true_words: list[str], false_words: list[str]) -> Plain:
    """Plain cells of a number column: decimals (or the exact true/false words), and empty cells."""
    empty = _equals_any(arr, [""])
    values = np.full(len(raw), np.nan, dtype=np.float64)
    if is_bool:
        yes, no = _equals_any(arr, true_words), _equals_any(arr, false_words)
        values[yes], values[no] = 1.0, 0.0
        decided = yes | no
    else:
        decided = _matches(arr, _DECIMAL)
        if decided.any():
            values[decided] = _decimals(arr, raw, decided)
    return Plain(decided | empty, values, empty)


def _decimals(arr: Any, raw: np.ndarray, decided: np.ndarray) -> np.ndarray:
    """``float(cell)`` of the decided cells (ASCII decimals). Arrow's cast parses them correctly rounded, as
    ``float`` does, so the same doubles (``tests/unit/shared/test_raw_plain.py``), ~10x faster than numpy's
    cast of the object array, which calls ``float`` per cell; that cast if Arrow refuses any of them."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        return np.asarray(pc.cast(arr.filter(pa.array(decided)), pa.float64()).to_numpy(zero_copy_only=False),
                          dtype=np.float64)
    except (pa.ArrowException, ValueError, TypeError, OverflowError):
        return raw[decided].astype(np.float64)


def text(arr: Any) -> Plain:
    """Plain cells of a text column: a first character that is visible ASCII, so never blank."""
    return Plain(_matches(arr, _VISIBLE_FIRST))


def timestamps(arr: Any, raw: np.ndarray, *, low: pd.Timestamp, high: pd.Timestamp) -> Plain:
    """Plain cells of a timestamp column: the strict ISO form, parsed, within [low, high); and empty cells."""
    empty = _equals_any(arr, [""])
    shaped = _matches(arr, _TIMESTAMP)
    micros = np.full(len(raw), np.iinfo(np.int64).min, dtype=np.int64)  # shared.raw.NAT_MICROS: missing
    good = np.zeros(len(raw), dtype=bool)
    if shaped.any():
        idx = np.flatnonzero(shaped)
        parsed = pd.to_datetime(pd.Series(raw[idx], dtype=object), format="ISO8601", utc=True, errors="coerce")
        ok = (parsed.notna() & (parsed >= low) & (parsed < high)).to_numpy(dtype=bool)
        kept = idx[ok]
        ns = parsed[ok].dt.as_unit("ns").to_numpy(dtype="datetime64[ns]").view(np.int64)
        micros[kept] = ns // 1000  # Timestamp.value // 1000, as the cell-by-cell rule
        good[kept] = True
    aware = _matches(arr, _OFFSET) & good
    return Plain(good | empty, micros, empty, aware)


def longer_than(arr: Any, max_length: int, where: np.ndarray) -> np.ndarray:
    """Rows among ``where`` whose text has more than ``max_length`` characters (code points, as ``len``)."""
    import pyarrow.compute as pc

    lengths = np.asarray(pc.fill_null(pc.utf8_length(arr), 0).to_numpy(zero_copy_only=False), dtype=np.int64)
    return np.flatnonzero(where & (lengths > max_length))


def equal_to(arr: Any, word: str, where: np.ndarray) -> np.ndarray:
    """Rows among ``where`` whose text is exactly ``word``."""
    return np.flatnonzero(where & _equals_any(arr, [word]))
