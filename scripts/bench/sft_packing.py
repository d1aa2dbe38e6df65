"""Assistant tokens/s of `anima sft` with padded batches (one conversation per row) vs packed rows.

Both runs train model=tiny from scratch on the demo's chat data (conf/data/chat_mix.yaml with the demo's 30%
Hamlet rehearsal, conf/experiment/demo.yaml) tokenized by the demo's tokenizer (the one pretrain trains on
the plays; sft inherits it from its parent), `trainer.batch_size` rows per step, `--threads` threads. The
clock covers the whole training loop from the start of batch `--warmup` to the end of training (data,
forward/backward, optimizer, logging); the counted tokens are the assistant (target) tokens of those batches,
i.e. the tokens the loss learns from. Also printed: the fill each run logged (`data.train_fill`: real tokens /
tokens computed over an epoch's batches) and its rows per epoch. Runs are interleaved (padded, packed,
padded, ...) so noise hits both.

    python scripts/bench/sft_packing.py [--steps 30] [--warmup 5] [--rounds 2] [--threads 2] [overrides...]

Extra arguments are Hydra overrides for both runs (e.g. trainer.batch_size=16 model=small).
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

from scripts.bench.train_throughput import STORIES, cpu_name  # noqa: E402


class TargetClock(L.Callback):
    """Wall time from the start of batch `warmup` to the end of training, and the tokens of the timed batches."""

    def __init__(self, warmup: int):
        self.warmup, self.t0, self.t1 = warmup, None, None
        self.targets = self.computed = self.batches = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup:
            self.t0 = time.perf_counter()
        if batch_idx >= self.warmup:
            self.targets += int((batch["labels"] != -100).sum())
            self.computed += batch["input_ids"].numel()
            self.batches += 1

    def on_train_end(self, trainer, pl_module):
        self.t1 = time.perf_counter()


def sft_run(overrides: list[str], raw: Path, steps: int, warmup: int, packing: bool) -> dict[str, float]:
    """One `train()` call: assistant tokens/s, all tokens/s computed, targets per step, start-up seconds."""
    import mlflow

    from anima.stages.train import train
    from tests.helpers import compose_cfg

    clock = TargetClock(warmup)
    cfg = compose_cfg("sft", [*STORIES, f"trainer.max_steps={steps}", f"trainer.packing={packing}",
                              "trainer.val_every=100000", "trainer.num_samples=0", "trainer.progress=none",
                              "trainer.ckpt_every=100000", "registry.register=false",
                              "tracking.log_checkpoints=false", *overrides], raw)
    start = time.perf_counter()
    result = train(cfg, callbacks=[clock])
    wall = clock.t1 - clock.t0
    params = mlflow.get_run(result.run_id).data.params  # what the run recorded about its batches
    return {"targets_s": clock.targets / wall, "computed_s": clock.computed / wall,
            "targets_step": clock.targets / clock.batches, "step_s": wall / clock.batches,
            "startup_s": clock.t0 - start, "fill": float(params["data.train_fill"]),
            "rows_epoch": int(params["data.train_rows_per_epoch"])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args, extra = ap.parse_known_args()
    torch.set_num_threads(args.threads)
    os.environ["ANIMA_ROOT"] = tempfile.mkdtemp(prefix="anima-bench-")
    from anima.config.stage_schemas import TrainConfig
    from anima.config.typed import typed
    from anima.data.demo import fetch_demo_data
    from anima.data.text_corpus import load_text_corpus
    from anima.tokenizer.ensure import ensure_tokenizer
    from tests.helpers import compose_cfg

    raw = REPO / "data" / "raw"
    fetch_demo_data(raw)
    pre = typed(compose_cfg("pretrain", STORIES, raw), TrainConfig)  # the demo's parent tokenizer: the plays
    tok_dir, _ = ensure_tokenizer(load_text_corpus(pre.data, raw), pre.tokenizer, "chatml", pre.paths.cache_dir)
    overrides = [f"device.threads={args.threads}", f"tokenizer.path={tok_dir}", "data.rehearsal.ratio=0.3", *extra]
    runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    for r in range(args.rounds):
        for packing in (False, True):
            runs[packing].append(sft_run(overrides, raw, args.steps, args.warmup, packing))
            m = runs[packing][-1]
            print(f"round {r + 1} {'packed' if packing else 'padded'}: {m['targets_s']:,.0f} assistant tok/s, "
                  f"{m['computed_s']:,.0f} tok/s computed, {m['targets_step']:,.0f} targets/step, "
                  f"{m['step_s'] * 1000:.0f} ms/step (start-up {m['startup_s']:.1f} s)", flush=True)

    def med(packing: bool, key: str) -> float:
        return statistics.median(m[key] for m in runs[packing])

    cfg = compose_cfg("sft", [*STORIES, *overrides], raw)
    print(f"\n{cpu_name()}, {args.threads} threads; sft model=tiny at 288x6, {cfg.trainer.batch_size} rows x <= "
          f"{cfg.model.max_seq_len} tokens per step, {args.steps - args.warmup} timed steps by wall clock, "
          f"median of {args.rounds} rounds; overrides: {extra}")
    for packing, name in ((False, "padded (one conversation/row)"), (True, "packed (trainer.packing=true)")):
        print(f"{name:<31}: {med(packing, 'targets_s'):>9,.0f} assistant tokens/s  "
              f"({med(packing, 'targets_step'):,.0f} per step, {med(packing, 'step_s') * 1000:,.0f} ms/step, "
              f"{med(packing, 'computed_s'):,.0f} tokens/s computed; data.train_fill {med(packing, 'fill'):.2f}, "
              f"{med(packing, 'rows_epoch'):,.0f} rows per epoch)")
    print(f"ratio packed / padded (assistant tokens/s) : {med(True, 'targets_s') / med(False, 'targets_s'):.2f}x")


if __name__ == "__main__":
    main()
