"""Terminal chat: a scripted conversation through in-process streams (the piped-stdin path) and through a real
pseudo-terminal (the interactive path), with ratings, retries and a correction; checks the feedback file."""

from __future__ import annotations

import io
import json
import os
import select
import sys
import time
from pathlib import Path

import pytest

from anima.data.feedback import read_feedback
from anima.chat.repl import ChatSession, run_repl
from anima.generation.sampling import SamplingParams
from tests.helpers.models import cached_nano_model_dir

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return cached_nano_model_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def engine(model_dir):
    import torch

    from anima.generation.engine import ChatEngine

    torch.set_num_threads(1)
    return ChatEngine(model_dir)


def _session(engine, tmp_path, retries=2, **kw):
    return ChatSession(engine, SamplingParams(max_new_tokens=8, seed=5), feedback_path=tmp_path / "feedback.jsonl",
                       model_uri="models:/nano@champion", max_retries=retries, model_version="4", **kw)


def test_piped_conversation(engine, tmp_path):
    transcript = tmp_path / "out" / "t.json"
    script = "\n".join([
        "hello there",
        "y",                       # approve
        "What is your name?",
        "n", "n",                  # two retries (new samples)
        "n",                       # out of retries -> better reply
        "My name is anima.",
        "/params",
        "/params temperature=0.5 top_k=20",
        "/params bogus=1",
        "/params temperature=abc",
        f"/save {transcript}",
        "/reset",
        "  what is your NAME  ",   # correction lookup hit: no model call, no rating
        "tell me a story",
        "maybe",                   # not a rating: asked again
        "s",
        "/nope",
        "/help",
        "/quit",
        "never read",
    ]) + "\n"
    out = io.StringIO()
    session = _session(engine, tmp_path)
    assert run_repl(session, io.StringIO(script), out) == 0
    text = out.getvalue()

    assert text.count("rate [y/n/s]: ") == 1 + 3 + 2
    assert text.count("(trying again") == 2
    assert "better reply (empty to skip): My name is anima." in text  # piped input is echoed
    assert "(answering from your earlier correction)" in text
    assert "anima> My name is anima." in text
    assert "please answer y" in text and "unknown command /nope" in text and "/reset" in text
    assert "temperature=0.5" in text and "top_k=20" in text
    assert "error: /params: expected key=value" in text and "error: /params temperature=abc" in text
    assert "never read" not in text
    assert session.params.temperature == 0.5 and session.params.top_k == 20

    records, corrupt = read_feedback(tmp_path / "feedback.jsonl")
    assert corrupt == 0 and [r["rating"] for r in records] == ["up", "down"]
    up, down = records
    assert up["prompt"] == [{"role": "user", "content": "hello there"}]
    assert up["model"] == "models:/nano@champion" and up["model_version"] == "4"
    assert up["sampling"]["max_new_tokens"] == 8 and up["sampling"]["temperature"] == 0.8
    assert down["prompt"][-1] == {"role": "user", "content": "What is your name?"}
    assert len(down["prompt"]) == 3  # the approved first exchange is part of the prompt
    assert down["correction"] == "My name is anima." and down["reply"] != down["correction"]

    saved = json.loads(transcript.read_text())
    assert [m["role"] for m in saved["messages"]] == ["user", "assistant", "user", "assistant"]
    assert saved["messages"][-1]["content"] == "My name is anima."  # the correction replaced the bad reply
    assert saved["sampling"]["temperature"] == 0.5 and saved["model"] == "models:/nano@champion"
    # after /reset: the lookup hit and the story
    assert [m["role"] for m in session.history] == ["user", "assistant", "user", "assistant"]


def test_retries_are_new_samples_and_eof_ends_cleanly(engine, tmp_path):
    session = _session(engine, tmp_path, retries=1)
    out = io.StringIO()
    assert run_repl(session, io.StringIO("Tell me a story about the sea\nn\n"), out) == 0  # EOF at "better reply"
    text = out.getvalue()
    replies = [line for line in text.splitlines() if line.startswith("anima> ")]
    assert len(replies) == 2 and replies[0] != replies[1]  # seed 5 then seed 6
    assert read_feedback(tmp_path / "feedback.jsonl") == ([], 0)  # nothing approved or corrected


def test_skip_with_empty_correction_and_corrupt_store(engine, tmp_path):
    fb = tmp_path / "feedback.jsonl"
    fb.write_text("{torn line\n")
    session = _session(engine, tmp_path, retries=0)
    out = io.StringIO()
    run_repl(session, io.StringIO("hi\nn\n\nhi\ny\n"), out)
    assert "skipped 1 corrupt line(s)" in out.getvalue()
    records, corrupt = read_feedback(fb)
    assert corrupt == 1 and [r["rating"] for r in records] == ["up"]
    assert fb.read_text().startswith("{torn line\n")  # never truncated


def test_without_feedback_path(engine):
    session = ChatSession(engine, SamplingParams(max_new_tokens=4), feedback_path=None, max_retries=0)
    out = io.StringIO()
    run_repl(session, io.StringIO("hello\nn\nBetter.\nHELLO\n"), out)
    assert "not saved" in out.getvalue()
    assert "(answering from your earlier correction)" in out.getvalue()  # still used within the session


def test_an_empty_reply_is_said_to_be_empty(engine):
    """A model that ends its turn at its first token (every token a stop token here) gets a note, not a bare
    prompt that looks like a hang; the turn still asks for a rating."""
    session = ChatSession(engine, SamplingParams(max_new_tokens=4), feedback_path=None, max_retries=0)
    saved = engine.stop_ids
    engine.stop_ids = frozenset(range(engine.tokenizer.vocab_size + 64))
    try:
        out = io.StringIO()
        run_repl(session, io.StringIO("hello\ns\n"), out)
    finally:
        engine.stop_ids = saved
    assert "(empty reply: the model ended its turn at once)" in out.getvalue()
    assert "rate [y/n/s]" in out.getvalue()


class _Pty:
    """Drive a child process on a pseudo-terminal: wait for text, type lines."""

    def __init__(self, argv, env):
        import pty

        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # child
            try:
                os.execve(argv[0], argv, env)
            finally:
                os._exit(127)
        self.buf = b""
        self.pos = 0
        self.exited = False

    def expect(self, text: str, timeout: float = 120.0) -> str:
        needle = text.encode()
        deadline = time.monotonic() + timeout
        while True:
            i = self.buf.find(needle, self.pos)
            if i >= 0:
                seen = self.buf[self.pos:i + len(needle)].decode(errors="replace")
                self.pos = i + len(needle)
                return seen
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {text!r}; output so far:\n{self.buf.decode(errors='replace')}")
            ready, _, _ = select.select([self.fd], [], [], min(left, 1.0))
            if ready:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:  # EIO: child closed the terminal
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"child exited before {text!r}; output:\n{self.buf.decode(errors='replace')}")
                self.buf += chunk

    def send(self, line: str) -> None:
        os.write(self.fd, line.encode() + b"\r")

    def wait(self, timeout: float = 60.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:  # keep draining so the child never blocks on a full pty buffer
                if select.select([self.fd], [], [], 0.1)[0]:
                    self.buf += os.read(self.fd, 4096)
            except OSError:
                pass
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.exited = True
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
        os.kill(self.pid, 9)
        raise AssertionError("child did not exit")


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_chat_through_a_pseudo_terminal(model_dir, tmp_path):
    fb = tmp_path / "data" / "feedback.jsonl"
    env = {**os.environ, "TERM": "dumb", "COLUMNS": "200", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    child = _Pty([sys.executable, str(HERE / "chat_pty_entry.py"), str(model_dir), str(fb), "1"], env)
    try:
        child.expect("/help for commands")
        child.expect("you> ")
        child.send("hello")
        first = child.expect("rate [y/n/s]: ")
        assert "anima> " in first
        child.send("y")
        child.expect("saved as a good reply")
        child.expect("you> ")
        child.send("Who are you?")
        child.expect("rate [y/n/s]: ")
        child.send("n")
        child.expect("trying again, 1/1")
        child.expect("rate [y/n/s]: ")
        child.send("n")
        child.expect("better reply (empty to skip): ")
        child.send("I am anima, a small model.")
        child.expect("correction saved")
        child.expect("you> ")
        child.send("who are you")
        hit = child.expect("you> ")
        assert "answering from your earlier correction" in hit and "I am anima, a small model." in hit
        child.send("/params temperature=0.3")
        child.expect("temperature=0.3")
        child.expect("you> ")
        child.send("/quit")
        assert child.wait() == 0
    finally:
        if not child.exited:  # only our own child, and only if still unreaped
            os.kill(child.pid, 9)
            os.waitpid(child.pid, 0)
    records, corrupt = read_feedback(fb)
    assert corrupt == 0 and [r["rating"] for r in records] == ["up", "down"]
    assert records[1]["correction"] == "I am anima, a small model."
    assert records[1]["prompt"][-1]["content"] == "Who are you?"
    assert records[0]["sampling"]["seed"] == 11
