"""A lone request's decode loop: the batch scheduler's step for one sequence, without the batch's bookkeeping.

Why: with one request active, each token went through the general loop (the admission lock, a batch of one for
sampling, the per-slot retire pass, the batched forward's dispatch), ~150-200 us of Python around a ~700 us
native step (tiny, 2-core EPYC Zen 4): single-stream decode ran at 0.84x llama2.c's run.c while the step alone
ran at 1.08x. Here the same calls in the same order (check, sample, accept, forward), so a seeded request's
tokens are the same as in a batch, but only they: a greedy row without penalties is one argmax, and the slot is
selected once. The loop hands back to the scheduler as soon as anything else waits (a request to admit, a
call), so a new request joins at the next step; cancellation and time limits are checked every token as in the
batch.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from anima.generation.sampling import greedy_tokens, sample_batch
from anima.generation.sequence import Sequence, guarded
from anima.generation.threads import timed_threads


def decode_alone(seq: Sequence, engine: Any, others_waiting: Callable[[], bool]) -> str | None:
    """Decode ``seq`` (in slot 0) until it ends or ``others_waiting()``: its finish reason ("error" when it
    failed), or None while it goes on (its ``logits`` are then for the next token)."""
    backend = engine.backend
    draw = getattr(getattr(backend, "native", None), "draw", None)
    params, generator = seq.params, seq.generator
    plain_greedy = params.greedy and seq.seen is None and seq.counts is None
    backend.select(0)
    while True:
        reason = guarded(seq, seq.check)
        if reason is not None:
            return reason
        try:
            if plain_greedy:
                tok = greedy_tokens(seq.logits.float().unsqueeze(0))[0]
            else:
                tok = sample_batch(seq.logits.unsqueeze(0), [params], [generator], [seq.seen], [seq.counts], draw)[0]
        except BaseException as e:  # noqa: BLE001 - this request fails; the scheduler goes on
            seq.stream.fail(e)
            return "error"
        reason = guarded(seq, seq.accept, tok)
        if reason is not None:
            return reason
        seq.fed_token(forward_one(engine, tok))
        if others_waiting():
            return None


def forward_one(engine: Any, tok: int) -> torch.Tensor:
    """``tok`` through the engine's backend at the selected slot, on the thread count its tuner picks (timed)."""
    tuner = engine.tuner
    if tuner is None:
        return engine.backend.forward([tok])
    with timed_threads(torch, tuner):
        return engine.backend.forward([tok])

