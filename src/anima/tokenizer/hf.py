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
from anima.tokenizer.train import BOS, EOS, MODEL_FILENAME, PAD, UNK

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
    for tok in (UNK, BOS, EOS, PAD):
        if tok not in vocab:
            raise ModelError(f"SentencePiece model {sp_model_path} has no {tok} piece (train it with anima)")

    backend = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token=UNK, fuse_unk=True, byte_fallback=True))
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    # Control pieces (unk/bos/eos/pad) and user-defined chat symbols are all special, un-normalised tokens.
    chat_tokens = [str(t) for t in extracted["additional_special_tokens"] if str(t) not in (UNK, BOS, EOS, PAD)]
    backend.add_special_tokens(
        [AddedToken(t, normalized=False, special=True) for t in (UNK, BOS, EOS, PAD, *chat_tokens)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
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
        # that), and add_bos_token is written out because v5 omits it and llama.cpp-style readers look for it.
        tok.save_pretrained(str(tmp_dir), save_jinja_files=False)
        cfg_path = tmp_dir / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        cfg.update(add_bos_token=bool(tok.add_bos_token), add_eos_token=bool(tok.add_eos_token))
        cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
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
