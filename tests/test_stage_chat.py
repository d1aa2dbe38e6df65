"""`anima chat` end to end: the real CLI in a child process talking to a pretrained champion, a conversation
piped into stdin with ratings, a retry and a correction; the feedback file it leaves; bad model URIs."""

from __future__ import annotations

import json

import pytest

from tests.helpers.champion import anima, champion_project

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def champ(tmp_path_factory, raw_dir):
    return champion_project(tmp_path_factory, raw_dir)


def test_piped_conversation_with_defaults_writes_feedback(champ, tmp_path):
    root, _ = champ
    feedback = tmp_path / "feedback.jsonl"
    good = {"prompt": [{"role": "user", "content": "old"}], "reply": "fine", "rating": "up"}
    feedback.write_text("{not json\n" + json.dumps(good) + "\n")
    conversation = "\n".join([
        "/help",
        "hello there",
        "y",                      # approved
        "what is your name?",
        "n",                      # retry 1/1
        "n",                      # no retries left: offer a better reply
        "My name is anima.",      # the correction
        "  WHAT is your name ",   # same normalized prompt: answered from the correction
        "/params temperature=0.5",
        f"/save {tmp_path / 'transcript.json'}",
        "/quit",
    ]) + "\n"
    proc = anima(root, "chat", f"chat.feedback={feedback}", "chat.max_retries=1", "sampling.max_new_tokens=8",
                 "sampling.seed=0", "chat.compile=false", input=conversation)
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "model: models:/anima-tiny@champion (v1)" in out
    assert "skipped 1 corrupt line" in out
    assert "(saved as a good reply)" in out and "(trying again, 1/1)" in out
    assert "(correction saved" in out and "(answering from your earlier correction)" in out
    assert "anima> My name is anima." in out
    assert "temperature=0.5" in out and "saved transcript" in out

    lines = feedback.read_text().splitlines()
    assert lines[0] == "{not json" and len(lines) == 4  # appended, never truncated
    up, down = (json.loads(x) for x in lines[2:])
    assert up["rating"] == "up" and up["prompt"][-1]["content"] == "hello there" and up["reply"]
    assert down["rating"] == "down" and down["correction"] == "My name is anima."
    for rec in (up, down):
        assert rec["model"] == "models:/anima-tiny/1" and rec["model_version"] == "1"
        assert rec["sampling"]["max_new_tokens"] == 8 and rec["timestamp"]
    saved = json.loads((tmp_path / "transcript.json").read_text())
    assert saved["messages"][-1]["content"] == "My name is anima."
    # a chat session is not an MLflow run and leaves no timestamped run dirs
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{root}/mlruns/mlflow.db")
    assert all(r.data.tags.get("anima.stage") != "chat" for r in mlflow.search_runs(search_all_experiments=True,
                                                                                       output_format="list"))
    assert [p.name for p in (root / "experiments" / "chat").iterdir()] in ([], ["chat.log"])


def test_explicit_version_and_sampling_overrides(champ):
    root, _ = champ
    proc = anima(root, "chat", "model=models:/anima-tiny/1", "sampling.temperature=0.8", "sampling.top_p=0.9",
                 "sampling.repetition_penalty=1.3", "chat.feedback=null", "chat.compile=false",
                 input="/params\n")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "model: models:/anima-tiny/1 " in proc.stdout
    assert "temperature=0.8 top_p=0.9 top_k=0 repetition_penalty=1.3" in proc.stdout
    assert "decode: fast backend" in proc.stdout  # chat.compile=false and nothing cached: the eager step
    assert "feedback is not saved" in proc.stdout


@pytest.mark.parametrize("model, expected", [
    ("models:/anima-tiny@nope", "anima-tiny has no alias 'nope'; aliases: "),
    ("models:/anima-tiny/9", "anima-tiny has no version 9; versions: 1"),
    ("models:/nosuch@champion", "no registered model 'nosuch'; registered: anima-tiny"),
    ("/no/such/dir", "neither a registry URI nor a local model dir"),
])
def test_unknown_model_is_one_line_listing_what_exists(champ, monkeypatch, capsys, model, expected):
    from anima.cli import main

    root, _ = champ
    monkeypatch.setenv("ANIMA_ROOT", str(root))
    with pytest.raises(SystemExit) as exc:
        main(["chat", f"model={model}"])
    assert exc.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("anima: error:") and expected in err[0], err
