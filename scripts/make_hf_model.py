"""Write a small, randomly initialised Hugging Face Llama dir (config, safetensors, tokenizer) from a config:
a local `model=hf` base for LoRA/QLoRA checks with no download (scripts/gpu_check.sh).

    python scripts/make_hf_model.py OUT_DIR --tokenizer-from DIR [--dim 256 --layers 4 ...]

The tokenizer files come from DIR (any anima model or tokenizer dir: tokenizer.json, its config, chat
template); the vocabulary size and special-token ids are taken from it. No anima.json is written: the dir is
what a user downloads from the Hub.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja")  # tokenizer.model: GGUF export reads its pieces and scores


def make_hf_model(out: Path, tokenizer_from: Path, dim: int = 256, layers: int = 4, heads: int = 4,
                  kv_heads: int = 2, intermediate: int = 688, max_seq_len: int = 512, seed: int = 0) -> Path:
    """The model dir `out`: a LlamaForCausalLM of the given shape with `tokenizer_from`'s tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if not (tokenizer_from / "tokenizer.json").is_file():
        raise SystemExit(f"make_hf_model: {tokenizer_from} has no tokenizer.json")
    out.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (tokenizer_from / name).is_file():
            shutil.copy2(tokenizer_from / name, out / name)
    tok = AutoTokenizer.from_pretrained(out)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=dim, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=max_seq_len, tie_word_embeddings=False,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--tokenizer-from", type=Path, required=True)
    for name, default in (("dim", 256), ("layers", 4), ("heads", 4), ("kv-heads", 2), ("intermediate", 688),
                          ("max-seq-len", 512), ("seed", 0)):
        p.add_argument(f"--{name}", type=int, default=default)
    a = p.parse_args(argv)
    out = make_hf_model(a.out, a.tokenizer_from, a.dim, a.layers, a.heads, a.kv_heads, a.intermediate,
                        a.max_seq_len, a.seed)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
