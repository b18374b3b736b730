"""The daemon's garbage-collector settings: applied in the block, undone after, cycles still go."""

from __future__ import annotations

import gc
import weakref

import pytest

from streaming.worker.gc_tuning import GEN0_THRESHOLD, Collector, quiet_gc


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def test_quiet_gc_freezes_raises_thresholds_and_restores_both() -> None:
    gc.unfreeze()  # another test may have frozen objects (harmless to scan them again)
    before = gc.get_threshold()
    frozen_before = gc.get_freeze_count()
    alive = [object(), [1, 2]]
    with quiet_gc():
        assert gc.get_threshold()[0] == GEN0_THRESHOLD
        assert gc.get_freeze_count() > frozen_before  # what was alive at the start
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == frozen_before == 0
    assert alive


def test_cycles_made_inside_are_still_collected() -> None:
    with quiet_gc():
        a, b = _Node(), _Node()
        a.other, b.other = b, a
        ref = weakref.ref(a)
        del a, b
        gc.collect()
        assert ref() is None


def test_objects_frozen_before_stay_frozen() -> None:
    gc.freeze()
    try:
        with quiet_gc():
            pass
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_thresholds_restored_when_the_block_raises() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), quiet_gc(gen0=1234):
        assert gc.get_threshold()[0] == 1234
        raise RuntimeError("boom")
    assert gc.get_threshold() == before


def test_zero_threshold_is_refused() -> None:
    with pytest.raises(ValueError, match="positive"), quiet_gc(gen0=0):
        pass


def test_the_collector_collects_cycles_on_its_clock_and_counts_them() -> None:
    with quiet_gc(collect_every_ms=5000, now_ms=1000) as collector:
        a, b = _Node(), _Node()
        a.other, b.other = b, a
        ref = weakref.ref(a)
        del a, b
        assert not collector.tick(5999)  # 4.999 s after the start: not due
        assert ref() is not None  # a cycle waits for a collection (the thresholds are high)
        assert collector.tick(6000)
        assert ref() is None
        assert (collector.collections, collector.last_ms) == (1, 6000)
        assert collector.freed >= 2 and collector.seconds >= 0.0
        assert not collector.tick(10_999)
        assert collector.tick(11_000)
        assert collector.collections == 2


def test_a_collector_period_that_is_not_positive_is_refused() -> None:
    with pytest.raises(ValueError, match="collect_every_ms"):
        Collector(0, 0)
    with pytest.raises(ValueError, match="collect_every_ms"), quiet_gc(collect_every_ms=-1):
        pass
