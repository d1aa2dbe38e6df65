"""The generation options behind the server's OpenAI parity, without a server: OpenAI's presence/frequency
penalties, per-token log-probabilities, and a raw completion's detokenization starting from the prompt's
last tokens (so "Once upon a time" + " of the" keeps its space)."""

from __future__ import annotations

import pytest
import torch

from anima.errors import ConfigError
from anima.generation.detok import IncrementalDetokenizer
from anima.generation.sampling import SamplingParams, apply_occurrence_penalties, token_logprobs
from tests.helpers.models import nano_engine


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return nano_engine(tmp_path_factory)


def test_occurrence_penalties_follow_openai():
    logits = torch.tensor([1.0, 2.0, 3.0, 4.0])
    counts = torch.tensor([0.0, 1.0, 3.0, 0.0])
    got = apply_occurrence_penalties(logits, counts, presence=0.5, frequency=0.25)
    assert torch.allclose(got, torch.tensor([1.0, 2.0 - 0.5 - 0.25, 3.0 - 0.5 - 0.75, 4.0]))
    assert apply_occurrence_penalties(logits, None, 1.0, 1.0) is logits


def test_token_logprobs():
    logits = torch.tensor([0.0, 2.0, 1.0, -1.0])
    lp, top = token_logprobs(logits, 2, k=2)
    ref = torch.log_softmax(logits, 0)
    assert lp == pytest.approx(float(ref[2]))
    assert [i for i, _ in top] == [1, 2] and top[0][1] == pytest.approx(float(ref[1]))
    assert token_logprobs(logits, 0)[1] == []


@pytest.mark.parametrize("kw,key", [(dict(presence_penalty=2.5), "presence_penalty"),
                                    (dict(frequency_penalty=-3), "frequency_penalty"), (dict(logprobs=21), "logprobs")])
def test_validate_names_the_bad_option(kw, key):
    with pytest.raises(ConfigError, match=f"sampling.{key}"):
        SamplingParams(**kw).validate()


def test_detokenizer_with_prompt_context_keeps_the_first_space(engine):
    tok = engine.tokenizer
    ctx = tok.encode("Once upon a time", add_special_tokens=False)
    full = tok.encode("Once upon a time of the", add_special_tokens=False)
    assert full[: len(ctx)] == ctx
    detok = IncrementalDetokenizer(engine._decode, engine._hold_ids, ctx)
    out = "".join(detok.push(t) for t in full[len(ctx):]) + detok.flush()
    assert out == " of the"
    plain = IncrementalDetokenizer(engine._decode, engine._hold_ids)  # a new reply: no leading space
    assert "".join(plain.push(t) for t in full[len(ctx):]) + plain.flush() == "of the"


def test_engine_logprobs_match_the_model_and_texts(engine):
    p = SamplingParams(temperature=0, max_new_tokens=12, logprobs=2)
    comp = engine.complete("The quick brown", p)
    ids = engine.completion_prompt_ids("The quick brown")
    generated = [t for t in comp.token_ids if t not in engine.stop_ids]
    assert [t.id for t in comp.logprobs] == generated
    with torch.no_grad():
        logits = engine.model(torch.tensor([ids + generated])).logits[0, len(ids) - 1:-1]
    ref = torch.log_softmax(logits.float(), -1)
    for i, t in enumerate(comp.logprobs):
        assert t.logprob == pytest.approx(float(ref[i, t.id]), abs=1e-4)
        assert [a.id for a in t.top] == ref[i].topk(2).indices.tolist()
        assert t.bytes == engine.token_texts.bytes(t.id) and t.text == engine.token_texts.text(t.id)
    assert engine.complete("The quick brown", SamplingParams(temperature=0, max_new_tokens=3)).logprobs is None
