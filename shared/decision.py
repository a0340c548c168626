"""The decision policy: which score makes a binary model say "yes".

A classifier's ``predict`` is argmax -- a threshold of 0.5 on the positive class -- which at a
5% base rate flags almost nothing. ``model.decision`` in the spec states what the business wants
(the best F-beta, a precision or recall it must reach, the cost of a false positive and of a false
negative, or a fixed share of cases to review); training chooses the threshold on the evaluation
split for that objective, stores it beside the model (``extra_files/decision.json``, covered by the
artifact digest) and logs it as the metric ``decision.threshold``, so ``fti reproduce`` recomputes
and compares it. Serving, batch scoring and lineage apply it the same way, through :func:`apply`:
a record is the positive class when its score is ``>=`` the threshold.

Shared because training chooses the rule and every stage that answers must apply it identically.
The threshold is one of the evaluation scores (or just above 1 for "flag nothing"), chosen
deterministically: ties go to the highest threshold, the one that flags fewest.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.registry_contract import Artifact

DECISION_FILE = Artifact.DECISION
NEVER = float(np.nextafter(1.0, 2.0))  # above every probability: flags nothing

#: objective -> (metric the gate compares, higher is better)
GATE_METRIC: dict[str, tuple[str, bool]] = {
    "f_beta": ("decision.f_beta", True),
    "precision": ("decision.recall", True),  # precision is held at the target: more of the events found
    "recall": ("decision.precision", True),  # recall is held at the target: fewer false alarms
    "cost": ("decision.cost", False),  # expected cost per record
    "top_k": ("decision.precision", True),  # the same share reviewed: more of it are events
}


class DecisionError(ValueError):
    """No threshold satisfies the policy on this evaluation split; the message says what to change."""


@dataclass(frozen=True)
class Decision:
    """A fitted decision rule: the threshold on the positive class's probability, and where it came from."""

    objective: str
    threshold: float
    positive_class: str  # the class's text, as ``fti.positive_class``
    policy: dict[str, Any]  # the spec's ``model.decision``
    evaluation: dict[str, float]  # the rule's metrics on the evaluation split it was chosen on

    def as_dict(self) -> dict[str, Any]:
        return {"objective": self.objective, "threshold": self.threshold, "positive_class": self.positive_class,
                "policy": self.policy, "evaluation": self.evaluation}

    def public(self) -> dict[str, Any]:
        """What a response or lineage shows: the rule, not the evaluation detail."""
        return {"objective": self.objective, "threshold": self.threshold, "positive_class": self.positive_class}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Decision:
        threshold = data.get("threshold")
        if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not math.isfinite(threshold):
            raise ValueError(f"decision file: threshold {threshold!r} is not a finite number")
        return cls(str(data["objective"]), float(threshold), str(data["positive_class"]),
                   dict(data.get("policy") or {}), {str(k): float(v) for k, v in (data.get("evaluation") or {}).items()})


def read(model_dir: Path) -> Decision | None:
    """The decision rule stored beside a model, or None (argmax) if it has none."""
    path = model_dir / Artifact.EXTRA_FILES / DECISION_FILE
    if not path.is_file():
        return None
    return Decision.from_dict(json.loads(path.read_text()))


def apply(proba: np.ndarray, positive_index: int, threshold: float | None) -> np.ndarray:
    """Index of the decided class per row: argmax without a threshold, else (binary) the positive class
    where its probability is ``>= threshold``."""
    proba = np.asarray(proba)
    if threshold is None:
        return np.asarray(proba.argmax(axis=1))
    return np.where(proba[:, positive_index] >= threshold, positive_index, 1 - positive_index)


def _counts(y_pos: np.ndarray, flagged: np.ndarray) -> tuple[int, int, int, int]:
    tp = int(np.sum(flagged & y_pos))
    fp = int(np.sum(flagged & ~y_pos))
    fn = int(np.sum(~flagged & y_pos))
    return tp, fp, fn, int(len(y_pos)) - tp - fp - fn


def outcome_metrics(policy: dict[str, Any], y_pos: np.ndarray, flagged: np.ndarray) -> dict[str, float]:
    """``decision.*`` metrics of a yes/no rule on labelled rows (``y_pos``: the row is the positive class)."""
    y_pos = np.asarray(y_pos, dtype=bool)
    flagged = np.asarray(flagged, dtype=bool)
    tp, fp, fn, _ = _counts(y_pos, flagged)
    n = max(len(y_pos), 1)
    out = {"decision.precision": tp / (tp + fp) if tp + fp else 0.0,
           "decision.recall": tp / (tp + fn) if tp + fn else 0.0,
           "decision.f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
           "decision.flag_rate": (tp + fp) / n}
    if policy.get("objective") == "f_beta":
        b2 = float(policy.get("beta", 1.0)) ** 2
        denominator = (1 + b2) * tp + b2 * fn + fp
        out["decision.f_beta"] = (1 + b2) * tp / denominator if denominator else 0.0
    if policy.get("objective") == "cost":
        out["decision.cost"] = (float(policy["false_positive_cost"]) * fp
                                + float(policy["false_negative_cost"]) * fn) / n
    return out


def choose(policy: dict[str, Any], y_pos: np.ndarray, score: np.ndarray) -> tuple[float, dict[str, float]]:
    """The threshold for ``policy`` on an evaluation split, and the rule's ``decision.*`` metrics there.

    Candidates are the distinct scores, plus :data:`NEVER` (flag nothing) for the cost objective; each
    flags the rows whose score is ``>=`` it. Exact counts, no interpolation: the same scores always
    give the same threshold."""
    y_pos = np.asarray(y_pos, dtype=bool)
    score = np.asarray(score, dtype=np.float64)
    n = len(score)
    positives = int(y_pos.sum())
    if n == 0 or positives == 0:
        raise DecisionError("the evaluation split has no row of the positive class, so no threshold can be "
                            "chosen for model.decision: add labelled events, or enlarge model.split.test_size")
    order = np.argsort(-score, kind="mergesort")
    s, y = score[order], y_pos[order]
    last = np.r_[np.nonzero(np.diff(s))[0], n - 1]  # last row of each distinct score, highest first
    thresholds = s[last]
    tp = np.cumsum(y)[last].astype(np.float64)
    fp = np.cumsum(~y)[last].astype(np.float64)
    fn = positives - tp
    objective = policy["objective"]
    if objective == "cost":  # flagging nothing may be the cheapest rule
        thresholds = np.r_[NEVER, thresholds]
        tp, fp, fn = np.r_[0.0, tp], np.r_[0.0, fp], np.r_[float(positives), fn]
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
    recall = tp / positives
    if objective == "f_beta":
        b2 = float(policy.get("beta", 1.0)) ** 2
        best = int(np.argmax((1 + b2) * tp / ((1 + b2) * tp + b2 * fn + fp)))  # first maximum: highest threshold
    elif objective in ("precision", "recall"):
        target = float(policy["target"])
        held, other = (precision, recall) if objective == "precision" else (recall, precision)
        feasible = held >= target
        if not feasible.any():
            raise DecisionError(f"no threshold reaches {objective} {target:g} on the evaluation split (the best is "
                                f"{float(held.max()):.4f}): lower model.decision.target, or improve the model")
        best = int(np.argmax(np.where(feasible, other, -1.0)))
    elif objective == "cost":
        cost = float(policy["false_positive_cost"]) * fp + float(policy["false_negative_cost"]) * fn
        best = int(np.argmin(cost))
    elif objective == "top_k":
        k = max(1, math.ceil(float(policy["top_k"]) * n - 1e-9))
        best = int(np.searchsorted(last, k - 1))  # the distinct score that the k-th highest row has
    else:
        raise DecisionError(f"unknown model.decision.objective {objective!r}")
    threshold = float(thresholds[best])
    return threshold, {"decision.threshold": threshold, **outcome_metrics(policy, y_pos, score >= threshold)}


def fit(policy: dict[str, Any], classes: Sequence[Any] | np.ndarray, positive_index: int, y_true: np.ndarray,
        proba: np.ndarray) -> Decision:
    """:func:`choose` on a fitted binary classifier's evaluation probabilities."""
    if len(classes) != 2:
        raise DecisionError(f"model.decision applies to a binary label; this label has {len(classes)} classes "
                            f"({[str(c) for c in classes][:10]}): remove model.decision")
    positive = classes[positive_index]
    y_pos = np.asarray(y_true) == positive
    threshold, metrics = choose(policy, y_pos, np.asarray(proba)[:, positive_index])
    return Decision(str(policy["objective"]), threshold, str(positive), dict(policy), metrics)


__all__ = ["DECISION_FILE", "GATE_METRIC", "NEVER", "Decision", "DecisionError", "apply", "choose", "fit",
           "outcome_metrics", "read"]
