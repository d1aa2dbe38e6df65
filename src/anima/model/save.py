"""Write a model as a standard Hugging Face dir (safetensors + tokenizer + anima.json), atomically."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from anima.tokenizer.hf import sync_special_token_flags

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "chat_template.jinja")


def save_model_dir(model, tokenizer_dir: Path, out_dir: Path, meta: dict[str, Any]) -> Path:
    """model.safetensors + config + generation config, the tokenizer files, and anima.json metadata.

    tokenizer_config.json's add_bos_token/add_eos_token are re-derived from tokenizer.json here, so every
    stage's model (pretrain, sft, distill, retrain) says what its tokenizer does.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".tmp-", dir=out_dir.parent))
    try:
        model.save_pretrained(work, safe_serialization=True)
        for name in TOKENIZER_FILES:
            src = Path(tokenizer_dir) / name
            if src.is_file():
                shutil.copy2(src, work / name)
        sync_special_token_flags(work)  # the config states what tokenizer.json does, whatever the source said
        base = {}
        if (Path(tokenizer_dir) / "anima.json").is_file():
            base = json.loads((Path(tokenizer_dir) / "anima.json").read_text())
        (work / "anima.json").write_text(json.dumps({**base, **meta}, indent=1, default=str))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(work, out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out_dir
