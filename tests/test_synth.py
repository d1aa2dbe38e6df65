"""Teacher synthesis end to end: an OpenAI-compatible teacher that is a real ``anima serve`` app on loopback
(nano model, API key from an env var), and a local HF teacher; the output is a JSONL chat dataset."""

from __future__ import annotations

import json
import logging

import pytest

from anima.errors import AnimaError, DataError
from anima.generation.sampling import SamplingParams
from anima.synth import HFTeacher, OpenAITeacher, TeacherClient, load_prompts, synthesize
from anima.synth.teachers import redact_url
from tests.helpers.models import cached_nano_model_dir, nano_engine

SECRET = "sk-synth-secret-42"


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return nano_engine(tmp_path_factory)


@pytest.fixture(scope="module")
def server(engine):
    from anima.serve.app import ServeLimits, create_app
    from anima.serve.server import start_server_thread

    app = create_app(engine, api_key=SECRET, limits=ServeLimits(max_tokens=32, max_prompt_chars=500),
                     model_name="nano")  # the name the teachers below ask for
    srv = start_server_thread(app)
    yield srv
    srv.stop()


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_openai_teacher_against_anima_serve(server, engine, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("ANIMA_TEST_TEACHER_KEY", SECRET)
    teacher = OpenAITeacher(server.url + "/v1", "nano", api_key_env="ANIMA_TEST_TEACHER_KEY", timeout=60,
                            max_retries=0)
    assert isinstance(teacher, TeacherClient)
    assert SECRET not in repr(teacher) and SECRET not in teacher.name and "api_key=***" in repr(teacher)

    prompts = [
        "What is your name?",
        [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello!"}],
        "x" * 600,  # over the server's prompt limit: a 400 for this prompt only
        "Tell me about the sea.",
    ]
    out = tmp_path / "synth" / "teacher.jsonl"
    seen = []
    result = synthesize(prompts, teacher, SamplingParams(max_new_tokens=12, temperature=0), out,
                        on_progress=lambda i, n: seen.append((i, n)))
    assert (result.count, result.failures) == (3, 1) and "prompt 2" in result.errors[0]
    assert seen[-1] == (4, 4)
    rows = _read(out)
    assert [r["messages"][-2]["content"] for r in rows] == ["What is your name?", "Hello!", "Tell me about the sea."]
    assert rows[1]["messages"][0] == {"role": "system", "content": "You are terse."}
    for r in rows:
        assert r["source"] == "synth" and r["teacher"] == teacher.name
        assert r["messages"][-1]["role"] == "assistant" and r["messages"][-1]["content"].strip()
    assert SECRET not in out.read_text() and SECRET not in caplog.text
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]

    # Greedy: the teacher's replies are exactly what the local model says.
    local = HFTeacher(engine.model_dir, engine=engine)
    greedy = SamplingParams(max_new_tokens=12, temperature=0)
    assert rows[0]["messages"][-1]["content"] == local.reply(rows[0]["messages"][:-1], greedy)


def test_bad_key_aborts_without_leaking(server, tmp_path, monkeypatch):
    monkeypatch.setenv("ANIMA_TEST_TEACHER_KEY", "sk-wrong-key")
    teacher = OpenAITeacher(server.url + "/v1", "nano", api_key_env="ANIMA_TEST_TEACHER_KEY", max_retries=0)
    out = tmp_path / "x.jsonl"
    with pytest.raises(AnimaError, match="ANIMA_TEST_TEACHER_KEY") as e:
        synthesize(["hi", "there"], teacher, SamplingParams(max_new_tokens=4), out)
    assert "sk-wrong-key" not in str(e.value)
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing half-written
    monkeypatch.delenv("ANIMA_TEST_TEACHER_KEY")
    unset = OpenAITeacher(server.url + "/v1", "nano", api_key_env="ANIMA_TEST_TEACHER_KEY", max_retries=0)
    assert "api_key=unset" in repr(unset)
    with pytest.raises(AnimaError, match="refused the API key"):
        unset.reply([{"role": "user", "content": "hi"}], SamplingParams(max_new_tokens=4))


def test_hf_teacher_local_model(tmp_path_factory, tmp_path):
    teacher = HFTeacher(cached_nano_model_dir(tmp_path_factory))
    out = tmp_path / "hf.jsonl"
    res = synthesize(["Hello there", "What is the sea?"], teacher, SamplingParams(max_new_tokens=6, seed=1), out,
                     system_prompt="You are anima.")
    assert res.count + res.failures == 2 and res.count >= 1
    rows = _read(out)
    assert rows[0]["teacher"].startswith("hf:") and rows[0]["messages"][0]["content"] == "You are anima."


def test_a_seeded_run_gives_each_prompt_its_own_seed(tmp_path):
    class Recorder:
        name = "recorder"
        seeds: list = []

        def reply(self, messages, params):
            self.seeds.append(params.seed)
            return "ok"

    teacher = Recorder()
    synthesize(["a", "b", "c"], teacher, SamplingParams(seed=7), tmp_path / "seeded.jsonl")
    synthesize(["a", "b"], teacher, SamplingParams(), tmp_path / "unseeded.jsonl")
    assert teacher.seeds == [7, 8, 9, None, None]  # reproducible, yet no two prompts share their random draws


def test_bad_prompts_and_prompt_files(tmp_path):
    class Echo:
        name = "echo"

        def reply(self, messages, params):
            return messages[-1]["content"].upper()

    with pytest.raises(DataError, match="at least one prompt"):
        synthesize([], Echo(), SamplingParams(), tmp_path / "a.jsonl")
    with pytest.raises(DataError, match="prompt 1"):
        synthesize(["ok", [{"role": "bot", "content": "?"}]], Echo(), SamplingParams(), tmp_path / "a.jsonl")
    assert not (tmp_path / "a.jsonl").exists()

    (tmp_path / "p.txt").write_text("first\n\n second \n")
    assert load_prompts(tmp_path / "p.txt") == ["first", "second"]
    (tmp_path / "p.jsonl").write_text(
        '"plain"\n{"prompt": "keyed"}\n'
        '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "old"}]}\n')
    prompts = load_prompts(tmp_path / "p.jsonl")
    res = synthesize(prompts, Echo(), SamplingParams(), tmp_path / "o.jsonl")
    assert res.count == 3 and [r["messages"][-1]["content"] for r in _read(tmp_path / "o.jsonl")] == ["PLAIN", "KEYED", "Q"]
    (tmp_path / "bad.jsonl").write_text('"ok"\n{nope\n')
    with pytest.raises(DataError, match="bad.jsonl:2"):
        load_prompts(tmp_path / "bad.jsonl")


def test_redact_url():
    assert redact_url("https://user:pw@host/v1?api_key=abc&x=1") == "https://user:***@host/v1?api_key=***&x=1"
    assert redact_url("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/v1"
