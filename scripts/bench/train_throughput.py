"""Tokens/s of the whole `anima pretrain` training loop vs a bare PyTorch loop over the same model, by wall clock.

Both train model=tiny on batches of 8 x 256 tokens of the real plays on `--threads` threads; anima with its
default logging (MLflow metrics every `tracking.log_every_n_steps`, progress off). The clock covers the whole
loop from the first timed step to the end of training: data, forward/backward, optimizer, logging and every
callback in between (not a step timed hook to hook). Start-up (imports, data prep, model build) is printed
separately. Runs are interleaved (bare exact fp32, bare at anima's precision, anima, ...) so noise hits all.

    python scripts/bench/train_throughput.py [--steps 110] [--warmup 5] [--rounds 2] [--threads 2]
        [--variant 'OVERRIDES' ...] [overrides...]

Printed ratios: anima's default against an exact-fp32 bare loop (what a user gets vs the plain reference), and
anima against a bare loop at the same matmul precision (what the framework itself costs or gains).
Extra arguments are Hydra overrides for the anima side (e.g. device.matmul_precision=highest). Each `--variant`
adds one more anima run per round with its overrides on top, interleaved with the rest (an A/B in one run).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


class WallClock(L.Callback):
    """Wall time from the start of batch `warmup` to the end of training (everything the loop does)."""

    def __init__(self, warmup: int):
        self.warmup, self.t0, self.t1, self.tokens_per_batch = warmup, None, None, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup:
            self.t0 = time.perf_counter()
            self.tokens_per_batch = batch["input_ids"].numel()

    def on_train_end(self, trainer, pl_module):
        self.t1 = time.perf_counter()


# The shape issue 13's throughput goal is stated on (llama2.c's "stories" scale, tiny's shape before the 85 s shape
# sweeps made tiny smaller): the figures in the README stay comparable across those changes.
STORIES = ["model=tiny", "model.dim=288", "model.n_layers=6"]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def matmul_peak(precision: str, dtype: torch.dtype = torch.float32, n: int = 2048, reps: int = 8) -> float:
    """Measured dense matmul rate (FLOP/s) at this matmul precision and dtype: the MFU denominator. The best of
    three timings, so a noisy neighbour's burst does not lower the peak (and inflate the MFU)."""
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up (oneDNN picks its kernel)
    best = math.inf
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = min(best, time.perf_counter() - t)
    torch.set_float32_matmul_precision(saved)
    return 2 * n ** 3 * reps / best


def train_flops_per_token(cfg) -> float:
    """6 x matmul parameters (the LM head included, the embedding lookup not) + attention's 12 x layers x dim x
    context: forward + backward FLOPs per trained token, as in the PaLM paper's MFU."""
    from anima.model.build import build_model

    model = build_model(cfg.model)
    emb = model.get_input_embeddings().weight
    matmul = sum(p.numel() for name, p in model.named_parameters() if p.dim() == 2 and p is not emb)
    head = model.get_output_embeddings().weight.numel()  # tied to the embedding: still a matmul per token
    m = cfg.model
    return 6 * (matmul + (head if model.get_output_embeddings().weight is emb else 0)) \
        + 12 * int(m.n_layers) * int(m.dim) * int(m.max_seq_len)


def bare_loop(cfg, tokens, steps: int, warmup: int, precision: str, bf16: bool = False) -> float:
    """nanoGPT-style eager loop (batch, forward, loss, backward, clip, AdamW step), timed like anima's;
    `bf16`: the forward under `torch.autocast("cpu", torch.bfloat16)` (fp32 weights and optimizer state)."""
    from anima.model.build import build_model
    from anima.train.text_data import RandomWindows

    torch.manual_seed(0)
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    model = build_model(cfg.model)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1)
    data = RandomWindows(tokens, cfg.model.max_seq_len, cfg.trainer.batch_size, 0, lambda: 0, steps)
    t0 = None
    for i in range(steps):
        if i == warmup:
            t0 = time.perf_counter()
        batch = data.batch_at(i)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids=batch["input_ids"], use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits.float().view(-1, logits.size(-1)), batch["labels"].view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    loss.item()
    elapsed = time.perf_counter() - t0
    torch.set_float32_matmul_precision(saved)
    return batch["input_ids"].numel() * (steps - warmup) / elapsed


def anima_run(overrides, raw_dir, steps: int, warmup: int) -> tuple[float, float]:
    """(tokens/s of the loop, seconds of start-up before the first timed step) of one `train()` call."""
    from anima.stages.train import train
    from tests.helpers import compose_cfg

    clock = WallClock(warmup)
    # The bare loops step AdamW, so anima does too unless told otherwise (`optim=muon`, pretraining's default,
    # adds its Newton-Schulz steps): the ratios measure the training loop, not the choice of optimizer.
    same_optimizer = [] if any(o.startswith("optim=") for o in overrides) else ["optim=adamw"]
    cfg = compose_cfg("pretrain", [*STORIES, *same_optimizer, f"trainer.max_steps={steps}", "trainer.val_every=100000",
                                   "trainer.num_samples=0", "trainer.progress=none", "registry.register=false",
                                   "tracking.log_checkpoints=false", "trainer.ckpt_every=100000", *overrides],
                      raw_dir)
    start = time.perf_counter()
    train(cfg, callbacks=[clock])
    return clock.tokens_per_batch * (steps - warmup) / (clock.t1 - clock.t0), clock.t0 - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=110)  # >= COMPILE_MIN_STEPS: anima as in a real run
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variant", action="append", default=[], metavar="OVERRIDES",
                    help="another anima run per round, with these space-separated overrides added (repeatable), "
                         "e.g. --variant 'optim.compile=true'")
    args, overrides = ap.parse_known_args()
    torch.set_num_threads(args.threads)
    os.environ["ANIMA_ROOT"] = tempfile.mkdtemp(prefix="anima-bench-")
    from anima.config.stage_schemas import TrainConfig
    from anima.config.typed import typed
    from anima.data.demo import fetch_demo_data
    from anima.data.text_corpus import load_text_corpus
    from anima.tokenizer.ensure import ensure_tokenizer
    from anima.train.text_data import build_token_cache
    from tests.helpers import compose_cfg

    raw = REPO / "data" / "raw"
    fetch_demo_data(raw)
    overrides = [f"device.threads={args.threads}", *overrides]
    cfg = compose_cfg("pretrain", [*STORIES, *overrides], raw)
    from anima.train.precision import cpu_has_bf16_matrix_units, resolve_matmul_precision, resolve_precision

    precision = resolve_matmul_precision(cfg.device)
    corpus = load_text_corpus(cfg.data, raw)
    tok_dir, _ = ensure_tokenizer(corpus, typed(cfg, TrainConfig).tokenizer, "chatml", cfg.paths.cache_dir)
    tokens = build_token_cache(corpus, tok_dir, cfg.paths.cache_dir)[0]["train"].tokens

    # Without bf16 units (AMD EPYC Zen 2 here) bf16 matmuls are emulated ~60x slower than fp32: no bf16 column.
    has_bf16 = cpu_has_bf16_matrix_units()
    exact, same, bf16, ours, startup = [], [], [], [], []
    variants: dict[str, list[float]] = {v: [] for v in args.variant}
    for r in range(args.rounds):
        exact.append(bare_loop(cfg, tokens, args.steps, args.warmup, "highest"))
        # where anima resolves to exact fp32 the two bare columns are one loop: run it once, not twice in a row
        same.append(exact[-1] if precision == "highest" else bare_loop(cfg, tokens, args.steps, args.warmup, precision))
        bf16.append(bare_loop(cfg, tokens, args.steps, args.warmup, "highest", bf16=True) if has_bf16 else math.nan)
        tps, up = anima_run(overrides, raw, args.steps, args.warmup)
        ours.append(tps)
        startup.append(up)
        print(f"round {r + 1}: bare fp32 {exact[-1]:,.0f}  bare {precision} {same[-1]:,.0f}  bare bf16 autocast "
              f"{bf16[-1]:,.0f}  anima {ours[-1]:,.0f} tok/s  (anima start-up {up:.1f} s)", flush=True)
        for v in args.variant:
            variants[v].append(anima_run([*overrides, *v.split()], raw, args.steps, args.warmup)[0])
            print(f"round {r + 1}: anima with {v}: {variants[v][-1]:,.0f} tok/s", flush=True)
    e, s, b, a = (statistics.median(x) for x in (exact, same, bf16, ours))
    flops = train_flops_per_token(cfg)
    peak_exact = matmul_peak("highest")
    peak_same = peak_exact if precision == "highest" else matmul_peak(precision)
    peak_bf16 = matmul_peak("highest", torch.bfloat16) if has_bf16 else math.nan
    print(f"\n{cpu_name()}, {args.threads} threads; model=tiny at 288x6 (llama2.c stories scale) batch {cfg.trainer.batch_size}x{cfg.model.max_seq_len}, "
          f"{args.steps - args.warmup} timed steps by wall clock, median of {args.rounds} rounds")
    print(f"overrides: {overrides}")
    print(f"bare eager loop, exact fp32 (highest)     : {e:,.0f} tokens/s")
    print(f"bare eager loop, matmul precision {precision:<7}: {s:,.0f} tokens/s")
    print(f"bare eager loop, bf16 autocast            : {b:,.0f} tokens/s")
    print(f"anima pretrain (whole loop)               : {a:,.0f} tokens/s  (start-up {statistics.median(startup):.1f} s)")
    print(f"matmul peak at {args.threads} threads: fp32 exact {peak_exact / 1e9:,.0f} GFLOP/s, fp32 at {precision} "
          f"{peak_same / 1e9:,.0f}, bf16 {peak_bf16 / 1e9:,.0f}; {flops / 1e6:.1f} MFLOP per trained token")
    used = resolve_precision(cfg.device)
    peak_used, peak_name = (peak_bf16, "bf16") if used == "bf16-mixed" else (peak_same, f"fp32 {precision}")
    print(f"anima trains in {used}; MFU against the peak of the precision in use: anima "
          f"{a * flops / peak_used:.1%} of the {peak_name} peak; bare exact fp32 {e * flops / peak_exact:.1%} of the "
          f"fp32 peak; bare bf16 autocast {b * flops / peak_bf16:.1%} of the bf16 peak")
    print(f"ratio anima / bare exact fp32             : {a / e:.2f}x")
    print(f"ratio anima / bare at matmul precision {precision}: {a / s:.2f}x")
    print(f"ratio anima / bare bf16 autocast          : {a / b:.2f}x")
    for v, runs in variants.items():
        median = statistics.median(runs)
        print(f"anima with {v}: {median:,.0f} tokens/s = {median / e:.2f}x bare exact fp32")


if __name__ == "__main__":
    main()
