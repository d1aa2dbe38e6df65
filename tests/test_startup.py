"""Start-up work that is cached or skipped (issue 13): the parsed text corpus is read back only while its
bytes, split and parser are unchanged; a training run logs `startup_s` and its final samples are the final
model's (reused from the last validation when that was of the final weights)."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.helpers import NANO_FAST, compose_cfg


def _text_data(src: Path, holdout: list[str]):
    return OmegaConf.create({"name": "mine", "kind": "text", "split": {"holdout": holdout},
                             "sources": {"docs": {"kind": "text", "path": str(src)}}})


def test_parsed_corpus_is_reused_only_while_its_inputs_are_unchanged(tmp_path):
    from anima.data.text_corpus import load_text_corpus

    src, cache = tmp_path / "src", tmp_path / "cache"
    src.mkdir()
    (src / "a.txt").write_text("first document\n\nwith two paragraphs\n", encoding="utf-8")
    (src / "b.txt").write_text("held out\n", encoding="utf-8")
    data = _text_data(src, ["b"])

    parsed = load_text_corpus(data, tmp_path)
    filled = load_text_corpus(data, tmp_path, cache)
    entries = list((cache / "corpus").glob("*.json"))
    assert len(entries) == 1
    read_back = load_text_corpus(data, tmp_path, cache)
    for corpus in (filled, read_back):
        assert (corpus.train, corpus.val, corpus.fingerprint) == (parsed.train, parsed.val, parsed.fingerprint)

    (src / "a.txt").write_text("first document, edited\n", encoding="utf-8")
    edited = load_text_corpus(data, tmp_path, cache)
    assert edited.train == {"a": "first document, edited\n"} and edited.fingerprint != parsed.fingerprint
    resplit = load_text_corpus(_text_data(src, ["a"]), tmp_path, cache)
    assert set(resplit.val) == {"a"} and set(resplit.train) == {"b"}
    assert len(list((cache / "corpus").glob("*.json"))) == 3


@pytest.mark.slow
def test_run_logs_startup_and_final_samples_of_the_final_model(project, raw_dir, monkeypatch):
    import mlflow

    from anima.stages.train import train
    from anima.train import callbacks

    monkeypatch.setattr(callbacks, "_startup_logged", False)  # once per process: this test's run is the first
    # smoke: 4 steps, validation at steps 2 and 4, so the last validation sampled the final weights
    result = train(compose_cfg("pretrain", NANO_FAST, raw_dir))
    run = mlflow.get_run(result.run_id)
    assert 0 < run.data.metrics["startup_s"] < 3600
    assert "startup_s" not in result.metrics  # logged beside the training metrics, not among them
    load = mlflow.artifacts.load_text
    base = f"{run.info.artifact_uri}/samples"
    assert load(f"{base}/final.md") == load(f"{base}/step_000004.md")
