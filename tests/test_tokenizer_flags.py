"""A saved model's tokenizer_config.json says what its tokenizer.json does (issue 17).

transformers 5 drops add_bos_token/add_eos_token from tokenizer_config.json when it loads a tokenizer.json and
reports `add_bos_token == False` although the post-processor adds BOS; every derived model (sft, distill, merge,
retrain) used to be saved with that False, and the GGUF export told llama.cpp not to add BOS. The flags are now
read off an actual encoding wherever a tokenizer or model dir is written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.helpers import require_module

require_module("torch")
gguf = require_module("gguf")


@pytest.fixture(scope="module")
def nano(tmp_path_factory) -> Path:
    from tests.helpers.models import cached_nano_model_dir

    return cached_nano_model_dir(tmp_path_factory)


def _lying_copy(src: Path, dst: Path) -> Path:
    """A copy of `src` whose tokenizer_config.json claims add_bos_token=false (what derived models used to say)."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "tokenizer_config.json").read_text())
    cfg["add_bos_token"] = False
    (dst / "tokenizer_config.json").write_text(json.dumps(cfg))
    return dst


def _flags(d: Path) -> tuple[bool, bool]:
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    return cfg["add_bos_token"], cfg["add_eos_token"]


def test_flags_are_read_off_the_encoding(nano, tmp_path):
    from transformers import PreTrainedTokenizerFast

    from anima.tokenizer.hf import load_tokenizer, special_token_flags

    tok = load_tokenizer(nano)
    assert tok("hi").input_ids[0] == tok.bos_token_id and tok.add_bos_token is False  # transformers' misreport
    assert special_token_flags(nano) == {"add_bos_token": True, "add_eos_token": False}
    no_bos = PreTrainedTokenizerFast.from_pretrained(str(nano), add_bos_token=False, add_eos_token=True)
    no_bos.save_pretrained(str(tmp_path / "nobos"))
    assert special_token_flags(tmp_path / "nobos") == {"add_bos_token": False, "add_eos_token": True}


def test_chat_tokenizer_and_saved_model_dirs_say_bos(nano, tmp_path):
    """The chat stages' templated tokenizer (sft, distill, retrain) and save_model_dir (every trained model)."""
    from transformers import LlamaForCausalLM

    from anima.model.save import save_model_dir
    from anima.train.chat_tokenizer import templated_tokenizer_dir

    tok_dir = templated_tokenizer_dir(nano, "qa", tmp_path / "cache")
    assert _flags(tok_dir) == (True, False)
    lying = _lying_copy(nano, tmp_path / "lying")
    out = save_model_dir(LlamaForCausalLM.from_pretrained(nano), lying, tmp_path / "saved", {"stage": "sft"})
    assert _flags(out) == (True, False)


def test_merge_and_gguf_follow_the_tokenizer_not_the_config(nano, tmp_path):
    from anima.export import export_gguf
    from anima.merge.streaming import merge

    lying = _lying_copy(nano, tmp_path / "lying")
    merged = merge("uniform", [lying, nano], tmp_path / "merged", check=False)
    assert _flags(merged) == (True, False)
    path = export_gguf(lying, tmp_path / "g" / "m.gguf", "f32")
    fields = gguf.GGUFReader(path).fields
    assert fields["tokenizer.ggml.add_bos_token"].contents() is True
    assert fields["general.name"].contents() == "lying"  # no registry name given: the model dir's name
    named = export_gguf(nano, tmp_path / "g2" / "m.gguf", "f32", name="anima-tiny")
    assert gguf.GGUFReader(named).fields["general.name"].contents() == "anima-tiny"
