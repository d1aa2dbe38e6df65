#!/usr/bin/env python
"""Requests/s of the OpenAI-compatible server with N concurrent clients (default 8), short replies.

Starts ``python -m anima.serve.server MODEL_DIR`` in its own process on a free loopback port (so the client
threads do not share the server's GIL), then runs the official ``openai`` client from N threads, each sending
``--requests`` chat completions (half of the clients stream). Prints requests/s, completion tokens/s and
latency percentiles, plus a 1-client baseline.

    python scripts/bench/serve_rps.py                          # builds a nano model in a temp dir
    python scripts/bench/serve_rps.py --model-dir path/to/model --clients 8 --requests 10 --max-tokens 16
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with status {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("server did not come up")


def _run(client, clients: int, requests: int, max_tokens: int) -> dict:
    def one(i: int) -> tuple[float, int]:
        kw = dict(model="m", messages=[{"role": "user", "content": f"Tell me something, number {i}."}],
                  max_tokens=max_tokens, temperature=0.8, seed=i)
        t0 = time.perf_counter()
        if i % 2:  # half the requests stream
            stream = client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw)
            toks = 0
            for chunk in stream:
                if chunk.usage is not None:
                    toks = chunk.usage.completion_tokens
        else:
            toks = client.chat.completions.create(**kw).usage.completion_tokens
        return time.perf_counter() - t0, toks

    total = clients * requests
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(total)))
    wall = time.perf_counter() - t0
    lat = sorted(r[0] for r in results)
    toks = sum(r[1] for r in results)
    return {"clients": clients, "requests": total, "wall_s": wall, "rps": total / wall, "tok_s": toks / wall,
            "p50_ms": 1000 * statistics.median(lat), "p95_ms": 1000 * lat[int(0.95 * (len(lat) - 1))]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, default=None, help="model dir (default: build a nano model)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=10, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the server")
    ap.add_argument("--backend", default="auto", choices=["auto", "compiled", "fast", "hf"],
                    help="the server's decode backend (compiled: built first if not cached)")
    ap.add_argument("--cache-dir", type=Path, default=None, help="compiled decode steps (default: data/cache)")
    args = ap.parse_args()

    import openai

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir
        if model_dir is None:
            sys.path.insert(0, str(ROOT))
            from tests.helpers.models import build_nano_model_dir

            model_dir = build_nano_model_dir(Path(tmp) / "nano")
        port = _free_port()
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "anima.serve.server", str(model_dir), "--port", str(port),
             "--threads", str(args.threads), "--log-level", "warning", "--max-tokens", str(max(args.max_tokens, 16)),
             "--backend", args.backend, *(["--cache-dir", str(args.cache_dir)] if args.cache_dir else [])],
            env=env,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(url, proc, timeout=900 if args.backend == "compiled" else 120)
            import httpx

            print(f"server decode backend: {httpx.get(url + '/health').json()['backend']}")
            client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)
            _run(client, 1, 3, args.max_tokens)  # warm-up
            for clients in (1, args.clients):
                r = _run(client, clients, args.requests if clients > 1 else max(4, args.requests),
                         args.max_tokens)
                print(f"clients={r['clients']:2d} requests={r['requests']:3d} wall={r['wall_s']:.2f}s "
                      f"requests/s={r['rps']:.1f} completion tok/s={r['tok_s']:.0f} "
                      f"p50={r['p50_ms']:.0f}ms p95={r['p95_ms']:.0f}ms")
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
