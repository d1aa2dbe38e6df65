"""Every source reader on small crafted files (and the real demo data), and every bad input's one-line error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from anima.config.data import DataConfig
from anima.data.readers import read_source
from anima.data.records import Bad, Raw
from anima.errors import ConfigError, DataError


def src(kind: str, path: Path | str, **kw):
    return OmegaConf.merge(OmegaConf.structured(DataConfig), {"sources": {"s": {"kind": kind, "path": str(path), **kw}}}).sources.s


def read(kind: str, path, data_kind: str = "chat", **kw) -> list:
    return list(read_source("s", src(kind, path, **kw), data_kind))


def good(items: list) -> list[Raw]:
    return [i for i in items if isinstance(i, Raw)]


def bad(items: list) -> list[Bad]:
    return [i for i in items if isinstance(i, Bad)]


def write(p: Path, text: str) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text, encoding="utf-8")
    return p


def test_text_paragraphs_lines_files(tmp_path: Path) -> None:
    f = write(tmp_path / "a.txt", "First para\nline two\n\n\nSecond para\n")
    assert [r.text for r in good(read("text", f, "text"))] == ["First para\nline two\n", "Second para\n"]
    assert [r.text for r in good(read("text", f, "text", options={"unit": "line"}))] == ["First para", "line two", "Second para"]
    assert len(good(read("text", tmp_path, "text", options={"unit": "file"}))) == 1
    assert good(read("text", f, "text"))[0].doc == "a" and good(read("text", f, "text"))[0].where == f"{f}:1"


def test_text_not_utf8_line_is_bad(tmp_path: Path) -> None:
    f = tmp_path / "b.txt"
    f.write_bytes(b"ok\n\xff\xfe bad\n")
    items = read("text", f, "text")
    assert bad(items)[0].message() == f"{f}:2: not UTF-8 text"


def test_plays_reader_real(raw_dir: Path) -> None:
    items = read_source("plays", src("plays", raw_dir / "plays"), "text")
    first = next(iter(items))
    assert first.text.split("\n", 1)[0].endswith(":") and first.doc == "a-midsummer-night-s-dream"


def test_jsonl_chat_both_shapes(tmp_path: Path) -> None:
    f = write(tmp_path / "c.jsonl", "\n".join([
        json.dumps([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]),
        json.dumps({"messages": [{"role": "system", "content": "be nice"}, {"role": "user", "content": "q"},
                                 {"role": "assistant", "content": "a"}], "domain": "Greet"}),
    ]) + "\n")
    rs = good(read("jsonl_chat", f))
    assert len(rs) == 2 and rs[1].messages[0]["role"] == "system" and rs[1].domain == "Greet"


@pytest.mark.parametrize(
    "line, reason",
    [
        ('{"messages": [{"role": "user", "content": "x"}', "malformed JSON"),
        ('[{"role": "bot", "content": "x"}]', "unknown role 'bot' in message 0"),
        ("[]", "empty conversation"),
        ('{"messages": []}', "empty conversation"),
        ('{"text": "x"}', "expected a list of messages"),
        ('[{"role": "user", "content": 3}]', "'content' must be a string"),
    ],
)
def test_jsonl_chat_bad_lines_name_file_and_line(tmp_path: Path, line: str, reason: str) -> None:
    ok = json.dumps([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
    f = write(tmp_path / "c.jsonl", f"{ok}\n{line}\n")
    b = bad(read("jsonl_chat", f))
    assert len(b) == 1 and b[0].where == f"{f}:2" and reason in b[0].reason
    assert "\n" not in b[0].message()


def test_sharegpt_jsonl_and_json_array(tmp_path: Path) -> None:
    rec = {"system": "sys", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}
    f1 = write(tmp_path / "s.jsonl", json.dumps(rec) + "\n" + json.dumps({"conversations": [{"from": "alien", "value": "x"}]}) + "\n")
    items = read("sharegpt", f1)
    assert [m["role"] for m in good(items)[0].messages] == ["system", "user", "assistant"]
    assert bad(items)[0].where == f"{f1}:2" and "unknown role 'alien'" in bad(items)[0].reason
    f2 = write(tmp_path / "arr.json", json.dumps([rec, {"nope": 1}]))
    items = read("sharegpt", f2)
    assert len(good(items)) == 1 and bad(items)[0].where == f"{f2}[1]"
    f3 = write(tmp_path / "broken.json", '[{"conversations": [}\n')
    assert bad(read("sharegpt", f3))[0].where == f"{f3}:1"


def test_alpaca(tmp_path: Path) -> None:
    f = write(tmp_path / "a.jsonl", "\n".join(json.dumps(r) for r in [
        {"instruction": "Add", "input": "2+2", "output": "4"},
        {"instruction": "Then?", "output": "5", "history": [["hi", "hello"]], "system": "math bot"},
        {"instruction": "no output"},
    ]) + "\n")
    items = read("alpaca", f)
    g = good(items)
    assert g[0].messages == [{"role": "user", "content": "Add\n\n2+2"}, {"role": "assistant", "content": "4"}]
    assert [m["role"] for m in g[1].messages] == ["system", "user", "assistant", "user", "assistant"]
    assert bad(items)[0].where == f"{f}:3" and "'output'" in bad(items)[0].reason


def test_qa_blocks(tmp_path: Path) -> None:
    f = write(tmp_path / "p.txt", "Q: Who are you?\nA: I am anima.\nI live here.\n\nQ: one\nA: two\nQ: three\nA: four\n\n"
              "A: answer first\n\nQ: dangling\n")
    items = read("qa", f)
    g = good(items)
    assert g[0].messages[1]["content"] == "I am anima.\nI live here." and len(g[1].messages) == 4
    reasons = [(b.where, b.reason) for b in bad(items)]
    assert reasons == [(f"{f}:10", "expected Q: here"), (f"{f}:12", "question without an answer ('A:' line)")]


def test_chatterbot_real_categories(raw_dir: Path) -> None:
    items = read("chatterbot", raw_dir / "chatterbot" / "english", categories=["botprofile", "ai"])
    assert {r.domain for r in items} == {"ai", "botprofile"} and len(items) == 124
    with pytest.raises(ConfigError, match=r"data.sources.s.categories: unknown nope"):
        read("chatterbot", raw_dir / "chatterbot" / "english", categories=["nope"])


def test_chatterbot_malformed_yaml_is_bad(tmp_path: Path) -> None:
    f = write(tmp_path / "x.yml", "conversations:\n- - a\n  - : [\n")
    b = bad(read("chatterbot", f))
    assert b and b[0].where == str(f)


def test_persona_pairs_real(raw_dir: Path) -> None:
    items = read("persona_pairs", raw_dir / "plays", character="Hamlet")
    assert len(items) > 200 and items[0].messages[1]["role"] == "assistant" and items[0].doc == "hamlet"
    assert items[0].group.startswith("hamlet/") and items[0].domain == "hamlet"
    with pytest.raises(ConfigError, match="character"):
        read("persona_pairs", raw_dir / "plays")


def test_feedback_reader(tmp_path: Path) -> None:
    from anima.data.feedback import append_feedback, make_record

    f = tmp_path / "feedback.jsonl"
    append_feedback(f, make_record([{"role": "user", "content": "hi"}], "hello", "up"))
    append_feedback(f, make_record([{"role": "user", "content": "name?"}], "dunno", "down", correction="anima"))
    append_feedback(f, make_record([{"role": "user", "content": "x"}], "y", "down"))
    with open(f, "a") as fh:
        fh.write("{broken\n")
    items = read("feedback", f)
    assert [r.messages[-1]["content"] for r in good(items)] == ["hello", "anima"] and len(bad(items)) == 1


@pytest.mark.slow  # importing datasets + save_to_disk: ~10 s on a loaded machine
def test_hf_local_json_and_saved(tmp_path: Path) -> None:
    import datasets

    f = write(tmp_path / "d.jsonl", json.dumps({"messages": [{"role": "user", "content": "a"},
                                                           {"role": "assistant", "content": "b"}]}) + "\n")
    assert good(read("hf", f))[0].messages[1]["content"] == "b"
    datasets.Dataset.from_list([{"instruction": "i", "input": "", "output": "o"}]).save_to_disk(str(tmp_path / "saved"))
    assert good(read("hf", tmp_path / "saved"))[0].messages[0]["content"] == "i"
    datasets.Dataset.from_list([{"text": "hello world"}]).save_to_disk(str(tmp_path / "t"))
    assert good(read("hf", tmp_path / "t", "text"))[0].text == "hello world"


def test_missing_file_and_empty_glob(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=rf"^data.sources.s.path: {tmp_path}/nope.jsonl does not exist$"):
        read("jsonl_chat", tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match=r"^data.sources.s.path: no files match"):
        read("jsonl_chat", tmp_path / "*.jsonl")


def test_kind_must_suit_dataset_kind(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data.sources.s.kind=jsonl_chat: not a text source"):
        read("jsonl_chat", tmp_path, "text")
    with pytest.raises(ConfigError, match=r"data.sources.s.kind=text: not a chat source"):
        read("text", tmp_path, "chat")
