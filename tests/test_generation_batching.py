"""Continuous batching in the engine: concurrent requests share decode steps, and each one's output is exactly what
it would be alone (fp32, nano model): greedy, seeded sampling, penalties, stop strings, log-probabilities."""

from __future__ import annotations

import time

import pytest

from tests.helpers.models import nano_engine, streams_queued_together
import torch

from anima.generation import ChatEngine, SamplingParams
from anima.generation.sequence import Busy

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = ["Once upon a time", "the sea and the ships", "one two three four five six", "hello"]


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> ChatEngine:
    return nano_engine(tmp_path_factory, threads=None, backend="fast")


def _params() -> list[SamplingParams]:
    return [SamplingParams(temperature=0.0, max_new_tokens=40),
            SamplingParams(temperature=1.0, top_p=0.9, seed=7, max_new_tokens=40),
            SamplingParams(temperature=0.8, top_k=20, seed=3, max_new_tokens=30, repetition_penalty=1.3,
                           presence_penalty=0.5, frequency_penalty=0.4, logprobs=2),
            SamplingParams(temperature=1.2, seed=11, max_new_tokens=35, stop=["e"])]


def _result(stream) -> tuple:
    text = "".join(stream)
    lps = [(e.id, e.logprob) for e in stream.logprobs] if stream.logprobs is not None else None
    return text, list(stream.token_ids), stream.finish_reason, lps


@pytest.mark.parametrize("same_params", [False, True])
def test_batched_outputs_equal_solo_outputs(engine, same_params):
    params = [_params()[1]] * 4 if same_params else _params()
    solo = [_result(engine.stream_completion(p, sp)) for p, sp in zip(PROMPTS, params)]
    steps, engine.scheduler.peak_batch = engine.scheduler.steps, 0
    streams = streams_queued_together(engine, PROMPTS, params)
    together = [_result(s) for s in streams]
    assert engine.scheduler.peak_batch >= 3  # they really shared steps...
    assert engine.scheduler.steps - steps < sum(len(r[1]) for r in solo)  # ...fewer forwards than one by one
    for alone, batched in zip(solo, together):
        assert alone[:3] == batched[:3]  # exact text, token ids and finish reason
        if alone[3] is not None:
            assert [i for i, _ in alone[3]] == [i for i, _ in batched[3]]
            assert all(abs(a - b) < 1e-4 for (_, a), (_, b) in zip(alone[3], batched[3]))


def test_batched_step_logits_match_single_steps(engine):
    """step_batch over rows at different positions == the single-token step of each row (fp32 tolerance)."""
    from anima.generation.backends import FastLlamaBackend

    fast = FastLlamaBackend(engine.model)
    fast.ensure_slots(3)
    prompts = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
    ref = FastLlamaBackend(engine.model)
    for slot, ids in enumerate(prompts):
        fast.select(slot)
        fast.forward(ids)
    batched = fast.step_batch([20, 21, 22])
    for row, ids in enumerate(prompts):
        ref.truncate(0)
        ref.forward(ids)
        assert torch.allclose(batched[row], ref.forward([20 + row]), atol=1e-5, rtol=0)
    assert fast.positions[:3] == [6, 3, 4]


def test_swapping_slots_exchanges_their_caches_and_positions(engine):
    """The batch moves a finished sequence past the active ones by swapping slots; each slot must then decode on
    from the other's cache exactly as before the swap (and untouched slots stay as they were)."""
    from anima.generation.backends import FastLlamaBackend

    fast = FastLlamaBackend(engine.model)
    fast.ensure_slots(3)
    for slot, ids in enumerate([[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16]]):
        fast.select(slot)
        fast.forward(ids)
    before = fast.k_slots.clone(), fast.v_slots.clone()
    fast.swap_slots(0, 1)
    assert fast.positions[:3] == [2, 7, 3]
    for cache, old in zip((fast.k_slots, fast.v_slots), before):
        assert torch.equal(cache[0], old[1]) and torch.equal(cache[1], old[0]) and torch.equal(cache[2], old[2])


def test_cancelled_and_timed_out_requests_leave_the_batch(engine):
    slow = engine.stream_completion("hello", SamplingParams(temperature=0.0, max_new_tokens=300))
    next(slow)
    slow.close()  # the consumer went away: the sequence leaves at the next step
    engine.configure_batching(request_timeout_s=0.05)
    try:
        forward = engine.backend.forward

        def slow_forward(ids):
            time.sleep(0.01)
            return forward(ids)

        engine.backend.forward = slow_forward
        timed = engine.complete("hello", SamplingParams(temperature=0.0, max_new_tokens=300))
    finally:
        del engine.backend.forward
        engine.request_timeout_s = None
    assert timed.finish_reason == "length" and 0 < timed.completion_tokens < 300
    deadline = time.monotonic() + 5
    while engine.scheduler.load != (0, 0) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.scheduler.load == (0, 0)


def test_a_request_waiting_past_its_deadline_is_busy(engine):
    engine.configure_batching(max_batch=1, request_timeout_s=0.2)
    try:
        first = engine.stream_completion("hello", SamplingParams(temperature=0.0, max_new_tokens=20))
        forward = engine.backend.forward
        engine.backend.forward = lambda ids: (time.sleep(0.05), forward(ids))[1]
        engine.scheduler.forget = True
        second = engine.stream_completion("the sea", SamplingParams(temperature=0.0, max_new_tokens=5))
        with pytest.raises(Busy, match="timed out waiting"):
            "".join(second)
        "".join(first)
    finally:
        engine.backend.__dict__.pop("forward", None)
        engine.configure_batching(max_batch=8)
        engine.request_timeout_s = None


def test_batched_sampling_draws_each_row_as_if_alone():
    """sample_batch: a row's token depends only on its own logits, parameters and generator (a seeded request draws
    the same alone or batched) on every path: greedy, top-k, top-p by rejection and its sort fallback, penalties."""
    from anima.generation.sampling import make_generator, sample_batch

    params = [SamplingParams(temperature=0.8, top_p=0.95), SamplingParams(temperature=0.0),
              SamplingParams(temperature=1.0, top_k=20, top_p=0.8), SamplingParams(temperature=1.2, top_p=1.0),
              SamplingParams(temperature=0.7, top_k=300, top_p=0.5),  # k above the top-k shortcut: full path
              SamplingParams(temperature=0.9, top_p=0.02, repetition_penalty=1.3)]  # tiny nucleus: sort fallback
    rng = torch.Generator().manual_seed(0)
    seen = [None] * 5 + [torch.rand(500, generator=rng) < 0.1]
    for scale in (0.05, 1.0, 5.0):
        logits = torch.randn(len(params), 500, generator=rng) * scale
        for trial in range(10):
            gens = [make_generator(trial * 10 + i) for i in range(len(params))]
            together = sample_batch(logits, params, gens, seen, [None] * len(params))
            alone = [sample_batch(logits[i:i + 1], [params[i]], [make_generator(trial * 10 + i)], [seen[i]], [None])[0]
                     for i in range(len(params))]
            assert together == alone
            assert together[1] == int(logits[1].argmax())


@pytest.mark.parametrize("listen_first", [True, False])
def test_wait_end_returns_for_a_stream_consumed_by_a_listener(listen_first):
    import threading

    from anima.generation.results import TextStream

    stream, kinds = TextStream(None, [1]), []

    def produce():
        stream.emit("a", [])
        stream.end("stop", [])

    if not listen_first:  # the end was queued before the listener came: listen() delivers it
        produce()
    stream.listen(lambda kind, value, entries: kinds.append(kind))
    if listen_first:
        threading.Thread(target=produce).start()
    waiter = threading.Thread(target=stream.wait_end, daemon=True)
    waiter.start()
    waiter.join(10)
    assert not waiter.is_alive() and kinds == ["piece", "done"]


def test_every_torch_op_of_an_engine_runs_on_its_scheduler_thread(engine):
    """The model loads, and ``scheduler.call`` runs, on the thread that decodes: one OpenMP pool per engine (a
    second one, e.g. the main thread's, makes libgomp stop spin-waiting and every parallel region slower)."""
    import threading

    scheduler = engine.scheduler
    assert scheduler._thread is not None and scheduler._thread.is_alive()
    assert scheduler.call(threading.current_thread) is scheduler._thread
    with pytest.raises(ZeroDivisionError):
        scheduler.call(lambda: 1 / 0)
    # a call made while requests decode runs between their steps, and they go on unharmed
    params = SamplingParams(temperature=0.0, max_new_tokens=30)
    alone = engine.complete(PROMPTS[0], params).token_ids
    stream = engine.stream_completion(PROMPTS[0], params)
    assert scheduler.call(lambda: 42) == 42
    "".join(stream)
    assert stream.token_ids == alone


def test_a_request_streams_the_same_text_in_fewer_pieces(engine, monkeypatch):
    """A reply's text goes out at most every STREAM_EVERY_S (the first piece at once, the rest when it ends), alone
    (solo.py's loop) or batched: the same text, tokens and log-probabilities as piece by piece."""
    import anima.generation.sequence as sequence

    params = SamplingParams(temperature=0.9, seed=5, max_new_tokens=48, logprobs=1)
    monkeypatch.setattr(sequence, "STREAM_EVERY_S", 0.0)
    each = engine.stream_completion("Once upon a time", params)
    per_token = list(each)
    monkeypatch.setattr(sequence, "STREAM_EVERY_S", 3600.0)
    held = engine.stream_completion("Once upon a time", params)
    pieces = list(held)
    assert len(per_token) > 5 and len(pieces) == 2  # the first piece, then the rest at the end
    assert "".join(pieces) == "".join(per_token) and held.token_ids == each.token_ids
    assert [e.id for e in held.logprobs] == [e.id for e in each.logprobs]

    lone = engine.stream_completion("the sea and the ships", SamplingParams(temperature=0.0, max_new_tokens=60))
    first = next(lone)
    other = engine.stream_completion("hello", SamplingParams(temperature=0.0, max_new_tokens=5))
    assert "".join(other)  # the newcomer is served beside it
    rest = "".join(lone)
    monkeypatch.setattr(sequence, "STREAM_EVERY_S", 0.0)
    alone = engine.complete("the sea and the ships", SamplingParams(temperature=0.0, max_new_tokens=60))
    assert first + rest == alone.text
