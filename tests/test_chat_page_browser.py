"""The browser chat page, in a real headless Chromium (the system package) driven over the DevTools protocol
(tests/helpers/cdp.py), against the `anima serve` app around the champion, with an API key configured:
the page asks for the key, streams a reply, takes a rating, a retry and a correction, and the records land in
the feedback file in the format `anima retrain` reads. A screenshot is saved in the test's tmp dir."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.helpers import compose_cfg, require
from tests.helpers.cdp import Browser, find_chromium
from tests.helpers.champion import champion_project

pytestmark = pytest.mark.slow

KEY = "page-s3cret"
CORRECTION = "My name is anima, and I speak in verse."
LAST = ".msg.assistant:last-of-type"


@pytest.fixture(scope="module")
def champ(tmp_path_factory, raw_dir):
    return champion_project(tmp_path_factory, raw_dir)


@pytest.fixture
def served(champ, monkeypatch, tmp_path):
    """(server, feedback file): the serve stage's own app (build_app), keyed, feedback in the tmp dir."""
    from anima.serve.server import start_server_thread
    from anima.stages.serve import build_app, chat_page_line

    root, _ = champ
    monkeypatch.setenv("ANIMA_ROOT", str(root))
    monkeypatch.setenv("ANIMA_TEST_PAGE_KEY", KEY)
    path = tmp_path / "data" / "feedback.jsonl"
    cfg = compose_cfg("serve", ["serve.api_key_env=ANIMA_TEST_PAGE_KEY", f"serve.feedback={path}",
                                "serve.limits.max_tokens=24", "sampling.max_new_tokens=12", "device.threads=1",
                                "serve.compile=false"])
    app, _, _ = build_app(cfg)
    line = chat_page_line("http://127.0.0.1:8000", app.state.feedback, "ANIMA_TEST_PAGE_KEY")
    assert "http://127.0.0.1:8000/chat" in line and str(path) in line and "API key" in line
    with start_server_thread(app) as srv:
        yield srv, path


def _reply_done(n: int) -> str:
    return f"document.querySelectorAll('.msg.assistant[data-state=done]').length === {n}"


def test_chat_rate_retry_and_correct_in_a_real_browser(served, tmp_path):
    from anima.data.chat_readers import read_feedback_file
    from anima.data.feedback import CorrectionIndex, read_feedback
    from anima.stages.retrain import summarize_feedback

    binary = find_chromium()
    require(binary, "no chromium on PATH (Debian: apt-get install chromium); the chat page test drives it")
    srv, path = served
    with Browser(binary, tmp_path / "profile") as b:
        # 1. The page loads without the key, finds the API refuses it, and asks for it.
        b.navigate(srv.url + "/chat")
        b.wait_for("!document.querySelector('#keybox').hidden")
        b.type_into("#key", KEY)
        b.click("#savekey")
        b.wait_for("document.querySelector('#model').textContent === 'anima-tiny'")
        assert b.evaluate("document.querySelector('#max_tokens').value") == "12"  # the server's defaults
        # 2. Sampling controls, then a message sent with Enter; the reply streams in.
        b.fill("#temperature", "0.9")
        b.fill("#max_tokens", "16")
        b.fill("#seed", "7")
        b.type_into("#input", "Hello")
        b.press_enter()
        b.wait_for(_reply_done(1), 90)
        first = b.evaluate(f"document.querySelector('{LAST} .text').textContent")
        api = httpx.post(srv.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=60,
                         json={"messages": [{"role": "user", "content": "Hello"}], "temperature": 0.9,
                               "max_tokens": 16, "seed": 7}).json()
        assert first == api["choices"][0]["message"]["content"] and first  # streamed == the API's own reply (same seed)
        # 3. Rate it good.
        b.click(f"{LAST} [data-act=good]")
        assert b.wait_for(f"document.querySelector('{LAST} .note.ok')?.textContent") == "saved as good"
        # 4. A second turn (Send button), a retry (nothing saved), then bad + a correction.
        b.type_into("#input", "What is your name?")
        b.click("#send")
        b.wait_for(_reply_done(2), 90)
        b.click(f"{LAST} [data-act=retry]")
        b.wait_for(f"!!document.querySelector('{LAST}[data-attempt=\"1\"][data-state=done]')", 90)
        assert len(read_feedback(path)[0]) == 1  # a retry is not a rating
        second = b.evaluate(f"document.querySelector('{LAST} .text').textContent")
        b.click(f"{LAST} [data-act=bad]")
        b.type_into(f"{LAST} .correction", CORRECTION)
        b.click(f"{LAST} [data-act=save-correction]")
        assert b.wait_for(f"document.querySelector('{LAST} .note.ok')?.textContent") == "correction saved"
        assert b.evaluate(f"document.querySelector('{LAST} .text').textContent") == CORRECTION
        assert b.evaluate("[...document.querySelectorAll('.rate button')].every(x => x.disabled)")
        shot = b.screenshot(tmp_path / "chat_page.png")
        urls = b.requested_urls()
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    assert urls and all(u.startswith(srv.url + "/") for u in urls), urls  # nothing but this server

    # The records, as `anima chat` writes them, and as `anima retrain` reads them.
    (good, fixed), corrupt = read_feedback(path)
    assert corrupt == 0
    assert good["rating"] == "up" and good["prompt"] == [{"role": "user", "content": "Hello"}]
    assert good["reply"] == first and good["model"] == "models:/anima-tiny/1" and good["model_version"] == "1"
    assert good["sampling"]["temperature"] == 0.9 and good["sampling"]["max_new_tokens"] == 16
    assert good["sampling"]["seed"] == 7
    assert fixed["rating"] == "down" and fixed["correction"] == CORRECTION and fixed["reply"] == second
    assert [m["role"] for m in fixed["prompt"]] == ["user", "assistant", "user"]
    assert fixed["prompt"][1]["content"] == first and fixed["sampling"]["seed"] == 8  # the retry: seed + 1
    summary = summarize_feedback(path)
    assert (summary.records, summary.corrupt, summary.examples) == (2, 0, 2)
    trained = [raw.messages[-1]["content"] for raw in read_feedback_file(str(path), "retrain.feedback")]
    assert trained == [first, CORRECTION]
    assert CorrectionIndex.load(path)[0].lookup("what is your name") == CORRECTION  # `anima chat` answers it
    print(json.dumps({"screenshot": str(shot), "first_reply": first}))
