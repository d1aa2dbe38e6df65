"""OpenAI parity of ``anima serve``, driven by the official ``openai`` client against a real server on loopback
with a real nano model: models.retrieve, unknown models (404 in OpenAI's error shape), logprobs/top_logprobs
(chat and legacy completions), presence/frequency penalties (checked against a reference decode of the same
weights), refused parameters (400 naming them), and completions that return exactly the continuation text."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.helpers.models import nano_engine

MODEL = "model"  # the nano model dir's name: what the server serves
MSGS = [{"role": "user", "content": "What is your name?"}]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return nano_engine(tmp_path_factory)


@pytest.fixture(scope="module")
def server(engine):
    from anima.serve.app import ServeLimits, create_app
    from anima.serve.server import start_server_thread

    srv = start_server_thread(create_app(engine, limits=ServeLimits(max_tokens=48)))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def _error(exc: openai.APIStatusError) -> dict:
    assert isinstance(exc.body, dict) and set(exc.body) == {"message", "type", "param", "code"}, exc.body
    return exc.body


def test_models_retrieve_and_unknown_models_are_404(client, server):
    assert client.models.retrieve(MODEL).id == MODEL
    assert client.models.retrieve(MODEL + ":latest").id == MODEL  # Ollama-style tag of the same model
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("gpt-4o")
    assert _error(e.value)["code"] == "model_not_found"
    for call in (lambda: client.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=2),
                 lambda: client.completions.create(model="gpt-4o", prompt="Hi", max_tokens=2),
                 lambda: list(client.chat.completions.create(model="gpt-4o", messages=MSGS, stream=True))):
        with pytest.raises(openai.NotFoundError) as e:
            call()
        assert _error(e.value)["param"] == "model" and "gpt-4o" in _error(e.value)["message"]
    raw = httpx.post(server.url + "/v1/chat/completions", json={"model": "nope", "messages": MSGS})
    assert raw.status_code == 404
    assert set(raw.json()) == {"error"} and set(raw.json()["error"]) == {"message", "type", "param", "code"}


def test_chat_logprobs_and_top_logprobs(client):
    kw = dict(model=MODEL, messages=MSGS, max_tokens=10, temperature=0, logprobs=True, top_logprobs=3)
    r = client.chat.completions.create(**kw)
    choice = r.choices[0]
    content = choice.logprobs.content
    assert len(content) == r.usage.completion_tokens - (choice.finish_reason == "stop")  # the stop token has none
    for t in content:
        assert isinstance(t.token, str) and t.logprob <= 0
        assert t.bytes == list(t.token.encode()) or t.token.startswith("\\x")  # a byte piece: \xNN and its byte
        tops = [a.logprob for a in t.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True)
        assert t.top_logprobs[0].token == t.token and t.top_logprobs[0].logprob == pytest.approx(t.logprob)  # greedy
    if "\ufffd" not in choice.message.content:  # no broken byte run: the tokens spell the reply
        assert "".join(t.token for t in content).lstrip(" ") == choice.message.content
    # streamed: the same entries, spread over the chunks
    streamed = [t for ch in client.chat.completions.create(stream=True, **kw)
                if ch.choices and ch.choices[0].logprobs for t in ch.choices[0].logprobs.content]
    assert [(t.token, round(t.logprob, 4)) for t in streamed] == [(t.token, round(t.logprob, 4)) for t in content]
    # off unless asked for; top_logprobs alone is a 400
    assert client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=3).choices[0].logprobs is None
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=3, top_logprobs=2)
    assert _error(e.value)["param"] == "top_logprobs"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=3, logprobs=True, top_logprobs=21)
    assert _error(e.value)["param"] == "top_logprobs"


def test_completion_logprobs_legacy_shape(client):
    prompt = "Once upon a time"
    c = client.completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0, logprobs=2)
    lp = c.choices[0].logprobs
    n = len(lp.tokens)
    assert n == c.usage.completion_tokens - (c.choices[0].finish_reason == "stop")
    assert len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n
    assert all(x <= 0 for x in lp.token_logprobs)
    assert all(tok in top and len(top) <= 3 for tok, top in zip(lp.tokens, lp.top_logprobs))
    assert lp.text_offset[0] == len(prompt)
    assert all(b - a == len(t) for a, b, t in zip(lp.text_offset, lp.text_offset[1:], lp.tokens))
    streamed = [t for ch in client.completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0,
                                                      logprobs=2, stream=True)
                if ch.choices and ch.choices[0].logprobs for t in ch.choices[0].logprobs.tokens]
    assert streamed == lp.tokens
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt=prompt, max_tokens=2, logprobs=6)
    assert _error(e.value)["param"] == "logprobs"


def _first_token_starts_a_word(engine, prompt: str) -> int:
    """A seed whose first sampled token (temperature 1) begins with a space."""
    from anima.generation.sampling import SamplingParams

    for seed in range(200):
        ids = engine.complete(prompt, SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=1, seed=seed)).token_ids
        if engine.token_texts.text(ids[0]).startswith(" ") and ids[0] not in engine.stop_ids:
            return seed
    pytest.fail("no seed gives a first token with a leading space")


def test_completions_return_exactly_the_continuation(client, engine):
    from anima.generation.sampling import SamplingParams

    prompt = "Once upon a time"
    seed = _first_token_starts_a_word(engine, prompt)
    kw = dict(temperature=1.0, top_p=1.0, seed=seed)
    c = client.completions.create(model=MODEL, prompt=prompt, max_tokens=6, **kw)
    text = c.choices[0].text
    assert text.startswith(" ")  # "Once upon a time" + " of", not "timeof"
    ids = engine.complete(prompt, SamplingParams(max_new_tokens=6, **kw)).token_ids
    prompt_ids = engine.completion_prompt_ids(prompt)
    whole = engine.tokenizer.decode(prompt_ids + ids, skip_special_tokens=True)
    assert prompt + text == whole  # the continuation is exactly what follows the prompt's text
    streamed = "".join(ch.choices[0].text for ch in client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=6, stream=True, **kw) if ch.choices)
    assert streamed == text


def _reference_decode(engine, prompt: str, steps: int, presence: float, frequency: float) -> list[int]:
    """Greedy decoding by full forward passes of the transformers model, with OpenAI's penalty formula."""
    import torch

    ids = engine.completion_prompt_ids(prompt)
    counts = torch.zeros(engine.vocab_size)
    out: list[int] = []
    with torch.no_grad():
        for _ in range(steps):
            logits = engine.model(torch.tensor([ids + out])).logits[0, -1].float()
            tok = int(torch.argmax(logits - presence * (counts > 0).float() - frequency * counts))
            out.append(tok)
            if tok in engine.stop_ids:
                break
            counts[tok] += 1
    return out


@pytest.mark.parametrize("presence,frequency", [(1.5, 0.0), (0.0, 1.0), (0.5, 0.5)])
def test_presence_and_frequency_penalties(client, engine, presence, frequency):
    prompt = "Once upon a time"
    ref = _reference_decode(engine, prompt, 40, presence, frequency)
    c = client.completions.create(model=MODEL, prompt=prompt, max_tokens=40, temperature=0,
                                  presence_penalty=presence, frequency_penalty=frequency)
    prompt_ids = engine.completion_prompt_ids(prompt)
    assert prompt + c.choices[0].text == engine.tokenizer.decode(prompt_ids + ref, skip_special_tokens=True)
    plain = client.completions.create(model=MODEL, prompt=prompt, max_tokens=40, temperature=0)
    assert plain.choices[0].text != c.choices[0].text  # 40 greedy tokens of a tiny model repeat: penalties bite
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=2, presence_penalty=2.5)
    assert _error(e.value)["param"] == "presence_penalty"


@pytest.mark.parametrize("kw,param", [
    (dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]), "tools"),
    (dict(tool_choice="auto"), "tool_choice"),
    (dict(response_format={"type": "json_object"}), "response_format"),
    (dict(n=2), "n"),
    (dict(logit_bias={"5": 10}), "logit_bias"),
    (dict(store=True), "store"),
    (dict(reasoning_effort="low"), "reasoning_effort"),
    (dict(extra_body={"min_p": 0.1}), "min_p"),
])
def test_unsupported_chat_parameters_are_400(client, kw, param):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=2, **kw)
    assert _error(e.value)["param"] == param


def test_neutral_values_and_other_unsupported_parameters(client):
    ok = client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=2, response_format={"type": "text"},
                                        n=1, user="someone", metadata={"k": "v"}, tool_choice="none")
    assert ok.choices[0].finish_reason in ("stop", "length")
    for kw, param in ((dict(echo=True), "echo"), (dict(best_of=2), "best_of"), (dict(suffix="end"), "suffix")):
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(model=MODEL, prompt="Hi", max_tokens=2, **kw)
        assert _error(e.value)["param"] == param
