"""The one place a loaded model turns model-input rows into probabilities.

Every caller (``/predict``, ``/invocations``, ``fti predict-batch``, the
parity certificate) goes through :func:`predict_proba` or
:func:`predict_columns`, so whichever implementation answers -- the fitted
sklearn pipeline, or the fast path (:mod:`inference_service.fastpath`) -- is
chosen in one place, once per model, by :func:`prepare`:

1. compile the fast path from the fitted pipeline (refused steps: the
   pipeline serves, and ``/model`` says why);
2. run the certificate's model inputs and a seeded sample generated from the
   fitted parameters (every known category, unknown and missing ones, NaN,
   ``-0.0``, extreme values) through both -- in one large batch, in small
   batches and one row at a time, each against the pipeline given the same
   rows -- and require bit-identical model inputs and probabilities;
3. any difference, or any error, switches the fast path off for this model.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from inference_service import fastpath
from shared import rowwise

log = logging.getLogger(__name__)

SAMPLE_ROWS = 512
SINGLE_ROW_CHECKS = 24  # rows also checked one at a time (each against the pipeline on that row alone)
CHUNK_CHECKS = 4  # small batches checked (each against the pipeline on the same rows)
SCORE_CHUNK_ROWS = 1024


@dataclass(frozen=True)
class Scorer:
    pipeline: Any
    features: list[str]
    numeric: frozenset[str]
    fast: fastpath.FastPath | None = None
    status: dict[str, Any] = field(default_factory=dict)

    def predict_frame(self, X: pd.DataFrame) -> np.ndarray:
        if self.fast is not None:
            return self.fast.predict_proba_frame(X)
        return rowwise.predict_proba(self.pipeline, X[self.features])

    def predict_columns(self, columns: dict[str, np.ndarray], n: int) -> np.ndarray:
        """Canonical columns: numeric -> float64 arrays (NaN missing); categorical -> object arrays.

        Large batches are scored ``SCORE_CHUNK_ROWS`` rows at a time: every answer is the row's own
        (``rowwise``), so the result is the same, and no single numpy or pandas call holds the GIL
        long enough to stall the event loop (``/health/live`` behind a 10,000-row request)."""
        if n > SCORE_CHUNK_ROWS:
            return np.vstack([self._predict_columns({k: v[i:i + SCORE_CHUNK_ROWS] for k, v in columns.items()},
                                                    min(SCORE_CHUNK_ROWS, n - i))
                              for i in range(0, n, SCORE_CHUNK_ROWS)])
        return self._predict_columns(columns, n)

    def _predict_columns(self, columns: dict[str, np.ndarray], n: int) -> np.ndarray:
        if self.fast is not None:
            return self.fast.predict_proba(columns, n)
        frame = pd.DataFrame({name: columns[name] for name in self.features})
        return rowwise.predict_proba(self.pipeline, frame)


def predict_proba(model: Any, X: pd.DataFrame) -> np.ndarray:
    """Class probabilities for the model-input frame ``X`` (columns: ``model.features``)."""
    scorer = getattr(model, "scorer", None)
    if scorer is not None:
        return scorer.predict_frame(X)
    return rowwise.predict_proba(model.pipeline, X[model.features])


def predict_columns(model: Any, columns: dict[str, np.ndarray], n: int) -> np.ndarray:
    scorer = getattr(model, "scorer", None) or plain_scorer(model.pipeline, model.features, "not prepared")
    return scorer.predict_columns(columns, n)


def plain_scorer(pipeline: Any, features: list[str], reason: str) -> Scorer:
    caster = pipeline.steps[0][1] if hasattr(pipeline, "steps") else None
    numeric = frozenset(getattr(caster, "numeric_", features))
    return Scorer(pipeline, list(features), numeric, None, {"mode": "pipeline", "reason": reason})


def prepare(pipeline: Any, features: list[str], certificate: dict[str, Any] | None, *,
            enabled: bool = True, tree_max_rows: int = 128) -> Scorer:
    """A scorer for this pipeline: the fast path if it is proven equal, otherwise the pipeline."""
    if not enabled:
        return plain_scorer(pipeline, features, "fast path disabled (FTI_FAST_PATH=false)")
    t0 = time.perf_counter()
    try:
        fast = fastpath.compile_pipeline(pipeline, tree_max_rows=tree_max_rows)
    except fastpath.Unsupported as exc:
        log.warning("fast path not used: %s; the sklearn pipeline serves", exc)
        return plain_scorer(pipeline, features, f"not compiled: {exc}")
    if fast.features != list(features):
        return plain_scorer(pipeline, features, "the pipeline's input columns differ from the model's features")
    try:
        report = verify(fast, pipeline, certificate)
    except Exception as exc:  # noqa: BLE001 - a check that cannot run is a failed check
        log.exception("fast path verification could not run; the sklearn pipeline serves")
        report = {"passed": False, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    report["seconds"] = round(time.perf_counter() - t0, 3)
    report["trees_compiled"] = fast.trees is not None
    report["tree_max_rows"] = fast.tree_max_rows if fast.trees is not None else 0
    if fast.notes:
        report["notes"] = list(fast.notes)
    if not report["passed"]:
        log.error("fast path REFUSED, the sklearn pipeline serves: %s", report)
        return Scorer(pipeline, list(features), fast.numeric, None, {"mode": "pipeline", **report,
                                                                      "reason": "verification failed"})
    log.info("fast path verified: %d rows bit-identical to the pipeline (%s) in %.2fs", report["rows"],
             ", ".join(report["regimes"]), report["seconds"])
    return Scorer(pipeline, list(features), fast.numeric, fast, {"mode": "fast", **report})


# ---------------------------------------------------------------------- verification


def verify(fast: fastpath.FastPath, pipeline: Any, certificate: dict[str, Any] | None,
           *, sample_rows: int = SAMPLE_ROWS, seed: int = 0) -> dict[str, Any]:
    """Compare the fast path with ``pipeline.predict_proba`` on every regime it serves."""
    frames = []
    if certificate and certificate.get("features"):
        frames.append(frame_from_records(certificate["features"], fast))
    frames.append(generated_sample(fast, sample_rows, seed))
    frame = pd.concat(frames, ignore_index=True)
    want = rowwise.predict_proba(pipeline, frame[fast.features])
    columns = {name: _column(frame, name, fast) for name in fast.features}
    n = len(frame)
    # Model inputs first: a drift too small to move today's outputs is still a broken promise.
    want_matrix = np.asarray(pipeline[:-1].transform(frame[fast.features]), dtype=np.float64)
    got_matrix = fast.matrix(columns, n)
    if got_matrix.shape != want_matrix.shape or not _same_bits(got_matrix, want_matrix):
        bad = np.flatnonzero(~_equal_cells(got_matrix, want_matrix).all(axis=1)) \
            if got_matrix.shape == want_matrix.shape else np.arange(n)
        return {"passed": False, "rows": n, "regime": "model inputs (preprocessed matrix)",
                "differing_rows": int(len(bad)), "first_rows": [int(r) for r in bad[:5]]}
    # Each regime against the reference: the pipeline applied to each row alone (shared.rowwise),
    # which a BLAS-based estimator (LogisticRegression) needs -- scikit-learn rounds a row inside
    # a batch differently; one-row regimes are compared with scikit-learn itself on that row.
    step = max(1, fast.tree_max_rows)
    chunks = [(0, n)] + [(i, min(i + step, n)) for i in range(0, min(n, CHUNK_CHECKS * step), step)] \
        + [(i, i + 1) for i in range(min(n, SINGLE_ROW_CHECKS))]
    regimes = ["one large batch", f"batches of {step}", "one row at a time"]
    for a, b in chunks:
        regime = regimes[0] if b - a == n else regimes[2] if b - a == 1 else regimes[1]
        got = fast.predict_proba(_rows(columns, a, b), b - a)
        # one row: scikit-learn's own answer on that row alone, the definition of the reference
        ref = want if (a, b) == (0, n) else rowwise.outputs(pipeline, frame.iloc[a:b][fast.features]) \
            if b - a == 1 else \
            rowwise.predict_proba(pipeline, frame.iloc[a:b][fast.features])
        if got.shape != ref.shape or not np.array_equal(got, ref):
            diff = np.abs(got - ref) if got.shape == ref.shape else np.full((b - a, 1), np.inf)
            rows = np.flatnonzero(diff.reshape(len(diff), -1).max(axis=1) > 0) + a
            return {"passed": False, "rows": n, "regime": regime, "differing_rows": int(len(rows)),
                    "first_rows": [int(r) for r in rows[:5]], "max_abs_diff": float(np.max(diff))}
    return {"passed": True, "rows": n, "regimes": regimes,
            "certificate_rows": len(certificate.get("features") or []) if certificate else 0}


def _equal_cells(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cell-wise equality that treats NaN as equal to NaN and tells 0.0 from -0.0."""
    return ((a == b) & (np.signbit(a) == np.signbit(b))) | (np.isnan(a) & np.isnan(b))


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(_equal_cells(a, b).all())


def _rows(columns: dict[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
    return {k: v[start:stop] for k, v in columns.items()}


def _column(frame: pd.DataFrame, name: str, fast: fastpath.FastPath) -> np.ndarray:
    if name in fast.numeric:
        return frame[name].to_numpy(dtype=np.float64, na_value=np.nan)
    return frame[name].to_numpy(dtype=object, na_value=None)


def frame_from_records(records: list[dict[str, Any]], fast: fastpath.FastPath) -> pd.DataFrame:
    """Model-input records (JSON values, null for missing) -> a frame with the model's dtypes."""
    data: dict[str, Any] = {}
    for name in fast.features:
        values = [r.get(name) for r in records]
        if name in fast.numeric:
            data[name] = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
        else:
            data[name] = np.array(values, dtype=object)
    return pd.DataFrame(data)


def generated_sample(fast: fastpath.FastPath, n: int, seed: int) -> pd.DataFrame:
    """Rows that exercise every branch the fast path has: read off its own fitted parameters."""
    rng = np.random.default_rng(seed)
    centre: dict[str, float] = {}
    spread: dict[str, float] = {}
    categories: dict[str, list[str]] = {}
    for block in fast.blocks:
        if isinstance(block, fastpath._OneHotBlock | fastpath._OrdinalBlock):
            maps: list[dict[str, Any]] = list(block.maps)
            for name, table in zip(block.columns, maps, strict=True):
                categories[name] = sorted(table)
        else:
            for step in block.steps:
                for j, name in enumerate(block.columns):
                    if step.kind == "impute" and step.a is not None:
                        centre.setdefault(name, float(step.a[j]))
                    if step.kind == "scale" and step.b is not None:
                        spread[name] = float(step.b[j])
                    if step.kind == "scale" and step.a is not None:
                        centre[name] = float(step.a[j])
    data: dict[str, Any] = {}
    for name in fast.features:
        if name in fast.numeric:
            c, s = centre.get(name, 0.0), spread.get(name, 1.0)
            values = c + s * rng.standard_normal(n) * rng.choice([0.1, 1.0, 3.0, 30.0], size=n)
            pick = rng.random(n)
            values[pick < 0.15] = np.nan
            values[(pick >= 0.15) & (pick < 0.2)] = centre.get(name, 0.0)
            values[(pick >= 0.2) & (pick < 0.23)] = -0.0
            values[(pick >= 0.23) & (pick < 0.26)] = rng.choice([1e12, -1e12, 1e-300, 5e-324], size=1)[0]
            values[(pick >= 0.26) & (pick < 0.4)] = np.round(values[(pick >= 0.26) & (pick < 0.4)])
            data[name] = values
        else:
            known = categories.get(name, [])
            odd: list[Any] = [None, "", "   ", "__missing__", "unseen-category", "ÜNKNÖWN ✓", 7]
            pool = known * 4 + odd
            data[name] = np.array([pool[i] for i in rng.integers(0, len(pool), size=n)], dtype=object)
            data[name][: min(n, len(known))] = known[: min(n, len(known))]  # every known category at least once
    return pd.DataFrame(data)
