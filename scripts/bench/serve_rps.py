#!/usr/bin/env python
"""Requests/s and p50/p95 latency of the OpenAI-compatible server at 1, 8 and 32 concurrent clients.

For each backend (eager ``fast`` and ``compiled``) starts ``python -m anima.serve.server MODEL_DIR`` in its own
process on a free loopback port (so the client threads do not share the server's GIL), then runs the official
``openai`` client from N threads, each sending ``--requests`` chat completions (half of the requests stream).
Concurrent requests share decode steps (continuous batching), so throughput should grow with the clients.

    python scripts/bench/serve_rps.py                          # builds the tiny model (random init) in a temp dir
    python scripts/bench/serve_rps.py --model nano --clients 1,8 --backends fast
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


def _cpu_s(pid: int | None = None) -> float:
    """CPU seconds (user + system) used so far by this process, or by process ``pid`` (Linux /proc)."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _run(client, clients: int, requests: int, max_tokens: int, server_pid: int | None = None) -> dict:
    model = client.models.list().data[0].id  # the server answers only to the model it serves

    def one(i: int) -> tuple[float, int]:
        kw = dict(model=model, messages=[{"role": "user", "content": f"Tell me something, number {i}."}],
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
    has_proc = server_pid is not None and Path(f"/proc/{server_pid}/stat").is_file()
    cpu0 = (_cpu_s(), _cpu_s(server_pid) if has_proc else 0.0)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(total)))
    wall = time.perf_counter() - t0
    client_cpu, server_cpu = _cpu_s() - cpu0[0], (_cpu_s(server_pid) - cpu0[1]) if has_proc else float("nan")
    lat = sorted(r[0] for r in results)
    toks = sum(r[1] for r in results)
    return {"clients": clients, "requests": total, "wall_s": wall, "rps": total / wall, "tok_s": toks / wall,
            "p50_ms": 1000 * statistics.median(lat), "p95_ms": 1000 * lat[int(0.95 * (len(lat) - 1))],
            "server_cpu_ms": 1000 * server_cpu / total, "client_cpu_ms": 1000 * client_cpu / total}


def _serve_and_measure(args, model_dir: Path, backend: str, levels: list[int]) -> list[dict]:
    """One server process with ``backend``; every client count in ``levels`` against it."""
    import httpx
    import openai

    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "anima.serve.server", str(model_dir), "--port", str(port),
         "--threads", str(args.threads), "--log-level", "warning", "--max-tokens", str(max(args.max_tokens, 16)),
         "--backend", backend, *(["--cache-dir", str(args.cache_dir)] if args.cache_dir else [])],
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    rows = []
    try:
        _wait_ready(url, proc, timeout=900 if backend == "compiled" else 120)
        print(f"server decode backend: {httpx.get(url + '/health').json()['backend']}", flush=True)
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=300)
        _run(client, 1, 3, args.max_tokens)  # warm-up
        _run(client, 2, 2, args.max_tokens)  # a batch: the compiled backend then builds the model's own batched step
        deadline = time.monotonic() + 600
        while True:  # measure after that background build, not beside it
            _run(client, 1, 1, args.max_tokens)  # between requests the engine starts builds and loads what was built
            if "building" not in httpx.get(url + "/health").json().get("backend_status", ""):
                break
            if time.monotonic() > deadline:
                raise SystemExit("the model's own batched step did not finish building within 600 s")
            time.sleep(1)
        print(f"server: {httpx.get(url + '/health').json().get('backend_status')}", flush=True)
        for clients in levels:
            r = _run(client, clients, max(args.requests, 8 // clients), args.max_tokens, proc.pid)
            r["backend"] = backend
            rows.append(r)
            print(f"{backend:8s} clients={r['clients']:2d} requests={r['requests']:3d} wall={r['wall_s']:.2f}s "
                  f"requests/s={r['rps']:.1f} completion tok/s={r['tok_s']:.0f} "
                  f"p50={r['p50_ms']:.0f}ms p95={r['p95_ms']:.0f}ms CPU ms/request: server {r['server_cpu_ms']:.1f} "
                  f"clients {r['client_cpu_ms']:.1f}", flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, default=None, help="model dir (default: build --model)")
    ap.add_argument("--model", default="tiny", choices=["tiny", "nano"], help="model built when no --model-dir")
    ap.add_argument("--clients", default="1,8,32", help="comma-separated concurrent client counts")
    ap.add_argument("--requests", type=int, default=8, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2, help="torch threads in the server")
    ap.add_argument("--backends", default="fast,compiled",
                    help="the server's decode backends, one server each (compiled: built first if not cached)")
    ap.add_argument("--cache-dir", type=Path, default=None, help="compiled decode steps (default: data/cache)")
    args = ap.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "scripts" / "bench"))
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir
        if model_dir is None:
            if args.model == "tiny":
                from decode import build_tiny_model_dir

                model_dir = build_tiny_model_dir(Path(tmp) / "tiny")
            else:
                from tests.helpers.models import build_nano_model_dir

                model_dir = build_nano_model_dir(Path(tmp) / "nano")
        rows = [r for b in args.backends.split(",") for r in _serve_and_measure(args, model_dir, b, levels)]
    print("\n| backend | clients | requests | requests/s | completion tok/s | p50 ms | p95 ms | x 1 client "
          "| CPU ms/request: server / clients |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        base = next(x["rps"] for x in rows if x["backend"] == r["backend"] and x["clients"] == levels[0])
        print(f"| {r['backend']} | {r['clients']} | {r['requests']} | {r['rps']:.1f} | {r['tok_s']:.0f} | "
              f"{r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['rps'] / base:.2f} | "
              f"{r['server_cpu_ms']:.1f} / {r['client_cpu_ms']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
