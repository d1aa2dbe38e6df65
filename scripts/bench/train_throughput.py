"""Tokens/s of the full `anima pretrain` path vs a bare PyTorch loop over the same transformers model.

Both train model=tiny on batches of 8 x 256 tokens of the real plays, fp32, on `--threads` threads; anima
with MLflow logging on. The two are interleaved (bare, anima, bare, anima, ...) so machine noise hits both.
Steady state only: the first `--warmup` steps of each segment (and anima's start-up) are not timed.

    python scripts/bench/train_throughput.py [--steps 30] [--rounds 2] [--threads 2] [overrides...]

Extra arguments are Hydra overrides for the anima side (e.g. optim.compile=false to see the eager path).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


class StepTimer(L.Callback):
    def __init__(self, warmup: int):
        self.warmup, self.times, self.tokens, self._t = warmup, [], 0, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx >= self.warmup:
            self.times.append(time.perf_counter() - self._t)
            self.tokens = batch["input_ids"].numel()


def bare_loop(cfg, tokens, steps: int, warmup: int) -> float:
    """nanoGPT-style eager loop: forward, loss, backward, clip, AdamW step. Returns tokens/s."""
    from anima.model.build import build_model
    from anima.train.text_data import RandomWindows

    torch.manual_seed(0)
    torch.set_float32_matmul_precision("highest")  # the reference is plain fp32 (anima may have changed this)
    model = build_model(cfg.model)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1)
    data = RandomWindows(tokens, cfg.model.max_seq_len, cfg.trainer.batch_size, 0, lambda: 0, steps)
    times = []
    for i in range(steps):
        batch = data.batch_at(i)
        t = time.perf_counter()
        logits = model(input_ids=batch["input_ids"], use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), batch["labels"].view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return batch["input_ids"].numel() / statistics.median(times)


def anima_run(overrides, raw_dir, steps: int, warmup: int) -> float:
    from anima.stages.train import train
    from tests.conftest import compose_cfg

    timer = StepTimer(warmup)
    cfg = compose_cfg("pretrain", ["model=tiny", f"trainer.max_steps={steps}", "trainer.val_every=100000",
                                   "trainer.num_samples=0", "trainer.progress=none", "registry.register=false",
                                   "tracking.log_checkpoints=false", "trainer.ckpt_every=100000", *overrides],
                      raw_dir)
    train(cfg, callbacks=[timer])
    return timer.tokens / statistics.median(timer.times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args, overrides = ap.parse_known_args()
    torch.set_num_threads(args.threads)
    os.environ["ANIMA_ROOT"] = tempfile.mkdtemp(prefix="anima-bench-")
    from anima.data.demo import fetch_demo_data
    from anima.data.text_corpus import load_text_corpus
    from anima.tokenizer.ensure import ensure_tokenizer
    from anima.train.text_data import build_token_cache
    from tests.conftest import compose_cfg

    raw = REPO / "data" / "raw"
    fetch_demo_data(raw)
    overrides = [f"device.threads={args.threads}", *overrides]
    cfg = compose_cfg("pretrain", ["model=tiny", *overrides], raw)
    corpus = load_text_corpus(cfg.data, raw)
    tok_dir, _ = ensure_tokenizer(corpus, cfg.tokenizer, "chatml", cfg.paths.cache_dir)
    tokens = build_token_cache(corpus, tok_dir, cfg.paths.cache_dir)[0]["train"].tokens
    bare, ours = [], []
    for r in range(args.rounds):
        bare.append(bare_loop(cfg, tokens, args.steps, args.warmup))
        ours.append(anima_run(overrides, raw, args.steps, args.warmup))
        print(f"round {r + 1}: bare eager {bare[-1]:,.0f} tok/s   anima pretrain {ours[-1]:,.0f} tok/s")
    b, a = statistics.median(bare), statistics.median(ours)
    print(f"\nmodel=tiny batch {cfg.trainer.batch_size}x{cfg.model.max_seq_len} fp32 threads={args.threads} "
          f"overrides={overrides}")
    print(f"bare eager loop : {b:,.0f} tokens/s")
    print(f"anima pretrain  : {a:,.0f} tokens/s")
    print(f"ratio anima/bare: {a / b:.2f}x  (goal >= 1.2x)")


if __name__ == "__main__":
    main()
