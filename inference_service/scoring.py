"""The one place a loaded model turns model-input rows into probabilities.

Every caller (``/predict``, ``/invocations``, ``fti predict-batch``, the
parity certificate) goes through :func:`predict_proba`, so whichever
implementation answers -- the fitted sklearn pipeline, or a fast path proven
equal to it at load -- is chosen in one place.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def predict_proba(model: Any, X: pd.DataFrame) -> np.ndarray:
    """Class probabilities for the model-input frame ``X`` (columns: ``model.features``)."""
    return np.asarray(model.pipeline.predict_proba(X[model.features]), dtype=np.float64)
