"""AOTInductor packages of the decode-step graphs (step_graphs.py): export and compile one (temp file, then
rename), build the batched step both ways and keep the faster here, and load a package to run it. compiled.py
decides when to build them (a background child process) and runs them."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from anima.atomic import atomic_path, temp_sibling
from anima.errors import ModelError
from anima.generation.step_graphs import (
    BATCH_MATMULS,
    MIN_CACHE_LEN,
    DecodeBatchStep,
    DecodeStep,
    StepSpec,
    batch_example_inputs,
    example_inputs,
)

__all__ = ["CompiledStep", "build_batch_package", "build_package"]


def build_package(spec: StepSpec, out: Path, batched: bool = False, matmul: str = "rows") -> Path:
    """Export the step with a dynamic cache length and compile it to a .pt2 package (temp file, then rename)."""
    import torch._inductor

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    length = torch.export.Dim("cache_len", min=MIN_CACHE_LEN, max=spec.max_positions - 1)
    step = DecodeBatchStep(spec, matmul) if batched else DecodeStep(spec)
    args = batch_example_inputs(spec) if batched else example_inputs(spec)
    k_len, v_len = args[2].dim() - 1, args[3].dim() - 2  # K^T views end in the cache length, V views in D
    dynamic = (None, None, {k_len: length}, {v_len: length}, None, None, None, None, None, [None] * len(args[-1]))
    with torch.inference_mode():
        exported = torch.export.export(step, args, dynamic_shapes=dynamic)
    with atomic_path(out, tmp=temp_sibling(out, ".tmp.pt2")) as tmp:  # the compiler wants a .pt2 name
        torch._inductor.aoti_compile_and_package(exported, package_path=str(tmp))
    return out


def build_batch_package(spec: StepSpec, out: Path, rounds: int = 3, runs: int = 30) -> dict[str, float]:
    """Build the batched step both ways (``BATCH_MATMULS``), time them on this machine and keep the faster at
    ``out``. Returns each variant's median ms per step (interleaved rounds: the build runs beside a chat)."""
    out = Path(out)
    built = {m: build_package(spec, temp_sibling(out, f".{m}.pt2"), batched=True, matmul=m) for m in BATCH_MATMULS}
    args = batch_example_inputs(spec)
    flat = [*args[:-1], *args[-1]]
    times: dict[str, list[float]] = {m: [] for m in built}
    try:
        steps = {m: CompiledStep(path) for m, path in built.items()}
        for _ in range(rounds):
            for m, step in steps.items():
                step.run(flat)
                t0 = time.perf_counter()
                for _ in range(runs):
                    step.run(flat)
                times[m].append(1000 * (time.perf_counter() - t0) / runs)
        ms = {m: sorted(ts)[len(ts) // 2] for m, ts in times.items()}
        best = min(ms, key=ms.__getitem__)
        os.replace(built[best], out)
        return ms
    finally:
        for path in built.values():
            path.unlink(missing_ok=True)


class CompiledStep:
    """A loaded package: ``run(...)`` takes the flat inputs of ``DecodeStep.forward``."""

    def __init__(self, path: Path):
        try:
            self._loader = torch._C._aoti.AOTIModelPackageLoader(str(path), "model", True, 1, -1)
        except RuntimeError as e:
            raise ModelError(f"{path}: cannot load the compiled decode step ({str(e).splitlines()[0]})") from None
        self.path = path

    def run(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        return self._loader.run(inputs)
