"""Generation engine: fast Llama forward vs transformers, streaming/UTF-8, stops, seeds, sampling processors."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest
import torch

from anima.errors import AnimaError, ConfigError, ModelError
from anima.generation import ChatEngine, SamplingParams
from anima.generation.detok import IncrementalDetokenizer, StopHolder, hold_token_ids, make_decoder
from anima.generation.sampling import apply_repetition_penalty, apply_top_k, apply_top_p, process_logits
from tests.helpers.models import random_llama

GREEDY = dict(temperature=0.0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from tests.helpers.models import build_nano_model_dir

    return build_nano_model_dir(tmp_path_factory.mktemp("gen") / "nano")


@pytest.fixture(scope="module")
def engine(model_dir) -> ChatEngine:
    eng = ChatEngine(model_dir, backend="fast")
    assert eng.backend_name == "fast"
    return eng


@pytest.fixture(scope="module")
def hf_engine(model_dir) -> ChatEngine:
    return ChatEngine(model_dir, backend="hf")


# --------------------------------------------------------------------------- fast forward == HF forward
@pytest.mark.parametrize("kw", [{}, {"num_key_value_heads": 2, "tie_word_embeddings": True},
                                {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0}}])
@pytest.mark.parametrize("table", [True, False])
@pytest.mark.parametrize("way", ["mv", "packed"])
def test_fast_forward_matches_hf_logits(kw, table, way):
    from anima.generation.backends import FastLlamaBackend

    model = random_llama(**kw)
    fast = FastLlamaBackend(model)
    if way == "packed" and fast.packed is None:
        pytest.skip("this torch has no oneDNN")
    fast.step_ways.fixed = way  # the single step's matrix-vector kernel: BLAS mv or oneDNN on packed weights
    if not table:
        fast.rope_mats = None  # the cos/sin path used for long contexts
    ids = torch.randint(0, 300, (30,), generator=torch.Generator().manual_seed(1)).tolist()
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0]
    got = [fast.forward(ids[:20])]
    got += [fast.forward([i]) for i in ids[20:]]
    assert torch.allclose(got[0], ref[19], atol=1e-4, rtol=0)
    for j, logits in enumerate(got[1:]):
        assert torch.allclose(logits, ref[20 + j], atol=1e-4, rtol=0), j
    # truncate + re-prefill a chunk in the middle of the cache (prefix reuse path)
    fast.truncate(10)
    assert torch.allclose(fast.forward(ids[10:25]), ref[24], atol=1e-4, rtol=0)


def test_single_steps_time_both_kernels_per_thread_count():
    """Which matrix-vector kernel is faster depends on the CPU's BLAS (MKL's sgemv is slow on AMD EPYC): the
    backend times both as it decodes, separately at each thread count, and then keeps the faster."""
    from anima.generation.backends import FastLlamaBackend

    fast = FastLlamaBackend(random_llama())
    if fast.packed is None:
        pytest.skip("this torch has no oneDNN")
    fast.forward([1, 2, 3])
    for _ in range(10):
        fast.forward([4])
    key = torch.get_num_threads()
    assert fast.step_ways.best(key) in ("mv", "packed")
    assert fast.step_ways.best(key + 1) is None  # another thread count is judged on its own


def test_the_packed_step_works_with_a_head_too_big_to_pack(monkeypatch):
    """The layers fit the packed copy's budget but the (vocab x hidden) head does not: it stays plain."""
    from anima.generation import backends, packed

    real_pack = packed.pack
    monkeypatch.setattr(backends, "pack", lambda mats, dtype: None if len(mats) == 1 else real_pack(mats, dtype))
    model = random_llama()
    fast = backends.FastLlamaBackend(model)
    if fast.packed is None:
        pytest.skip("this torch has no oneDNN")
    assert fast.packed_head is fast.step_head
    ids = [1, 5, 9, 2]
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0, -1]
    fast.step_ways.fixed = "packed"
    fast.forward(ids[:3])
    assert torch.allclose(fast.forward(ids[3:]), ref, atol=1e-4, rtol=0)


def test_prefill_uses_packed_weights_and_matches_plain_ones():
    """Where oneDNN is there, prefill and the batched step run on packed weights, LM head included (the point:
    ~3.6x cheaper at a prompt's few rows; the head 0.73 -> ~0.3 ms of an 8-row step on a 2-core EPYC Zen 4);
    logits equal the plain gemm path's and the caches hold the same K/V."""
    from anima.generation.backends import FastLlamaBackend

    model = random_llama(num_key_value_heads=2)
    packed, plain = FastLlamaBackend(model), FastLlamaBackend(model)
    plain.packed, plain.packed_head = None, plain.step_head
    if torch.backends.mkldnn.is_available():
        assert packed.packed is not None and packed.packed[0][0].is_mkldnn and packed.packed_head.is_mkldnn
    ids = torch.randint(0, 300, (25,), generator=torch.Generator().manual_seed(4)).tolist()
    torch.testing.assert_close(packed.forward(ids), plain.forward(ids), atol=1e-4, rtol=0)
    torch.testing.assert_close(packed.k_cache[:, :, :, :25], plain.k_cache[:, :, :, :25], atol=1e-5, rtol=0)
    for backend in (packed, plain):  # a second sequence in slot 1, then one batched step over both
        backend.ensure_slots(2)
        backend.select(1)
        backend.forward(ids[:9])
    torch.testing.assert_close(packed.step_batch([7, 8]), plain.step_batch([7, 8]), atol=1e-4, rtol=0)
    if packed.packed is not None:  # and no BLAS gemm/gemv is left in either (MKL repacks the weight every call)
        with torch.profiler.profile() as prof:
            packed.forward(ids[9:14])
            packed.step_batch([9, 10])
        assert not {e.key for e in prof.key_averages()} & {"aten::mm", "aten::addmm", "aten::mv", "aten::addmv"}


def test_fast_backend_declines_unsupported_models():
    from anima.generation.backends import fast_llama_unsupported

    assert fast_llama_unsupported(random_llama()) is None
    assert "bias" in fast_llama_unsupported(random_llama(attention_bias=True))


def test_fast_greedy_equals_hf_generate(engine):
    prompt = "The quick brown fox"
    stream = engine.stream_completion(prompt, SamplingParams(max_new_tokens=60, **GREEDY))
    text = "".join(stream)
    ids = torch.tensor([engine.completion_prompt_ids(prompt)])
    with torch.inference_mode():
        out = engine.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=60, do_sample=False,
                                    eos_token_id=sorted(engine.stop_ids), pad_token_id=3)
    ref = out[0, ids.shape[1]:].tolist()
    assert stream.token_ids == ref
    assert text == engine.tokenizer.decode([t for t in ref if t not in engine.stop_ids], skip_special_tokens=True)


def test_hf_and_fast_backends_agree_on_chat(engine, hf_engine):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is your name?"}]
    p = SamplingParams(max_new_tokens=40, **GREEDY)
    a, b = engine.stream_chat(msgs, p), hf_engine.stream_chat(msgs, p)
    assert "".join(a) == "".join(b)
    assert a.token_ids == b.token_ids and a.prompt_tokens == b.prompt_tokens


# --------------------------------------------------------------------------- streaming / UTF-8
def test_stream_deltas_concatenate_to_full_text(engine):
    for seed in range(4):
        p = SamplingParams(temperature=1.5, top_p=1.0, max_new_tokens=80, seed=seed)
        stream = engine.stream_completion("Tell me", p)
        deltas = list(stream)
        assert all(deltas)
        generated = [t for t in stream.token_ids if t not in engine.stop_ids]
        full = engine.tokenizer.decode(stream.prompt_ids + generated, skip_special_tokens=True)
        assert "Tell me" + "".join(deltas) == full  # exactly the continuation: a first word keeps its space
        assert engine.last_usage == (stream.prompt_tokens, stream.completion_tokens, stream.finish_reason)


def test_incremental_detok_never_emits_partial_utf8(engine):
    tok = engine.tokenizer
    text = "naïve café — 日本語 😀 ok, 🙂🙂 end"
    ids = tok.encode(text, add_special_tokens=False)
    assert any(tok.convert_ids_to_tokens(i).startswith("<0x") for i in ids)  # byte-fallback pieces present
    detok = IncrementalDetokenizer(make_decoder(tok), hold_token_ids(tok))
    deltas = [detok.push(i) for i in ids] + [detok.flush()]
    assert "".join(deltas) == tok.decode(ids) == text
    assert not any("\ufffd" in d for d in deltas)


def test_incremental_detok_matches_decode_on_random_ids(engine):
    tok = engine.tokenizer
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        ids = torch.randint(0, len(tok), (40,), generator=gen).tolist()
        detok = IncrementalDetokenizer(make_decoder(tok), hold_token_ids(tok))
        out = "".join(detok.push(i) for i in ids) + detok.flush()
        assert out == tok.decode(ids, skip_special_tokens=True)


# --------------------------------------------------------------------------- stopping
def test_stop_holder_splits_and_holds():
    h = StopHolder(["STOP", "\n\n"])
    assert h.feed("hello S") == ("hello ", False)
    assert h.feed("T") == ("", False)
    assert h.feed("x") == ("STx", False)
    assert h.feed(" a\n") == (" a", False)
    assert h.feed("\nmore") == ("", True)
    h = StopHolder(["STOP"])
    assert h.feed("abcST") == ("abc", False)
    assert h.feed("OP tail") == ("", True)
    assert StopHolder([]).feed("S") == ("S", False)


def test_stop_string_ends_reply(engine):
    base = engine.complete("Once upon", SamplingParams(max_new_tokens=60, **GREEDY))
    text = base.text
    assert len(text) > 12
    stop = text[8:11]
    cut = text.find(stop)
    stream = engine.stream_completion("Once upon", SamplingParams(max_new_tokens=60, stop=[stop], **GREEDY))
    deltas = list(stream)
    assert "".join(deltas) == text[:cut]
    assert stream.finish_reason == "stop" and stream.completion_tokens < base.completion_tokens + 1


def test_stop_token_and_length(engine):
    base = engine.complete("Hello", SamplingParams(max_new_tokens=12, **GREEDY))
    if base.finish_reason == "length":
        assert base.completion_tokens == 12
    stream = engine.stream_completion("Hello", SamplingParams(max_new_tokens=12, **GREEDY))
    list(stream)
    fifth = stream.token_ids[4]
    saved = engine.stop_ids
    try:
        engine.stop_ids = frozenset(saved | {fifth})
        c = engine.complete("Hello", SamplingParams(max_new_tokens=12, **GREEDY))
    finally:
        engine.stop_ids = saved
    first = stream.token_ids.index(fifth)
    assert c.finish_reason == "stop" and c.completion_tokens == first + 1
    assert c.text == engine.tokenizer.decode(stream.token_ids[:first], skip_special_tokens=True)
    assert engine.complete("Hello", SamplingParams(max_new_tokens=0)).completion_tokens == 0


def test_template_end_of_turn_is_a_stop_token(engine, model_dir, tmp_path):
    vocab = engine.tokenizer.get_vocab()
    assert vocab["<|im_end|>"] in engine.stop_ids and engine.tokenizer.eos_token_id in engine.stop_ids
    qa_dir = tmp_path / "qa"
    shutil.copytree(model_dir, qa_dir)
    meta = json.loads((qa_dir / "anima.json").read_text())
    (qa_dir / "anima.json").write_text(json.dumps({**meta, "chat_template": "qa"}))
    qa = ChatEngine(qa_dir)
    assert qa.template_name == "qa" and qa.tokenizer.eos_token_id in qa.stop_ids
    c = qa.chat([{"role": "user", "content": "Hi"}], SamplingParams(max_new_tokens=5, seed=0))
    assert c.prompt_tokens == len(qa.chat_prompt_ids([{"role": "user", "content": "Hi"}], 5))


# --------------------------------------------------------------------------- sampling
def test_seeded_sampling_is_reproducible(engine):
    msgs = [{"role": "user", "content": "Say something"}]
    p = SamplingParams(temperature=1.0, top_p=0.9, top_k=50, repetition_penalty=1.2, max_new_tokens=30, seed=7)
    a, b = engine.stream_chat(msgs, p), engine.stream_chat(msgs, p)
    assert "".join(a) == "".join(b) and a.token_ids == b.token_ids
    c = engine.stream_chat(msgs, SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=30, seed=8))
    list(c)
    assert c.token_ids != a.token_ids


def test_processors_on_hand_made_logits():
    logits = torch.tensor([2.0, -2.0, 1.0, 0.5])
    assert apply_repetition_penalty(logits, torch.tensor([0, 1, 1]), 2.0).tolist() == [1.0, -4.0, 1.0, 0.5]
    mask = torch.tensor([True, True, False, False])
    assert apply_repetition_penalty(logits, mask, 2.0).tolist() == [1.0, -4.0, 1.0, 0.5]
    kept = apply_top_k(torch.tensor([1.0, 3.0, 2.0, 0.0]), 2)
    assert torch.isfinite(kept).tolist() == [False, True, True, False]
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    assert torch.isfinite(apply_top_p(probs.log(), 0.75)).tolist() == [True, True, False, False]
    assert torch.isfinite(apply_top_p(probs.log(), 0.1)).tolist() == [True, False, False, False]
    assert torch.isfinite(apply_top_p(probs.log(), 1.0)).all()


def test_processors_match_transformers():
    from transformers.generation.logits_process import (
        RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

    gen = torch.Generator().manual_seed(0)
    for _ in range(10):
        logits = torch.randn(1, 200, generator=gen) * 3
        seen = torch.randint(0, 200, (1, 30), generator=gen)
        p = SamplingParams(temperature=0.7, top_k=40, top_p=0.8, repetition_penalty=1.3)
        ref = RepetitionPenaltyLogitsProcessor(1.3)(seen, logits.clone())
        for proc in (TemperatureLogitsWarper(0.7), TopKLogitsWarper(40), TopPLogitsWarper(0.8)):
            ref = proc(seen, ref)
        got = process_logits(logits[0], p, seen[0])
        assert torch.equal(torch.isfinite(got), torch.isfinite(ref[0]))
        assert torch.allclose(got[torch.isfinite(got)], ref[0][torch.isfinite(ref[0])])


def test_sampling_params_validation():
    with pytest.raises(ConfigError, match="top_p"):
        SamplingParams(top_p=0).validate()
    with pytest.raises(ConfigError, match="temperature"):
        SamplingParams(temperature=-1).validate()
    assert SamplingParams(stop="x").validate().stop == ["x"]


def test_sampling_from_config_is_the_one_converter():
    from omegaconf import OmegaConf

    from anima.config.groups import SamplingConfig
    from anima.generation.sampling import sampling_from_config

    group = OmegaConf.structured(SamplingConfig(temperature=0.5, top_k=7, max_new_tokens=9))
    assert sampling_from_config(group) == SamplingParams(temperature=0.5, top_p=0.95, top_k=7, max_new_tokens=9)
    assert sampling_from_config(group, seed=3).seed == 3  # a stage's seed when the group sets none
    group.seed = 11
    assert sampling_from_config(group, seed=3).seed == 11
    group.top_p = 0.0  # the schema is not the only guard: a bad value fails naming its key
    with pytest.raises(ConfigError, match="sampling.top_p"):
        sampling_from_config(group)


# --------------------------------------------------------------------------- context, prefix reuse, threads
def test_history_trimmed_to_context_keeps_system(engine):
    msgs = [{"role": "system", "content": "SYSTEM PROMPT"}]
    for i in range(30):
        msgs += [{"role": "user", "content": f"question number {i} about the sea and ships"},
                 {"role": "assistant", "content": f"answer number {i}, a fairly long reply about waves"}]
    msgs.append({"role": "user", "content": "last question"})
    ids = engine.chat_prompt_ids(msgs, 100)
    assert len(ids) + 100 <= engine.context_length
    text = engine.tokenizer.decode(ids)
    assert "SYSTEM PROMPT" in text and "last question" in text and "question number 0 " not in text
    c = engine.chat(msgs, SamplingParams(max_new_tokens=100, seed=1))
    assert c.prompt_tokens == len(ids) and c.prompt_tokens + c.completion_tokens <= engine.context_length


def test_loading_a_model_prints_no_progress_bar(model_dir, capfd):
    """`anima chat` and the eval open with the model's name, not with transformers' "Loading weights" bar."""
    from transformers.utils import logging as hf_logging

    from anima.model.build import load_model_dir

    hf_logging.enable_progress_bar()  # as in a fresh process, whatever an earlier test switched off
    load_model_dir(model_dir)
    assert "Loading weights" not in capfd.readouterr().err


def test_errors_are_one_line(engine, tmp_path):
    with pytest.raises(AnimaError, match="context"):
        engine.complete("word " * 400, SamplingParams(max_new_tokens=4))
    with pytest.raises(ConfigError, match="backend"):
        ChatEngine(tmp_path, backend="nope")
    with pytest.raises(ModelError, match="config.json"):
        ChatEngine(tmp_path)


def test_prefix_reuse_gives_same_tokens(engine):
    p = SamplingParams(max_new_tokens=20, **GREEDY)
    msgs = [{"role": "user", "content": "Hello, who are you?"}]
    first = engine.chat(msgs, p)
    msgs2 = msgs + [{"role": "assistant", "content": first.text}, {"role": "user", "content": "And then?"}]
    reused = engine.stream_chat(msgs2, p)
    "".join(reused)
    engine.forget_cache()
    fresh = engine.stream_chat(msgs2, p)
    "".join(fresh)
    assert reused.token_ids == fresh.token_ids


def test_concurrent_requests_match_serial_runs(engine):
    prompts = ["alpha beta", "the sea", "one two three", "hello"]
    p = SamplingParams(max_new_tokens=25, **GREEDY)
    serial = [engine.complete(x, p).text for x in prompts]
    results: dict[int, str] = {}

    def worker(i: int) -> None:
        results[i] = "".join(engine.stream_completion(prompts[i], p))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert [results[i] for i in range(len(prompts))] == serial


def test_abandoned_stream_frees_its_slot(engine):
    import time

    stream = engine.stream_completion("Hello there", SamplingParams(max_new_tokens=50, seed=0, temperature=1.0))
    next(stream)
    stream.close()
    deadline = time.monotonic() + 5
    while engine.scheduler.load != (0, 0) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.scheduler.load == (0, 0)
    assert engine.complete("Hello", SamplingParams(max_new_tokens=3, **GREEDY)).completion_tokens >= 1


def test_thread_tuner_prefers_faster_count_and_backs_off():
    from anima.generation.threads import ThreadTuner

    def run(tuner, cost, steps):
        used = []
        for _ in range(steps):
            n = tuner.choose()
            used.append(n)
            tuner.record(n, cost[n])
        return used

    slow_two = ThreadTuner(2)
    used = run(slow_two, {2: 0.050, 1: 0.001}, 400)  # contended machine: 2 threads is 50x slower
    assert slow_two.best == 1 and used[-100:].count(2) <= 2 and used.count(2) < 30
    fast_two = ThreadTuner(2)
    used = run(fast_two, {2: 0.0006, 1: 0.0010}, 400)
    assert fast_two.best == 2 and used.count(1) < 40
    assert ThreadTuner(1).choose() == 1


@pytest.mark.parametrize("kw", [dict(top_p=0.9, scale=6.0), dict(top_p=0.9, scale=0.5), dict(top_k=5, top_p=0.8, scale=1.0),
                                dict(top_k=0, top_p=1.0, scale=1.0), dict(top_k=100, top_p=1.0, scale=2.0),
                                dict(top_p=0.1, scale=0.5)])  # a nucleus rejection mostly misses: the sort fallback
def test_fast_sampler_draws_from_the_processed_distribution(kw):
    """sample_next (top-k shortcut, top-p by rejection or its sort fallback) samples exactly
    softmax(process_logits(...))."""
    from anima.generation.sampling import make_generator, sample_next

    scale = kw.pop("scale")
    logits = torch.randn(300, generator=torch.Generator().manual_seed(3)) * scale
    p = SamplingParams(temperature=0.9, **kw)
    expected = torch.softmax(process_logits(logits, p), 0)
    gen = make_generator(0)
    n = 4000
    counts = torch.bincount(torch.tensor([sample_next(logits, p, gen) for _ in range(n)]), minlength=300).float()
    assert counts[expected == 0].sum() == 0  # never outside the kept set
    big = expected > 0.02
    assert torch.allclose(counts[big] / n, expected[big], atol=0.025)
