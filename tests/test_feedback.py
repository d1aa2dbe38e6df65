"""The feedback store: append-only, one locked write per line, corrupt lines skipped and counted."""

from __future__ import annotations

import json
import multiprocessing as mp

import pytest

from anima.data.feedback import (
    CorrectionIndex,
    append_feedback,
    feedback_to_chat_examples,
    make_record,
    normalize_prompt,
    read_feedback,
)
from anima.generation.sampling import SamplingParams

PROMPT = [{"role": "user", "content": "What's your name?"}]


def _rec(reply="I am anima.", rating="up", correction=None, prompt=PROMPT):
    return make_record(prompt, reply, rating, correction=correction, model="models:/anima-tiny@champion",
                       model_version="3", sampling=SamplingParams(temperature=0.5))


def test_append_and_read_round_trip(tmp_path):
    path = tmp_path / "data" / "feedback.jsonl"
    append_feedback(path, _rec())
    append_feedback(path, _rec("bad", "down", correction="My name is anima."))
    records, corrupt = read_feedback(path)
    assert corrupt == 0 and len(records) == 2
    up, down = records
    assert up["rating"] == "up" and up["prompt"] == PROMPT and up["correction"] is None
    assert up["model"] == "models:/anima-tiny@champion" and up["model_version"] == "3"
    assert up["sampling"]["temperature"] == 0.5 and up["timestamp"].endswith("+00:00")
    assert down["correction"] == "My name is anima."
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and all(json.loads(x) for x in lines[:-1])  # one JSON object per line


def test_never_truncates_and_survives_a_torn_line(tmp_path):
    path = tmp_path / "feedback.jsonl"
    append_feedback(path, _rec())
    with open(path, "ab") as f:  # a crash mid-line, then hand-edited garbage
        f.write(b'{"prompt": [{"role": "user", "content": "cut')
    before = path.read_bytes()
    append_feedback(path, _rec("second"))
    assert path.read_bytes().startswith(before)  # nothing before was rewritten
    with open(path, "a") as f:
        f.write("not json\n\n")
        f.write(json.dumps({"prompt": PROMPT, "reply": "x", "rating": "meh"}) + "\n")  # valid JSON, bad record
    records, corrupt = read_feedback(path)
    assert [r["reply"] for r in records] == ["I am anima.", "second"]
    assert corrupt == 3


def test_missing_file_is_empty(tmp_path):
    assert read_feedback(tmp_path / "nope.jsonl") == ([], 0)


def test_invalid_records_are_refused(tmp_path):
    with pytest.raises(ValueError):
        make_record(PROMPT, "x", "great")
    with pytest.raises(ValueError):
        make_record([], "x", "up")
    with pytest.raises(ValueError):
        append_feedback(tmp_path / "f.jsonl", {"prompt": PROMPT, "reply": "x", "rating": "up", "correction": "y"})
    assert not (tmp_path / "f.jsonl").exists()


def _writer(path, worker, n):
    for i in range(n):
        append_feedback(path, make_record(PROMPT, f"w{worker}-{i}-" + "x" * 3000, "up", model="m"))


def test_concurrent_writers_never_interleave(tmp_path):
    path = tmp_path / "feedback.jsonl"
    procs = [mp.get_context("fork").Process(target=_writer, args=(path, w, 15)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    records, corrupt = read_feedback(path)
    assert corrupt == 0 and len(records) == 60
    assert len({r["reply"] for r in records}) == 60


def test_normalize_prompt():
    assert normalize_prompt("  What's   YOUR\tname?! ") == "what's your name"
    assert normalize_prompt("ＨＥＬＬＯ…") == "hello"  # NFKC folds full-width letters and the ellipsis
    assert normalize_prompt("Straße") == normalize_prompt("STRASSE")  # casefold, not lower
    assert normalize_prompt("?!") == ""


def test_correction_index(tmp_path):
    path = tmp_path / "feedback.jsonl"
    append_feedback(path, _rec("bad", "down", correction="First fix."))
    append_feedback(path, _rec("worse", "down", correction="My name is anima."))  # latest wins
    append_feedback(path, _rec("fine", "up", prompt=[{"role": "user", "content": "hello"}]))
    path.open("a").write("{broken\n")
    idx, corrupt = CorrectionIndex.load(path)
    assert corrupt == 1 and len(idx) == 1
    assert idx.lookup("what's your NAME") == "My name is anima."
    assert idx.lookup([{"role": "system", "content": "s"}, {"role": "user", "content": "What's your name ?"}]) \
        == "My name is anima."
    assert idx.lookup("hello") is None and idx.lookup("") is None
    idx.add("hello!", "Hi there.")
    assert "Hello" in idx


def test_feedback_to_chat_examples():
    recs = [_rec().to_json(), _rec("bad", "down", correction="Better.").to_json(),
            {**_rec("bad", "down").to_json(), "correction": None}]
    ex = feedback_to_chat_examples(recs)
    assert [e["messages"][-1]["content"] for e in ex] == ["I am anima.", "Better."]
    assert ex[0]["messages"][0] == PROMPT[0]
