"""Peak memory of a streamed merge of 8 random 'tiny' Llama ingredients vs one model's size.

Each merge runs in a fresh child process. After torch and safetensors are imported, the kernel's
peak-RSS mark (VmHWM) is reset (`5` > /proc/self/clear_refs), so the reported peak is the merge's own
high-water mark; we report it minus the RSS just before the merge, plus tracemalloc's peak (Python-side
allocations only; torch tensor storage is not traced). Without /proc, ru_maxrss is used.

    .venv/bin/python scripts/bench/merge_memory.py [--n 8] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

MB = 1024 * 1024


def make_ingredients(root: Path, n: int) -> list[Path]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        hidden_size=288, num_hidden_layers=6, num_attention_heads=6, num_key_value_heads=6,
        vocab_size=4096, intermediate_size=768, max_position_embeddings=256, tie_word_embeddings=False,
    )
    dirs = []
    for i in range(n):
        torch.manual_seed(i)
        d = root / f"ing{i}"
        LlamaForCausalLM(cfg).save_pretrained(d, safe_serialization=True)
        (d / "anima.json").write_text(json.dumps({"chat_template": "chatml"}))
        dirs.append(d)
    return dirs


CHILD = r"""
import json, resource, sys, tracemalloc
import torch, safetensors.torch
from anima.merge import merge
method, out, base, *dirs = sys.argv[1:]
torch.set_num_threads(1)
def status_kb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before, peak = status_kb("VmRSS"), (lambda: status_kb("VmHWM"))
except OSError:
    before, peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, (
        lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
tracemalloc.start()
params = {"density": 0.5} if method == "ties" else {}
merge(method, dirs, out, base_dir=(base if method == "ties" else None), **params)
_, tm_peak = tracemalloc.get_traced_memory()
after = peak()
print(json.dumps({"baseline_kb": before, "peak_kb": after, "tracemalloc_peak": tm_peak}))
"""


def run_child(method: str, dirs: list[Path], out: Path, base: Path) -> dict:
    res = subprocess.run(
        [sys.executable, "-c", CHILD, method, str(out), str(base), *map(str, dirs)],
        check=True, capture_output=True, text=True,
    )
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--keep", type=Path, default=None, help="build ingredients here and keep them")
    args = ap.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="anima-merge-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    dirs = make_ingredients(root, args.n + 1)  # the extra one serves as the TIES base
    base, dirs = dirs[-1], dirs[:-1]
    model_mb = (dirs[0] / "model.safetensors").stat().st_size / MB
    print(f"ingredients: {len(dirs)} x {model_mb:.1f} MB (model.safetensors, fp32); "
          f"all ingredients together {len(dirs) * model_mb:.1f} MB")
    for method in ("uniform", "ties"):
        r = run_child(method, dirs, root / f"out-{method}", base)
        growth = (r["peak_kb"] - r["baseline_kb"]) / 1024
        print(f"{method:8s} peak RSS {r['peak_kb'] / 1024:7.1f} MB (before merge {r['baseline_kb'] / 1024:.1f} MB):"
              f" merge added {growth:6.1f} MB = {growth / model_mb:.2f} x one model;"
              f" tracemalloc peak {r['tracemalloc_peak'] / MB:.2f} MB")
    if args.keep is None:
        import shutil

        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
