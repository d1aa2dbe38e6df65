"""Bits per character on the held-out plays after a time-budgeted `anima pretrain` (the README's command).

Runs `anima pretrain model=tiny trainer.max_time=00:00:01:25` (plus any overrides given) as a user would, in a
fresh project root, then scores the registered model on every character of the held-out plays (the
shakespeare mix's `holdout`, whole text, not the training loop's sampled val batches): the text is tokenized
per play, cut into non-overlapping windows of the model's context, and the summed next-token loss in bits is
divided by the plays' character count.

    python scripts/bench/time_budget.py [--budget 00:00:01:25] [overrides...]
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def bits_per_char(model_dir: Path, texts: dict[str, str]) -> tuple[float, int, int]:
    """(bits/char, characters scored, tokens scored) of a model dir on whole documents."""
    import torch
    import torch.nn.functional as F

    from anima.evaluation.perplexity import load_for_eval

    model, tokenizer, _, ctx = load_for_eval(model_dir)
    nats, chars, tokens = 0.0, 0, 0
    with torch.inference_mode():
        for text in texts.values():
            ids = [tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]
            for s in range(0, len(ids) - 1, ctx):
                w = torch.tensor(ids[s:s + ctx + 1]).unsqueeze(0)
                logits = model(input_ids=w[:, :-1]).logits
                nats += float(F.cross_entropy(logits[0].float(), w[0, 1:], reduction="sum"))
                tokens += w.size(1) - 1
            chars += len(text)
    return nats / math.log(2) / chars, chars, tokens


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", default="00:00:01:25")
    args, overrides = ap.parse_known_args()
    root = Path(tempfile.mkdtemp(prefix="anima-time-budget-"))
    env = {**os.environ, "ANIMA_ROOT": str(root)}
    raw = REPO / "data" / "raw"
    cmd = [sys.executable, "-m", "anima", "pretrain", "model=tiny", f"trainer.max_time={args.budget}",
           f"paths.raw_dir={raw}", "trainer.progress=none", *overrides]
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True)
    wall = time.perf_counter() - t0

    os.environ["ANIMA_ROOT"] = str(root)
    sys.path.insert(0, str(REPO))
    import mlflow

    from anima.data.text_corpus import load_text_corpus
    from tests.helpers import compose_cfg

    cfg = compose_cfg("pretrain", ["model=tiny", *overrides], raw)
    run = mlflow.MlflowClient(str(cfg.tracking.uri)).search_runs(
        [mlflow.MlflowClient(str(cfg.tracking.uri)).get_experiment_by_name(str(cfg.tracking.experiment))
         .experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0]
    steps = int(mlflow.MlflowClient(str(cfg.tracking.uri)).get_metric_history(run.info.run_id, "train/loss")[-1].step)
    model_dir = Path(run.data.tags["anima.checkpoint_dir"]).parent / "model"
    held_out = load_text_corpus(cfg.data, raw).val
    bpc, chars, tokens = bits_per_char(model_dir, held_out)
    print(f"\n`anima pretrain model=tiny trainer.max_time={args.budget} {' '.join(overrides)}`: "
          f"{wall:.0f} s wall for the whole command, last logged step {steps}")
    print(f"held-out plays {', '.join(held_out)}: {chars:,} characters, {tokens:,} tokens scored")
    print(f"bits/char: {bpc:.3f}")


if __name__ == "__main__":
    main()
