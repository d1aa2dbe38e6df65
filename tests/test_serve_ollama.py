"""Ollama parity of ``anima serve``: real HTTP (httpx) against a real server with a nano model, checked against
the field names and types of Ollama's API documentation (docs/api.md): /api/chat, /api/generate (ndjson stream
and ``stream: false``), /api/tags, /api/show, /api/ps, /api/version, and Ollama's ``{"error": "..."}``."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime

import httpx
import pytest

from tests.helpers.models import nano_engine

MODEL = "model"  # the nano model dir's name
MSGS = [{"role": "user", "content": "What is your name?"}]
# Ollama's documented final object: counts and durations (ns) are integers
FINAL_INTS = ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count",
              "eval_duration")
DETAILS = {"parent_model": str, "format": str, "family": str, "families": list, "parameter_size": str,
           "quantization_level": str}


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return nano_engine(tmp_path_factory)


@pytest.fixture(scope="module")
def url(engine):
    from anima.serve.app import ServeLimits, create_app
    from anima.serve.server import start_server_thread

    srv = start_server_thread(create_app(engine, limits=ServeLimits(max_tokens=48)))
    yield srv.url
    srv.stop()


def _ndjson(url: str, body: dict) -> list[dict]:
    with httpx.stream("POST", url, json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
        return [json.loads(line) for line in r.iter_lines() if line]


def _check_final(obj: dict, model: str) -> None:
    assert obj["done"] is True and obj["model"] == model and obj["done_reason"] in ("stop", "length")
    datetime.fromisoformat(obj["created_at"].replace("Z", "+00:00"))
    for key in FINAL_INTS:
        assert isinstance(obj[key], int) and obj[key] >= 0, key
    assert obj["prompt_eval_count"] > 0 and obj["eval_count"] > 0
    assert obj["prompt_eval_duration"] > 0 and obj["eval_duration"] > 0
    assert obj["total_duration"] >= obj["load_duration"] + obj["prompt_eval_duration"] + obj["eval_duration"]


def test_chat_stream_and_whole_reply(url):
    body = {"model": MODEL, "messages": MSGS, "options": {"num_predict": 10, "seed": 3, "temperature": 0.9,
                                                          "presence_penalty": 0.5, "frequency_penalty": 0.2}}
    lines = _ndjson(url + "/api/chat", body)
    for line in lines[:-1]:
        assert line["done"] is False and line["message"]["role"] == "assistant" and line["model"] == MODEL
    _check_final(lines[-1], MODEL)
    assert lines[-1]["message"] == {"role": "assistant", "content": ""} and lines[-1]["eval_count"] <= 10
    whole = httpx.post(url + "/api/chat", json={**body, "stream": False}, timeout=60).json()
    _check_final(whole, MODEL)
    assert whole["message"]["content"] == "".join(line["message"]["content"] for line in lines)
    assert whole["eval_count"] == lines[-1]["eval_count"]


def test_generate_stream_whole_context_and_raw(url, engine):
    body = {"model": MODEL + ":latest", "prompt": "Why is the sky blue?", "options": {"num_predict": 8, "seed": 1}}
    lines = _ndjson(url + "/api/generate", body)
    assert all(line["done"] is False and isinstance(line["response"], str) for line in lines[:-1])
    final = lines[-1]
    _check_final(final, MODEL + ":latest")
    assert final["response"] == "" and all(isinstance(i, int) for i in final["context"])
    assert len(final["context"]) == final["prompt_eval_count"] + final["eval_count"]
    whole = httpx.post(url + "/api/generate", json={**body, "stream": False}, timeout=60).json()
    _check_final(whole, MODEL + ":latest")
    assert whole["response"] == "".join(line["response"] for line in lines) and whole["context"] == final["context"]
    # the context carries the conversation on: the next prompt is evaluated after it
    again = httpx.post(url + "/api/generate", json={**body, "prompt": "And the sea?", "context": whole["context"],
                                                    "stream": False}, timeout=60).json()
    assert again["prompt_eval_count"] > len(whole["context"])
    # raw: no template, the continuation of the prompt's own text
    raw = httpx.post(url + "/api/generate", json={"model": MODEL, "prompt": "Once upon a time", "raw": True,
                                                  "stream": False, "options": {"num_predict": 6, "temperature": 0}},
                     timeout=60).json()
    assert "Once upon a time" + raw["response"] == engine.tokenizer.decode(raw["context"], skip_special_tokens=True)
    # an empty prompt loads the model (it is always loaded here)
    load = httpx.post(url + "/api/generate", json={"model": MODEL}, timeout=60).json()
    assert load["done"] is True and load["response"] == "" and load["model"] == MODEL


def test_tags_ps_show_version(url, engine):
    tags = httpx.get(url + "/api/tags").json()
    (entry,) = tags["models"]
    assert entry["name"] == entry["model"] == MODEL + ":latest"
    datetime.fromisoformat(entry["modified_at"].replace("Z", "+00:00"))
    files = sorted(p for p in engine.model_dir.rglob("*") if p.is_file())
    assert entry["size"] == sum(p.stat().st_size for p in files)
    h = hashlib.sha256()
    for p in files:
        h.update(str(p.relative_to(engine.model_dir)).encode() + b"\0" + p.read_bytes())
    assert entry["digest"] == h.hexdigest()
    assert {k: type(v) for k, v in entry["details"].items()} == DETAILS
    assert entry["details"]["family"] == "llama" and entry["details"]["format"] == "safetensors"

    (running,) = httpx.get(url + "/api/ps").json()["models"]
    assert {k: running[k] for k in ("name", "model", "size", "digest", "details")} == \
        {k: entry[k] for k in ("name", "model", "size", "digest", "details")}
    assert isinstance(running["expires_at"], str) and isinstance(running["size_vram"], int)

    show = httpx.post(url + "/api/show", json={"model": MODEL}).json()
    assert {"modelfile", "parameters", "template", "details", "model_info"} <= set(show)
    assert all(isinstance(show[k], str) for k in ("modelfile", "parameters", "template"))
    assert show["details"] == entry["details"] and "<|im_start|>" in show["template"]
    info = show["model_info"]
    assert info["general.architecture"] == "llama" and info["llama.context_length"] == engine.context_length
    assert info["general.parameter_count"] == sum(p.numel() for p in engine.model.parameters())
    assert "temperature" in show["parameters"] and show["modelfile"].startswith("# Modelfile")

    version = httpx.get(url + "/api/version").json()
    assert set(version) == {"version"} and isinstance(version["version"], str)


@pytest.mark.parametrize("path,body,status", [
    ("/api/chat", {"model": "llama3.2", "messages": MSGS}, 404),
    ("/api/generate", {"model": "llama3.2", "prompt": "hi"}, 404),
    ("/api/show", {"model": "llama3.2"}, 404),
    ("/api/chat", {"model": MODEL, "messages": MSGS, "format": "json"}, 400),
    ("/api/chat", {"model": MODEL, "messages": MSGS, "tools": [{"type": "function"}]}, 400),
    ("/api/generate", {"model": MODEL, "prompt": "hi", "images": ["aGk="]}, 400),
    ("/api/generate", {"model": MODEL, "prompt": "hi", "context": ["x"]}, 400),
    ("/api/chat", {"model": MODEL, "messages": [{"role": "user", "content": "hi", "images": ["aGk="]}]}, 400),
])
def test_errors_in_ollama_shape(url, path, body, status):
    r = httpx.post(url + path, json=body, timeout=60)
    assert r.status_code == status
    assert set(r.json()) == {"error"} and isinstance(r.json()["error"], str)
