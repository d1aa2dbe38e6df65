"""Data-stage scale benchmark: build a kind=text dataset from a ~500 MB plain-text corpus; report peak memory.

The corpus is made from the real plays (data/raw/plays): each copy of the 38 plays is written as plain text
files, and in every copy after the first a fraction of paragraphs is perturbed (one word swapped, case
changed, a word dropped), so the build meets exact duplicates (untouched paragraphs), near duplicates
(perturbed ones) and genuinely new text in realistic proportions.

The build runs in a child process so its peak RSS (ru_maxrss of the child) is measured alone:

    .venv/bin/python scripts/bench/data_scale.py                  # 500 MB
    .venv/bin/python scripts/bench/data_scale.py --size-mb 50     # quicker
    .venv/bin/python scripts/bench/data_scale.py --no-near        # exact dedup only
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def make_corpus(raw_dir: Path, out: Path, size_mb: float, perturb: float, seed: int) -> tuple[int, int]:
    """Write copies of the plays (plain text, one file per play per copy) until `size_mb` is reached."""
    from anima.data.plays import load_plays, play_to_text

    plays = [(p.slug, play_to_text(p).split("\n\n")) for p in load_plays(raw_dir / "plays")]
    vocab = sorted({w for _, paras in plays[:5] for para in paras[:200] for w in para.split() if w.isalpha()})
    rng = random.Random(seed)
    target = int(size_mb * 1024 * 1024)
    written = 0
    copy = 0
    files = 0
    while written < target:
        folder = out / f"copy{copy:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        for slug, paras in plays:
            parts = []
            for para in paras:
                if copy and para and rng.random() < perturb:
                    words = para.split(" ")
                    i = rng.randrange(len(words))
                    op = rng.random()
                    if op < 0.4:
                        words[i] = rng.choice(vocab)
                    elif op < 0.7:
                        words[i] = words[i].upper()
                    elif len(words) > 3:
                        del words[i]
                    para = " ".join(words)
                parts.append(para)
            text = "\n\n".join(parts)
            (folder / f"{slug}.txt").write_text(text, encoding="utf-8")
            written += len(text.encode("utf-8"))
            files += 1
            if written >= target:
                break
        copy += 1
    return written, files


CHILD = r"""
import json, resource, sys, time
from anima.config.data import DataConfig
from anima.config.groups import PathsConfig
from anima.config.typed import typed
from anima.data.dataset import ensure_dataset
args = json.loads(sys.argv[1])
cfg = typed({
    "name": "scale", "kind": "text",
    "sources": {"corpus": {"kind": "text", "path": args["corpus"] + "/**/*.txt"}},
    "dedup": {"near": args["near"]}, "split": {"val": 0.01, "test": 0.0},
}, DataConfig)
t0 = time.time()
paths = PathsConfig(root=args["processed"], data_dir=args["processed"], raw_dir=args["corpus"],
                    processed_dir=args["processed"], cache_dir=args["processed"], experiments_dir=args["processed"])
ds = ensure_dataset(cfg, paths)
print(json.dumps({"seconds": time.time() - t0, "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "steps": ds.manifest["counts"]["steps"], "out": ds.manifest["counts"]["out"],
                  "source": ds.manifest["counts"]["sources"]["corpus"],
                  "dedup_index_bytes": ds.manifest["dedup_index_bytes"],
                  "shards": sum(len(v) for v in ds.manifest["shards"].values())}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=float, default=500)
    ap.add_argument("--perturb", type=float, default=0.05, help="share of paragraphs perturbed per copy")
    ap.add_argument("--raw-dir", type=Path, default=REPO / "data" / "raw")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the corpus and output here")
    ap.add_argument("--no-near", action="store_true", help="exact dedup only")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="anima-data-scale-"))
    corpus, processed = work / "corpus", work / "processed"
    try:
        t0 = time.time()
        if not corpus.is_dir():
            size, files = make_corpus(args.raw_dir, corpus, args.size_mb, args.perturb, args.seed)
        else:
            files = len(list(corpus.rglob("*.txt")))
            size = sum(f.stat().st_size for f in corpus.rglob("*.txt"))
        gen_s = time.time() - t0
        print(f"corpus: {size / 2**20:.0f} MB in {files} files ({gen_s:.0f}s to generate)", flush=True)
        shutil.rmtree(processed, ignore_errors=True)
        child_args = json.dumps({"corpus": str(corpus), "processed": str(processed), "near": not args.no_near})
        env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
        proc = subprocess.run([sys.executable, "-c", CHILD, child_args], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return proc.returncode
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        s = res["steps"]
        src = res["source"]
        print(f"build: {res['seconds']:.0f}s ({size / 2**20 / res['seconds']:.1f} MB/s), peak RSS {peak:.0f} MB")
        print(f"records: in {s['in']:,} -> cleaned {s['cleaned']:,} -> deduplicated {s['deduplicated']:,} "
              f"(exact {src['exact_dups']:,}, near {src['near_dups']:,}) -> filtered {s['filtered']:,} -> "
              f"out {s['out']:,} {res['out']}")
        print(f"dedup index: {res['dedup_index_bytes'] / 2**20:.1f} MB; output shards: {res['shards']}")
        print(json.dumps({"corpus_mb": round(size / 2**20, 1), "build_s": round(res["seconds"], 1),
                          "peak_rss_mb": round(peak), **res}))
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
