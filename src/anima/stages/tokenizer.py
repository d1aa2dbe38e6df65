"""anima tokenizer: a SentencePiece BPE tokenizer wrapped as a Hugging Face tokenizer with a chat template.

Cached by corpus fingerprint + settings, so `anima pretrain` with the same data and vocabulary reuses it.
"""

from __future__ import annotations

from omegaconf import DictConfig

from anima.config.stage_schemas import TokenizerStageConfig
from anima.config.typed import typed


def run(cfg: DictConfig):
    """Train (or reuse) the tokenizer of `cfg`'s data and settings, converted once to `TokenizerStageConfig`;
    `cfg` itself is what the run logs."""
    import mlflow
    from rich.console import Console

    from anima.data.text_corpus import load_text_corpus
    from anima.tokenizer.ensure import ensure_tokenizer
    from anima.tokenizer.hf import load_tokenizer
    from anima.tracking.datasets import log_dataset_input
    from anima.tracking.run import stage_run

    spec = typed(cfg, TokenizerStageConfig)
    paths = spec.paths
    corpus = load_text_corpus(spec.data, paths.raw_dir, paths.cache_dir)
    with stage_run(cfg):
        tok_dir, trained = ensure_tokenizer(corpus, spec.tokenizer, spec.chat.template, paths.cache_dir)
        tok = load_tokenizer(tok_dir)
        sample = "\n".join(list(corpus.val.values())[0].splitlines()[:200])
        n_tokens = len(tok.encode(sample, add_special_tokens=False))
        stats = {"vocab_size": len(tok), "val_chars_per_token": len(sample) / max(1, n_tokens)}
        mlflow.log_metrics(stats)
        mlflow.set_tags({"anima.tokenizer": tok_dir.name, "anima.data_fingerprint": corpus.fingerprint})
        log_dataset_input(spec.data.name, corpus.fingerprint, paths.raw_dir, "training")
        mlflow.log_artifacts(str(tok_dir), "tokenizer")
    Console().print(f"[bold green]✓ tokenizer[/] {'trained' if trained else 'reused'} {tok_dir} "
                    f"(vocab {len(tok)}, {stats['val_chars_per_token']:.2f} chars/token on held-out text)")
    return tok_dir
