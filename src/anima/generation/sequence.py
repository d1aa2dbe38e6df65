"""One request's decode state inside the batch: its sampler, penalties, detokenizer, stop strings, limits.

The batch scheduler (batch.py) owns the model; every step it samples every active sequence's next token from
its own row of logits in one batched op (``sampling.sample_batch``) and hands each sequence its token
(``accept``). Everything that makes a request's output its own stays here, per request: the sampling
parameters, a private ``torch.Generator`` (so a seeded request draws the same numbers whether it runs alone or
among others), repetition/presence/frequency penalties, log-probabilities, stop strings and the text deltas sent
to the request's stream.
"""

from __future__ import annotations

import contextvars
import threading
import time
from typing import TYPE_CHECKING, Any

from anima.generation.detok import IncrementalDetokenizer, StopHolder
from anima.generation.results import TextStream
from anima.generation.sampling import SamplingParams, make_generator

if TYPE_CHECKING:  # torch is imported where it is used: the engine imports this module before loading a model
    import torch

#: A cancel event a caller (the HTTP server, for a request whose client went away) hands to the streams it starts.
CANCEL: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("anima_cancel", default=None)


class Busy(RuntimeError):
    """No room for a request now (the server answers 503 with ``Retry-After``)."""

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


#: A reply's text goes to its consumer at most this often (the first piece at once, the rest when the reply ends).
#: Why: each piece wakes the consumer's thread (an HTTP response's event loop, a terminal), which then takes a core
#: from the decode step's OpenMP threads, and each streamed piece costs the server an event and a JSON chunk;
#: 10 ms is below what a reader can see.
STREAM_EVERY_S = 0.01

#: Prompt tokens a raw completion's detokenizer starts from, so its first token keeps its leading space.
CONTINUATION_CONTEXT = 8


def drain(detok: IncrementalDetokenizer, holder: StopHolder) -> tuple[str, bool]:
    """The text still held back at the end of a reply, and whether it completes a stop string."""
    tail = detok.flush()
    out, hit = holder.feed(tail) if tail else ("", False)
    if not hit:
        out += holder.flush()
    return out, hit


def guarded(seq: "Sequence", fn: Any, *args: Any) -> str | None:
    """``fn(*args)``'s finish reason, or "error" once the request failed (e.g. its detokenizer): this one only."""
    try:
        return fn(*args)
    except BaseException as e:  # noqa: BLE001
        seq.stream.fail(e)
        return "error"


class Sequence:
    """A request being decoded. ``ctx`` is the engine (stop ids, vocabulary, detokenizer, log-probability texts).

    ``deadline``: a ``time.monotonic()`` instant after which the reply ends with finish reason "length" (the text
    so far is kept, as for a max_tokens cut), or None."""

    def __init__(self, ctx: Any, prompt_ids: list[int], params: SamplingParams, stream: TextStream,
                 continuation: bool, deadline: float | None):
        import torch

        self.ctx, self.params, self.stream, self.deadline = ctx, params, stream, deadline
        self.prompt_ids = prompt_ids
        self.fed: list[int] = list(prompt_ids)  # what the cache holds once the prompt is prefilled
        self.generator = None if params.greedy else make_generator(params.seed)
        self.seen = ctx._seen_mask(params, prompt_ids)
        penalties = params.presence_penalty or params.frequency_penalty
        self.counts = torch.zeros(ctx.vocab_size) if penalties else None
        context = prompt_ids[-CONTINUATION_CONTEXT:] if continuation else ()
        self.detok = IncrementalDetokenizer(ctx._decode, ctx._hold_ids, context)
        self.holder = StopHolder(params.stop)
        self.max_new = min(params.max_new_tokens, ctx.context_length - len(prompt_ids))
        self.n = 0
        self.logits: torch.Tensor | None = None  # the next token's logits (after prefill or a step)
        self.next_tok = -1  # the token to feed at the next step
        self._entries: list = []  # log-probabilities not yet sent with a piece
        self._held: list[str] = []  # text not yet sent: at most every STREAM_EVERY_S
        self._flush_at = 0.0  # the first piece goes at once

    @property
    def cancelled(self) -> bool:
        return self.stream.cancel.is_set()

    def check(self) -> str | None:
        """Before sampling: a finish reason if the reply ends without another token (the consumer went away, the
        token or time limit is reached), else None."""
        if self.cancelled:
            return "cancelled"
        if self.n >= self.max_new or (self.deadline is not None and time.monotonic() > self.deadline):
            return self._end("length")
        return None

    def accept(self, tok: int) -> str | None:
        """Take the sampled token: None while the reply goes on (``next_tok`` is then to be fed), else its finish
        reason ("stop" or "length")."""
        params, stream = self.params, self.stream
        self.n += 1
        stream.completion_tokens = self.n
        stream.token_ids.append(tok)
        if tok in self.ctx.stop_ids:
            return self._end("stop")
        if stream.logprobs is not None:
            self._entries.append(self.ctx._token_logprob(self.logits, tok, params.logprobs or 0))
        if self.counts is not None and 0 <= tok < self.ctx.vocab_size:
            self.counts[tok] += 1
        delta = self.detok.push(tok)
        if delta:
            out, hit = self.holder.feed(delta)
            if out:
                self._emit(out)
            if hit:
                return "stop"
        if self.n >= self.max_new:
            return self._end("length")
        self.next_tok = tok
        return None

    def fed_token(self, logits: torch.Tensor) -> None:
        """``next_tok`` went through the model; ``logits`` are for the token after it."""
        tok = self.next_tok
        self.fed.append(tok)
        if self.seen is not None and 0 <= tok < self.ctx.vocab_size:
            self.seen[tok] = True
        self.logits = logits

    def finish(self, reason: str) -> None:
        """Tell the consumer the reply ended (after any text ``advance`` sent)."""
        self.flush()
        entries, self._entries = self._entries, []
        self.stream.end("stop" if reason == "cancelled" else reason, entries)
        self.ctx.last_usage = (len(self.prompt_ids), self.stream.completion_tokens, self.stream.finish_reason)

    def flush(self) -> None:
        """Send the text held back (STREAM_EVERY_S)."""
        self._flush_at = time.perf_counter() + STREAM_EVERY_S
        if self._held:
            text, self._held = "".join(self._held), []
            entries, self._entries = self._entries, []
            self.stream.emit(text, entries)

    def _emit(self, text: str) -> None:
        self._held.append(text)
        if STREAM_EVERY_S <= 0 or time.perf_counter() >= self._flush_at:
            self.flush()

    def _end(self, reason: str) -> str:
        out, hit = drain(self.detok, self.holder)
        if out:
            self._emit(out)
        return "stop" if hit else reason
