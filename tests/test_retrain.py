"""`anima retrain`: SFT of the champion on the feedback file through the real sft stage; registers a new
version aliased `candidate`, tagged with the feedback fingerprint; corrupt lines are skipped and counted. A
chat-trained champion's own training data (chat_mix) is replayed with the feedback; a hand-set rehearsal source
with no chat data is refused up front."""

from __future__ import annotations

import json

import pytest

from tests.helpers import NANO_FAST, compose_cfg
from tests.helpers.champion import champion_project

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
    from anima.data.feedback import append_feedback, make_record

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
    # a pretrained-only champion has no chat data to replay: the default falls back to none, saying why
    assert "rehearsal: none" in out and "trained on plain text (data.kind=text)" in out

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


TINY = ["trainer.max_steps=2", "trainer.num_samples=0", "device.threads=1"]
RETRAIN_SFT = ["trainer=smoke", "trainer.max_steps=2", "tracking.log_checkpoints=false", "trainer.num_samples=0",
               "device.threads=1"]


@pytest.fixture(scope="module")
def chat_champ(tmp_path_factory, raw_dir):
    """A champion that was SFT-trained on the real chat_mix, in its own project root: nano pretrained as
    models:/anima-base/1, then sft from it registered as models:/anima-tiny/1 @champion. Its training data is
    a built chat dataset, so retrain's default rehearsal has something real to replay."""
    from mlflow import MlflowClient

    from anima.stages.train import train

    root = tmp_path_factory.mktemp("chat_champion")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ANIMA_ROOT", str(root))
        pre = train(compose_cfg("pretrain", [*NANO_FAST, *TINY, "registry.name=anima-base"], raw_dir))
        sft = train(compose_cfg("sft", [*NANO_FAST, *TINY, "data=chat_mix", f"init_from={pre.model_uri}",
                                        "registry.name=anima-tiny"], raw_dir))
        MlflowClient().set_registered_model_alias("anima-tiny", "champion", sft.version)
    assert (pre.model_uri, sft.model_uri) == ("models:/anima-base/1", "models:/anima-tiny/1")
    return root, pre, sft


@pytest.mark.slow
def test_retrain_rehearses_the_chat_champions_own_training_data(chat_champ, monkeypatch, capsys):
    """Default rehearsal replays the champion's chat_mix: the run records it as an input, the built train mix
    holds ratio/(1-ratio) * n_feedback_train real chat_mix examples, and the result is a @candidate child."""
    import mlflow
    from mlflow import MlflowClient

    from anima.config.groups import PathsConfig
    from anima.config.typed import typed
    from anima.data.dataset import load_dataset_ref
    from anima.data.mixing import rehearsal_count
    from anima.stages.retrain import retrain

    root, _, sft = chat_champ
    monkeypatch.setenv("ANIMA_ROOT", str(root))
    _write_feedback(root / "data" / "feedback.jsonl", PAIRS)
    cfg = compose_cfg("retrain", ["retrain.rehearsal_ratio=0.5"])
    cfg.retrain.sft_overrides = RETRAIN_SFT
    result = retrain(cfg)
    out = capsys.readouterr().out
    assert "rehearsal: models:/anima-tiny/1" in out and "no rehearsal" not in out

    champ_fp = mlflow.get_run(sft.run_id).data.tags["anima.data_fingerprint"]
    paths = typed(cfg.paths, PathsConfig)
    assert load_dataset_ref(f"chat_mix/{champ_fp}", paths).kind == "chat"  # the champion's data: chat_mix
    run = mlflow.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["data.rehearsal.source"] == "models:/anima-tiny/1"  # pinned, not the @champion alias
    assert float(run.data.params["data.rehearsal.ratio"]) == 0.5
    inputs = {d.dataset.name: {t.key: t.value for t in d.tags} | {"digest": d.dataset.digest}
              for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"feedback", "chat_mix"}, inputs
    assert inputs["feedback"]["mlflow.data.context"] == "training"
    assert inputs["feedback"]["fingerprint"] == run.data.tags["anima.data_fingerprint"]
    assert inputs["chat_mix"]["mlflow.data.context"] == "rehearsal"
    assert inputs["chat_mix"]["fingerprint"] == champ_fp and inputs["chat_mix"]["digest"] == champ_fp[:36]

    # the train mix that was built (data/processed/feedback/<fp>/) really holds replayed chat_mix examples
    built = load_dataset_ref(f"feedback/{run.data.tags['anima.data_fingerprint']}", paths)
    assert built.path.parent == root / "data" / "processed" / "feedback"
    reh = built.manifest["rehearsal"]
    assert (reh["source"], reh["fingerprint"], reh["ratio"]) == (f"chat_mix/{champ_fp}", champ_fp, 0.5)
    train = built.split("train")
    replayed = [ex for ex in train if ex["source"] == f"rehearsal:chat_mix/{champ_fp}"]
    fresh = [ex for ex in train if ex["source"] == "feedback"]
    assert len(replayed) + len(fresh) == len(train) == built.count("train")
    assert len(fresh) + built.count("val") == len(PAIRS)  # every feedback example is in train or val
    assert reh["examples"] == len(replayed) == rehearsal_count(0.5, len(fresh)) == len(fresh) > 0
    champion_train = {json.dumps(ex["messages"]) for ex in load_dataset_ref(f"chat_mix/{champ_fp}", paths)
                      .split("train")}
    assert all(json.dumps(ex["messages"]) in champion_train for ex in replayed)
    assert not any(ex["persona"] for ex in replayed)
    assert int(run.data.params["data.train_examples"]) > len(fresh)  # the replayed rows were trained on

    client = MlflowClient()
    assert result.model_uri == "models:/anima-tiny/2"
    assert str(client.get_model_version_by_alias("anima-tiny", "candidate").version) == "2"
    assert str(client.get_model_version_by_alias("anima-tiny", "champion").version) == "1"  # not promoted
    mv = client.get_model_version("anima-tiny", "2")
    assert mv.tags["parent"] == "models:/anima-tiny/1" and mv.tags["retrained_from"] == "models:/anima-tiny/1"


@pytest.mark.slow
def test_explicit_rehearsal_source_without_chat_data_fails_before_training(chat_champ, monkeypatch, capsys):
    """retrain.rehearsal_source set by hand must be usable: a pretrained-only model (plain text, no chat
    dataset) is refused up front in one line naming the key, and nothing is trained or registered."""
    from mlflow import MlflowClient

    from anima.errors import DataError
    from anima.stages.retrain import retrain
    from anima.tracking.store import setup_mlflow

    root, pre, _ = chat_champ
    monkeypatch.setenv("ANIMA_ROOT", str(root))
    feedback = root / "data" / "feedback-explicit.jsonl"
    _write_feedback(feedback, PAIRS[:4])
    cfg = compose_cfg("retrain", [f"retrain.feedback={feedback}", f"retrain.rehearsal_source={pre.model_uri}"])
    cfg.retrain.sft_overrides = RETRAIN_SFT
    setup_mlflow(cfg.tracking)
    client = MlflowClient()
    before = len(client.search_model_versions("name='anima-tiny'"))
    with pytest.raises(DataError, match=r"^retrain\.rehearsal_source=models:/anima-base/1: no chat data to "
                                        r"replay \(its pretrain run \w+ trained on plain text") as e:
        retrain(cfg)
    assert "\n" not in str(e.value)
    assert "retrain:" not in capsys.readouterr().out  # refused before the run starts
    assert len(client.search_model_versions("name='anima-tiny'")) == before
