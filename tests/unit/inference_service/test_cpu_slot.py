"""The CPU slot: at most N holders, waiters wait in their threads, a stuck holder is bypassed (counted)."""

from __future__ import annotations

import threading
import time

import pytest

from inference_service.cpu_slot import CpuSlot


def _run_many(slot: CpuSlot, n: int, hold: float) -> int:
    """Peak number of simultaneous holders among ``n`` threads each holding ``hold`` seconds."""
    lock, inside, peak = threading.Lock(), [0], [0]

    def task() -> None:
        with slot.held():
            with lock:
                inside[0] += 1
                peak[0] = max(peak[0], inside[0])
            time.sleep(hold)
            with lock:
                inside[0] -= 1

    threads = [threading.Thread(target=task) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return peak[0]


@pytest.mark.parametrize("slots", [1, 2])
def test_no_more_than_the_slots_hold_at_once(slots):
    slot = CpuSlot(slots, patience_seconds=30)
    assert _run_many(slot, 6, 0.02) == slots
    assert slot.bypassed == 0


def test_zero_slots_means_no_limit():
    assert _run_many(CpuSlot(0), 4, 0.2) == 4


def test_a_stuck_holder_is_bypassed_after_the_patience_and_counted():
    slot = CpuSlot(1, patience_seconds=0.1)
    release = threading.Event()
    holder = threading.Thread(target=lambda: slot.call(release.wait))
    holder.start()
    time.sleep(0.05)
    started = time.monotonic()
    assert slot.call(lambda: "ran") == "ran"
    assert 0.05 <= time.monotonic() - started < 5
    assert slot.bypassed == 1
    release.set()
    holder.join()
    assert slot.call(lambda: 1) == 1 and slot.bypassed == 1  # the slot was given back, not leaked


def test_an_exception_gives_the_slot_back():
    slot = CpuSlot(1, patience_seconds=0.1)
    with pytest.raises(ZeroDivisionError):
        slot.call(lambda: 1 / 0)
    slot.call(lambda: None)
    assert slot.bypassed == 0
