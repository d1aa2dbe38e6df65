"""What a training config asks of the machine (a CUDA GPU, bitsandbytes), checked before any work.

Lightning would find a missing GPU only inside `trainer.fit` (after data preparation and an MLflow run), and
transformers a missing bitsandbytes only when it loads the base: both refusals come here first, as one line
naming what is missing, so the run exits 2 with nothing prepared, logged or registered.
"""

from __future__ import annotations

import importlib.util

from anima.config.stage_schemas import TrainConfig
from anima.errors import ConfigError

GPU_ACCELERATORS = ("gpu", "cuda")


def cuda_available() -> bool:
    """torch sees a usable CUDA device (False on a CPU build of torch or a machine without a GPU)."""
    import torch

    return bool(torch.cuda.is_available())


def installed(module: str) -> bool:
    """`module` is importable (found on the path; not imported: bitsandbytes' import probes CUDA libraries)."""
    return importlib.util.find_spec(module) is not None


def _no_cuda() -> str:
    import torch

    build = "a CPU build of torch" if torch.version.cuda is None else f"CUDA {torch.version.cuda} build, no device"
    return f"a CUDA GPU (torch.cuda.is_available() is False: torch {torch.__version__}, {build})"


def qlora_problem(spec: TrainConfig) -> str | None:
    """Why `model.quant.bits` cannot be honoured here, as the one line the run fails with; None when it can."""
    model, quant = spec.model, spec.model.quant
    if not quant.bits:
        return None
    key = f"model.quant.bits={quant.bits} (QLoRA)"
    if model.arch != "hf":
        return f"{key} needs model=hf (a local Hugging Face base to quantize); model={model.name} is built fresh"
    if model.lora.r <= 0:
        return f"{key} needs LoRA adapters to train: set model.lora.r > 0 (e.g. model=hf_qlora: r=64, alpha=128)"
    missing = [f"{name} (pip install 'anima[qlora]')" for name in ("bitsandbytes", "peft") if not installed(name)]
    if not cuda_available():
        missing.append(_no_cuda())
    if missing:
        return f"{key} needs {' and '.join(missing)}; train without quantization: model.quant.bits=0"
    return None


def check_hardware(spec: TrainConfig) -> None:
    """Refuse, before any work, a run this machine cannot do: a GPU accelerator without CUDA, or QLoRA without
    CUDA, bitsandbytes or peft. A CPU run (the default) passes untouched."""
    device = spec.device
    if device.accelerator in GPU_ACCELERATORS and not cuda_available():
        raise ConfigError(f"device.accelerator={device.accelerator} needs {_no_cuda()}; "
                          f"use device=cpu, or device=auto to take a GPU only where there is one")
    problem = qlora_problem(spec)
    if problem:
        raise ConfigError(problem)
