"""Reuse the tokenizer trained on the same corpus with the same settings, or train it once."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from anima.config.groups import TokenizerConfig
from anima.fingerprint import hash_obj, publish_dir


def tokenizer_fingerprint(corpus_fp: str, tok_cfg: TokenizerConfig, template: str) -> str:
    """The cache key of a trained tokenizer: its corpus, the settings that change the vocabulary, the template."""
    return hash_obj({"corpus": corpus_fp, "vocab_size": tok_cfg.vocab_size, "model_type": tok_cfg.model_type,
                     "coverage": tok_cfg.character_coverage, "template": template})


def ensure_tokenizer(corpus, tok_cfg: TokenizerConfig, template: str, cache_dir: str | Path) -> tuple[Path, bool]:
    """(tokenizer dir, trained_now). Cached under <cache>/tokenizers/<fingerprint>/; written atomically."""
    from anima.tokenizer.chat_template import get_template
    from anima.tokenizer.hf import build_hf_tokenizer, save_tokenizer
    from anima.tokenizer.train import train_sentencepiece

    if tok_cfg.path:
        return Path(tok_cfg.path), False
    fp = tokenizer_fingerprint(corpus.fingerprint, tok_cfg, template)
    final = Path(cache_dir) / "tokenizers" / f"v{tok_cfg.vocab_size}-{fp}"
    if (final / "tokenizer.json").is_file():
        return final, False
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".tmp-", dir=final.parent))
    try:
        sp_path = train_sentencepiece(list(corpus.train.values()), tok_cfg.vocab_size, work / "sp",
                                      model_type=tok_cfg.model_type,
                                      character_coverage=tok_cfg.character_coverage,
                                      max_sentence_length=tok_cfg.max_sentence_length)
        tok = build_hf_tokenizer(sp_path, get_template(template).chat_template)
        save_tokenizer(tok, sp_path, work / "out", template)
        publish_dir(work / "out", final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final, True
