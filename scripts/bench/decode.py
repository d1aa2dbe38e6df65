#!/usr/bin/env python
"""Decode speed: anima's ChatEngine vs plain transformers ``generate`` on the same weights, in one run.

    python scripts/bench/decode.py                       # builds the tiny model (random init)
    python scripts/bench/decode.py --model-dir DIR       # any anima/HF Llama model dir
    python scripts/bench/decode.py --profile             # also print where the time goes
    python scripts/bench/decode.py --backend fast        # only the eager step

Batch 1, greedy, N new tokens (EOS ignored on every side so each produces exactly N), runs interleaved
(generate, anima compiled, generate, ...) so machine noise hits all alike. tokens/s = new tokens / wall time
of the whole call (prefill + decode; for the engine also detokenization and streaming). The compiled step is
built first if it is not cached yet (its build time is printed).

One engine, and `generate` runs on that engine's thread: every torch op of the process on one thread, so
OpenMP keeps one worker pool, as in `anima chat` / `anima serve`. (Each thread that runs parallel ops gets
its own pool; with more pool threads than cores libgomp stops spin-waiting and every step slows down.)
`--with-fast` adds the eager step as a second engine, for reference, at that cost to both.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

TINY = dict(hidden_size=288, num_hidden_layers=6, num_attention_heads=6, num_key_value_heads=6,
            intermediate_size=768, max_position_embeddings=256, rms_norm_eps=1e-5)  # eps: as run.c hard-codes


def _corpus_files() -> list[Path]:
    """Real local text for the tokenizer: license texts and the Python standard library's sources."""
    files = sorted(Path("/usr/share/common-licenses").glob("*"))
    stdlib = Path(json.__file__).resolve().parents[1]
    files += sorted(stdlib.glob("*.py"))[:150]
    return [f for f in files if f.is_file()]


def build_tiny_model_dir(out: Path, vocab_size: int = 4096, seed: int = 0) -> Path:
    """A random-init tiny Llama + a SentencePiece/HF tokenizer of the same vocab, as an anima model dir."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from anima.tokenizer.chat_template import get_template
    from anima.tokenizer.hf import build_hf_tokenizer, save_tokenizer
    from anima.tokenizer.train import train_sentencepiece

    texts = [f.read_text(encoding="utf-8", errors="replace") for f in _corpus_files()]
    sp = train_sentencepiece(texts, vocab_size, out.parent / f".{out.name}-spm", seed=seed)
    tok = build_hf_tokenizer(sp, get_template("chatml").chat_template)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, tie_word_embeddings=False, **TINY)
    model = LlamaForCausalLM(cfg)
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                               pad_token_id=tok.pad_token_id)
    model.save_pretrained(str(out))
    save_tokenizer(tok, sp, out, "chatml")
    return out


def _first_difference(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, help="model dir (default: build the tiny model in a temp dir)")
    ap.add_argument("--save-dir", type=Path, help="where to build the tiny model (kept; reused if present)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=255)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--backend", default="compiled", choices=["compiled", "fast", "hf"],
                    help="anima's backend (compiled also runs fast, the eager step it replaces, for reference)")
    ap.add_argument("--cache-dir", type=Path, default=ROOT / "data" / "cache",
                    help="where compiled decode steps are cached (default: the project's data/cache)")
    ap.add_argument("--with-fast", action="store_true",
                    help="with --backend compiled, also time the eager fast step (a second engine and thread pool)")
    ap.add_argument("--no-tune", action="store_true",
                    help="decode with exactly --threads threads (no timing-based choice of 1 vs N)")
    ap.add_argument("--profile", action="store_true", help="print the top ops of one run of each")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    from anima.generation import ChatEngine, SamplingParams

    tmp = None
    model_dir = args.model_dir
    if model_dir is None:
        if args.save_dir is not None and (args.save_dir / "config.json").is_file():
            model_dir = args.save_dir
        else:
            if args.save_dir is None:
                tmp = tempfile.TemporaryDirectory(prefix="anima-bench-")
                target = Path(tmp.name) / "tiny"
            else:
                target = args.save_dir
            t0 = time.perf_counter()
            model_dir = build_tiny_model_dir(target)
            print(f"built tiny model in {time.perf_counter() - t0:.1f}s: {model_dir}")

    engines = {}
    for backend in (["fast", "compiled"] if args.backend == "compiled" and args.with_fast else [args.backend]):
        t0 = time.perf_counter()
        eng = ChatEngine(model_dir, threads=args.threads, backend=backend, cache_dir=args.cache_dir)
        print(f"{backend} engine ready in {time.perf_counter() - t0:.2f}s: {eng.backend_status()}")
        if args.no_tune:
            eng.tuner = None
        eng.stop_ids = frozenset()  # benchmark exactly N tokens, like min_new_tokens on generate
        engines[backend] = eng
    engine = engines[args.backend]
    model, n = engine.model, args.new_tokens
    messages = [{"role": "user", "content": "Tell me a story about the sea."}]
    params = SamplingParams(temperature=0.0, max_new_tokens=n)
    prompt_ids = engine.chat_prompt_ids(messages, n)
    cfg = model.config
    print(f"model: hidden {cfg.hidden_size}, layers {cfg.num_hidden_layers}, heads {cfg.num_attention_heads}, "
          f"vocab {cfg.vocab_size}, ctx {cfg.max_position_embeddings}; prompt {len(prompt_ids)} tokens, "
          f"{n} new tokens, {torch.get_num_threads()} threads")

    input_ids = torch.tensor([prompt_ids])

    def run_generate() -> list[int]:
        return engine.scheduler.call(generate_ids)  # on the engine's thread: one OpenMP pool

    def generate_ids() -> list[int]:
        torch.set_num_threads(args.threads)
        with torch.inference_mode():
            out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=n,
                                 min_new_tokens=n, do_sample=False, pad_token_id=cfg.pad_token_id)
        return out[0, len(prompt_ids):].tolist()

    def engine_runner(eng):
        def run_engine() -> list[int]:
            stream = eng.stream_chat(messages, params)
            for _ in stream:
                pass
            eng.forget_cache()  # no prefix reuse between rounds: measure prefill too
            return stream.token_ids

        return run_engine

    runners = {"generate": run_generate, **{f"anima {b}": engine_runner(e) for b, e in engines.items()}}
    ref = None
    for label, fn in runners.items():
        t0 = time.perf_counter()
        got = fn()
        same = "" if ref is None else f"; greedy tokens identical to generate: {got == ref}" + (
            "" if got == ref else f" (first difference at {_first_difference(ref, got)})")
        print(f"warm-up {label}: {time.perf_counter() - t0:.2f}s{same}")
        ref = got if ref is None else ref

    tps: dict[str, list[float]] = {label: [] for label in runners}
    for r in range(args.rounds):
        for label, fn in runners.items():
            t0 = time.perf_counter()
            toks = fn()
            tps[label].append(len(toks) / (time.perf_counter() - t0))
        base = tps["generate"][-1]
        print(f"round {r + 1}: " + "   ".join(f"{label} {v[-1]:7.1f} tok/s" + ("" if label == "generate" else
                                                f" (x{v[-1] / base:.2f})") for label, v in tps.items()))
    for label, eng in engines.items():
        if eng.tuner is not None:
            print(f"{label} engine: decode threads chosen by timing: {eng.tuner.best}")
    g = statistics.median(tps["generate"])
    for label, v in tps.items():
        if label != "generate":
            e = statistics.median(v)
            print(f"median: generate {g:.1f} tok/s, {label} {e:.1f} tok/s, ratio x{e / g:.2f} "
                  f"(best: {max(tps['generate']):.1f} vs {max(v):.1f})")
    e = statistics.median(tps[f"anima {args.backend}"])

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        for label, fn in runners.items():
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                fn()
            print(f"\n--- {label}: top ops by self CPU time ---")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    if args.json:
        args.json.write_text(json.dumps({"tokens_per_s": tps, "ratio": e / g, "backend": engine.backend_name,
                                         "threads": args.threads, "new_tokens": n}, indent=2))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
