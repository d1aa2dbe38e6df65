"""The pipeline cache's content inputs: what a step reads, fingerprinted by bytes (no training here)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.helpers import compose_cfg


@pytest.fixture
def chat_raw(project: Path, raw_dir: Path) -> Path:
    """A private copy of the chatterbot corpus, safe to edit in place."""
    raw = project / "raw"
    shutil.copytree(raw_dir / "chatterbot", raw / "chatterbot")
    return raw


def _inputs(stage: str, overrides: list[str]) -> dict:
    from anima.pipeline.inputs import content_inputs

    return content_inputs(compose_cfg(stage, overrides), fetch=False)


def test_editing_one_source_file_changes_only_its_input(chat_raw):
    before = _inputs("sft", ["model=nano", f"paths.raw_dir={chat_raw}"])
    assert len([k for k in before if k.startswith("data source chat_mix.sources.")]) == 20
    emotion = before["data source chat_mix.sources.emotion"]
    assert emotion["path"] == str(chat_raw / "chatterbot/english/emotion.yml") and len(emotion["fp"]) == 16
    f = chat_raw / "chatterbot/english/emotion.yml"
    f.write_text(f.read_text() + "- - Are you sad?\n  - Only when the data changes.\n")
    after = _inputs("sft", ["model=nano", f"paths.raw_dir={chat_raw}"])
    changed = sorted(k for k in before if before[k]["fp"] != after[k]["fp"])
    # the persona source reads the same folder but only botprofile/ai: it does not change
    assert changed == ["data source chat_mix.sources.emotion"]


def test_content_not_mtime_or_location(project, chat_raw):
    from anima.fingerprint import hash_tree

    src = chat_raw / "chatterbot/english"
    fp = hash_tree(src)
    st = (src / "food.yml").stat()
    os.utime(src / "food.yml", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched, same bytes
    assert hash_tree(src) == fp
    copy = project / "elsewhere"
    shutil.copytree(src, copy)
    assert hash_tree(copy) == fp
    (copy / "food.yml").write_bytes((copy / "food.yml").read_bytes().replace(b"a", b"b", 1))  # same size
    assert hash_tree(copy) != fp


def test_local_model_tokenizer_and_feedback_are_inputs(project):
    model = project / "my-model"
    model.mkdir()
    (model / "config.json").write_text('{"a": 1}')
    (model / "model.safetensors").write_bytes(b"\0" * 64)
    tok = project / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text("{}")
    ov = ["model=nano", "data=shakespeare", f"init_from={model}", f"tokenizer.path={tok}"]
    first = _inputs("pretrain", ov)
    assert first["local model init_from"]["path"] == str(model)
    assert first["tokenizer"]["path"] == str(tok)
    (model / "model.safetensors").write_bytes(b"\1" * 64)  # weights replaced in place
    second = _inputs("pretrain", ov)
    assert second["local model init_from"]["fp"] != first["local model init_from"]["fp"]
    assert second["tokenizer"] == first["tokenizer"]

    fb = project / "data" / "feedback.jsonl"
    fb.parent.mkdir(parents=True, exist_ok=True)
    fb.write_text('{"rating": "up"}\n')
    one = _inputs("retrain", [])  # retrain.feedback defaults to ${paths.data_dir}/feedback.jsonl
    assert one["feedback file"]["path"] == str(fb)
    fb.write_text('{"rating": "down"}\n')
    assert _inputs("retrain", [])["feedback file"]["fp"] != one["feedback file"]["fp"]
    # registry URIs are not content inputs: versions are immutable and aliases are keyed by version
    assert not any(k.startswith("local model") for k in _inputs("retrain", []))


def test_sweep_step_fingerprints_what_its_trials_read(chat_raw):
    inputs = _inputs("sweep", ["sweep=sft_lr", f"paths.raw_dir={chat_raw}", "sweep.overrides=['model=nano']"])
    assert "trial data source chat_mix.sources.emotion" in inputs
