"""What one request's generation gives back: a stream of text deltas that also carries the request's usage, token
ids, per-token log-probabilities (when asked for) and timings; or, collected, a ``Completion``.

Kept apart from the engine so that servers can read these fields without depending on how decoding runs.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token (or one alternative to it): its id, text, UTF-8 bytes and log-probability.

    ``top`` holds the most likely tokens at that position (most likely first), when they were asked for.
    Log-probabilities are the model's own distribution (before penalties, temperature, top-k/top-p).
    """

    id: int
    text: str
    bytes: bytes
    logprob: float
    top: tuple["TokenLogprob", ...] = ()


@dataclass
class Timings:
    """Monotonic ``time.perf_counter_ns()`` stamps of one generation (0 = not reached)."""

    created_ns: int = field(default_factory=time.perf_counter_ns)  # the request reached the engine
    started_ns: int = 0  # the engine began this request (its model lock acquired)
    prefilled_ns: int = 0  # the prompt was processed: the first token's logits exist
    finished_ns: int = 0  # the last token was sampled


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length"
    prompt_ids: list[int] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)  # every sampled id, including a final stop token
    logprobs: list[TokenLogprob] | None = None  # per token of ``text`` when asked for (SamplingParams.logprobs)
    timings: Timings = field(default_factory=Timings)


class TextStream(Iterator[str]):
    """An iterator of text deltas that also carries this request's usage once it is exhausted.

    Prefer ``stream.prompt_tokens`` / ``completion_tokens`` / ``finish_reason`` over the engine's
    ``last_usage`` when several requests run concurrently. ``logprobs`` grows by one entry per generated
    token (never for a stop token) when the request asked for them, else stays None.

    Two modes: over a generator (``gen``), or fed by a producer thread (``gen=None``: the batch scheduler calls
    ``emit``/``end``/``fail``; the consumer blocks in ``__next__`` or registers a ``listen`` callback). ``close()``
    sets ``cancel``, which the producer checks before every step.
    """

    def __init__(self, gen: Iterator[str] | None, prompt_ids: list[int], logprobs: bool = False,
                 cancel: threading.Event | None = None):
        self._gen = gen
        self.prompt_ids = list(prompt_ids)
        self.prompt_tokens = len(prompt_ids)
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self.token_ids: list[int] = []  # every sampled id, including a final stop token
        self.logprobs: list[TokenLogprob] | None = [] if logprobs else None
        self.timings = Timings()
        self.cancel = cancel if cancel is not None else threading.Event()
        self._events: queue.SimpleQueue | None = queue.SimpleQueue() if gen is None else None
        self._listener: Callable[[str, Any, list], None] | None = None
        self._listen_lock = threading.Lock()
        self._done = False
        self._ended = threading.Event()  # the producer sent its last event ("done" or "error")

    def __iter__(self) -> "TextStream":
        return self

    def __next__(self) -> str:
        if self._events is None:
            return next(self._gen)  # type: ignore[arg-type]
        if self._done:
            raise StopIteration
        kind, value, entries = self._events.get()
        self._record(entries)
        if kind == "piece":
            return value
        self._done = True
        if kind == "error":
            raise value
        raise StopIteration

    def close(self) -> None:
        self.cancel.set()
        if self._gen is not None:
            self._gen.close()  # type: ignore[attr-defined]

    # ------------------------------------------------------- producer side (the scheduler's thread)
    def emit(self, text: str, entries: list[TokenLogprob]) -> None:
        """A text delta, with the log-probability entries of the tokens behind it."""
        self._put("piece", text, entries)

    def end(self, reason: str, entries: list[TokenLogprob]) -> None:
        self.finish_reason = reason
        self.timings.finished_ns = time.perf_counter_ns()
        self._put("done", None, entries)

    def fail(self, error: BaseException) -> None:
        self._put("error", error, [])

    def listen(self, callback: Callable[[str, Any, list], None]) -> None:
        """Deliver events as ``callback(kind, value, entries)`` from the producer's thread instead of queueing
        them (an async consumer); events queued so far are delivered first, in order."""
        with self._listen_lock:
            while self._events is not None and not self._events.empty():
                kind, value, entries = self._events.get()
                self._record(entries)
                callback(kind, value, entries)
                if kind != "piece":
                    self._ended.set()
            self._listener = callback

    def wait_end(self) -> None:
        """Block until the producer sent its last event (then iterating never blocks): a consumer that wants only
        the whole reply wakes once, not once per piece."""
        if self._events is not None:
            self._ended.wait()

    def _put(self, kind: str, value: Any, entries: list) -> None:
        with self._listen_lock:
            listener = self._listener
            if listener is None:
                self._events.put((kind, value, entries))  # type: ignore[union-attr]
                if kind != "piece":
                    self._ended.set()
                return
        self._record(entries)
        listener(kind, value, entries)
        if kind != "piece":
            self._ended.set()  # wait_end() returns whoever consumed the events

    def _record(self, entries: list) -> None:
        if entries and self.logprobs is not None:
            self.logprobs.extend(entries)


def collect(stream: TextStream) -> Completion:
    """Run ``stream`` to its end. Log-probabilities are kept up to the last token that added text, exactly as a
    streaming server sends them (tokens cut by a stop string add none), so streamed and whole replies agree."""
    pieces: list[str] = []
    upto = 0
    stream.wait_end()
    for piece in stream:
        if piece:
            pieces.append(piece)
            upto = len(stream.logprobs) if stream.logprobs is not None else 0
    logprobs = stream.logprobs[:upto] if stream.logprobs is not None else None
    return Completion("".join(pieces), stream.prompt_tokens, stream.completion_tokens,
                      stream.finish_reason or "length", stream.prompt_ids, list(stream.token_ids), logprobs,
                      stream.timings)
