"""Build a real nano chat model dir for tests (SentencePiece + HF tokenizer + random LlamaForCausalLM).

Real files, real tokenizer, real torch model: nothing is mocked. Kept tiny (vocab ~400, hidden 64, 2 layers)
so that building it takes a couple of seconds on a shared 2-core machine.
"""

from __future__ import annotations

import json
from pathlib import Path

_FALLBACK_TEXT = """\
The quick brown fox jumps over the lazy dog. What is your name? My name is anima.
How are you today? I am well, thank you for asking. Tell me a story about the sea.
Once upon a time there was a ship that sailed over the waves to a far away island.
"""


def corpus_text() -> str:
    """Real local text: license texts and stdlib docstrings shipped on every machine that runs the tests."""
    parts: list[str] = []
    gpl = Path("/usr/share/common-licenses/GPL-3")
    if gpl.is_file():
        parts.append(gpl.read_text(encoding="utf-8", errors="replace"))
    import argparse
    import collections
    import json as json_mod
    import pathlib
    import textwrap

    for mod in (argparse, collections, json_mod, pathlib, textwrap):
        if mod.__doc__:
            parts.append(mod.__doc__)
    parts.append(_FALLBACK_TEXT * 5)
    return "\n".join(parts)


def build_nano_model_dir(out_dir: Path, *, vocab_size: int = 400, seed: int = 0) -> Path:
    """Write a complete anima model dir (HF files + tokenizer.model + anima.json) into ``out_dir``."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from anima.tokenizer.chat_template import get_template
    from anima.tokenizer.hf import build_hf_tokenizer, save_tokenizer
    from anima.tokenizer.train import train_sentencepiece

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sp_dir = out_dir.parent / f".{out_dir.name}-spm"
    sp_model = train_sentencepiece([corpus_text()], vocab_size, sp_dir, seed=seed)
    tpl = get_template("chatml")
    tok = build_hf_tokenizer(sp_model, tpl.chat_template)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    model.save_pretrained(str(out_dir))
    save_tokenizer(tok, sp_model, out_dir, "chatml")
    meta_path = out_dir / "anima.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    meta["chat_template"] = "chatml"
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return out_dir


def build_hot_nano_model_dir(out_dir: Path) -> Path:
    """A nano chatml model dir with O(1) logits (2-D weights x4), so greedy text varies and a layout slip in an
    export shows; RMSNorm eps 1e-5, the value llama2.c's run.c hard-codes."""
    import torch
    from transformers import LlamaForCausalLM

    d = build_nano_model_dir(out_dir)
    model = LlamaForCausalLM.from_pretrained(d)
    model.config.rms_norm_eps = 1e-5
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4.0)
    model.save_pretrained(d)
    return d


_CACHED: dict[str, Path] = {}


def cached_nano_model_dir(tmp_path_factory) -> Path:
    """One nano model dir per pytest session, shared by every test file that asks (built on first use)."""
    if "nano" not in _CACHED:
        _CACHED["nano"] = build_nano_model_dir(tmp_path_factory.mktemp("nano") / "model")
    return _CACHED["nano"]


def nano_engine(tmp_path_factory, threads: int | None = 1, **kw):
    """A ChatEngine on the session's nano model (`kw`: backend=...); `threads` pins torch's threads (None: leave)."""
    import torch

    from anima.generation.engine import ChatEngine

    if threads is not None:
        torch.set_num_threads(threads)
    return ChatEngine(cached_nano_model_dir(tmp_path_factory), **kw)


def random_llama(**kw):
    """A small random LlamaForCausalLM (no tokenizer) for forward-pass comparisons; ``kw`` overrides its config."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=4, max_position_embeddings=64)
    cfg.update(kw)
    model = LlamaForCausalLM(LlamaConfig(**cfg)).eval()
    with torch.no_grad():  # random init is near-uniform; widen it so logits are not all ~0
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(5.0)
    return model


def streams_queued_together(engine, prompts, params) -> list:
    """``engine.stream_completion`` for each prompt, all queued before the scheduler admits any: submitted from its own
    thread (``scheduler.call``), so a fast model cannot finish the first reply before the next one is queued."""
    return engine.scheduler.call(lambda: [engine.stream_completion(p, sp) for p, sp in zip(prompts, params)])
