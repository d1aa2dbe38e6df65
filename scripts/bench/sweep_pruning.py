#!/usr/bin/env python
"""Benchmark: what pruning saves. Runs the same nano-pretraining search space with the same trial count twice,
without pruning and with the median pruner, and prints total optimizer steps and the best objective of both.

Both sweeps use the random sampler with one seed, so they try the very same configurations: the difference
is only what the pruner stops early. Goal: pruning spends <= 60% of the steps, best value within 1%.

    .venv/bin/python scripts/bench/sweep_pruning.py               # ~2-4 minutes on 2 CPU cores
    .venv/bin/python scripts/bench/sweep_pruning.py --trials 20 --steps 60 --pruner hyperband
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def sweep(name: str, pruner: str, args: argparse.Namespace, root: Path) -> dict:
    from anima.config.compose import compose
    from anima.stages.sweep import run

    steps, val_every = args.steps, max(1, args.steps // 8)
    cfg = compose("sweep", [
        f"paths.raw_dir={args.raw_dir}", "device.threads=1", "sweep=nano_test", f"sweep.study_name={name}",
        f"sweep.n_trials={args.trials}", "sweep.sampler=random", f"sweep.sampler_seed={args.seed}",
        f"sweep.pruner={pruner}", "sweep.pruner_startup_trials=3", f"sweep.pruner_warmup_steps={val_every * 2}",
        "sweep.top_k=0", "sweep.plots=false", f"sweep.preset_dir={root}/presets",
        f"+sweep.set.trainer.max_steps={steps}", f"+sweep.set.trainer.val_every={val_every}",
        "+sweep.set.trainer.batch_size=4", "+sweep.set.trainer.val_batches=4",
        "sweep.params.optim.lr.low=1.0e-4", "sweep.params.optim.lr.high=5.0e-2", "sweep.params.optim.warmup_steps.high=10",
    ])  # validated by compose
    start = time.perf_counter()
    res = run(cfg)
    seconds = time.perf_counter() - start
    import optuna

    from anima.sweep.study import make_storage

    trials = optuna.load_study(study_name=name, storage=make_storage(str(cfg.sweep.storage), 60)).get_trials()
    return {"steps": sum(int(t.user_attrs.get("steps", 0)) for t in trials), "best": res.best_value,
            "pruned": res.counts.get("pruned", 0), "seconds": seconds, "trials": len(trials)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--steps", type=int, default=40, help="optimizer steps of a full trial")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pruner", default="median", choices=["median", "hyperband"])
    ap.add_argument("--raw-dir", default=str(REPO / "data" / "raw"))
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="anima-bench-sweep-"))
    os.environ["ANIMA_ROOT"] = str(root)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(1)
    base = sweep("bench-unpruned", "none", args, root)
    pruned = sweep(f"bench-{args.pruner}", args.pruner, args, root)
    print()
    print(f"{'':>10} {'trials':>7} {'pruned':>7} {'steps':>7} {'best val/loss':>14} {'wall s':>8}")
    for label, r in (("unpruned", base), (args.pruner, pruned)):
        print(f"{label:>10} {r['trials']:>7} {r['pruned']:>7} {r['steps']:>7} {r['best']:>14.5f} {r['seconds']:>8.1f}")
    step_ratio = pruned["steps"] / base["steps"]
    best_gap = abs(pruned["best"] - base["best"]) / abs(base["best"])
    print(f"\nsteps ratio {step_ratio:.1%} (goal <= 60%), best within {best_gap:.2%} (goal <= 1%), "
          f"wall ratio {pruned['seconds'] / base['seconds']:.1%}")
    ok = step_ratio <= 0.60 and best_gap <= 0.01
    print("goal met" if ok else "goal NOT met")
    print(f"(project root with both studies and MLflow runs: {root})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
