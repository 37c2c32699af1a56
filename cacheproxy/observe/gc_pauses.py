"""How long CPython's cyclic garbage collector stopped this process, by generation.

A collection runs on the event loop's thread, every request waiting for it: a young one
takes microseconds, a full one (generation 2) walks every tracked object of the
process, which is why the memory store keeps what it holds untracked
(store/untracked.py). Timed through gc.callbacks, two calls per collection (about a
microsecond, beside the collection's own work); read by /metrics as
cacheproxy_gc_pause_seconds and cacheproxy_gc_longest_pause_seconds.
"""

from __future__ import annotations

import contextlib
import gc
from bisect import bisect_left
from collections.abc import Callable, Iterator
from time import perf_counter
from typing import Any

# gc.get_freeze_count() walks the frozen objects (60,000+: 1-6 ms, seen, with the event
# loop stopped): counted once when the process freezes them (frozen()), read by /metrics.
_frozen: list[int] = []


def freeze() -> None:
    """gc.freeze(), and the count of what is frozen kept for /metrics."""
    gc.freeze()
    _frozen[:] = [gc.get_freeze_count()]


def frozen() -> int:
    return _frozen[0] if _frozen else gc.get_freeze_count()


BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
GENERATIONS = 3


class GCPauses:
    """Per generation: a histogram of pauses (counts per bucket, the last for longer
    ones), their sum and the longest, since the process started. clock: for tests."""

    def __init__(self, clock: Callable[[], float] = perf_counter) -> None:
        self.counts = [[0] * (len(BUCKETS) + 1) for _ in range(GENERATIONS)]
        self.sums = [0.0] * GENERATIONS
        self.longest = [0.0] * GENERATIONS
        self._clock = clock
        self._started: float | None = None

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = self._clock()
            return
        started, self._started = self._started, None
        if started is None:  # installed while a collection ran: its start was not seen
            return
        took = self._clock() - started
        generation = info["generation"]
        self.counts[generation][bisect_left(BUCKETS, took)] += 1
        self.sums[generation] += took
        if took > self.longest[generation]:
            self.longest[generation] = took


PAUSES = GCPauses()


def install() -> None:
    """Time this process's collections (once; a forked worker keeps the callback and
    its own copy of the figures)."""
    if PAUSES not in gc.callbacks:
        gc.callbacks.append(PAUSES)


@contextlib.contextmanager
def untimed() -> Iterator[None]:
    """Collections no request waits for (the one at start, before serving) are not
    counted as pauses."""
    installed = PAUSES in gc.callbacks
    if installed:
        gc.callbacks.remove(PAUSES)
    try:
        yield
    finally:
        if installed:
            gc.callbacks.append(PAUSES)
