"""Continuous batching: one background thread decodes every active request together.

Why: a decode step of a small model costs about the same for one sequence as for eight (it is bound by
per-op overhead and by reading the weights, not by FLOPs), so requests that take turns waste the machine.
Each step the scheduler
  1. admits waiting requests while there are free cache slots (prefills the new prompt into its slot, reusing
     the longest prefix an idle slot still holds, e.g. the previous turn of the same chat);
  2. samples every active sequence's next token with one batched op over their rows of logits
     (``sample_batch``: each row under its own parameters, penalties and seeded generator), hands each sequence
     its token (sequence.py: stop strings and streaming stay per request) and retires the finished, cancelled
     and timed-out ones (their slot is free for the next admission);
  3. runs ONE forward over the rest: ``backend.step_batch`` (each row at its own position, masked attention
     over its own cache slot). A sequence left alone with nothing waiting decodes in solo.py's leaner loop
     (the same calls per token, no batch bookkeeping) until another request or a call arrives.

Active sequences always occupy slots 0..B-1 (a leaving sequence's slot is swapped with the last active one),
so the batched step reads plain views of the cache. A backend without slots (transformers' ``hf``) runs one
sequence at a time through the same loop.

The same thread also loads the model (``call``): every torch op of an engine runs on one thread, so OpenMP
keeps one worker pool. A second pool (say, the main thread's, left over from loading the weights) makes
libgomp see more threads than cores and throttle its spin-wait; every parallel region then sleeps on a futex
between ops, and on a 2-core EPYC (Zen 5) the 2-thread decode step ran 2.4x slower than on a single thread.
"""

from __future__ import annotations

import collections
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, TypeVar

import torch

from anima.generation.sampling import sample_batch
from anima.generation.sequence import CANCEL, Busy, Sequence, guarded
from anima.generation.solo import decode_alone, forward_one
from anima.generation.threads import ThreadTuner, timed_threads

__all__ = ["CANCEL", "BatchScheduler", "Busy"]
T = TypeVar("T")

class BatchScheduler:
    """Owns the engine's backend from its own thread; ``submit`` queues a Sequence and returns at once."""

    def __init__(self, engine: Any):
        self.engine = engine
        self._cond = threading.Condition()
        self._pending: collections.deque[Sequence] = collections.deque()
        self._calls: collections.deque[tuple[Callable[[], Any], Future]] = collections.deque()
        self._active: list[Sequence] = []  # active[i] decodes in cache slot i
        self._cached: list[list[int]] = []  # per slot: the token ids its cache holds (valid prefix)
        self._thread: threading.Thread | None = None
        self.forget = False  # drop every cached prefix at the next admission (tests compare fresh prefills)
        self._limit = 1  # sequences decoded together (engine.max_batch, as far as the backend allows)
        self._batch_tuner: ThreadTuner | None = None
        self.steps = 0  # forwards run, and the largest batch one of them had (for tests and benchmarks)
        self.peak_batch = 0

    # ------------------------------------------------------------------ API
    def submit(self, seq: Sequence) -> None:
        with self._cond:
            self._pending.append(seq)
            self._wake()

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()`` run on the scheduler's thread between steps; returns its result or raises what it raised."""
        if threading.current_thread() is self._thread:
            return fn()
        done: Future = Future()
        with self._cond:
            self._calls.append((fn, done))
            self._wake()
        return done.result()

    def _wake(self) -> None:
        """(Under the lock) start the thread if it is not running and tell it there is work."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="anima-batch", daemon=True)
            self._thread.start()
        self._cond.notify()

    @property
    def load(self) -> tuple[int, int]:
        """(active, waiting) sequences right now."""
        return len(self._active), len(self._pending)

    # ----------------------------------------------------------------- loop
    def _run(self) -> None:
        while True:
            self._run_calls()  # outside inference mode: a call may load a model or build tensors kept for later
            with torch.inference_mode():  # entered once for a run of steps, not once per step (~20 us a token)
                while not self._calls:
                    self._iterate()

    def _iterate(self) -> None:
        """Admit, sample and retire, then one forward over the active sequences (waits while there is no work)."""
        for seq in self._take_admissions():
            self._admit(seq)
        alone = len(self._active) == 1 and not self._pending
        if not alone:
            self._sample_and_retire()
        if self._active:
            try:
                self._decode_alone() if alone else self._forward()
            except BaseException as e:  # noqa: BLE001 - every active request learns why; the caches are unknown
                for seq in self._active:
                    seq.stream.fail(e)
                self._active.clear()
                self._cached = [[] for _ in self._cached]
                self.engine.backend.truncate(0)

    def _run_calls(self) -> None:
        while self._calls:
            with self._cond:
                fn, done = self._calls.popleft()
            if done.set_running_or_notify_cancel():
                try:
                    done.set_result(fn())
                except BaseException as e:  # noqa: BLE001 - handed to the caller
                    done.set_exception(e)

    def _capacity(self) -> int:
        return self.engine.backend.ensure_slots(max(1, int(self.engine.max_batch)))

    def _take_admissions(self) -> list[Sequence]:
        with self._cond:
            while not self._pending and not self._active and not self._calls:
                self._cond.wait()
            if self._calls:  # first (the engine may not even have a backend yet)
                return []
            self._expire_pending()
            if not self._active:
                self.engine._refresh_backend()  # between requests: a compiled step that finished building
                capacity = self._capacity()
                self._cached += [[] for _ in range(capacity - len(self._cached))]
                self._limit = min(capacity, max(1, int(self.engine.max_batch)))
            free = self._limit - len(self._active)
            admit = []
            while self._pending and len(admit) < free:
                admit.append(self._pending.popleft())
            return admit

    def _expire_pending(self) -> None:
        now = time.monotonic()
        keep = collections.deque()
        for seq in self._pending:
            if seq.cancelled:
                seq.finish("cancelled")
            elif seq.deadline is not None and now > seq.deadline:
                seq.stream.fail(Busy("request timed out waiting for a free decode slot"))
            else:
                keep.append(seq)
        self._pending = keep

    def _admit(self, seq: Sequence) -> None:
        """Prefill ``seq`` into the free slot B (swapping in the idle slot holding the longest shared prefix)."""
        backend, b, prompt = self.engine.backend, len(self._active), seq.prompt_ids
        if self.forget:
            self._cached, self.forget = [[] for _ in self._cached], False
        best, best_len = b, -1
        for slot in range(b, len(self._cached)):
            n = _common_prefix(self._cached[slot], prompt, len(prompt) - 1)
            if n > best_len:
                best, best_len = slot, n
        self._swap(b, best)
        seq.stream.timings.started_ns = time.perf_counter_ns()
        self._cached[b] = []  # invalid until the prefill succeeds
        try:
            backend.select(b)
            backend.truncate(best_len)
            start = backend.position
            seq.logits = self.engine._prefill_ids(backend, prompt[start:])
        except BaseException as e:  # noqa: BLE001 - this request fails; the others go on
            backend.truncate(0)
            seq.stream.fail(e)
            return
        seq.stream.timings.prefilled_ns = time.perf_counter_ns()
        self._cached[b] = seq.fed
        self._active.append(seq)

    def _sample_and_retire(self) -> None:
        """Every active sequence's next token in one batched sampling op; retire those that ended."""
        active = self._active
        reasons = [guarded(seq, seq.check) for seq in active]
        live = [active[i] for i, reason in enumerate(reasons) if reason is None]
        if live:
            try:
                draw = getattr(getattr(self.engine.backend, "native", None), "draw", None)
                toks = sample_batch(torch.stack([seq.logits for seq in live]), [seq.params for seq in live],
                                    [seq.generator for seq in live], [seq.seen for seq in live],
                                    [seq.counts for seq in live], draw)
                ended = [guarded(seq, seq.accept, tok) for seq, tok in zip(live, toks)]
            except BaseException as e:  # noqa: BLE001 - the sampled requests fail; the scheduler goes on
                for seq in live:
                    seq.stream.fail(e)
                ended = ["error"] * len(live)
            it = iter(ended)
            reasons = [next(it) if reason is None else reason for reason in reasons]
        for i in reversed(range(len(active))):
            if reasons[i] is None:
                continue
            if reasons[i] != "error":
                active[i].finish(reasons[i])
            last = len(active) - 1
            self._swap(i, last)
            active[i] = active[last]
            active.pop()

    def _swap(self, a: int, b: int) -> None:
        if a != b:
            backend = self.engine.backend
            swap = getattr(backend, "swap_slots", None)
            if swap is not None:
                swap(a, b)
            self._cached[a], self._cached[b] = self._cached[b], self._cached[a]

    def _decode_alone(self) -> None:
        """A lone sequence's tokens without the batch's bookkeeping (solo.py), until something else waits."""
        seq = self._active[0]
        fed = len(seq.fed)
        self.peak_batch = max(self.peak_batch, 1)
        try:
            reason = decode_alone(seq, self.engine, lambda: bool(self._pending or self._calls))
        finally:
            self.steps += len(seq.fed) - fed
        if reason is not None:
            if reason != "error":
                seq.finish(reason)
            self._active.pop()

    def _forward(self) -> None:
        engine, backend, active = self.engine, self.engine.backend, self._active
        self.steps += 1
        self.peak_batch = max(self.peak_batch, len(active))
        if len(active) == 1:
            backend.select(0)
            rows = [forward_one(engine, active[0].next_tok)]
        else:
            # batched steps get their own 1-vs-N thread choice: on a contended machine N threads can be 10x slower
            if self._batch_tuner is None or self._batch_tuner.candidates[0] != engine.threads:
                self._batch_tuner = ThreadTuner(engine.threads)
            with timed_threads(torch, self._batch_tuner):
                rows = list(backend.step_batch([seq.next_tok for seq in active]))
        for seq, logits in zip(active, rows):
            seq.fed_token(logits)


def _common_prefix(a: list[int], b: list[int], limit: int) -> int:
    n, limit = 0, min(len(a), limit)
    while n < limit and a[n] == b[n]:
        n += 1
    return n
