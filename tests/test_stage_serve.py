"""`anima serve` as a stage: the composed config builds the app around the champion; the official openai client
talks to it over loopback; limits and malformed requests get 4xx JSON while the server keeps answering; the
API key comes from the variable named by serve.api_key_env; the real CLI serves and stops cleanly."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from tests.helpers import compose_cfg
from tests.helpers.champion import champion_project

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def champ(tmp_path_factory, raw_dir):
    return champion_project(tmp_path_factory, raw_dir)


def _post(url: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture
def server(champ, monkeypatch):
    from anima.serve.server import start_server_thread
    from anima.stages.serve import build_app

    root, _ = champ
    monkeypatch.setenv("ANIMA_ROOT", str(root))
    cfg = compose_cfg("serve", ["serve.limits.max_body_bytes=4096", "serve.limits.max_tokens=16",
                                "sampling.max_new_tokens=8", "device.threads=1", "serve.compile=false"])
    app, resolved, name = build_app(cfg)
    assert (resolved.name, resolved.version, name) == ("anima-tiny", "1", "anima-tiny")
    with start_server_thread(app) as srv:
        yield srv


def test_openai_client_against_the_champion(server):
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    assert [m.id for m in client.models.list().data] == ["anima-tiny"]
    resp = client.chat.completions.create(model="anima-tiny", messages=[{"role": "user", "content": "Hello"}],
                                          max_tokens=6, seed=1)
    assert resp.choices[0].message.role == "assistant" and resp.usage.completion_tokens <= 6
    pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="anima-tiny", messages=[{"role": "user", "content": "Hello"}], max_tokens=6, seed=1, stream=True)
        if c.choices]
    assert "".join(pieces) == resp.choices[0].message.content  # same seed, same reply, streamed or not


def test_the_champion_answers_by_its_name_to_both_client_flavours(server):
    import httpx
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    assert client.models.retrieve("anima-tiny").id == "anima-tiny"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hello"}], max_tokens=2)
    (tag,) = httpx.get(f"{server.url}/api/tags").json()["models"]
    assert tag["name"] == "anima-tiny:latest" and tag["size"] > 0 and len(tag["digest"]) == 64
    r = httpx.post(f"{server.url}/api/generate", json={"model": "anima-tiny", "prompt": "Hello", "stream": False,
                                                      "options": {"num_predict": 4}}, timeout=60).json()
    assert r["done"] is True and r["eval_count"] <= 4 and r["eval_duration"] > 0


def test_bad_requests_get_4xx_json_and_the_server_keeps_running(server):
    url = f"{server.url}/v1/chat/completions"
    msg = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    cases = [
        (b"{not json", 400, "invalid_json"),
        (json.dumps({**msg, "max_tokens": 17}).encode(), 400, "max_tokens_exceeded"),  # serve.limits.max_tokens
        (json.dumps({"messages": [{"role": "user", "content": "x" * 5000}]}).encode(), 413, "request_too_large"),
        (json.dumps({"messages": "hi"}).encode(), 400, "invalid_value"),
    ]
    for body, status, code in cases:
        got, data = _post(url, body)
        assert (got, data["error"]["code"]) == (status, code), data
    got, data = _post(url, json.dumps(msg).encode())
    assert got == 200 and data["choices"][0]["message"]["role"] == "assistant"


def test_api_key_from_the_named_environment_variable(champ, monkeypatch):
    from anima.errors import ConfigError
    from anima.serve.server import start_server_thread
    from anima.stages.serve import build_app

    root, _ = champ
    monkeypatch.setenv("ANIMA_ROOT", str(root))
    cfg = compose_cfg("serve", ["serve.api_key_env=ANIMA_TEST_SERVE_KEY", "sampling.max_new_tokens=4",
                                "serve.compile=false"])
    monkeypatch.delenv("ANIMA_TEST_SERVE_KEY", raising=False)
    with pytest.raises(ConfigError, match="serve.api_key_env=ANIMA_TEST_SERVE_KEY"):
        build_app(cfg)
    monkeypatch.setenv("ANIMA_TEST_SERVE_KEY", "s3cret-key")
    app, _, _ = build_app(cfg)
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()
    with start_server_thread(app) as srv:
        assert _post(f"{srv.url}/v1/chat/completions", body)[0] == 401
        assert _post(f"{srv.url}/v1/chat/completions", body, {"Authorization": "Bearer s3cret-key"})[0] == 200


def test_cli_serves_on_loopback_and_stops(champ):
    import os
    import socket

    root, _ = champ
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "ANIMA_ROOT": str(root), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "anima", "serve", "model=models:/anima-tiny@champion",
                             f"serve.port={port}", "sampling.max_new_tokens=4", "serve.log_level=warning",
                             "serve.compile=false"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        seen = []
        while not any("serving" in line for line in seen) and len(seen) < 50:
            seen.append(proc.stdout.readline())
            assert seen[-1] or proc.poll() is None, "".join(seen)
        assert re.search(rf"serving models:/anima-tiny@champion \(v1\) as 'anima-tiny' on http://127.0.0.1:{port}/v1",
                         seen[-1]), "".join(seen)
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    assert json.loads(r.read())["model"] == "anima-tiny"
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.time() < deadline and proc.poll() is None
                time.sleep(0.2)
        got, data = _post(f"http://127.0.0.1:{port}/v1/chat/completions",
                          json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode())
        assert got == 200
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    assert proc.returncode in (0, 130, -signal.SIGINT)


def test_port_in_use_is_a_one_line_error(champ, monkeypatch, capsys):
    import socket

    from anima.cli import main

    root, _ = champ
    monkeypatch.setenv("ANIMA_ROOT", str(root))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        with pytest.raises(SystemExit) as exc:
            main(["serve", f"serve.port={s.getsockname()[1]}"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot listen" in err[0] and "serve.port" in err[0]
