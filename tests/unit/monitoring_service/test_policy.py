"""The retraining policy as a pure function of reports and past decisions (``monitoring_service.policy``)."""

from __future__ import annotations

from datetime import datetime, timedelta

from monitoring_service.policy import decide
from shared.spec import RetrainSpec

T0 = datetime(2026, 1, 1)


def _reports(flags: list[bool | None], start: datetime = T0, step: timedelta = timedelta(hours=1)) -> list[dict]:
    return [{"report_id": f"r{i}", "window_end": start + i * step, "drift": f, "labeled_rows": 0}
            for i, f in enumerate(flags)]


def test_k_of_last_n() -> None:
    p = RetrainSpec(drift_windows=2, of_last=3)
    assert not decide(p, _reports([True, False, False, True]), last_trigger_end=None).fire
    v = decide(p, _reports([False, True, False, True]), last_trigger_end=None)
    assert v.fire and v.action == "retrain" and v.trigger["drift"] == {"drifted_windows": 2, "of": 3}
    assert v.report_ids == ["r1", "r2", "r3"]
    # windows with too few rows (drift None) are not judged: they neither count nor take a place
    assert decide(p, _reports([True, None, None, True]), last_trigger_end=None).fire


def test_the_same_windows_never_fire_twice() -> None:
    p = RetrainSpec(drift_windows=2, of_last=3)
    reports = _reports([True, True, True])
    first = decide(p, reports, last_trigger_end=None)
    assert first.fire
    again = decide(p, reports, last_trigger_end=reports[-1]["window_end"])
    assert not again.fire and again.action == "none"
    more = reports + _reports([True, True], start=reports[-1]["window_end"] + timedelta(hours=1))
    assert decide(p, more, last_trigger_end=reports[-1]["window_end"]).fire  # a refused attempt: new windows


def test_cooldown_counts_from_the_last_promotion() -> None:
    p = RetrainSpec(drift_windows=1, of_last=1, cooldown="1D")
    reports = _reports([True] * 30)
    promoted = reports[5]["window_end"]
    held = decide(p, reports[:12], last_trigger_end=promoted, last_promoted_end=promoted)
    assert not held.fire and held.action == "cooldown" and "cooldown" in held.reason
    assert decide(p, reports, last_trigger_end=promoted, last_promoted_end=promoted).fire  # 24 h later


def test_labels_and_schedule_triggers() -> None:
    p = RetrainSpec(drift_windows=5, of_last=5, min_new_labels=100, every="7D")
    reports = _reports([False] * 3)
    assert not decide(p, reports, last_trigger_end=None, new_labels=99, champion_cut=T0).fire
    v = decide(p, reports, last_trigger_end=None, new_labels=100, champion_cut=T0)
    assert v.fire and v.trigger["labels"] == 100
    s = decide(p, reports, last_trigger_end=None, champion_cut=T0 - timedelta(days=7))
    assert s.fire and s.trigger["schedule"] == "7D"


def test_replay_gives_the_same_verdict() -> None:
    p = RetrainSpec()
    reports = _reports([True, False, True, True])
    assert decide(p, reports, last_trigger_end=None) == decide(p, list(reports), last_trigger_end=None)
