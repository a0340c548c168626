"""Spec -> feature computation, the same code for the batch and the online path.

``compute_batch`` is what the feature job runs over a whole source; each row's
history comes from the other rows. ``compute_online`` is what serving runs for
incoming records; their history comes from rows already in the feature table.
Both apply the same transformers with the same parameters, so a record that
is in the table scores identically either way.
"""

from __future__ import annotations

import pandas as pd

from shared.spec import DatasetSpec
from shared.transformers import DerivedFeatures, PointInTimeHistory


def derived_step(spec: DatasetSpec) -> DerivedFeatures:
    return DerivedFeatures([d.model_dump(mode="json") for d in spec.features.derived] or None)


def history_step(spec: DatasetSpec) -> PointInTimeHistory | None:
    if not spec.features.history:
        return None
    aggs = [h.model_dump(mode="json", exclude_none=True) for h in spec.features.history]
    return PointInTimeHistory(entity=spec.entity_key, time=spec.event_time, aggregations=aggs,
                              known_time=spec.source.ingestion_time)


def compute_batch(raw: pd.DataFrame, spec: DatasetSpec) -> pd.DataFrame:
    """Canonical raw frame (all rows of a version) -> frame with derived + history columns."""
    frame = derived_step(spec).fit_transform(raw)
    history = history_step(spec)
    if history is not None:
        frame = history.fit_transform(frame)
    return frame


def compute_online(records: pd.DataFrame, events: pd.DataFrame, spec: DatasetSpec, *,
                   replay: bool = False) -> pd.DataFrame:
    """Canonical request records + their entities' stored events -> feature frame.

    ``events`` are feature-table rows (they already carry the raw columns the
    history aggregates read). Incoming records never see each other as history,
    so a record scores the same alone or inside any batch.

    A live request (``replay=False``) sees every event the feature version
    holds: the store only holds what is known. A replayed past record
    (``replay=True``: the parity certificate, a feature-table row re-scored) sees
    what was known at its own time, exactly as the feature job computed it --
    events ingested after the record's time are left out (the known-by rule,
    ``docs/spec.md``).
    """
    frame = derived_step(spec).fit_transform(records)
    history = history_step(spec)
    if history is not None:
        history.fit(frame)
        frame = history.transform_with_history(frame, events, "row_time" if replay else None)
    return frame
