"""`anima synth` end to end: the stage asks a live `anima serve` (the serve stage's app on loopback, API key
required) for replies, writes a chat dataset the data stage reads as a source, and records one MLflow run
with counts, the output's fingerprint and the teacher, never the key. Also a local (hf) teacher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import compose_cfg
from tests.helpers.champion import champion_project

pytestmark = pytest.mark.slow

SECRET = "sk-anima-test-0123456789abcdef"
PROMPTS = ["Hello, who are you?", "What is your favourite play?", "Tell me about the sea.",
           "How do you feel today?", "What is love?"]


@pytest.fixture(scope="module")
def champ(tmp_path_factory, raw_dir):
    return champion_project(tmp_path_factory, raw_dir)


def _read_source(path: Path) -> list:
    from anima.config.data import SourceConfig
    from anima.data.readers import read_source

    return list(read_source("synth", SourceConfig(kind="synth", path=str(path)), "chat"))


def test_synth_against_a_live_anima_serve(champ, tmp_path, monkeypatch):
    import mlflow

    from anima.serve.server import start_server_thread
    from anima.stages.serve import build_app
    from anima.stages.synth import synth

    root, _ = champ
    monkeypatch.setenv("ANIMA_ROOT", str(root))
    monkeypatch.setenv("ANIMA_SYNTH_TEST_KEY", SECRET)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    serve_cfg = compose_cfg("serve", ["serve.api_key_env=ANIMA_SYNTH_TEST_KEY", "device.threads=1", "serve.compile=false"])
    app, _, _ = build_app(serve_cfg)
    with start_server_thread(app) as srv:
        # the barely trained champion's most likely first token is the end of turn (greedy replies are empty); sampled
        # replies are not, and prompt i gets seed 1 + i, so the five do not share their first draw
        cfg = compose_cfg("synth", ["teacher.kind=openai", f"teacher.base_url={srv.url}/v1", "teacher.model=anima-tiny",
                                    "teacher.api_key_env=ANIMA_SYNTH_TEST_KEY", f"synth.prompts={prompts}",
                                    "synth.name=from_serve", "sampling.max_new_tokens=8", "sampling.seed=1"])
        res = synth(cfg)
    assert res.out_path == root / "data" / "synth" / "from_serve.jsonl"
    lines = [json.loads(x) for x in res.out_path.read_text().splitlines()]
    assert res.count + res.failures == len(PROMPTS) and res.count == len(lines) >= 3
    for ex in lines:
        assert ex["source"] == "synth" and ex["messages"][0]["content"] in PROMPTS
        assert ex["messages"][-1]["role"] == "assistant" and ex["messages"][-1]["content"].strip()
    records = _read_source(res.out_path)  # the data stage's reader for kind=synth
    assert len([r for r in records if getattr(r, "messages", None)]) == res.count

    run = mlflow.get_run(res.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["anima.stage"] == "synth"
    assert run.data.metrics["synth/examples"] == res.count and run.data.metrics["synth/prompts"] == len(PROMPTS)
    assert run.data.tags["anima.teacher.base_url"] == f"{srv.url}/v1"
    assert run.data.tags["anima.teacher.model"] == "anima-tiny"
    assert run.data.tags["anima.synth.fingerprint"] == res.fingerprint
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"prompts", "from_serve"}
    assert {t.key: t.value for t in inputs["from_serve"].tags}["mlflow.data.context"] == "output"
    assert inputs["from_serve"].dataset.digest == res.fingerprint[:36]
    # the key never reaches the store: not in the sqlite db, not in any artifact
    mlruns = root / "mlruns"
    for f in mlruns.rglob("*"):
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes(), f


def test_synth_with_a_local_hf_teacher_and_bad_input(champ, tmp_path, monkeypatch):
    from anima.errors import ConfigError, DataError, ModelError
    from anima.stages.synth import synth

    root, _ = champ
    monkeypatch.setenv("ANIMA_ROOT", str(root))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS[:2]))
    base = ["teacher.kind=hf", f"synth.prompts={prompts}", "synth.name=local", "sampling.max_new_tokens=6",
            "sampling.seed=0", "device.threads=1"]
    res = synth(compose_cfg("synth", [*base, "teacher.path=models:/anima-tiny@champion"]))
    assert res.count == 2 and res.teacher.startswith("hf:")
    with pytest.raises(ModelError, match=r"aliases: .*@champion \(v1\)"):
        synth(compose_cfg("synth", [*base, "teacher.path=models:/anima-tiny@gone"]))
    with pytest.raises(ConfigError, match="synth.prompts is not set"):
        synth(compose_cfg("synth", ["teacher.kind=hf", "teacher.path=models:/anima-tiny@champion"]))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{oops\n')
    with pytest.raises(DataError, match="bad.jsonl:2"):
        synth(compose_cfg("synth", [*base, f"synth.prompts={bad}", "teacher.path=models:/anima-tiny@champion"]))
