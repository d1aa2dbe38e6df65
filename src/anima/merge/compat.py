"""Refuse to merge models whose architectures or tokenizers differ (one line naming field and dirs)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

from anima.errors import ModelError

# config.json fields that decide tensor shapes or how weights are read. A missing field is compared
# as "absent", so a model that sets one and a model that does not are told apart.
ARCH_FIELDS = (
    "model_type",
    "architectures",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "intermediate_size",
    "vocab_size",
    "tie_word_embeddings",
    "hidden_act",
    "attention_bias",
    "mlp_bias",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
_ABSENT = "<absent>"


def _config(model_dir: Path) -> dict[str, Any]:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise ModelError(f"{path}: missing (not a Hugging Face model dir)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from exc


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()[:12]


def tokenizer_fingerprint(model_dir: Path) -> dict[str, str]:
    """sha256 (12 hex) of each tokenizer file present; absent files map to '<absent>'."""
    d = Path(model_dir)
    return {name: (_file_hash(d / name) if (d / name).is_file() else _ABSENT) for name in TOKENIZER_FILES}


def check_compatible(dirs: Sequence[Path | str]) -> None:
    """Raise ModelError unless every dir has the first dir's architecture fields and tokenizer."""
    paths = [Path(d) for d in dirs]
    if not paths:
        raise ModelError("no model dirs to compare")
    ref, ref_cfg = paths[0], _config(paths[0])
    ref_tok = tokenizer_fingerprint(ref)
    for other in paths[1:]:
        cfg = _config(other)
        for field in ARCH_FIELDS:
            a, b = ref_cfg.get(field, _ABSENT), cfg.get(field, _ABSENT)
            if a != b:
                raise ModelError(
                    f"incompatible models: config field {field!r} is {a!r} in {ref} but {b!r} in {other}"
                )
        tok = tokenizer_fingerprint(other)
        for name in TOKENIZER_FILES:
            if ref_tok[name] != tok[name]:
                raise ModelError(
                    f"incompatible tokenizers: {name} is {ref_tok[name]} in {ref} but {tok[name]} in {other}"
                )
