"""Acceptance (watch the model), by simulation: replays without drift raise false alarms in at most 1 % of
feature-windows; a +0.5 sigma mean shift of a numeric feature, or +10 points of share of one category, is
detected in at least 95 % of windows of 5,000 rows; the same window always gives the same report bytes.

Seeded, in-process: the reference profile is built by the function training uses (:func:`shared.profile.build`)
and every window goes through the monitor's own :func:`monitoring_service.drift.evaluate`."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from monitoring_service import drift
from shared import profile as prof

CATEGORIES = ["online", "agent", "phone", "broker", "partner"]
SHARES = np.array([0.4, 0.25, 0.15, 0.12, 0.08])
N_NUMERIC, N_CATEGORICAL = 8, 4
WINDOW = 5000


def _population(rng: np.random.Generator, n: int, *, shift: float = 0.0, share_boost: float = 0.0
                ) -> pd.DataFrame:
    """Numeric features of several shapes (normal, log-normal, integer counts, with missing values) and
    categorical ones; ``shift`` moves ``num_0`` by that many sds, ``share_boost`` adds points to ``cat_0``'s
    second category (taken evenly from the others)."""
    data: dict[str, object] = {}
    for j in range(N_NUMERIC):
        kind = j % 4
        if kind == 0:
            v = rng.normal(10 * j, 1 + j, n)
        elif kind == 1:
            v = rng.lognormal(3, 0.7, n)
        elif kind == 2:
            v = rng.poisson(3 + j, n).astype(float)
        else:
            v = rng.normal(0, 1, n)
            v[rng.random(n) < 0.1] = np.nan
        data[f"num_{j}"] = v
    sd0 = 1.0  # num_0 is normal(0, 1)
    data["num_0"] = np.asarray(data["num_0"]) + shift * sd0
    for j in range(N_CATEGORICAL):
        shares = SHARES.copy()
        if j == 0 and share_boost:
            shares = shares - share_boost / (len(shares) - 1)
            shares[1] += share_boost + share_boost / (len(shares) - 1)
        values = rng.choice(CATEGORIES, size=n, p=shares / shares.sum()).astype(object)
        values[rng.random(n) < 0.03] = None
        data[f"cat_{j}"] = values
    return pd.DataFrame(data)


FEATURES = [f"num_{j}" for j in range(N_NUMERIC)] + [f"cat_{j}" for j in range(N_CATEGORICAL)]
NUMERIC = frozenset(f"num_{j}" for j in range(N_NUMERIC))


@pytest.fixture(scope="module")
def reference() -> dict:
    rng = np.random.default_rng(0)
    train = _population(rng, 20_000)
    outputs = np.column_stack([1 - (s := rng.beta(2, 8, 4000)), s])
    return prof.build(train, FEATURES, NUMERIC, outputs=outputs, positive_index=1,
                      labels=rng.integers(0, 2, 20_000), task="classification")


def _window(seed: int, **shift: float) -> dict[str, object]:
    frame = _population(np.random.default_rng(seed), WINDOW, **shift)
    return {name: frame[name].to_numpy() for name in FEATURES}


def test_replays_without_drift_raise_at_most_one_percent_false_alarms(reference):
    alarms = tested = 0
    for seed in range(1, 61):
        report = drift.evaluate(reference, _window(seed))
        assert report["status"] == "ok"
        alarms += len(report["drifted"])
        tested += len(report["features"])
    assert tested == 60 * len(FEATURES)
    assert alarms / tested <= 0.01, f"{alarms} false alarms in {tested} feature-windows"


@pytest.mark.parametrize(("change", "feature"), [({"shift": 0.5}, "num_0"), ({"share_boost": 0.10}, "cat_0")],
                         ids=["numeric-half-sd", "category-plus-10-points"])
def test_a_material_shift_is_detected_in_at_least_95_percent_of_windows(reference, change, feature):
    hits = 0
    others = 0
    for seed in range(100, 140):
        report = drift.evaluate(reference, _window(seed, **change))
        hits += feature in report["drifted"]
        others += len([f for f in report["drifted"] if f != feature])
    assert hits / 40 >= 0.95, f"detected in {hits} of 40 windows"
    assert others <= 0.01 * 40 * (len(FEATURES) - 1)  # the shift does not drag the other features along


def test_the_same_window_gives_the_same_bytes_and_a_small_window_says_insufficient_data(reference):
    window = _window(7)
    scores = np.random.default_rng(7).beta(2, 8, WINDOW)
    first = drift.canonical_json(drift.evaluate(reference, window, scores))
    again = drift.canonical_json(drift.evaluate(reference, {k: np.array(v, copy=True) for k, v in window.items()},
                                                scores.copy()))
    assert first == again and '"prediction":' in first
    small = drift.evaluate(reference, {k: v[:100] for k, v in window.items()})
    assert small["status"] == "insufficient data" and "at least 500" in small["message"]


def test_the_report_holds_counts_and_statistics_never_a_row(reference):
    window = _window(8)
    text = drift.canonical_json(drift.evaluate(reference, window))
    for value in np.asarray(window["num_1"])[:50]:
        assert repr(float(value)) not in text  # no raw value of the window leaks into the report
    assert "__missing__" not in text


def test_history_features_are_reported_but_never_counted_as_drift(reference):
    report = drift.evaluate(reference, _window(9, shift=3.0), history=frozenset({"num_0"}))
    entry = report["features"]["num_0"]
    assert entry["by_construction"] is True and entry["drifted"] is False and entry["psi"] > 1
    assert "num_0" not in report["drifted"]


def test_statistics_match_their_definitions():
    r, c = [100, 200, 700], [150, 150, 700]
    out = drift.compare_counts(r, c)
    p = (np.array(r) + 0.5) / (sum(r) + 1.5)
    q = (np.array(c) + 0.5) / (sum(c) + 1.5)
    assert out["psi"] == pytest.approx(np.sum((q - p) * np.log(q / p)))
    from scipy.spatial.distance import jensenshannon
    from scipy.stats import chi2_contingency

    assert out["js"] == pytest.approx(jensenshannon(p, q, base=2) ** 2)
    assert out["p_value"] == pytest.approx(chi2_contingency(np.array([r, c]), correction=False).pvalue)
    assert out["ks_distance"] == pytest.approx(0.05)
    from scipy.stats import false_discovery_control

    ps = [0.01, 0.04, 0.03, 0.2, 0.001, 0.5]
    assert drift.benjamini_hochberg(ps) == pytest.approx(list(false_discovery_control(ps, method="bh")))


def test_chi_square_p_values_are_scipys_on_random_tables():
    """The monitor computes the chi-square test itself (scipy's per-call overhead was an eighth of a pass)."""
    from scipy.stats import chi2_contingency

    rng = np.random.default_rng(3)
    for _ in range(200):
        k = int(rng.integers(2, 25))
        r = rng.integers(0, 2000, size=k)
        c = rng.integers(0, 2000, size=k)
        used = (r + c) > 0
        if used.sum() < 2 or r.sum() == 0 or c.sum() == 0:
            continue
        expected = chi2_contingency(np.array([r[used], c[used]]), correction=False).pvalue
        assert drift.compare_counts(r.tolist(), c.tolist())["p_value"] == pytest.approx(expected, rel=1e-9, abs=1e-300)
