"""The data-quality gate a retraining passes before any fit: is the new feature version fit to learn from?

Checked on the version's labeled rows against the retraining policy: enough rows, no column more
missing than allowed, and (binary labels) a positive share within the stated bounds. A failure names
every problem; nothing is trained.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine

from shared import feature_table as ft
from shared.spec import DatasetSpec, RetrainSpec


def check(engine: Engine, spec: DatasetSpec, version: int, policy: RetrainSpec) -> dict[str, Any]:
    frame = ft.read_version(engine, spec, version)
    labeled = frame[frame[spec.label].notna()]
    problems: list[str] = []
    if len(labeled) < policy.min_rows:
        problems.append(f"{len(labeled)} labeled rows, at least {policy.min_rows} needed")
    missing = {c: float(labeled[c].isna().mean()) for c in spec.model_features if c in labeled and len(labeled)}
    for c, rate in sorted(missing.items()):
        if rate > policy.max_missing_rate:
            problems.append(f"{c} is missing in {rate:.1%} of rows (at most {policy.max_missing_rate:.1%})")
    out: dict[str, Any] = {"version": version, "rows": int(len(frame)), "labeled_rows": int(len(labeled)),
                           "max_missing": max(missing.values(), default=0.0)}
    if spec.model.task == "classification" and len(labeled):
        shares = labeled[spec.label].astype(str).value_counts(normalize=True)
        out["label_shares"] = {str(k): float(v) for k, v in sorted(shares.items())}
        if policy.label_rate is not None:
            lo, hi = policy.label_rate
            pos = str(spec.model.positive_class) if spec.model.positive_class is not None else \
                sorted(shares.index, key=str)[-1]
            rate = float(shares.get(pos, 0.0))
            if not lo <= rate <= hi:
                problems.append(f"label {pos!r} share {rate:.2%} is outside [{lo:.2%}, {hi:.2%}]")
    out["problems"] = problems
    out["passed"] = not problems
    return out


__all__ = ["check"]
