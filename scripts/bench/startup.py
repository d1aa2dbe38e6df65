"""Start-up time of `anima pretrain model=tiny trainer.max_steps=10` (issue 13: first step within 5 s, warm cache).

Runs the command N times as a user would, in one fresh project root (its data/raw links to the checkout's demo
corpora), and reads each run's `startup_s` metric: seconds from process start to the end of the first
optimizer step, logged by `anima.train.callbacks.StartupTime`. The first run trains the tokenizer and fills
the corpus and token caches (cold); the medians are over the warm runs after it.

`--floor` also times, interleaved with those runs, a bare `python -c "import ..."` of the libraries the trainer's
first step cannot do without (FLOOR: torch, Lightning, the Llama model class, Hydra; MLflow is imported by the
tracking helper process beside them, see anima.tracking.helper; `tracking.helper=false` puts it back): the part
of start-up no change to anima can cut (Lightning alone imports torchmetrics, scipy.signal, matplotlib and
torch._dynamo).

    python scripts/bench/startup.py [--runs 4] [--root DIR] [--floor] [overrides...]

The machine's load shows in every number here: compare runs made at the same time, and read `cpu_s` (the
command's user+sys CPU seconds), which contention inflates less than wall time.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COMMAND = ["pretrain", "model=tiny", "trainer.max_steps=10"]
FLOOR = ("import torch, lightning, hydra; "
         "from transformers import LlamaForCausalLM")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(cmd: list[str], env: dict) -> tuple[float, float, subprocess.CompletedProcess]:
    """(wall s, user+sys CPU s, the finished process) of one run of `cmd`."""
    cpu0, t0 = _children_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return time.perf_counter() - t0, _children_cpu() - cpu0, proc


def startup_of_newest_run(root: Path) -> float | None:
    """`startup_s` of the newest run in the project root's store (None when the run did not log it)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("anima")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].data.metrics.get("startup_s") if runs else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=4, help="runs in all; the first warms the caches (default 4)")
    ap.add_argument("--root", type=Path, help="project root to reuse (default: a fresh temp dir)")
    ap.add_argument("--floor", action="store_true", help="also time the bare imports (FLOOR) after each run")
    args, overrides = ap.parse_known_args()
    root = args.root or Path(tempfile.mkdtemp(prefix="anima-startup-"))
    (root / "data").mkdir(parents=True, exist_ok=True)
    if not (root / "data" / "raw").exists():
        (root / "data" / "raw").symlink_to(REPO / "data" / "raw")
    env = {**os.environ, "ANIMA_ROOT": str(root)}
    cmd = [sys.executable, "-m", "anima", *COMMAND, *overrides]
    print(f"root {root}\ncommand anima {' '.join(cmd[3:])}")
    rows, floors = [], []
    for i in range(args.runs):
        wall, cpu, proc = _timed(cmd, env)
        if proc.returncode != 0:
            sys.exit(f"run {i + 1} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        startup = startup_of_newest_run(root)
        rows.append((startup, wall, cpu))
        first = "n/a" if startup is None else f"{startup:6.2f}"
        print(f"run {i + 1} {'cold' if i == 0 else 'warm'}: first step {first} s   wall {wall:6.2f} s   "
              f"cpu {cpu:6.2f} s", flush=True)
        if args.floor:
            f_wall, f_cpu, f_proc = _timed([sys.executable, "-c", FLOOR], env)
            if f_proc.returncode != 0:
                sys.exit(f"the bare imports failed:\n{f_proc.stderr[-2000:]}")
            floors.append((f_wall, f_cpu))
            print(f"      bare imports: wall {f_wall:6.2f} s   cpu {f_cpu:6.2f} s", flush=True)
    warm = rows[1:] or rows
    firsts = [r[0] for r in warm if r[0] is not None]
    print(f"median of {len(warm)} warm run(s): first step "
          f"{statistics.median(firsts) if firsts else float('nan'):.2f} s   "
          f"wall {statistics.median(r[1] for r in warm):.2f} s   cpu {statistics.median(r[2] for r in warm):.2f} s")
    if floors:
        print(f"median of {len(floors)} bare import run(s): wall {statistics.median(f[0] for f in floors):.2f} s   "
              f"cpu {statistics.median(f[1] for f in floors):.2f} s")


if __name__ == "__main__":
    main()
