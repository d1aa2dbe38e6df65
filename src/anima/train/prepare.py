"""Turn the `data` + `tokenizer` configs into what the trainer needs: datasets, tokenizer, fingerprints."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from anima.config.stage_schemas import TrainConfig
from anima.train.bundle import DataBundle


def prepare_text_data(spec: TrainConfig, batch_size: int, block_size: int) -> DataBundle:
    """Plain-text pretraining: corpus -> tokenizer (cached) -> packed token streams (cached)."""
    from anima.data.text_corpus import load_text_corpus
    from anima.tokenizer.ensure import ensure_tokenizer
    from anima.tokenizer.hf import load_tokenizer
    from anima.train.text_data import RandomWindows, SequentialWindows, build_token_cache

    paths, num_samples = spec.paths, spec.trainer.num_samples
    corpus = load_text_corpus(spec.data, paths.raw_dir, paths.cache_dir)
    tok_dir, _ = ensure_tokenizer(corpus, spec.tokenizer, spec.chat.template, paths.cache_dir)
    tokenizer = load_tokenizer(tok_dir)
    splits, fp = build_token_cache(corpus, tok_dir, paths.cache_dir)
    train_tokens = splits["train"].tokens
    seed = spec.seed

    def make_train(start: Callable[[], int], total: int) -> RandomWindows:
        return RandomWindows(train_tokens, block_size, batch_size, seed, start, total)

    prompts = []
    for doc in sorted(corpus.val.values())[: max(1, num_samples)]:
        first_line = doc.split("\n", 1)[0] + "\n"
        prompts.append(tokenizer.encode(first_line))
    return DataBundle(
        tokenizer_dir=tok_dir,
        tokenizer=tokenizer,
        make_train=make_train,
        val_sets={"val": SequentialWindows(splits["val"].tokens, block_size)},
        fingerprint=fp,
        dataset_name=spec.data.name,
        dataset_path=str(Path(paths.cache_dir) / "tokens" / fp),
        chars_per_token={"val": splits["val"].chars_per_token},
        sample_prompts=prompts[:num_samples],
        stats={"train_tokens": int(len(train_tokens)), "val_tokens": int(len(splits["val"].tokens)),
               "train_chars": corpus.chars("train"), "val_chars": corpus.chars("val"),
               "train_documents": len(corpus.train), "val_documents": len(corpus.val)},
    )


def prepare_data(spec: TrainConfig) -> DataBundle:
    """Dispatch on data.kind: text (pretraining) or chat (sft/distill, assistant-only labels)."""
    if spec.data.kind == "chat":
        from anima.train.chat_data import prepare_chat_data

        return prepare_chat_data(spec, spec.trainer.batch_size, spec.model.max_seq_len)
    return prepare_text_data(spec, spec.trainer.batch_size, spec.model.max_seq_len)
