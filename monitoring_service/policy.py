"""The retraining policy: given the champion's reports and past decisions, retrain now or not.

A pure function of its inputs (``decide``), so every decision can be replayed from the rows it names:
the reports (``fti_drift_reports``) and the previous decisions (``fti_retrain_decisions``).

Triggers (any): drift in ``drift_windows`` of the champion's last ``of_last`` complete windows; at least
``min_new_labels`` served predictions whose label has arrived since the champion's training cut; the
``every`` schedule since that cut. Time is the prediction log's (window ends), not the wall clock, so a
replay decides the same. Only windows after the one that triggered the last attempt count towards the
next drift trigger (the same drifted windows never fire twice, so a refused candidate is not retried
until new windows drift); the cooldown counts from the last retraining that was promoted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pandas as pd

from shared import feature_table as ft
from shared.spec import RetrainSpec


@dataclass(frozen=True)
class Verdict:
    fire: bool
    action: str  # "retrain" | "none" | "cooldown"
    reason: str
    trigger: dict[str, Any] = field(default_factory=dict)
    report_ids: list[str] = field(default_factory=list)


def decide(policy: RetrainSpec, reports: list[dict[str, Any]], *, last_trigger_end: datetime | None,
           last_promoted_end: datetime | None = None, new_labels: int = 0,
           champion_cut: datetime | None = None) -> Verdict:
    """``reports``: the champion's complete windows, oldest first (``window_end``, ``report_id``,
    ``drift`` True/False/None). ``last_trigger_end``: the end of the window that triggered the last
    attempt (None: never); ``last_promoted_end``: ... of the last attempt that was promoted."""
    fresh = [r for r in reports if last_trigger_end is None or r["window_end"] > last_trigger_end]
    judged = [r for r in fresh if r["drift"] is not None]
    recent = judged[-policy.of_last:]
    drifted = [r for r in recent if r["drift"]]
    now = reports[-1]["window_end"] if reports else None
    why: list[str] = []
    trigger: dict[str, Any] = {}
    if len(drifted) >= policy.drift_windows:
        why.append(f"drift in {len(drifted)} of the last {len(recent)} windows")
        trigger["drift"] = {"drifted_windows": len(drifted), "of": len(recent)}
    if policy.min_new_labels is not None and new_labels >= policy.min_new_labels:
        why.append(f"{new_labels} new labeled predictions (>= {policy.min_new_labels})")
        trigger["labels"] = new_labels
    if policy.every is not None and champion_cut is not None and now is not None and \
            pd.Timestamp(now) - pd.Timestamp(champion_cut) >= pd.Timedelta(policy.every):
        why.append(f"{policy.every} since the champion's training data")
        trigger["schedule"] = policy.every
    ids = [r["report_id"] for r in recent]
    if not why:
        return Verdict(False, "none", f"no trigger ({len(drifted)} of the last {len(recent)} windows drifted; "
                                      f"{policy.drift_windows} needed)", {}, ids)
    if last_promoted_end is not None and now is not None and \
            pd.Timestamp(now) - pd.Timestamp(last_promoted_end) < pd.Timedelta(policy.cooldown):
        return Verdict(False, "cooldown", "; ".join(why) + f", but within the {policy.cooldown} cooldown of the "
                                                         "last retraining", trigger, ids)
    trigger["window_end"] = ft.iso_utc(now) if now is not None else None
    return Verdict(True, "retrain", "; ".join(why), trigger, ids)


__all__ = ["Verdict", "decide"]
