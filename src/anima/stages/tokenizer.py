"""anima tokenizer: a SentencePiece BPE tokenizer wrapped as a Hugging Face tokenizer with a chat template.

Cached by corpus fingerprint + settings, so `anima pretrain` with the same data and vocabulary reuses it.
"""

from __future__ import annotations

from omegaconf import DictConfig


def run(cfg: DictConfig):
    import mlflow
    from rich.console import Console

    from anima.data.text_corpus import load_text_corpus
    from anima.tokenizer.ensure import ensure_tokenizer
    from anima.tokenizer.hf import load_tokenizer
    from anima.tracking.datasets import log_dataset_input
    from anima.tracking.run import stage_run

    corpus = load_text_corpus(cfg.data, cfg.paths.raw_dir, cfg.paths.cache_dir)
    with stage_run(cfg):
        tok_dir, trained = ensure_tokenizer(corpus, cfg.tokenizer, str(cfg.chat.template), cfg.paths.cache_dir)
        tok = load_tokenizer(tok_dir)
        sample = "\n".join(list(corpus.val.values())[0].splitlines()[:200])
        n_tokens = len(tok.encode(sample, add_special_tokens=False))
        stats = {"vocab_size": len(tok), "val_chars_per_token": len(sample) / max(1, n_tokens)}
        mlflow.log_metrics(stats)
        mlflow.set_tags({"anima.tokenizer": tok_dir.name, "anima.data_fingerprint": corpus.fingerprint})
        log_dataset_input(str(cfg.data.name), corpus.fingerprint, str(cfg.paths.raw_dir), "training")
        mlflow.log_artifacts(str(tok_dir), "tokenizer")
    Console().print(f"[bold green]✓ tokenizer[/] {'trained' if trained else 'reused'} {tok_dir} "
                    f"(vocab {len(tok)}, {stats['val_chars_per_token']:.2f} chars/token on held-out text)")
    return tok_dir
