"""Point-in-time history aggregates for many rows at once, equal to the per-row rules bit for bit.

Why: :class:`shared.transformers.PointInTimeHistory` computed each row's aggregates by slicing its
entity's earlier events and reducing them (``_reduce``): O(n*k) per entity and tens of microseconds of
Python per row and aggregate, the feature job's longest phase. Here every row's window is found at once
(``searchsorted`` on an (entity, time-rank) key) and reduced without visiting its events:

* ``count``: ``hi - lo``;
* ``sum`` / ``mean``: exact prefix sums of the values as integers (each float times 2**1074 is an
  integer), so a window's sum is one subtraction, and the division by 2**1074 rounds it correctly --
  the value ``math.fsum`` returns for the same events (both are the correctly rounded exact sum);
  non-missing counts by a prefix count;
* ``max`` / ``min``: ``numpy.fmax/fmin.reduceat`` over the windows (missing values skipped);
* ``days_since_last``: from the window's last event.

What it does not cover is left to the per-row rules, row by row (:func:`fast_history` returns those
rows): a window holding an event not yet known at the row's known-at time (late arrivals: the window is
then not contiguous); a ``sum``/``mean`` input with an infinite value or values large enough that
``math.fsum`` could overflow part-way (its ``OverflowError`` becomes NaN there); known-at times that are
neither absent nor each row's own time. ``tests/unit/shared/test_history_fast.py`` compares both paths
on generated data with ties, windows, missing values, signed zeros, huge values and late arrivals.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

_US_PER_DAY = 86_400_000_000
_SCALE = 1 << 1074  # 2**1074 * a finite float64 is an integer
_SAFE_TOTAL = 1e306  # below this no partial sum of math.fsum can overflow


def _scaled(values: np.ndarray) -> list[int]:
    """Each finite float as the integer ``v * 2**1074`` (missing values as 0)."""
    out = []
    for v in values.tolist():
        if v != v:  # NaN: missing, skipped by the reductions
            out.append(0)
            continue
        n, d = v.as_integer_ratio()
        out.append(n << (1074 - (d.bit_length() - 1)))
    return out


def fast_history(aggs: list[dict[str, Any]], q_ent: np.ndarray, q_t: np.ndarray, e_ent_s: np.ndarray,
                 e_t_s: np.ndarray, values: dict[str, np.ndarray], e_known: np.ndarray | None,
                 known_at: np.ndarray | None, out: dict[str, np.ndarray]) -> np.ndarray:
    """Fill ``out[name][i]`` for the rows it can compute; return the row indices left to the per-row rules.

    ``e_ent_s``/``e_t_s``/``values``/``e_known``: the events sorted by (entity text, time), as
    ``PointInTimeHistory._append`` sorts them; ``q_ent``/``q_t``: the rows' entities and times;
    ``known_at``: per-row known-at times (the events' ``e_known`` must be at or before), or None."""
    n = len(q_t)
    if n == 0:
        return np.arange(0)
    uniq, starts = np.unique(e_ent_s, return_index=True) if len(e_ent_s) else (e_ent_s, np.arange(0))
    q_text = np.asarray([str(e) for e in q_ent], dtype=object)
    code = np.searchsorted(uniq, q_text) if len(uniq) else np.zeros(n, dtype=np.int64)
    found = (code < len(uniq))
    found[found] = uniq[code[found]] == q_text[found]
    code = np.where(found, code, -1)

    windows = sorted({float(a["window_days"]) for a in aggs if a.get("window_days")})
    shifts = {w: int(round(w * _US_PER_DAY)) for w in windows}
    # dense time ranks over every time compared, so (entity, rank) fits one int64 key
    thresholds = [q_t] + [q_t - shifts[w] for w in windows]
    all_t = np.concatenate([e_t_s, *thresholds])
    ranks_all, inverse = np.unique(all_t, return_inverse=True)
    width = np.int64(len(ranks_all) + 1)
    e_code = np.repeat(np.arange(len(uniq), dtype=np.int64), np.diff(np.append(starts, len(e_ent_s))))
    e_key = e_code * width + inverse[:len(e_t_s)]
    at = len(e_t_s)
    q_rank = inverse[at:at + n]
    safe_code = np.where(code >= 0, code, 0).astype(np.int64)
    hi = np.searchsorted(e_key, safe_code * width + q_rank, side="left")
    base = np.searchsorted(e_key, safe_code * width, side="left")
    lo_for: dict[float | None, np.ndarray] = {None: base}
    for k, w in enumerate(windows):
        rank = inverse[at + n * (k + 1):at + n * (k + 2)]
        lo_for[w] = np.maximum(np.searchsorted(e_key, safe_code * width + rank, side="left"), base)
    hi = np.where(code >= 0, hi, 0)
    for key in list(lo_for):
        lo_for[key] = np.where(code >= 0, np.minimum(lo_for[key], hi), 0)

    slow = np.zeros(n, dtype=bool)
    if e_known is not None and known_at is not None:
        slow |= _late_in_window(e_known, known_at, lo_for, hi)

    for a in aggs:
        lo = lo_for[float(a["window_days"]) if a.get("window_days") else None]
        op = a["op"]
        col = out[a["name"]]
        if op == "count":
            col[:] = (hi - lo).astype(np.float64)
        elif op == "days_since_last":
            has = hi > lo
            last = e_t_s[np.maximum(hi - 1, 0)] if len(e_t_s) else np.zeros(n, dtype=np.int64)
            col[:] = np.where(has, (q_t - last).astype(np.float64) / _US_PER_DAY, np.nan)
        elif op in ("max", "min"):
            _extreme(col, values[a["input"]], lo, hi, op)
        else:  # sum, mean
            vals = values[a["input"]]
            finite = vals[~np.isnan(vals)]
            if len(finite) and (not np.isfinite(finite).all()
                                or float(np.abs(finite).max()) * len(finite) >= _SAFE_TOTAL):
                slow[:] = True  # fsum's own overflow and infinity rules: the per-row path
                continue
            present = np.concatenate([[0], np.cumsum(~np.isnan(vals))])
            prefix = list(itertools.accumulate(_scaled(vals), initial=0))
            cnt = present[hi] - present[lo]
            totals = np.fromiter(((prefix[h] - prefix[lo_]) / _SCALE for lo_, h in zip(lo.tolist(), hi.tolist(),
                                                                                        strict=True)),
                                 dtype=np.float64, count=n)
            if op == "sum":
                col[:] = np.where(cnt > 0, totals, 0.0)
            else:
                with np.errstate(invalid="ignore", divide="ignore"):
                    col[:] = np.where(cnt > 0, totals / np.maximum(cnt, 1), np.nan)
    return np.flatnonzero(slow)


def _extreme(col: np.ndarray, vals: np.ndarray, lo: np.ndarray, hi: np.ndarray, op: str) -> None:
    """max/min over each [lo, hi) window, missing values skipped; an empty or all-missing window is NaN."""
    col[:] = np.nan
    nonempty = hi > lo
    if not nonempty.any() or len(vals) == 0:
        return
    ufunc = np.fmax if op == "max" else np.fmin
    idx = np.flatnonzero(nonempty)
    pairs = np.empty(2 * len(idx), dtype=np.int64)
    pairs[0::2] = lo[idx]
    pairs[1::2] = hi[idx]
    padded = np.append(vals, np.nan)  # so that hi == len(vals) is a valid reduceat index
    reduced = ufunc.reduceat(padded, pairs)[0::2]
    col[idx] = reduced


def _late_in_window(e_known: np.ndarray, known_at: np.ndarray,
                    lo_for: dict[float | None, np.ndarray], hi: np.ndarray) -> np.ndarray:
    """Rows whose widest window holds an event not yet known at the row's known-at time: the latest
    known-time over each window (``maximum.reduceat``) is after the row's known-at time."""
    lo = lo_for[None]
    mask = np.zeros(len(hi), dtype=bool)
    idx = np.flatnonzero(hi > lo)
    if len(idx) == 0 or len(e_known) == 0:
        return mask
    pairs = np.empty(2 * len(idx), dtype=np.int64)
    pairs[0::2] = lo[idx]
    pairs[1::2] = hi[idx]
    padded = np.append(e_known, np.iinfo(np.int64).min)
    latest = np.maximum.reduceat(padded, pairs)[0::2]
    mask[idx] = latest > known_at[idx]
    return mask


__all__ = ["fast_history"]
