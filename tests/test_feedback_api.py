"""POST /v1/feedback and the chat page's route, over real HTTP against a real server around a nano model: records
land in the feedback file in exactly the format `anima chat` writes, `anima retrain`'s reader accepts them, bad
bodies get a 400 naming the field, and many writers at once (server threads, REPL sessions in threads, separate
processes) never interleave or lose a record."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from anima.chat.repl import ChatSession
from anima.data.feedback import feedback_to_chat_examples, read_feedback
from anima.generation.sampling import SamplingParams
from tests.helpers import REPO
from tests.helpers.models import nano_engine

KEY = "fb-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
CONV = [{"role": "user", "content": "What is your name?"}, {"role": "assistant", "content": "I am a model."}]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return nano_engine(tmp_path_factory)


@pytest.fixture(scope="module")
def served(engine, tmp_path_factory):
    """(server, feedback file): keyed, storing feedback under the model URI and version a registry would give."""
    from anima.serve.app import ServeLimits, create_app
    from anima.serve.feedback_api import FeedbackSink
    from anima.serve.server import start_server_thread

    path = tmp_path_factory.mktemp("fb") / "data" / "feedback.jsonl"
    app = create_app(engine, api_key=KEY, limits=ServeLimits(max_tokens=48), model_name="anima-tiny",
                     defaults=SamplingParams(temperature=0.7),
                     feedback=FeedbackSink.at(path, "models:/anima-tiny/3", 3))
    with start_server_thread(app) as srv:
        yield srv, path


def _post(url: str, body, headers=AUTH) -> httpx.Response:
    return httpx.post(url + "/v1/feedback", json=body, headers=headers, timeout=30)


def test_the_page_is_public_and_the_api_is_not(served):
    srv, _ = served
    page = httpx.get(srv.url + "/chat")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp  # the page can reach this server only
    html = page.text
    assert "/v1/chat/completions" in html and "/v1/feedback" in html and 'id="key"' in html
    assert "http://" not in html and "https://" not in html and KEY not in html  # no CDN, no secret
    assert httpx.head(srv.url + "/chat").status_code == 200
    root = httpx.get(srv.url + "/", follow_redirects=False)
    assert root.status_code == 307 and root.headers["location"] == "/chat"
    assert httpx.get(srv.url + "/v1/feedback").status_code == 401
    info = httpx.get(srv.url + "/v1/feedback", headers=AUTH).json()
    assert info["enabled"] is True and info["model"] == "anima-tiny"
    assert info["sampling"]["temperature"] == 0.7 and info["limits"]["max_tokens"] == 48
    assert _post(srv.url, {"messages": CONV, "rating": "good"}, headers={}).status_code == 401


def test_ratings_and_corrections_are_the_chat_repl_format(served, engine, tmp_path):
    srv, path = served
    before = len(read_feedback(path)[0])
    r = _post(srv.url, {"messages": CONV, "rating": "good", "model": "anima-tiny",
                        "sampling": {"temperature": 0.2, "max_tokens": 12, "seed": 5}})
    assert r.status_code == 200, r.text
    assert r.json()["saved"] is True and r.json()["model_version"] == "3"
    assert _post(srv.url, {"messages": CONV, "correction": "  I am anima.  "}).status_code == 200  # implies bad
    assert _post(srv.url, {"messages": CONV, "rating": "bad"}).status_code == 200
    records, corrupt = read_feedback(path)
    good, fixed, bad = records[before:]
    assert corrupt == 0
    assert good["rating"] == "up" and good["correction"] is None and good["prompt"] == CONV[:1]
    assert good["reply"] == "I am a model." and good["model"] == "models:/anima-tiny/3"
    assert good["sampling"]["temperature"] == 0.2 and good["sampling"]["max_new_tokens"] == 12
    assert good["sampling"]["seed"] == 5 and good["sampling"]["top_p"] == SamplingParams().top_p
    assert fixed["rating"] == "down" and fixed["correction"] == "I am anima."
    assert fixed["sampling"]["temperature"] == 0.7  # no sampling sent: the server's defaults
    assert bad["rating"] == "down" and bad["correction"] is None
    # The REPL writes the very same shape (keys, sampling keys) for the same judgement.
    repl_path = tmp_path / "repl.jsonl"
    session = ChatSession(engine, SamplingParams(temperature=0.2), feedback_path=repl_path,
                          model_uri="models:/anima-tiny/3", model_version="3")
    session.record(CONV[:1], "I am a model.", "up")
    (repl,), _ = read_feedback(repl_path)
    assert repl.keys() == good.keys() and repl["sampling"].keys() == good["sampling"].keys()
    assert {k: v for k, v in repl.items() if k not in ("timestamp", "sampling")} == \
        {k: v for k, v in good.items() if k not in ("timestamp", "sampling")}
    # What `anima retrain` trains on: the approved reply and the correction (a bare "bad" teaches nothing).
    examples = feedback_to_chat_examples([good, fixed, bad])
    assert [e["messages"][-1]["content"] for e in examples] == ["I am a model.", "I am anima."]


@pytest.mark.parametrize("body, param", [
    ({"rating": "good"}, "messages"),
    ({"messages": CONV[:1], "rating": "good"}, "messages"),
    ({"messages": [CONV[0], CONV[0]], "rating": "good"}, "messages[1]"),
    ({"messages": [{"role": "system", "content": "s"}, CONV[1]], "rating": "good"}, "messages[0]"),
    ({"messages": [{"role": "robot", "content": "x"}, CONV[1]], "rating": "good"}, "messages[0].role"),
    ({"messages": CONV}, "rating"),
    ({"messages": CONV, "rating": "meh"}, "rating"),
    ({"messages": CONV, "rating": "good", "correction": "better"}, "correction"),
    ({"messages": CONV, "correction": 3}, "correction"),
    ({"messages": CONV, "rating": "good", "reply": "x"}, "reply"),
    ({"messages": CONV, "rating": "good", "model": "gpt-4o"}, "model"),
    ({"messages": CONV, "rating": "good", "sampling": []}, "sampling"),
    ({"messages": CONV, "rating": "good", "sampling": {"temperature": "hot"}}, "sampling.temperature"),
    ({"messages": CONV, "rating": "good", "sampling": {"max_tokens": 10_000}}, "sampling.max_tokens"),
    ({"messages": CONV, "rating": "good", "sampling": {"tools": []}}, "sampling.tools"),
])
def test_bad_bodies_are_400_naming_the_field(served, body, param):
    srv, path = served
    before = path.read_bytes() if path.exists() else b""
    r = _post(srv.url, body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and param.split("[")[0].split(".")[0] in err["message"]
    assert (path.read_bytes() if path.exists() else b"") == before  # nothing written
    bad_json = httpx.post(srv.url + "/v1/feedback", content=b"{nope", headers={**AUTH, "Content-Type":
                                                                                "application/json"})
    assert bad_json.status_code == 400 and bad_json.json()["error"]["code"] == "invalid_json"


def test_a_server_without_a_feedback_file_says_so(engine):
    from anima.serve.app import create_app
    from anima.serve.server import start_server_thread

    with start_server_thread(create_app(engine)) as srv:
        assert httpx.get(srv.url + "/v1/feedback").json()["enabled"] is False
        r = _post(srv.url, {"messages": CONV, "rating": "good"}, headers={})
        assert r.status_code == 503 and r.json()["error"]["code"] == "feedback_disabled"
        assert _post(srv.url, {"messages": CONV, "rating": "??"}, headers={}).status_code == 400  # still checked


_PROC_WRITER = """
import os, sys, time
from anima.data.feedback import append_feedback, make_record
path, worker, n, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
while not os.path.exists(go):  # start together with the threads
    time.sleep(0.005)
for i in range(n):
    append_feedback(path, make_record([{"role": "user", "content": "q"}], f"proc{worker}-{i}-" + "p" * 6000, "up"))
"""


def test_concurrent_http_repl_and_process_writers_lose_nothing(served, engine, tmp_path):
    """Lines longer than a pipe buffer (so an unlocked append could tear), written at once by server threads
    (HTTP), REPL sessions in threads of this process and separate processes: every line parses, none is lost."""
    srv, path = served
    n = 12
    before = {r["reply"] for r in read_feedback(path)[0]}
    start = threading.Barrier(9)

    def http_writer(w: int) -> None:
        start.wait()
        with httpx.Client(timeout=60, headers=AUTH) as c:
            for i in range(n):
                conv = [CONV[0], {"role": "assistant", "content": f"http{w}-{i}-" + "h" * 6000}]
                assert c.post(srv.url + "/v1/feedback", json={"messages": conv, "rating": "good"}).status_code == 200

    def repl_writer(w: int) -> None:
        session = ChatSession(engine, feedback_path=path, model_uri="models:/anima-tiny/3")
        start.wait()
        for i in range(n):
            session.record(CONV[:1], f"repl{w}-{i}-" + "r" * 6000, "down", correction=f"fix{w}-{i}")

    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", _PROC_WRITER, str(path), str(w), str(n), str(go)], cwd=REPO)
             for w in range(4)]
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(http_writer, w) for w in range(4)] + [pool.submit(repl_writer, w) for w in range(4)]
        time.sleep(1.0)  # the processes have imported by now
        start.wait()
        go.touch()
        for f in futures:
            f.result()
    assert all(p.wait(120) == 0 for p in procs)
    records, corrupt = read_feedback(path)
    raw_lines = [line for line in path.read_bytes().split(b"\n") if line]
    assert corrupt == 0 and len(raw_lines) == len(records)
    new = [r["reply"].split("-", 2)[:2] for r in records if r["reply"] not in before]
    expected = {(f"{kind}{w}", str(i)) for kind in ("http", "repl", "proc") for w in range(4) for i in range(n)}
    assert len(new) == len(expected) == 3 * 4 * n and {tuple(x) for x in new} == expected
