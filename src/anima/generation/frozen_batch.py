"""The batched decode step compiled for one model's weights, its matmuls on oneDNN-packed copies of them.

Why: the per-architecture batched step (compiled.py) takes the weights as inputs, so Inductor multiplies each row
by each weight in its own loops ("rows") or through BLAS gemm, which repacks the weight on every call. Compiled
with the weights as constants (Inductor's freezing, AOT), every matmul runs on a weight packed once for oneDNN.
Tiny (288x6), 8 rows, 2-core EPYC Zen 5, in process, median of 9 interleaved rounds: 1.39 vs 2.06 ms a step at 32
cached positions, 1.83 vs 2.39 at 128, 2.26 vs 2.80 at 224; an 8-client server: about +10% requests/s.

The price is one package per model version rather than per architecture (~15 s of CPU to build, the weights inside
it), so it is built last, in the background, once the shared packages exist; until then batches run as before.
Packages are keyed by the architecture's key and a digest of the weights the step uses.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path

import torch

from anima.atomic import atomic_path, temp_sibling
from anima.errors import ModelError
from anima.generation.step_graphs import (
    BATCH_ROWS,
    MIN_CACHE_LEN,
    DecodeBatchStep,
    StepSpec,
    batch_example_inputs,
    step_weights,
)
from anima.procs import build_env, lock_holder_alive, release_lock, spawn_holding


def step_constants(backend) -> tuple[torch.Tensor, ...]:
    """What the compiled step bakes in, in ``DecodeBatchStep.forward``'s order after the cache views."""
    return (backend.embed, backend.cos, backend.sin, backend.eps_h, backend.step_head, *step_weights(backend))


def weights_digest(backend) -> str:
    """A digest of every constant the frozen step bakes in (a retrained or merged model gets its own package)."""
    h = hashlib.sha256()
    for t in step_constants(backend):
        h.update(str((tuple(t.shape), t.dtype)).encode())
        h.update(t.detach().contiguous().numpy())
    return h.hexdigest()[:16]


class FrozenBatchStep(torch.nn.Module):
    """``DecodeBatchStep`` (BLAS-style matmuls) over constants held by the module, so freezing can pack them."""

    def __init__(self, spec: StepSpec, constants: tuple[torch.Tensor, ...]):
        super().__init__()
        self.step = DecodeBatchStep(spec, "gemm")
        self.consts = torch.nn.ParameterList(torch.nn.Parameter(t.detach().clone(), requires_grad=False)
                                             for t in constants)

    def forward(self, toks, pos, k_old, v_old):
        embed, cos, sin, eps_h, head, *weights = self.consts
        return self.step(toks, pos, k_old, v_old, embed, cos, sin, eps_h, head, list(weights))


def build_frozen_package(spec: StepSpec, constants: tuple[torch.Tensor, ...], out: Path) -> Path:
    """Export and compile with freezing (temp file, then rename). Freezing applies only with grad off."""
    import torch._inductor

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    module = FrozenBatchStep(spec, constants).eval()
    args = batch_example_inputs(spec)[:4]
    length = torch.export.Dim("cache_len", min=MIN_CACHE_LEN, max=spec.max_positions - 1)
    dynamic = (None, None, {args[2].dim() - 1: length}, {args[3].dim() - 2: length})
    with torch.inference_mode():
        exported = torch.export.export(module, args, dynamic_shapes=dynamic)
    with atomic_path(out, tmp=temp_sibling(out, ".tmp.pt2")) as tmp, torch.no_grad():
        torch._inductor.aoti_compile_and_package(exported, package_path=str(tmp), inductor_configs={"freezing": True})
    return out


class FrozenBatchBuild:
    """One model's frozen package in the cache dir: ready, building (a detached child, lock file with its pid),
    failed (a note), or absent. The child loads the model from ``model_dir`` itself."""

    def __init__(self, spec: StepSpec, digest: str, cache_dir: str | Path, model_dir: str | Path):
        self.spec, self.digest, self.model_dir = spec, digest, Path(model_dir)
        base = Path(cache_dir).expanduser() / "decode" / f"{spec.key()}-w{digest}-batch{BATCH_ROWS}-frozen"
        self.path = base.with_suffix(".pt2")
        self.lock, self.failed_note, self.log = (base.with_suffix(s) for s in (".building", ".failed", ".log"))

    def ready(self) -> bool:
        return self.path.is_file()

    def failed(self) -> bool:
        return self.failed_note.is_file()

    def building(self) -> bool:
        return lock_holder_alive(self.lock)

    def note_failure(self, why: str) -> None:
        """Leave a note so that no engine retries the build (the shared batched step stays in use)."""
        try:
            self.failed_note.write_text(why.strip()[:500] + "\n", encoding="utf-8")
        except OSError:
            pass

    def start(self) -> None:
        """Start the background build unless it is done, failed before or running (a read-only cache: nothing)."""
        if self.ready() or self.failed() or self.building():
            return
        cmd = [sys.executable, "-m", "anima.generation.frozen_batch", str(self.model_dir), str(self.spec.max_positions),
               self.digest, str(self.path)]
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            spawn_holding(self.lock, cmd, self.log, build_env(self.spec.threads))  # None: another engine builds it
        except OSError as e:  # a read-only cache cannot take the note either: then nothing happens
            self.note_failure(f"cannot start the build: {e}")


def main(argv: list[str] | None = None) -> int:
    """Child process: ``python -m anima.generation.frozen_batch MODEL_DIR MAX_POSITIONS DIGEST OUT``."""
    from anima.generation.backends import FastLlamaBackend
    from anima.model.build import load_model_dir

    model_dir, max_positions, digest, out = (sys.argv[1:] if argv is None else argv)[:4]
    out_path = Path(out)
    lock = out_path.with_suffix(".building")
    t0 = time.perf_counter()
    try:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or torch.get_num_threads()))
        backend = FastLlamaBackend(load_model_dir(Path(model_dir), dtype=torch.float32).eval(), int(max_positions))
        if weights_digest(backend) != digest:
            raise ModelError(f"{model_dir}: its weights changed since the engine asked for digest {digest}")
        spec = StepSpec.of(backend)
        build = FrozenBatchBuild(spec, digest, out_path.parent.parent, model_dir)
        if build.path != out_path:
            raise ModelError(f"{out_path}: not the package this model's step would be ({build.path.name})")
        build_frozen_package(spec, step_constants(backend), out_path)
    except BaseException as e:  # noqa: BLE001 - any failure becomes a note; the engine keeps the shared package
        out_path.with_suffix(".failed").write_text(f"{type(e).__name__}: {e}"[:500] + "\n", encoding="utf-8")
        raise
    finally:
        release_lock(lock)
    print(f"built {out_path} in {time.perf_counter() - t0:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
