"""``model.decision``: the threshold each objective chooses, checked against a brute-force search with
``sklearn.metrics`` over every candidate threshold, and the rule every stage applies."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from pydantic import ValidationError
from sklearn import metrics as skm

from shared import decision as decisions
from shared.spec import DatasetSpec, DecisionSpec, load_spec
from tests.helpers import CHURN_SPEC


def _scores(seed: int, n: int = 600, rate: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.random(n) < rate
    score = np.clip(np.where(y, 0.55, 0.3) + rng.normal(0, 0.18, n), 0, 1)
    return y, np.round(score, 2)  # rounded: many ties, the case an argsort gets wrong first


def _brute(policy: dict, y: np.ndarray, score: np.ndarray) -> float:
    """The threshold by the definition: every distinct score, scored with sklearn; ties -> the highest."""
    candidates = sorted(set(score.tolist()) | ({decisions.NEVER} if policy["objective"] == "cost" else set()),
                        reverse=True)
    best, best_value = None, None
    for t in candidates:
        pred = score >= t
        p = skm.precision_score(y, pred, zero_division=0)
        r = skm.recall_score(y, pred, zero_division=0)
        objective = policy["objective"]
        if objective == "f_beta":
            value = skm.fbeta_score(y, pred, beta=policy["beta"], zero_division=0)
        elif objective == "precision":
            value = r if p >= policy["target"] else None
        elif objective == "recall":
            value = p if r >= policy["target"] else None
        elif objective == "cost":
            tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[False, True]).ravel()
            value = -(policy["false_positive_cost"] * fp + policy["false_negative_cost"] * fn)
        else:
            raise AssertionError(objective)
        if value is not None and (best_value is None or value > best_value + 1e-15):
            best, best_value = t, value
    assert best is not None
    return best


@pytest.mark.parametrize("policy", [
    {"objective": "f_beta", "beta": 1.0}, {"objective": "f_beta", "beta": 2.0}, {"objective": "f_beta", "beta": 0.5},
    {"objective": "precision", "target": 0.5}, {"objective": "recall", "target": 0.8},
    {"objective": "cost", "false_positive_cost": 1.0, "false_negative_cost": 20.0},
    {"objective": "cost", "false_positive_cost": 1.0, "false_negative_cost": 0.1},  # only the surest flagged
], ids=lambda p: "-".join(str(v) for v in p.values()))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_objective_chooses_what_a_brute_force_search_chooses(policy, seed):
    y, score = _scores(seed)
    threshold, metrics = decisions.choose(policy, y, score)
    assert threshold == _brute(policy, y, score)
    pred = score >= threshold
    assert metrics["decision.threshold"] == threshold
    assert metrics["decision.precision"] == pytest.approx(skm.precision_score(y, pred, zero_division=0))
    assert metrics["decision.recall"] == pytest.approx(skm.recall_score(y, pred, zero_division=0))
    assert metrics["decision.flag_rate"] == pytest.approx(pred.mean())
    if policy["objective"] == "f_beta":
        assert metrics["decision.f_beta"] == pytest.approx(skm.fbeta_score(y, pred, beta=policy["beta"]))
    if policy["objective"] == "cost":
        tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[False, True]).ravel()
        assert metrics["decision.cost"] == pytest.approx((fp * policy["false_positive_cost"]
                                                          + fn * policy["false_negative_cost"]) / len(y))


def test_a_free_false_negative_flags_nothing():
    y, score = _scores(0)
    threshold, metrics = decisions.choose({"objective": "cost", "false_positive_cost": 1.0,
                                           "false_negative_cost": 0.0}, y, score)
    assert threshold == decisions.NEVER and threshold > 1.0 and metrics["decision.flag_rate"] == 0.0


@pytest.mark.parametrize("k", [0.01, 0.05, 0.1, 0.333, 1.0])
def test_top_k_flags_the_highest_scores_and_ties_flag_together(k):
    y, score = _scores(4)
    threshold, metrics = decisions.choose({"objective": "top_k", "top_k": k}, y, score)
    wanted = int(np.ceil(k * len(score)))
    kth = np.sort(score)[::-1][wanted - 1]
    assert threshold == kth
    assert (score >= threshold).sum() >= wanted > (score > threshold).sum()


def test_the_same_scores_give_the_same_threshold_in_any_row_order():
    y, score = _scores(5)
    order = np.random.default_rng(9).permutation(len(y))
    for policy in ({"objective": "f_beta", "beta": 2.0}, {"objective": "recall", "target": 0.7}):
        assert decisions.choose(policy, y, score) == decisions.choose(policy, y[order], score[order])


def test_impossible_targets_and_missing_events_say_what_to_change():
    y, score = np.array([False, True, False, True]), np.array([0.9, 0.8, 0.7, 0.1])  # best precision: 1/2
    with pytest.raises(decisions.DecisionError, match=r"no threshold reaches precision 0.9 .*best is 0.5000.*lower "
                                                      r"model.decision.target"):
        decisions.choose({"objective": "precision", "target": 0.9}, y, score)
    with pytest.raises(decisions.DecisionError, match="no row of the positive class"):
        decisions.choose({"objective": "f_beta", "beta": 1.0}, np.zeros(10, bool), np.linspace(0, 1, 10))
    with pytest.raises(decisions.DecisionError, match="applies to a binary label; this label has 3 classes"):
        decisions.fit({"objective": "top_k", "top_k": 0.1}, np.array(["a", "b", "c"]), 2, np.array(["a"]),
                      np.array([[0.2, 0.3, 0.5]]))


def test_apply_is_score_at_or_above_the_threshold_for_either_positive_column():
    proba = np.array([[0.7, 0.3], [0.4, 0.6], [0.75, 0.25], [0.2, 0.8]])
    assert decisions.apply(proba, 1, 0.3).tolist() == [1, 1, 0, 1]  # 0.3 >= 0.3: positive
    assert decisions.apply(proba, 0, 0.7).tolist() == [0, 1, 0, 1]
    assert decisions.apply(proba, 1, None).tolist() == [0, 1, 0, 1]  # no rule: argmax
    assert decisions.apply(proba, 1, decisions.NEVER).tolist() == [0, 0, 0, 0]


def test_a_fitted_rule_round_trips_through_its_file_exactly(tmp_path):
    y, score = _scores(7)
    classes = np.array(["legit", "fraud"], dtype=object)
    proba = np.column_stack([1 - score, score])
    rule = decisions.fit({"objective": "f_beta", "beta": 2.0}, classes, 1, np.where(y, "fraud", "legit"), proba)
    assert rule.positive_class == "fraud"
    (tmp_path / "extra_files").mkdir()
    (tmp_path / "extra_files" / decisions.DECISION_FILE).write_text(json.dumps(rule.as_dict()))
    again = decisions.read(tmp_path)
    assert again == rule and again.threshold == rule.threshold
    assert decisions.read(tmp_path / "none") is None
    (tmp_path / "extra_files" / decisions.DECISION_FILE).write_text(json.dumps({**rule.as_dict(), "threshold": "0.5"}))
    with pytest.raises(ValueError, match="not a finite number"):
        decisions.read(tmp_path)


@pytest.mark.parametrize(("settings", "message"), [
    ({"objective": "precision"}, "objective 'precision' needs target"),
    ({"objective": "cost", "false_positive_cost": 1}, "needs false_negative_cost"),
    ({"objective": "cost", "false_positive_cost": 0, "false_negative_cost": 0}, "at least one of"),
    ({"objective": "f_beta", "target": 0.5}, "target does not apply to objective 'f_beta'"),
    ({"objective": "top_k", "top_k": 1.5}, "less than or equal to 1"),
    ({"objective": "argmax"}, "Input should be 'f_beta'"),
])
def test_spec_settings_must_match_the_objective(settings, message):
    with pytest.raises(ValidationError, match=message):
        DecisionSpec.model_validate(settings)


def test_no_decision_keeps_the_spec_hash_and_a_decision_changes_only_the_model_part():
    raw = yaml.safe_load(CHURN_SPEC.read_text())
    unset = DatasetSpec.model_validate(raw)
    assert unset.content_hash == load_spec(CHURN_SPEC).hash
    raw["model"]["decision"] = {"objective": "f_beta"}
    chosen = DatasetSpec.model_validate(raw)
    assert chosen.model.decision is not None and chosen.model.decision.policy() == {"objective": "f_beta", "beta": 1.0}
    assert chosen.content_hash != unset.content_hash and chosen.feature_hash == unset.feature_hash
