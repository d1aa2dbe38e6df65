"""Pick, per batch size, the faster of several ways to run a decode step, by timing them as they run.

Why: which way wins depends on the CPU, its BLAS and the row count, so no fixed rule is right everywhere. Tiny
(288x6), 2 cores, the eager batched step on oneDNN-packed weights vs the compiled 8-row step (padded; two chunks
above 8 rows): on an EPYC Zen 5 the eager one won below 6 rows and above 8 (2 rows 1.4 vs 1.9 ms, 12 rows 2.6 vs
3.8), on a Xeon with AMX the compiled one won at every size (2 rows 1.58 vs 2.20 ms, 16 rows 3.39 vs 4.90).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

T = TypeVar("T")


class FasterPath:
    """Per key (a batch size, say): each way runs ``trials`` timed times first, interleaved (its first run ever is
    warm-up and not counted), then the way with the lowest of its last ``trials`` times is used; every ``reprobe``
    calls at a key each other way runs once more, since the machine's load changes. ``fixed`` forces one way
    (tests, benchmarks).

    The lowest, not the median: machine noise only ever adds time, and with a median two slow calls in a burst
    handed the next few hundred steps to the slower way (a 2-core EPYC Zen 2, the native vs the AOTI decode step:
    30% of steps on the one 1.3x slower). A longer burst can still hand over the lead; so after a change of leader
    the old one is re-timed after ``first_reprobe`` calls, then twice as long each time up to ``reprobe`` (a Xeon,
    single-stream decode: 219 of 252 steps of one reply on the AOTI step, 1.9x slower, before this).
    """

    def __init__(self, ways: Sequence[str], trials: int = 3, reprobe: int = 256, first_reprobe: int = 8):
        self.ways = tuple(ways)
        self.trials, self.reprobe, self.first_reprobe = trials, reprobe, min(first_reprobe, reprobe)
        self.fixed: str | None = None
        self._times: dict[Hashable, dict[str, collections.deque[float]]] = {}
        self._warm: set[str] = set()
        self._calls: dict[Hashable, int] = collections.Counter()
        self._probes: dict[Hashable, int] = collections.Counter()
        self._leader: dict[Hashable, str] = {}
        self._interval: dict[Hashable, int] = {}
        self._next_probe: dict[Hashable, int] = {}

    def pick(self, key: Hashable) -> str:
        """The way to run the next call at ``key``."""
        if self.fixed is not None:
            return self.fixed
        times = self._times.get(key)
        if times is None:
            times = self._times[key] = {w: collections.deque(maxlen=self.trials) for w in self.ways}
        fewest = min(self.ways, key=lambda w: len(times[w]))
        if len(times[fewest]) < self.trials:
            return fewest
        calls = self._calls[key] = self._calls[key] + 1
        best = self.best(key)
        if best != self._leader.get(key):  # the first leader, or a new one: re-time the old one soon
            interval = self.reprobe if key not in self._leader else self.first_reprobe
            self._leader[key], self._interval[key], self._next_probe[key] = best, interval, calls + interval
        if calls < self._next_probe[key]:
            return best
        self._interval[key] = min(self.reprobe, 2 * self._interval[key])
        self._next_probe[key] = calls + self._interval[key]
        self._probes[key] += 1
        others = [w for w in self.ways if w != best]
        return others[self._probes[key] % len(others)] if others else best

    def run(self, key: Hashable, call: Callable[[str], T]) -> T:
        """``call(way)`` for the way ``pick`` chooses at ``key``, timed by wall clock and recorded."""
        way = self.pick(key)
        t0 = time.perf_counter()
        out = call(way)
        self.record(key, way, time.perf_counter() - t0)
        return out

    def record(self, key: Hashable, way: str, seconds: float) -> None:
        """How long a call at ``key`` took ``way``."""
        if way not in self._warm:
            self._warm.add(way)
            return
        if key in self._times:
            self._times[key][way].append(seconds)

    def best(self, key: Hashable) -> str | None:
        """The way with the lowest recent time at ``key`` (None before every way has one)."""
        times = self._times.get(key)
        if not times or any(not ts for ts in times.values()):
            return None
        return min(self.ways, key=lambda w: min(times[w]))

    def leaders(self) -> dict[Hashable, str | None]:
        """The faster way at every key timed so far (benchmarks report it)."""
        return {key: self.best(key) for key in self._times}
