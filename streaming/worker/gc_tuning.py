"""Garbage-collector settings for the daemon's poll loop (CPython's cyclic collector only).

Decoding a poll allocates thousands of short-lived container objects (each impression's lists,
kafka-python's records), and almost all of them are freed by reference counting as soon as the
batch is built. With CPython's default thresholds ``(700, 10, 10)`` they still trigger a young
collection every 700 net allocations, and every full collection walks everything the process
has loaded (numpy, JAX, kafka-python: hundreds of thousands of objects) although none of it is
ever garbage: at the defaults the collector spends CPU on every poll and frees almost
nothing.

:func:`quiet_gc` freezes what is alive once start-up is done (``gc.freeze``: those objects are
never scanned again) and raises the young generation's threshold, so that a collection runs
only when far more container objects have piled up than one poll leaves behind.

The threshold counts *net* container allocations, and a poll frees almost everything it
allocates, so at the raised threshold the collector hardly ever runs by itself, over millions
of events. What cyclic garbage the loop does make (kafka-python's caught timeout exceptions,
whose tracebacks keep whole frames and their locals alive) would then pile up, and resident
memory would grow with the events read for as long as the daemon runs. So the block also
hands out a :class:`Collector` that the loop ticks: a full collection every ``collect_every_ms``
(5 s by default). With the start-up objects frozen, a full collection scans only what the loop
keeps alive (a few tens of thousands of objects: milliseconds). Nothing here changes what the
daemon computes.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Generator
from contextlib import contextmanager

GEN0_THRESHOLD = 50_000
"""Net container allocations before a young collection (CPython's default is 700)."""
GEN1_THRESHOLD = 20
GEN2_THRESHOLD = 100
COLLECT_EVERY_MS = 5_000
"""Milliseconds between the timed full collections of :class:`Collector`."""


class Collector:
    """Full collections on the loop's clock, at most one every ``every_ms``.

    Attributes:
        collections: full collections run so far.
        seconds: wall seconds they took, in all.
        freed: unreachable objects they found, in all.
    """

    def __init__(self, every_ms: int, now_ms: int) -> None:
        if every_ms <= 0:
            raise ValueError(f"collect_every_ms must be positive, got {every_ms}")
        self.every_ms = every_ms
        self.last_ms = now_ms
        self.collections = 0
        self.seconds = 0.0
        self.freed = 0

    def tick(self, now_ms: int) -> bool:
        """Collect if ``every_ms`` passed since the last collection (or the start); say if it did."""
        if now_ms - self.last_ms < self.every_ms:
            return False
        t0 = time.perf_counter()
        self.freed += gc.collect()
        self.seconds += time.perf_counter() - t0
        self.collections += 1
        self.last_ms = now_ms
        return True


@contextmanager
def quiet_gc(
    gen0: int = GEN0_THRESHOLD,
    gen1: int = GEN1_THRESHOLD,
    gen2: int = GEN2_THRESHOLD,
    *,
    collect_every_ms: int = COLLECT_EVERY_MS,
    now_ms: int = 0,
) -> Generator[Collector, None, None]:
    """Within the block, everything alive at its start is frozen and collections are rarer.

    The block yields a :class:`Collector`: tick it with the loop's clock (the same clock as
    ``now_ms``) and it runs a full collection every ``collect_every_ms``, so cyclic garbage
    never waits for the raised thresholds.

    On exit the previous thresholds come back and, unless something had frozen objects before
    the block, the frozen objects are scanned again (``gc.unfreeze``), so a process that runs a
    daemon and then goes on (tests, the benchmarks) is left as it was.

    Args:
        gen0: young-generation threshold (net container allocations).
        gen1: young collections per middle-generation collection.
        gen2: middle collections per full collection.
        collect_every_ms: the collector's period.
        now_ms: the loop clock's reading at the start of the block.

    Raises:
        ValueError: a threshold or the period is not positive (0 would turn the collector off).
    """
    if min(gen0, gen1, gen2) <= 0:
        raise ValueError(f"gc thresholds must be positive, got ({gen0}, {gen1}, {gen2})")
    collector = Collector(collect_every_ms, now_ms)
    before = gc.get_threshold()
    was_frozen = gc.get_freeze_count() > 0
    gc.collect()  # start-up garbage goes now, not into the permanent generation
    gc.freeze()
    gc.set_threshold(gen0, gen1, gen2)
    try:
        yield collector
    finally:
        gc.set_threshold(*before)
        if not was_frozen:
            gc.unfreeze()
