"""Train a SentencePiece BPE model with the project's fixed special-token layout.

Layout (shared with exporters and llama.cpp): ``<unk>``=0, ``<s>``=1, ``</s>``=2, ``<pad>``=3, then the chat
tokens as user-defined symbols, then 256 byte pieces (byte fallback: no text is ever ``<unk>``), then merges.
Normalisation is the identity and whitespace is kept as is, so the Hugging Face wrapper
(``anima.tokenizer.hf``) reproduces SentencePiece token for token.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

from anima.errors import AnimaError, ConfigError, DataError

UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
#: The control pieces by role, in id order (unk=0 ... pad=3): SentencePiece's ``<role>_id``/``<role>_piece``
#: options and the HF wrapper's ``<role>_token`` arguments are all built from this one table.
SPECIAL_PIECES = {"unk": UNK, "bos": BOS, "eos": EOS, "pad": PAD}
CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")
MIN_VOCAB_SIZE = 256 + 4 + len(CHAT_TOKENS)  # byte pieces + unk/bos/eos/pad + chat tokens
MODEL_FILENAME = "tokenizer.model"

_TOO_HIGH = re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)")
_TOO_SMALL = re.compile(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)")


def _iter_lines(corpus: Iterable[str | os.PathLike]) -> Iterable[str]:
    """Yield the non-empty lines of in-memory texts and of files (``Path`` items are read as UTF-8)."""
    for item in corpus:
        if isinstance(item, os.PathLike):
            path = Path(item)
            if not path.is_file():
                raise DataError(f"tokenizer corpus file not found: {path}")
            with path.open(encoding="utf-8", errors="replace") as f:
                for line in f:
                    line = line.rstrip("\r\n")
                    if line.strip():
                        yield line
        elif isinstance(item, str):
            for line in item.splitlines():
                if line.strip():
                    yield line
        else:
            raise DataError(f"tokenizer corpus item must be str text or a Path, got {type(item).__name__}")


def _strip_temp_paths(model_file: Path) -> None:
    """Drop the temp corpus path and model prefix SentencePiece records, so equal inputs give equal bytes."""
    from sentencepiece import sentencepiece_model_pb2 as pb2

    proto = pb2.ModelProto()
    proto.ParseFromString(model_file.read_bytes())
    del proto.trainer_spec.input[:]
    proto.trainer_spec.model_prefix = MODEL_FILENAME.removesuffix(".model")
    model_file.write_bytes(proto.SerializeToString())


def _spool(corpus: Iterable[str | os.PathLike], corpus_file: Path) -> int:
    """Write the corpus's non-blank lines to one file, in order; returns how many (none: DataError)."""
    n_lines = 0
    with corpus_file.open("w", encoding="utf-8") as f:
        for line in _iter_lines(corpus):
            f.write(line + "\n")
            n_lines += 1
    if n_lines == 0:
        raise DataError("tokenizer corpus is empty: no non-blank line of text to train SentencePiece on")
    return n_lines


def _training_error(e: RuntimeError, vocab_size: int, n_lines: int) -> AnimaError:
    """SentencePiece's RuntimeError as the one-line error a user can act on (vocab size vs the corpus)."""
    msg = str(e)
    m = _TOO_HIGH.search(msg)
    if m:
        return DataError(
            f"tokenizer.vocab_size={vocab_size} is too large for this corpus ({n_lines} lines): "
            f"use tokenizer.vocab_size <= {m.group(2)} or add text"
        )
    m = _TOO_SMALL.search(msg)
    if m:
        return ConfigError(
            f"tokenizer.vocab_size={vocab_size} is smaller than the {m.group(2)} pieces this corpus "
            f"needs (its characters + specials): raise it or lower tokenizer.character_coverage"
        )
    return DataError(f"SentencePiece training failed: {msg.splitlines()[-1] if msg else e!r}")


def train_sentencepiece(
    corpus: Iterable[str | os.PathLike],
    vocab_size: int,
    out_dir: Path,
    *,
    model_type: str = "bpe",
    character_coverage: float = 1.0,
    seed: int = 0,
    num_threads: int = 1,
    input_sentence_size: int = 2_000_000,
    max_sentence_length: int = 16384,
) -> Path:
    """Train on ``corpus`` (texts and/or file Paths; one sentence per line) and return ``out_dir/tokenizer.model``.

    Deterministic for a given corpus, ``seed`` and ``num_threads``: the corpus is spooled to one file in a
    fixed order, and SentencePiece's sampler (used only above ``input_sentence_size`` lines) is seeded.
    """
    import sentencepiece as spm

    if not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB_SIZE:
        raise ConfigError(
            f"tokenizer.vocab_size={vocab_size} is too small: byte fallback needs 256 byte pieces + "
            f"{MIN_VOCAB_SIZE - 256} special tokens, so use at least {MIN_VOCAB_SIZE}"
        )
    if model_type not in ("bpe", "unigram"):
        raise ConfigError(f"tokenizer.model_type={model_type!r} is not supported (use 'bpe' or 'unigram')")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".spm-") as tmp:
        corpus_file = Path(tmp) / "corpus.txt"
        n_lines = _spool(corpus, corpus_file)
        spm.set_random_generator_seed(seed)
        prefix = Path(tmp) / "tokenizer"
        try:
            spm.SentencePieceTrainer.train(
                input=str(corpus_file),
                model_prefix=str(prefix),
                model_type=model_type,
                vocab_size=vocab_size,
                character_coverage=character_coverage,
                byte_fallback=True,
                **{f"{role}_id": i for i, role in enumerate(SPECIAL_PIECES)},
                **{f"{role}_piece": piece for role, piece in SPECIAL_PIECES.items()},
                user_defined_symbols=list(CHAT_TOKENS),
                normalization_rule_name="identity",
                remove_extra_whitespaces=False,
                add_dummy_prefix=True,
                split_digits=True,
                num_threads=num_threads,
                input_sentence_size=input_sentence_size,
                shuffle_input_sentence=True,
                max_sentence_length=max_sentence_length,
                minloglevel=2,
            )
        except RuntimeError as e:
            raise _training_error(e, vocab_size, n_lines) from None

        _strip_temp_paths(prefix.with_suffix(".model"))
        target = out_dir / MODEL_FILENAME
        os.replace(prefix.with_suffix(".model"), target)
        os.replace(prefix.with_suffix(".vocab"), out_dir / "tokenizer.vocab")
    return target
