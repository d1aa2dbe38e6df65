"""Wrap a SentencePiece model as a ``PreTrainedTokenizerFast`` that matches it token for token.

transformers 5 cannot load a bare ``tokenizer.model`` faithfully (``LlamaTokenizer(vocab_file=...)`` yields a
3-token tokenizer), so the ``tokenizers`` pipeline is built by hand, the way llama.cpp and SentencePiece
tokenize: BPE with byte fallback, ``▁`` dummy prefix, no pre-tokenizer. Special/chat tokens are matched in
raw text, and (as in llama.cpp) the text after a special token gets its own ``▁`` prefix.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from anima.errors import ModelError
from anima.tokenizer.train import MODEL_FILENAME, SPECIAL_PIECES, UNK

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

ANIMA_JSON = "anima.json"


def build_hf_tokenizer(sp_model_path: Path | str, chat_template: str) -> PreTrainedTokenizerFast:
    """Build the fast tokenizer for ``sp_model_path`` carrying the Jinja ``chat_template`` string."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import SentencePieceExtractor

    sp_model_path = Path(sp_model_path)
    if not sp_model_path.is_file():
        raise ModelError(f"SentencePiece model not found: {sp_model_path}")
    try:
        extracted = SentencePieceExtractor(str(sp_model_path)).extract(BPE)
    except Exception as e:  # a corrupt or non-SentencePiece file
        raise ModelError(f"cannot read SentencePiece model {sp_model_path}: {e}") from None
    vocab, merges = extracted["vocab"], extracted["merges"]
    specials = tuple(SPECIAL_PIECES.values())
    for tok in specials:
        if tok not in vocab:
            raise ModelError(f"SentencePiece model {sp_model_path} has no {tok} piece (train it with anima)")

    backend = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token=UNK, fuse_unk=True, byte_fallback=True))
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    # Control pieces (unk/bos/eos/pad) and user-defined chat symbols are all special, un-normalised tokens.
    chat_tokens = [str(t) for t in extracted["additional_special_tokens"] if str(t) not in specials]
    backend.add_special_tokens(
        [AddedToken(t, normalized=False, special=True) for t in (*specials, *chat_tokens)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        **{f"{role}_token": piece for role, piece in SPECIAL_PIECES.items()},
        extra_special_tokens=chat_tokens,
        add_bos_token=True,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
        model_max_length=int(1e30),
        chat_template=chat_template,
    )


def save_tokenizer(
    tok: PreTrainedTokenizerFast, sp_model_path: Path | str, out_dir: Path | str, template_name: str
) -> Path:
    """Write the HF tokenizer files, ``tokenizer.model`` and ``anima.json``'s ``chat_template`` into ``out_dir``.

    Files are written to a temp dir beside ``out_dir`` and moved in one by one with ``os.replace``, so a
    reader never sees a half-written file; other files in ``out_dir`` (a model's weights) are kept.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}-tok-") as tmp:
        tmp_dir = Path(tmp)
        # The chat template goes inside tokenizer_config.json (the project convention; older tools read only
        # that); add_bos_token/add_eos_token are written as tokenizer.json behaves (v5 omits or misreports
        # them, and llama.cpp-style readers look for them).
        tok.save_pretrained(str(tmp_dir), save_jinja_files=False)
        sync_special_token_flags(tmp_dir)
        shutil.copyfile(sp_model_path, tmp_dir / MODEL_FILENAME)
        meta_path = out_dir / ANIMA_JSON
        meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
        meta["chat_template"] = template_name
        (tmp_dir / ANIMA_JSON).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        for f in sorted(tmp_dir.iterdir()):
            os.replace(f, out_dir / f.name)
    # transformers 5 prefers a chat_template.jinja file over the config entry: drop a stale one.
    (out_dir / "chat_template.jinja").unlink(missing_ok=True)
    return out_dir


def special_token_flags(tok_dir: Path | str) -> dict[str, bool]:
    """``add_bos_token``/``add_eos_token`` as ``tokenizer.json`` really behaves (its post-processor).

    transformers 5 ignores these keys of tokenizer_config.json when a tokenizer.json exists and reports
    ``tok.add_bos_token == False`` after loading even though the post-processor adds BOS, so the flags are
    read off an actual encoding, never off the loaded attribute.
    """
    from tokenizers import Tokenizer

    tok_dir = Path(tok_dir)
    backend = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    cfg_path = tok_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
    ids = backend.encode("a", add_special_tokens=True).ids
    plain = backend.encode("a", add_special_tokens=False).ids
    flags = {}
    for key, role, at in (("add_bos_token", "bos_token", 0), ("add_eos_token", "eos_token", -1)):
        token = cfg.get(role)
        token = token.get("content") if isinstance(token, dict) else token
        token_id = backend.token_to_id(token) if isinstance(token, str) else None
        flags[key] = bool(token_id is not None and len(ids) > len(plain) and ids[at] == token_id)
    return flags


def sync_special_token_flags(tok_dir: Path | str) -> dict[str, bool]:
    """Make ``tokenizer_config.json`` state what ``tokenizer.json`` does (llama.cpp-style readers and the GGUF
    export look at these keys); rewritten atomically, only when they differ. Returns the flags."""
    from anima.atomic import atomic_write_text

    cfg_path = Path(tok_dir) / "tokenizer_config.json"
    if not (Path(tok_dir) / "tokenizer.json").is_file() or not cfg_path.is_file():
        return {}
    flags = special_token_flags(tok_dir)
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    if any(cfg.get(k) is not v for k, v in flags.items()):
        cfg.update(flags)
        atomic_write_text(cfg_path, json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
    return flags


def load_tokenizer(path: Path | str) -> PreTrainedTokenizerFast:
    """Load the tokenizer saved by :func:`save_tokenizer` (needs ``tokenizer.json``; never touches the hub)."""
    from transformers import PreTrainedTokenizerFast

    path = Path(path)
    if not (path / "tokenizer.json").is_file():
        raise ModelError(f"no tokenizer.json in {path}: not a tokenizer or model dir saved by anima")
    return PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True)


def read_template_name(path: Path | str) -> str | None:
    """The chat template preset recorded in ``<path>/anima.json``, or None when there is none."""
    meta_path = Path(path) / ANIMA_JSON
    if not meta_path.is_file():
        return None
    try:
        return json.loads(meta_path.read_text(encoding="utf-8")).get("chat_template")
    except (json.JSONDecodeError, AttributeError) as e:
        raise ModelError(f"{meta_path} is not a JSON object: {e}") from None
