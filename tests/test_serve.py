"""The HTTP server, end to end: a real uvicorn server on a free loopback port, a real nano model, and the
official ``openai`` client (plus raw httpx for what a client library would never send)."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.helpers.models import nano_engine

API_KEY = "test-key-123"
MSGS = [{"role": "user", "content": "What is your name?"}]
MODEL = "model"  # the nano model dir's name: what the server serves


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return nano_engine(tmp_path_factory)


@pytest.fixture(scope="module")
def server(engine):
    from anima.serve.app import ServeLimits, create_app
    from anima.serve.server import start_server_thread

    limits = ServeLimits(max_body_bytes=20_000, max_messages=8, max_tokens=48, max_prompt_chars=2_000)
    app = create_app(engine, api_key=API_KEY, limits=limits)
    srv = start_server_thread(app, "127.0.0.1", 0)
    srv.app = app
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=60)


def _auth():
    return {"Authorization": f"Bearer {API_KEY}"}


def test_binds_loopback(server, engine):
    bound = {s.getsockname()[:2] for srv in server.server.servers for s in srv.sockets}
    assert bound == {("127.0.0.1", server.port)}  # the listening socket itself, not the host we asked for
    health = httpx.get(server.url + "/health").json()  # /health needs no key
    assert health["status"] == "ok" and health["backend"] == engine.backend_name


def test_chat_non_stream_and_stream_agree(client):
    a = client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=12, seed=7, temperature=0.9)
    assert a.object == "chat.completion"
    assert a.choices[0].message.role == "assistant"
    assert isinstance(a.choices[0].message.content, str)
    assert a.choices[0].finish_reason in ("stop", "length")
    assert a.usage.prompt_tokens > 0 and 0 < a.usage.completion_tokens <= 12
    assert a.usage.total_tokens == a.usage.prompt_tokens + a.usage.completion_tokens

    stream = client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=12, seed=7, temperature=0.9,
                                            stream=True, stream_options={"include_usage": True})
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for ch in chunk.choices:
            if ch.delta.content:
                pieces.append(ch.delta.content)
            finish = ch.finish_reason or finish
    assert "".join(pieces) == a.choices[0].message.content  # same seed, same reply
    assert finish == a.choices[0].finish_reason
    assert usage.completion_tokens == a.usage.completion_tokens


def test_completions_and_models(client):
    c = client.completions.create(model=MODEL, prompt="The quick brown", max_tokens=8, temperature=0)
    assert c.object == "text_completion" and isinstance(c.choices[0].text, str)
    assert c.usage.completion_tokens <= 8
    streamed = "".join(ch.choices[0].text for ch in client.completions.create(
        model=MODEL, prompt="The quick brown", max_tokens=8, temperature=0, stream=True) if ch.choices)
    assert streamed == c.choices[0].text
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]


def test_concurrent_requests_all_answered_correctly(client):
    seeds = list(range(100, 108))

    def ask(seed, stream):
        kw = dict(model=MODEL, messages=[{"role": "user", "content": f"Tell me about {seed}"}], max_tokens=10,
                  seed=seed, temperature=1.0)
        if stream:
            return "".join(ch.choices[0].delta.content or "" for ch in client.chat.completions.create(stream=True, **kw)
                           if ch.choices)
        return client.chat.completions.create(**kw).choices[0].message.content

    with ThreadPoolExecutor(8) as pool:  # 8 clients at once, half of them streaming
        concurrent = list(pool.map(lambda s: ask(s, s % 2 == 0), seeds))
    sequential = [ask(s, False) for s in seeds]
    assert concurrent == sequential


def test_ollama_chat_ndjson(server):
    body = {"model": MODEL, "messages": MSGS, "options": {"num_predict": 10, "seed": 3, "temperature": 0.9}}
    with httpx.stream("POST", server.url + "/api/chat", json=body, headers=_auth(), timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert lines[-1]["done"] is True and lines[-1]["eval_count"] <= 10
    assert all(line["done"] is False for line in lines[:-1])
    streamed = "".join(line["message"]["content"] for line in lines)
    whole = httpx.post(server.url + "/api/chat", json={**body, "stream": False}, headers=_auth(), timeout=60).json()
    assert whole["done"] is True and whole["message"]["content"] == streamed


def test_limits_are_4xx_json(client, server):
    def err(exc_info):
        return exc_info.value.body if isinstance(exc_info.value.body, dict) else {}

    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=49)
    assert e.value.status_code == 400 and err(e)["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=MSGS * 9, max_tokens=4)
    assert err(e)["code"] == "too_many_messages"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x" * 2_001}], max_tokens=4)
    assert err(e)["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "robot", "content": "hi"}], max_tokens=4)
    assert "role" in err(e)["param"]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=MSGS, temperature=5)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=MSGS, seed=2**70)

    url = server.url + "/v1/chat/completions"
    big = httpx.post(url, content=b'{"messages": "' + b"x" * 30_000 + b'"}', headers=_auth(), timeout=30)
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
    chunked = httpx.post(url, content=iter([b"x" * 10_000] * 3), headers=_auth(), timeout=30)  # no Content-Length
    assert chunked.status_code == 413 and chunked.json()["error"]["code"] == "request_too_large"
    bad = httpx.post(url, content=b'{"messages": [', headers={**_auth(), "content-type": "application/json"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
    for payload in (b"[1, 2]", b"", b"\xff\xfe"):
        r = httpx.post(url, content=payload, headers=_auth())
        assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert httpx.get(server.url + "/v1/nowhere", headers=_auth()).status_code == 404

    # ...and the server keeps answering.
    ok = client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=4)
    assert ok.choices[0].finish_reason in ("stop", "length")


def test_api_key(server):
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=4)
    assert e.value.status_code == 401
    r = httpx.post(server.url + "/v1/chat/completions", json={"messages": MSGS})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert API_KEY not in r.text
    assert httpx.get(server.url + "/v1/models").status_code == 401


def test_event_loop_stays_responsive_while_generating(server, client):
    engine = server.app.state.runner.engine
    gate = threading.Event()
    prefill = engine._prefill_ids

    def slow_prefill(*args):  # as if a long prompt held the model
        gate.wait(30)
        return prefill(*args)

    engine._prefill_ids = slow_prefill
    result = {}
    try:
        t = threading.Thread(target=lambda: result.setdefault(
            "r", client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=4)))
        t.start()
        time.sleep(0.3)
        assert "r" not in result  # stuck in the engine...
        t0 = time.monotonic()
        assert httpx.get(server.url + "/health", timeout=5).status_code == 200  # ...while the loop still serves
        bad = httpx.post(server.url + "/v1/chat/completions", content=b"{", headers=_auth(), timeout=5)
        assert bad.status_code == 400
        assert time.monotonic() - t0 < 3
    finally:
        engine._prefill_ids = prefill
        gate.set()
    t.join(60)
    assert result["r"].choices[0].message.content is not None


def test_run_server_rejects_bad_port(engine):
    from anima.errors import ConfigError
    from anima.serve.server import run_server

    with pytest.raises(ConfigError, match="port"):
        run_server(engine, port=70000)


def test_abandoned_stream_does_not_wedge_the_server(server, client):
    body = {"model": MODEL, "messages": MSGS, "max_tokens": 48, "stream": True, "temperature": 1.0}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, headers=_auth(), timeout=30) as r:
        assert r.status_code == 200
        first = next(r.iter_lines())
        assert first.startswith("data: ")
    # the client hung up mid-stream; its slot is freed and the next request is answered
    r = client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=4)
    assert r.choices[0].message.content is not None
    runner = server.app.state.runner
    deadline = time.monotonic() + 5
    while (runner.in_flight, runner.engine.scheduler.load) != (0, (0, 0)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert (runner.in_flight, runner.engine.scheduler.load) == (0, (0, 0))


def test_prompt_longer_than_context(client):
    digits = "1234567890 " * 60  # 660 chars (limit 2000), > 600 tokens (context 256)
    # chat: the engine keeps the end of an over-long conversation, so this is answered...
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": digits}], max_tokens=4)
    assert r.usage.prompt_tokens + r.usage.completion_tokens <= 256
    # ...a raw completion prompt is never cut: 400, streaming or not, before any byte of a stream is sent
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as e:
            out = client.completions.create(model=MODEL, prompt=digits, max_tokens=4, stream=stream)
            if stream:
                list(out)
        assert "context" in e.value.body["message"]


def test_server_limits_come_from_their_config_group():
    from omegaconf import OmegaConf

    from anima.config.serve import ServeLimitsConfig
    from anima.serve.limits import ServeLimits

    assert ServeLimits.from_config(ServeLimitsConfig()) == ServeLimits()  # schema defaults = server defaults
    group = OmegaConf.structured(ServeLimitsConfig(max_tokens=7, max_stop=1))
    assert ServeLimits.from_config(group) == ServeLimits(max_tokens=7, max_stop=1)
