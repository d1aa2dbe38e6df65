"""The optional LLM judge: a real `anima serve` of a nano model as the judge (scores meaningless, plumbing real),
a real HTTP judge that answers scores or garbage (counting the requests it gets), the on-disk cache (a re-run
sends nothing) and the API key never reaching the MLflow store or the cache."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from anima.config.eval import JudgeOptions
from anima.evaluation.judge import judge_replies, make_judge, parse_score, rubric_fingerprint
from tests.helpers.models import cached_nano_model_dir
from tests.helpers.registry import nano_registry  # noqa: F401  (session fixture)

SECRET = "sk-judge-secret-7731"
EXAMPLES = [{"prompt": "What are you?", "reference": "I am a software program.", "system": "You are Anima, a bot."},
            {"prompt": "Are you human?", "reference": "No, a computer program.", "system": "You are Anima, a bot."},
            {"prompt": "Hello!", "reference": "Hi there.", "system": None}]
REPLIES = ["I am a program.", "No.", "Hello, friend."]


@pytest.mark.parametrize("text,score", [
    ("4", 4), (" 5\n", 5), ("Score: 3", 3), ("4/5", 4), ("I'd say 2 out of 5.", 2), ("On a 1-5 scale: 4", 4),
    ("rating - 1", 1), ("3.", 3), ("", None), ("banana", None), ("7", None), ("3.5", None), ("0", None),
    ("Score: 9, maybe 4", None), ("10 out of 10", None)])
def test_parse_score(text, score):
    assert parse_score(text) == score


class _Judge(BaseHTTPRequestHandler):
    """/v1/chat/completions answering ``server.answer``; counts requests and checks the bearer key."""

    def do_POST(self):  # noqa: N802
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        srv.requests += 1
        srv.auth_ok &= self.headers.get("Authorization") == f"Bearer {SECRET}"
        out = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
               "choices": [{"index": 0, "finish_reason": "stop",
                            "message": {"role": "assistant", "content": srv.answer}}],
               "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
        data = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture()
def fake_judge(monkeypatch):
    monkeypatch.setenv("ANIMA_TEST_JUDGE_KEY", SECRET)
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    srv.requests, srv.auth_ok, srv.answer = 0, True, "Score: 4"
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()


def _opts(url: str, model: str = "judge") -> JudgeOptions:
    return JudgeOptions(enabled=True, base_url=url, model=model, api_key_env="ANIMA_TEST_JUDGE_KEY", max_retries=0,
                        timeout=30)


def test_cache_makes_a_rerun_free(fake_judge, tmp_path):
    opts, url = _opts(f"http://127.0.0.1:{fake_judge.server_port}/v1"), f"http://127.0.0.1:{fake_judge.server_port}"
    first = judge_replies(make_judge(opts), EXAMPLES, REPLIES, opts, "models:/m/1|run", tmp_path)
    assert first.scores == {"persona": [4, 4, 4], "helpfulness": [4, 4, 4]} and first.skipped == 0
    assert fake_judge.requests == first.requests == 6 and fake_judge.auth_ok
    again = judge_replies(make_judge(opts), EXAMPLES, REPLIES, opts, "models:/m/1|run", tmp_path)
    assert again.scores == first.scores and again.requests == 0 and fake_judge.requests == 6
    # another model version, another reply or another judge is not served from the cache
    judge_replies(make_judge(opts), EXAMPLES, REPLIES, opts, "models:/m/2|run2", tmp_path)
    assert fake_judge.requests == 12
    judge_replies(make_judge(opts), EXAMPLES, ["x", "No.", "Hello, friend."], opts, "models:/m/1|run", tmp_path)
    assert fake_judge.requests == 14
    files = list(tmp_path.rglob("*.json"))
    assert len(files) == 14 and all(SECRET not in f.read_text() for f in files)
    assert json.loads(files[0].read_text())["rubric"] == rubric_fingerprint() and url in files[0].read_text()


def test_garbage_judge_is_a_counted_skip_not_a_crash(fake_judge, tmp_path, caplog):
    opts = _opts(f"http://127.0.0.1:{fake_judge.server_port}/v1")
    fake_judge.answer = "As an AI I love bananas!!"
    res = judge_replies(make_judge(opts), EXAMPLES, REPLIES, opts, "m", tmp_path)
    assert res.skipped == 6 and res.error and "no reply could be scored" in res.error
    assert all(s is None for col in res.scores.values() for s in col) and not list(tmp_path.rglob("*.json"))
    assert sum("judgements skipped" in r.message for r in caplog.records) == 1  # one error line
    fake_judge.answer = "4"  # nothing garbage was cached: a working judge is asked again
    assert judge_replies(make_judge(opts), EXAMPLES, REPLIES, opts, "m", tmp_path).skipped == 0
    # an endpoint that does not answer at all is the same counted skip
    dead = _opts("http://127.0.0.1:9/v1")
    res = judge_replies(make_judge(dead), EXAMPLES[:1], REPLIES[:1], dead, "m", tmp_path)
    assert res.skipped == 2 and res.error and SECRET not in res.error


def test_missing_endpoint_is_one_line():
    from anima.errors import ConfigError

    with pytest.raises(ConfigError, match="eval.judge.base_url is not set"):
        make_judge(JudgeOptions(enabled=True, model="m"))
    with pytest.raises(ConfigError, match="eval.judge.model is not set"):
        make_judge(JudgeOptions(enabled=True, base_url="http://127.0.0.1:1/v1"))


def test_judge_is_a_real_anima_serve(tmp_path_factory, tmp_path, monkeypatch):
    import torch

    from anima.generation.engine import ChatEngine
    from anima.serve.app import ServeLimits, create_app
    from anima.serve.server import start_server_thread

    torch.set_num_threads(1)
    monkeypatch.setenv("ANIMA_TEST_JUDGE_KEY", SECRET)
    app = create_app(ChatEngine(cached_nano_model_dir(tmp_path_factory)), api_key=SECRET,
                     limits=ServeLimits(max_tokens=16, max_prompt_chars=4000), model_name="nano")
    srv = start_server_thread(app)
    try:
        opts = _opts(srv.url + "/v1", model="nano")
        res = judge_replies(make_judge(opts), EXAMPLES[:2], REPLIES[:2], opts, "m", tmp_path)
    finally:
        srv.stop()
    # an untrained nano model answers noise: every judgement is either a 1-5 score or a counted skip
    scored = [s for col in res.scores.values() for s in col if s is not None]
    assert res.requests == 4 and res.skipped + len(scored) == 4 and all(1 <= s <= 5 for s in scored)


def _grep(root: Path, needle: str) -> tuple[list[str], int]:
    hits, n = [], 0
    for f in root.rglob("*"):
        if f.is_file():
            n += 1
            if needle.encode() in f.read_bytes():
                hits.append(str(f))
    return hits, n


@pytest.mark.slow
def test_eval_stage_with_judge(nano_registry, fake_judge):
    import mlflow

    from anima.stages.eval import eval_stage

    reg = nano_registry
    url = f"http://127.0.0.1:{fake_judge.server_port}/v1"
    args = [f"model=models:/{reg.name}/2", f"compare=models:/{reg.name}/1", "eval=smoke", "eval.max_examples=8",
            "sampling.max_new_tokens=8", "eval.judge.enabled=true", f"eval.judge.base_url={url}",
            "eval.judge.model=judge", "eval.judge.api_key_env=ANIMA_TEST_JUDGE_KEY"]
    fake_judge.answer = "Score: 3"
    summary = eval_stage(reg.cfg("eval", *args))
    sent = fake_judge.requests
    assert sent == 2 * 2 * 3  # two models x two criteria x three suite prompts
    m = summary["metrics"]
    assert m["judge_persona"] == 3 and m["judge_helpfulness"] == 3 and m["judge_skipped"] == 0
    iv = summary["intervals"]["judge_persona"]
    assert iv["low"] == iv["high"] == 3 and summary["differences"]["judge_persona"]["value"] == 0
    run = mlflow.get_run(summary["run_id"])
    assert run.data.metrics["eval/judge_persona_ci_low"] == 3 and run.data.metrics["eval/judge_skipped"] == 0
    judge_params = {k: v for k, v in run.data.params.items() if "judge" in k}
    assert judge_params and "ANIMA_TEST_JUDGE_KEY" in judge_params.values(), judge_params  # the name, not the key
    again = eval_stage(reg.cfg("eval", *args))
    assert fake_judge.requests == sent and again["metrics"]["judge_persona"] == 3  # all from the cache
    hits, n = _grep(reg.root, SECRET)
    assert n > 10 and not hits, hits
