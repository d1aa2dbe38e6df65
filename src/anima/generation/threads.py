"""Pick the intra-op thread count for batch-1 decode steps by timing them.

A single-token step of a small model is ~100 small matmul-vector products and pointwise ops. On a
quiet machine a second thread speeds the matmuls up (they are memory-bound: two cores read twice
as fast). But when other processes hold the cores, every OpenMP fork/join waits for a descheduled
worker and a step can get 10-100x slower; one thread is then far faster. Load changes over time,
so the tuner keeps timing: mostly it runs the best-known count, and now and then probes the others
(a few steps each, backing off exponentially for a count that keeps losing, and cutting a probe
short when its first step is already much slower).
"""

from __future__ import annotations

import time


class ThreadTuner:
    def __init__(self, max_threads: int, probe_steps: int = 3, base_interval: int = 48, max_interval: int = 1536):
        self.candidates = [max_threads] if max_threads <= 1 else [max_threads, 1]
        self.best = self.candidates[0]
        self.best_time = float("inf")
        self.probe_steps = probe_steps
        self.base_interval = base_interval
        self.max_interval = max_interval
        self.interval = {c: 0 for c in self.candidates}  # steps until the next probe of c (0 = now)
        # measure the default for a few steps before the first probe of the others
        self.wait = {c: 0 if c == self.best else 2 * probe_steps for c in self.candidates}
        self.samples: dict[int, list[float]] = {}
        self.probing: int | None = None
        self.left = 0
        self.enabled = len(self.candidates) > 1

    def choose(self) -> int:
        """Thread count to use for the next step."""
        if not self.enabled:
            return self.best
        if self.probing is None:
            for c in self.candidates:
                if c != self.best and self.wait[c] <= 0:
                    self.probing, self.left = c, self.probe_steps + 1  # +1: first step after a switch is warm-up
                    self.samples[c] = []
                    break
            else:
                for c in self.candidates:
                    self.wait[c] -= 1
                return self.best
        return self.probing

    def record(self, threads: int, seconds: float) -> None:
        """Report how long the step run with ``threads`` took."""
        if not self.enabled:
            return
        if self.probing is None or threads != self.probing:
            # ordinary step with the best count: track its recent speed
            if threads == self.best:
                self.best_time = seconds if self.best_time == float("inf") else 0.8 * self.best_time + 0.2 * seconds
            return
        self.left -= 1
        first = self.left == self.probe_steps
        if not first:
            self.samples[threads].append(seconds)
        if first and seconds > 4 * self.best_time:
            self.left = 0  # hopeless this time: stop early
        if self.left > 0:
            return
        c = threads
        got = min(self.samples[c]) if self.samples[c] else seconds
        self.probing = None
        if got < 0.95 * self.best_time or self.best_time == float("inf"):
            old = self.best
            self.best, self.best_time = c, got
            self.interval[old] = self.base_interval
            self.wait[old] = self.base_interval
        else:
            self.interval[c] = min(self.max_interval, max(self.base_interval, 2 * self.interval[c]))
            self.wait[c] = self.interval[c]


class timed_threads:
    """Context helper: set torch's thread count for one step and time it."""

    __slots__ = ("torch", "tuner", "n", "t0")

    def __init__(self, torch_mod, tuner: ThreadTuner):
        self.torch, self.tuner = torch_mod, tuner

    def __enter__(self):
        self.n = self.tuner.choose()
        if self.torch.get_num_threads() != self.n:
            self.torch.set_num_threads(self.n)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.tuner.record(self.n, time.perf_counter() - self.t0)
        return False
