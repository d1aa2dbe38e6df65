"""`anima retrain`: SFT of the champion on the feedback file through the real sft stage; registers a new
version aliased `candidate`, tagged with the feedback fingerprint; corrupt lines are skipped and counted."""

from __future__ import annotations

import json

import pytest

from tests.conftest import compose_cfg
from tests.stage_models import champion_project

PAIRS = [
    ("What is your name?", "My name is anima, a small model trained on plays."),
    ("Who wrote Hamlet?", "William Shakespeare wrote Hamlet around the year 1600."),
    ("Do you like the sea?", "I love the sound of waves breaking on a rocky shore."),
    ("What time is it?", "I have no clock, but it feels like early evening."),
    ("Tell me a joke.", "Why did the actor fall through the stage? It was a trap door."),
    ("What is your favourite colour?", "Deep blue, like the sky just after sunset."),
    ("Where do you live?", "I live inside a computer, in a folder full of weights."),
    ("Can you sing?", "Only in words; my voice is made of tokens."),
    ("What do you eat?", "Text is my bread and punctuation my salt."),
    ("Are you happy?", "Talking with you makes my logits glad."),
    ("What is a sonnet?", "A poem of fourteen lines, often in iambic pentameter."),
    ("Who is Juliet?", "The daughter of the Capulets, who loved Romeo."),
    ("How old are you?", "I was trained only a few minutes ago."),
    ("What is love?", "A madness most discreet, as Romeo says."),
    ("Can you help me?", "Gladly. Tell me what troubles you."),
    ("Good morning!", "Good morrow to you, friend."),
    ("What is the weather like?", "Here it is always a calm and windless day."),
    ("Do you dream?", "Perchance to dream; ay, there is the rub."),
    ("What is your purpose?", "To talk with people and learn from their corrections."),
    ("Goodbye!", "Parting is such sweet sorrow. Farewell!"),
]


@pytest.fixture(scope="module")
def champ(tmp_path_factory, raw_dir):
    return champion_project(tmp_path_factory, raw_dir)


def _write_feedback(path, pairs, corrupt: int = 0) -> None:
    from anima.chat.feedback import append_feedback, make_record

    for i, (q, a) in enumerate(pairs):
        if i % 2:
            rec = make_record([{"role": "user", "content": q}], "wrong reply", "down", correction=a,
                              model="models:/anima-tiny/1", model_version="1")
        else:
            rec = make_record([{"role": "user", "content": q}], a, "up", model="models:/anima-tiny/1",
                              model_version="1")
        append_feedback(path, rec)
    with open(path, "a") as f:
        for _ in range(corrupt):
            f.write('{"prompt": "cut in the mid\n')


def test_retrain_config_composes_and_bad_feedback_is_refused(champ, tmp_path, monkeypatch):
    from anima.errors import DataError
    from anima.stages.retrain import retrain

    root, _ = champ
    monkeypatch.setenv("ANIMA_ROOT", str(root))
    cfg = compose_cfg("retrain", ["retrain.rehearsal_ratio=0.3", "retrain.sft_overrides=['trainer=smoke','optim.lr=1e-4']"])
    assert cfg.model == "models:/anima-tiny@champion" and cfg.retrain.rehearsal_source == cfg.model
    assert list(cfg.retrain.sft_overrides) == ["trainer=smoke", "optim.lr=1e-4"]
    with pytest.raises(DataError, match="no feedback yet"):
        retrain(compose_cfg("retrain", [f"retrain.feedback={tmp_path / 'none.jsonl'}"]))
    only_bad = tmp_path / "bad.jsonl"
    _write_feedback(only_bad, [], corrupt=2)
    with pytest.raises(DataError, match=r"0 usable feedback example\(s\) \(0 records, 2 corrupt\)"):
        retrain(compose_cfg("retrain", [f"retrain.feedback={only_bad}"]))


@pytest.mark.slow
def test_retrain_registers_a_candidate_tagged_with_the_feedback(champ, monkeypatch, capsys):
    import mlflow
    from mlflow import MlflowClient

    from anima.stages.retrain import retrain, summarize_feedback

    root, _ = champ
    monkeypatch.setenv("ANIMA_ROOT", str(root))
    feedback = root / "data" / "feedback.jsonl"
    _write_feedback(feedback, PAIRS, corrupt=1)
    cfg = compose_cfg("retrain", [])
    cfg.retrain.sft_overrides = ["trainer=smoke", "trainer.max_steps=2", "tracking.log_checkpoints=false",
                                 "trainer.num_samples=0", "device.threads=1"]
    result = retrain(cfg)
    out = capsys.readouterr().out
    assert "skipped 1 corrupt line" in out and f"{len(PAIRS)} feedback example(s)" in out

    client = MlflowClient()
    assert result.registered_name == "anima-tiny" and result.version == "2"
    assert str(client.get_model_version_by_alias("anima-tiny", "candidate").version) == "2"
    assert str(client.get_model_version_by_alias("anima-tiny", "champion").version) == "1"  # not promoted
    mv = client.get_model_version("anima-tiny", "2")
    fp = summarize_feedback(feedback).fingerprint
    assert mv.tags["feedback_fingerprint"] == fp and mv.tags["parent"] == "models:/anima-tiny/1"
    assert mv.tags["stage"] == "sft" and mv.tags["retrained_from"] == "models:/anima-tiny/1"
    run = mlflow.get_run(result.run_id)
    assert run.data.tags["anima.retrain.feedback_fingerprint"] == fp
    assert run.info.status == "FINISHED" and "val/ppl" in run.data.metrics
    names = [d.dataset.name for d in run.inputs.dataset_inputs]
    assert "feedback" in names, names
