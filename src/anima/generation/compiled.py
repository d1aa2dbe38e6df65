"""The fast backend's decode steps, compiled ahead of time by AOTInductor.

Why: on a small model the eager step is ~120 dispatched torch ops per token, each an OpenMP fork/join
and a trip through Python. Inductor turns the whole step (every layer) into one C++ kernel with a single
OpenMP region: about twice the eager step's tokens/s on 2 CPU cores (``scripts/bench/decode.py``).

Two packages per architecture, exported from the graphs in step_graphs.py: the single-token step and the
batched step that continuous batching runs on ``BATCH_ROWS`` sequences at a time (built both ways its matmuls
can run, per-row products or BLAS gemm, and the faster on this machine kept; at run time it is used for the batch
sizes where it beats the eager batched step, faster_path.py).
Weights are inputs, not baked-in constants, so one package serves every model of one architecture (all
versions of anima-tiny, merges, retrains). Packages live in the project cache, keyed by the architecture, the
torch version and the CPU: ``<cache_dir>/decode/<key>.pt2`` and ``<key>-batch8.pt2``. A model that serves batches
later gets a third, its own batched step with its weights frozen in (frozen_batch.py).

Building them takes about a minute of CPU on 2 cores, so ``anima chat`` / ``anima serve`` build them in a
detached, low-priority child process (``python -m anima.generation.compiled``) the first time and talk with the
eager step (or the C++ kernels of native_step.py, built in a second) until they are ready; a crash or a
missing compiler leaves a ``.failed`` note and the eager step simply stays in use.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from anima.errors import ModelError
from anima.generation.aoti import CompiledStep, build_batch_package, build_package
from anima.generation.backends import FastLlamaBackend
from anima.generation.faster_path import FasterPath
from anima.generation.frozen_batch import FrozenBatchBuild, weights_digest
from anima.generation.native_step import MAX_ROWS, load_native_step
from anima.generation.step_graphs import (
    BATCH_ROWS,
    MIN_CACHE_LEN,
    DecodeBatchStep,
    DecodeStep,
    StepSpec,
    step_weights,
)
from anima.procs import build_env, lock_holder_alive, release_lock, spawn_holding

__all__ = ["BATCH_ROWS", "MIN_CACHE_LEN", "CompiledLlamaBackend", "CompiledStep",
           "DecodeBatchStep", "DecodeStep", "PackageBuild", "StepSpec", "build_batch_package", "build_package",
           "step_weights"]

def compiler_available() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")


class PackageBuild:
    """The packages for one spec in one cache dir: ready, building (by some process), failed, or absent. There
    are two, built one after the other by the same child: the single-token step (``path``, ready first) and the
    batched step (``batch_path``).

    A build is a detached child process, so a chat that ends before it finishes still leaves the package
    for next time; a lock file with the builder's pid keeps two chats from building the same thing."""

    def __init__(self, spec: StepSpec, cache_dir: str | Path):
        self.spec = spec
        self.dir = Path(cache_dir).expanduser() / "decode"
        key = spec.key()
        self.path = self.dir / f"{key}.pt2"
        self.batch_path = self.dir / f"{key}-batch{BATCH_ROWS}.pt2"
        self.lock = self.dir / f"{key}.building"
        self.failed_note = self.dir / f"{key}.failed"
        self.log = self.dir / f"{key}.log"
        self._proc: subprocess.Popen | None = None
        self._error: str | None = None  # a failure that could not even be written down (read-only cache)

    def ready(self) -> bool:
        """The single-token step is built."""
        return self.path.is_file()

    def complete(self) -> bool:
        """Both steps are built."""
        return self.path.is_file() and self.batch_path.is_file()

    def failure(self) -> str | None:
        """Why the last build failed (its note), when it did."""
        if self._error:
            return self._error
        if self._proc is not None and self._proc.poll() not in (None, 0) and not self.failed_note.is_file():
            return f"build exited with {self._proc.returncode} (see {self.log})"
        try:
            return self.failed_note.read_text(encoding="utf-8").strip() or "build failed"
        except OSError:
            return None

    def building(self) -> bool:
        if self._proc is not None and self._proc.poll() is None:
            return True
        return lock_holder_alive(self.lock)

    def start(self) -> bool:
        """Start a background build unless one is running, done or known to fail. True when one runs."""
        if self.complete() or self.failure() is not None or self.building():
            return self.building()
        if compiler_available() is None:
            self._fail("no C++ compiler (g++/clang++) on PATH; AOTInductor needs one")
            return False
        try:
            return self._spawn()
        except OSError as e:
            self._error = f"cannot build under {self.dir} ({e.strerror or e})"
            return False

    def _spawn(self) -> bool:
        self.dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "anima.generation.compiled", json.dumps(asdict(self.spec)), str(self.dir.parent)]
        proc = spawn_holding(self.lock, cmd, self.log, build_env(self.spec.threads))
        if proc is not None:  # else another process won the race and builds it
            self._proc = proc
        return True

    def build_now(self, timeout: float = 1800) -> Path:
        """Build in the foreground (a child process, waited for); raise ModelError naming the cause."""
        if self.complete():
            return self.path
        self.failed_note.unlink(missing_ok=True)
        self._error = None
        if not self.start() and not self.complete():
            raise ModelError(f"compiled decode step: {self.failure()}")
        if not self.wait(timeout):
            raise ModelError(f"compiled decode step for {self.spec.key()}: {self.failure() or 'build timed out'}")
        return self.path

    def _fail(self, why: str) -> None:
        self._error = why
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.failed_note.write_text(why + "\n", encoding="utf-8")
        except OSError:
            pass

    def wait(self, timeout: float) -> bool:
        """Wait for a running build; True when both packages are ready."""
        deadline = time.monotonic() + timeout
        while not self.complete() and self.building() and time.monotonic() < deadline:
            time.sleep(0.2)
        return self.complete()


POSITION_BAND = 32  # cached positions per band of step_key


def step_key(threads: int, position: int) -> tuple[int, int]:
    """What a single-token step's timings are compared under: the thread count and the band of 32 cached
    positions. Why the band: attention grows with the cache, so a kernel last timed at position 250 looked slower
    than one last timed at position 20, and the slower kernel took 5-10% of the steps of each new reply (tiny,
    EPYC Zen 4, before: ~0.05 ms a token)."""
    return threads, position // POSITION_BAND


class CompiledLlamaBackend(FastLlamaBackend):
    """FastLlamaBackend whose single-token steps run the compiled package once it is loaded.

    Until then (and for caches shorter than MIN_CACHE_LEN) it is exactly the eager fast backend; prefill
    stays eager either way (it is one batched pass per prompt)."""

    def __init__(self, model, max_positions: int | None, cache_dir: str | Path, build: str = "background",
                 model_dir: str | Path | None = None):
        super().__init__(model, max_positions)
        if build not in ("never", "background", "wait"):
            raise ValueError(f"build={build!r}")
        self.spec = StepSpec.of(self)
        self.package = PackageBuild(self.spec, cache_dir)
        self.compiled: CompiledStep | None = None
        self.compiled_batch: CompiledStep | None = None
        # this model's own batched step (frozen_batch.py): once the shared ones are in, for a model loaded from a dir
        self._frozen_from = (cache_dir, model_dir) if model_dir is not None and build != "never" else None
        self.frozen: FrozenBatchBuild | None = None
        self.frozen_batch: CompiledStep | None = None
        self.batched = False  # a batch has run: this model is served to several clients, its own step pays
        self._weights = step_weights(self)
        self._tok = torch.zeros(1, dtype=torch.long)
        self._pos = torch.zeros(1, dtype=torch.long)
        # the C++ kernels (native_step.py): built here in about a second, so they serve from the start
        self.native, self.native_note = load_native_step(self, cache_dir, compiler_available(), build != "never")
        self.step_kernels = FasterPath(("native", "compiled"), reprobe=1024)  # per step_key: 8 bands at 256
        self.prefill_ways = FasterPath(("native", "eager"))  # per prompt length (its bit length)
        self.batch_ways = self._batch_ways()  # per row count
        self.refresh()  # what is built already (a damaged package leaves a note, and no build starts over it)
        if build == "wait":
            self.package.build_now()
            self.refresh()
        elif build == "background":
            self.package.start()

    @property
    def name(self) -> str:  # type: ignore[override]
        return "compiled" if self.compiled is not None else "fast"

    def status(self) -> str:
        native = "native step" if self.native is not None else f"no native step: {self.native_note}"
        return f"{self._package_status()}; {native}"

    def _package_status(self) -> str:
        if self.compiled is not None:
            batched = ", batched step too" if self.compiled_batch is not None else ""
            if self.frozen_batch is not None:
                batched += ", frozen with this model's weights"
            elif self.frozen is not None and self.frozen.building():
                batched += "; this model's own batched step building"
            return f"compiled backend ({self.package.path.name}{batched})"
        if self.package.building():
            return "fast backend (compiled step building in the background)"
        why = self.package.failure()
        return f"fast backend (compiled step unavailable: {why})" if why else "fast backend"

    def refresh(self) -> bool:
        """Load the packages that have appeared since; True when the compiled step is in use. (A failure note
        beside a built single step is the batched step's: the single one still loads.)"""
        if self.compiled is None and self.package.ready():
            self.compiled = self._load(self.package.path)
        if self.compiled is not None and self.compiled_batch is None and self.package.batch_path.is_file():
            self.compiled_batch = self._load(self.package.batch_path)
            self.batch_ways = self._batch_ways()
        if self.compiled_batch is not None and self.frozen_batch is None and self._frozen_from is not None:
            self._refresh_frozen()
        return self.compiled is not None

    def _refresh_frozen(self) -> None:
        """Load this model's frozen batched step if it is built, else, once a batch has run, start building it (a
        chat with one user never batches: it gets no package)."""
        if self.frozen is None:  # first time: key it by the weights (a model too big to copy gets none)
            cache_dir, model_dir = self._frozen_from  # type: ignore[misc]
            if self.packed is None:
                self._frozen_from = None
                return
            self.frozen = FrozenBatchBuild(self.spec, weights_digest(self), cache_dir, model_dir)
        build = self.frozen
        if not build.ready():
            if self.batched:
                build.start()
            return
        try:
            self.frozen_batch = CompiledStep(build.path)
        except ModelError as e:  # damaged: note it (no rebuild loop) and keep the shared package
            build.note_failure(str(e))
            self._frozen_from = None
            return
        self.batch_ways = self._batch_ways()

    def _load(self, path: Path) -> CompiledStep | None:
        try:
            return CompiledStep(path)
        except ModelError as e:  # a damaged package: say why, keep decoding eagerly
            self.package._fail(str(e))
            return None

    def _step(self, tok: int) -> torch.Tensor:
        """The native kernel or the AOTI package, whichever has been faster here (``step_kernels``)."""
        pos = self.position
        aoti = self.compiled is not None and MIN_CACHE_LEN <= pos < self.max_positions
        if self.native is None or pos >= self.max_positions:
            return self._compiled_step(tok) if aoti else super()._step(tok)  # eager: also the context's error
        native = self.native.step
        if not aoti:
            return native(tok)
        return self.step_kernels.run(step_key(torch.get_num_threads(), pos),
                                     lambda way: native(tok) if way == "native" else self._compiled_step(tok))

    def _prefill(self, ids: list[int]) -> torch.Tensor:
        """The native kernel's rows or the eager pass (oneDNN's GEMMs), whichever has been faster here for prompts
        of about this length (``prefill_ways``; tiny, EPYC Zen 2: 8 tokens 1.9 vs 4.7 ms, 64 tokens 13.6 vs 11.0)."""
        eager, n = super()._prefill, len(ids)
        if self.native is None or not self.native.has_rows or n > MAX_ROWS or self.position + n > self.max_positions:
            return eager(ids)
        native = self.native.prefill
        return self.prefill_ways.run(n.bit_length(), lambda way: native(ids) if way == "native" else eager(ids))

    def swap_slots(self, a: int, b: int) -> None:
        """In place through the native kernel when it is in (3x faster than torch's strided copies)."""
        if self.native is None:
            return super().swap_slots(a, b)
        self.native.swap_slots(a, b)

    def _compiled_step(self, tok: int) -> torch.Tensor:
        pos = self.position
        self._tok.fill_(tok)  # the fewest Python-level ops between steps: there each costs several times its hot cost
        self._pos.fill_(pos)
        logits, k, v = self.compiled.run([self._tok, self._pos, self.k_cache.narrow(3, 0, pos),
                                          self.v_cache.narrow(2, 0, pos), self.embed, self.cos, self.sin,
                                          self.eps_h, self.step_head, *self._weights])
        self.k_cache.select(3, pos).copy_(k)
        self.v_cache.select(2, pos).copy_(v)
        self.position = pos + 1
        return logits

    def _step_batch(self, toks: list[int]) -> torch.Tensor:
        """Whichever of the native kernel's rows, the compiled batched step and the eager one on packed weights
        has been faster at this many rows on this machine (``batch_ways``, of those that are in)."""
        self.batched = True
        if max(self.positions[: len(toks)]) >= self.max_positions:
            return super()._step_batch(toks)  # the context's error
        ways = {"eager": super()._step_batch, "compiled": self._compiled_step_batch,
                "native": self.native.step_batch if self.native is not None else None}
        return self.batch_ways.run(len(toks), lambda way: ways[way](toks))

    def _batch_ways(self) -> FasterPath:
        """A fresh timer over the batched steps that are in (per row count; a new way is timed afresh)."""
        there = {"eager": True, "compiled": self.compiled_batch is not None,
                 "native": self.native is not None and self.native.has_rows}
        return FasterPath([way for way, ok in there.items() if ok])

    def _compiled_step_batch(self, toks: list[int]) -> torch.Tensor:
        """Rows in chunks of ``BATCH_ROWS`` through the compiled batched step, the last chunk padded with rows at
        position 0 whose outputs are dropped."""
        b = len(toks)
        self.ensure_slots(-(-b // BATCH_ROWS) * BATCH_ROWS)  # the padding rows read (and ignore) whole slots
        out = []
        for c in range(0, b, BATCH_ROWS):
            n = min(BATCH_ROWS, b - c)
            positions = self.positions[c : c + n]
            t = max(MIN_CACHE_LEN, *positions)  # entries past a row's position are masked out
            pos = torch.tensor(positions + [0] * (BATCH_ROWS - n))
            rows = slice(c, c + BATCH_ROWS)
            inputs = [torch.tensor(toks[c : c + n] + [0] * (BATCH_ROWS - n)), pos, self.k_slots[rows].narrow(4, 0, t),
                      self.v_slots[rows].narrow(3, 0, t)]
            if self.frozen_batch is not None:  # the weights are inside it
                logits, k, v = self.frozen_batch.run(inputs)
            else:
                logits, k, v = self.compiled_batch.run([*inputs, self.embed, self.cos, self.sin, self.eps_h,
                                                        self.step_head, *self._weights])
            idx, at = torch.arange(c, c + n), pos[:n]
            self.k_slots[idx, :, :, :, at] = k[:n]
            self.v_slots[idx, :, :, at] = v[:n]
            out.append(logits[:n])
        for i in range(b):
            self.positions[i] += 1
        return out[0] if len(out) == 1 else torch.cat(out)


def main(argv: list[str] | None = None) -> int:
    """Child process: build the missing packages (``python -m anima.generation.compiled SPEC_JSON CACHE_DIR``)."""
    argv = sys.argv[1:] if argv is None else argv
    spec = StepSpec(**json.loads(argv[0]))
    torch.set_num_threads(spec.threads)  # Inductor lays out its parallel loops for this count
    build = PackageBuild(spec, argv[1])
    out = build.path
    t0 = time.perf_counter()
    try:
        if not build.ready():
            build_package(spec, out)
        if not build.batch_path.is_file():
            ms = build_batch_package(spec, build.batch_path)
            print("batched step, ms per step: " + ", ".join(f"{m} {t:.2f}" for m, t in ms.items()), flush=True)
    except BaseException as e:  # noqa: BLE001 - any failure becomes the note the engine reports
        build._fail(f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:500])
        raise
    finally:
        release_lock(build.lock)
    build.failed_note.unlink(missing_ok=True)  # an earlier failure no longer holds
    print(f"built {out} in {time.perf_counter() - t0:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
