"""Turn the `data` + `tokenizer` configs into what the trainer needs: datasets, tokenizer, fingerprints."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from anima.train.bundle import DataBundle


def prepare_text_data(cfg: Any, batch_size: int, block_size: int) -> DataBundle:
    """Plain-text pretraining: corpus -> tokenizer (cached) -> packed token streams (cached)."""
    from anima.data.text_corpus import load_text_corpus
    from anima.tokenizer.ensure import ensure_tokenizer
    from anima.tokenizer.hf import load_tokenizer
    from anima.train.text_data import RandomWindows, SequentialWindows, build_token_cache

    corpus = load_text_corpus(cfg.data, cfg.paths.raw_dir, cfg.paths.cache_dir)
    tok_dir, _ = ensure_tokenizer(corpus, cfg.tokenizer, str(cfg.chat.template), cfg.paths.cache_dir)
    tokenizer = load_tokenizer(tok_dir)
    splits, fp = build_token_cache(corpus, tok_dir, cfg.paths.cache_dir)
    train_tokens = splits["train"].tokens
    seed = int(cfg.seed)

    def make_train(start: Callable[[], int], total: int) -> RandomWindows:
        return RandomWindows(train_tokens, block_size, batch_size, seed, start, total)

    prompts = []
    for doc in sorted(corpus.val.values())[: max(1, cfg.trainer.num_samples)]:
        first_line = doc.split("\n", 1)[0] + "\n"
        prompts.append(tokenizer.encode(first_line))
    return DataBundle(
        tokenizer_dir=tok_dir,
        tokenizer=tokenizer,
        make_train=make_train,
        val_sets={"val": SequentialWindows(splits["val"].tokens, block_size)},
        fingerprint=fp,
        dataset_name=str(cfg.data.name),
        dataset_path=str(Path(str(cfg.paths.cache_dir)) / "tokens" / fp),
        chars_per_token={"val": splits["val"].chars_per_token},
        sample_prompts=prompts[: cfg.trainer.num_samples],
        stats={"train_tokens": int(len(train_tokens)), "val_tokens": int(len(splits["val"].tokens)),
               "train_chars": corpus.chars("train"), "val_chars": corpus.chars("val"),
               "train_documents": len(corpus.train), "val_documents": len(corpus.val)},
    )


def prepare_data(cfg: Any) -> DataBundle:
    """Dispatch on data.kind: text (pretraining) or chat (sft/distill, assistant-only labels)."""
    block = int(cfg.model.max_seq_len)
    if str(cfg.data.kind) == "chat":
        from anima.train.chat_data import prepare_chat_data

        return prepare_chat_data(cfg, int(cfg.trainer.batch_size), block)
    return prepare_text_data(cfg, int(cfg.trainer.batch_size), block)
