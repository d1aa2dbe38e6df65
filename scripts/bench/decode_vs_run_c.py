#!/usr/bin/env python
"""Single-stream decode tokens/s: anima's decode step vs llama2.c's run.c on the same exported weights.

    python scripts/bench/decode_vs_run_c.py                 # tiny model (random init), 2 threads
    python scripts/bench/decode_vs_run_c.py --rounds 5 --steps 256

The tiny model is exported with anima's llama2.c exporter (anima.export.llama2c); run.c is compiled from the
reference source (``--run-c``, default /work/shared/anchors/llama2.c/run.c) into a temp dir with
``gcc -Ofast -fopenmp -march=native`` and run with OMP_NUM_THREADS=threads; without a C compiler or the source
its column is skipped. Rounds are interleaved (run.c, anima step, anima engine, run.c, ...) so machine noise hits
all alike. Columns:
  run.c          its own "achieved tok/s" (greedy, -t 0; every position is one forward, prompt included)
  anima step     backend.forward([tok]) for positions 1..steps-1, run on the engine's own thread as the engine
                 runs it (a second thread's OpenMP pool would slow both): one column per single-token kernel the
                 compiled backend has, "native" (native_step.py's C++ kernel) and "aoti" (the AOTInductor package)
  anima engine   ChatEngine.stream_completion end to end (scheduler thread, sampling, detokenization), on whichever
                 kernel has been faster (the backend's ``step_kernels``)
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

DEFAULT_RUN_C = Path("/work/shared/anchors/llama2.c/run.c")


def build_run_c(source: Path, out_dir: Path) -> Path | None:
    """Compile run.c into out_dir (never into the project); None when there is no compiler or no source."""
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if cc is None or not source.is_file():
        print(f"run.c column skipped: {'no C compiler' if cc is None else f'no source at {source}'}")
        return None
    exe = out_dir / "run"
    cmd = [cc, "-Ofast", "-fopenmp", "-march=native", str(source), "-o", str(exe), "-lm"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        print(f"run.c column skipped: {' '.join(cmd)} failed: {res.stderr.strip()[:300]}")
        return None
    return exe


def run_c_tok_s(exe: Path, model_bin: Path, tok_bin: Path, steps: int, threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    res = subprocess.run([str(exe), str(model_bin), "-z", str(tok_bin), "-t", "0", "-n", str(steps), "-i", "Once"],
                         capture_output=True, text=True, env=env, timeout=300)
    m = re.search(r"achieved tok/s: ([0-9.]+)", res.stderr)
    if not m:
        raise RuntimeError(f"run.c printed no tok/s: {res.stderr.strip()[-300:]}")
    return float(m.group(1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, help="an anima Llama model dir (default: build the tiny model)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=256, help="positions decoded per run (<= the context)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--backend", default="compiled", choices=["compiled", "fast"])
    ap.add_argument("--cache-dir", type=Path, default=ROOT / "data" / "cache")
    ap.add_argument("--run-c", type=Path, default=DEFAULT_RUN_C, help="llama2.c's run.c source")
    ap.add_argument("--profile", action="store_true", help="also print the top ops of the anima step")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    from decode import build_tiny_model_dir

    from anima.export.llama2c import export_llama2c
    from anima.generation import ChatEngine, SamplingParams

    with tempfile.TemporaryDirectory(prefix="anima-runc-") as tmp_name:
        tmp = Path(tmp_name)
        model_dir = args.model_dir or build_tiny_model_dir(tmp / "tiny")
        model_bin, tok_bin = export_llama2c(model_dir, tmp / "llama2c")
        exe = build_run_c(args.run_c, tmp)
        engine = ChatEngine(model_dir, threads=args.threads, backend=args.backend, cache_dir=args.cache_dir)
        engine.stop_ids = frozenset()  # exactly N tokens
        steps = min(args.steps, engine.context_length)
        print(f"anima: {engine.backend_status()}, {args.threads} threads; run.c: "
              f"{'gcc -Ofast -fopenmp -march=native, OMP_NUM_THREADS=%d' % args.threads if exe else 'skipped'}; "
              f"{steps} positions per run")
        backend = engine.backend

        def step_tok_s(kernel: str | None) -> float:
            kernels = getattr(backend, "step_kernels", None)
            if kernels is not None:
                kernels.fixed = kernel
            try:
                return engine.scheduler.call(step_loop)
            finally:
                if kernels is not None:
                    kernels.fixed = None

        def step_loop() -> float:
            torch.set_num_threads(args.threads)  # the engine's thread tuner may have left it at 1
            backend.select(0)
            backend.truncate(0)
            backend.forward([1])
            tok = 1
            t0 = time.perf_counter()
            for _ in range(steps - 1):
                tok = int(backend.forward([tok]).argmax())
            return (steps - 1) / (time.perf_counter() - t0)

        params = SamplingParams(temperature=0.0, max_new_tokens=steps - 2)

        def engine_tok_s() -> float:
            engine.forget_cache()
            t0 = time.perf_counter()
            stream = engine.stream_completion("Once", params)
            for _ in stream:
                pass
            return stream.completion_tokens / (time.perf_counter() - t0)

        kernels = [k for k, there in (("native", getattr(backend, "native", None)),
                                      ("aoti", getattr(backend, "compiled", None))) if there is not None]
        runs = {f"anima step {k}": (lambda k=k: step_tok_s("compiled" if k == "aoti" else k)) for k in kernels}
        runs = {**(runs or {"anima step": lambda: step_tok_s(None)}), "anima engine": engine_tok_s}
        if exe is not None:
            runs = {"run.c": lambda: run_c_tok_s(exe, model_bin, tok_bin, steps, args.threads), **runs}
        for fn in runs.values():
            fn()  # warm-up
        got: dict[str, list[float]] = {k: [] for k in runs}
        for r in range(args.rounds):
            for label, fn in runs.items():
                got[label].append(fn())
            print(f"round {r + 1}: " + "   ".join(f"{k} {v[-1]:8.1f} tok/s" for k, v in got.items()))
        if os.path.isdir("/proc/self/task"):  # one OpenMP pool: main + engine + its worker(s) + library threads
            print(f"threads in this process: {len(os.listdir('/proc/self/task'))}")
        ref = statistics.median(got["run.c"]) if "run.c" in got else None
        print("\n| column | median tok/s | best tok/s | vs run.c |\n|---|---|---|---|")
        for label, v in got.items():
            ratio = f"{statistics.median(v) / ref:.2f}x" if ref else "-"
            print(f"| {label} | {statistics.median(v):.1f} | {max(v):.1f} | {ratio} |")
        kernels = getattr(backend, "step_kernels", None)
        if kernels is not None:
            picked = kernels.leaders()
            print("the engine's kernel by (threads, position band): "
                  + ", ".join(f"{key}: {k or '-'}" for key, k in sorted(picked.items())))
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                step_loop()
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    return 0


if __name__ == "__main__":
    sys.exit(main())
