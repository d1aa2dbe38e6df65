"""`device.precision=auto`: the fastest Lightning precision this hardware trains well in.

On a CPU with bf16 matrix units (AMX tiles on a Xeon here: ~6x the fp32 matmul rate at 2 threads; AVX512-BF16
dot products on an AMD EPYC Zen 4 here: ~2x) that is `bf16-mixed`: autocast runs matmuls and attention in bf16
while the weights, gradients and AdamW state stay fp32 (master weights), and the LM loss's softmax stays fp32.
Whole training loop on `tiny` against a plain fp32 loop: 2.4x on the Xeon, 1.8x on the EPYC (1.08x there in
fp32). Any other CPU keeps `32-true`. A CUDA GPU gets `bf16-mixed` where it supports bf16, else `16-mixed`.
"""

from __future__ import annotations

from anima.config.groups import DeviceConfig
from anima.config.stage_schemas import TrainConfig


def cpu_has_bf16_matrix_units() -> bool:
    """True on a CPU with AMX bf16 tiles (Sapphire Rapids and later) or AVX512-BF16 (Cooper Lake, Zen 4)."""
    import torch

    probes = (getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))
    return any(bool(probe and probe()) for probe in probes)


def resolve_precision(device: DeviceConfig) -> str:
    """The Lightning precision to train in: `device.precision` unless it is `auto`."""
    if device.precision != "auto":
        return device.precision
    import torch

    accelerator = device.accelerator
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    if accelerator in ("cpu", "auto") and cpu_has_bf16_matrix_units():
        return "bf16-mixed"
    return "32-true"


def resolve_matmul_precision(device: DeviceConfig) -> str:
    """`device.matmul_precision` unless it is `auto`: `medium` on a CPU with bf16 matrix units (AMX, AVX512-BF16),
    `high` (TF32) on a GPU, `highest` on any other CPU. Not `medium` there: on an AVX-512 CPU without bf16 units
    (Xeon Ice Lake here) oneDNN still takes `medium`'s matmuls, and its fp32 kernels there trained `tiny` 15-25%
    slower than MKL's exact ones."""
    if device.matmul_precision != "auto":
        return device.matmul_precision
    if not _on_cpu(device):
        return "high"
    return "medium" if cpu_has_bf16_matrix_units() else "highest"


def trainer_precision(device: DeviceConfig) -> tuple[str | None, list]:
    """(`precision=`, precision plugins) for `L.Trainer`. bf16-mixed goes through `Bf16Mixed` so a fused
    AdamW can be clipped: Lightning's mixed-precision plugin forbids that for every fused optimizer because fp16's
    GradScaler would clip scaled gradients, but bf16 has no scaler, so clipping is exact."""
    precision = resolve_precision(device)
    if precision != "bf16-mixed":
        return precision, []
    from lightning.pytorch.plugins.precision import MixedPrecision
    from lightning.pytorch.plugins.precision.precision import Precision

    class Bf16Mixed(MixedPrecision):
        def clip_gradients(self, optimizer, clip_val=0.0, gradient_clip_algorithm=None):
            Precision.clip_gradients(self, optimizer, clip_val, gradient_clip_algorithm)

    return None, [Bf16Mixed("bf16-mixed", "cpu" if _on_cpu(device) else "cuda")]


def attention_implementation(device: DeviceConfig, compiled: bool = False) -> str:
    """`device.attention`; auto: `eager` (plain matmuls + softmax) under bf16 autocast on a CPU, where it beat
    SDPA's CPU flash kernel by ~5% per step here (its bf16 backward is slow); in fp32 on a CPU, `sdpa_blocks`
    (SDPA's forward, a block-causal backward the compiler fuses: train/causal_attention.py) when the training
    forward is `compiled`, else `sdpa`; `sdpa` on a GPU. Training only: a saved model's config does not record it."""
    if device.attention != "auto":
        return device.attention
    if not _on_cpu(device):
        return "sdpa"
    if resolve_precision(device) == "bf16-mixed":
        return "eager"
    return "sdpa_blocks" if compiled else "sdpa"


def base_model(model):
    """The Hugging Face model itself: under a PEFT (LoRA) wrapper, the model it wraps."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def set_attention(model, implementation: str) -> str:
    """Switch a Hugging Face model's attention kernel (on the base model under a PEFT wrapper); returns the one
    it had, so a caller can switch back."""
    base = base_model(model)
    before = base.config._attn_implementation
    if implementation != before:
        if implementation == "sdpa_blocks":
            from anima.train.causal_attention import register

            register()
        base.set_attn_implementation(implementation)
    return before


def use_training_kernels(model, device: DeviceConfig, compiled: bool, positions: int) -> None:
    """Put the training kernels in place: the attention `device.attention` resolves to and, when the training
    forward is `compiled`, the rotary table (train/rotary_table.py) for positions below `positions`."""
    set_attention(model, attention_implementation(device, compiled))
    if compiled:
        from anima.train.rotary_table import use_rotary_table

        base = base_model(model)
        use_rotary_table(base.get_decoder(), max(positions, getattr(base.config, "max_position_embeddings", 0)))


def validation_attention(device: DeviceConfig) -> str | None:
    """The attention validation runs with when `auto` trains with `eager`: `sdpa`, whose CPU kernel is slow only
    backwards. Validation is forward-only, and there SDPA scores the same tokens ~1.6x faster (16 val batches of
    `tiny` on a 2-core EPYC Zen 4: 1.9 vs 3.1 s, inside a time-budgeted run's clock). None: keep training's."""
    if device.attention == "auto" and attention_implementation(device) == "eager":
        return "sdpa"
    return None


COMPILE_MIN_STEPS = 100
COMPILE_MIN_SECONDS = 60


def compile_training(spec: TrainConfig) -> bool:
    """`optim.compile`; auto: torch.compile the training forward where it pays — on a CPU (inductor fuses the
    elementwise work between the matmuls: ~1.2x per step on `tiny` under bf16 autocast; in fp32 on CPUs without
    bf16 units, 1.02-1.09x, and in the 85 s time-budgeted run 210 vs 174-195 steps on a 2-core EPYC Zen 3 with a
    warm cache), for ~4 s of compile with a warm cache, ~20-40 s cold, on text batches, whose fixed shape compiles
    once (chat batches vary in length and would recompile), in runs long enough to earn the compile back
    (`COMPILE_MIN_STEPS` steps or a `trainer.max_time` of at least `COMPILE_MIN_SECONDS`)."""
    choice = spec.optim.compile.lower()  # `optim.compile=true` on the command line arrives as "True"
    if choice != "auto":
        return choice == "true"
    from anima.train.schedule import duration_seconds, step_limit

    max_time, steps = spec.trainer.max_time, step_limit(spec.trainer)
    long_run = (steps is None or steps >= COMPILE_MIN_STEPS) and (
        not max_time or duration_seconds(max_time) >= COMPILE_MIN_SECONDS)
    return _on_cpu(spec.device) and long_run and spec.data.kind == "text"


def _on_cpu(device: DeviceConfig) -> bool:
    """Training runs on the CPU: `accelerator=cpu`, or `auto` on a machine without CUDA."""
    if device.accelerator != "auto":
        return device.accelerator == "cpu"
    import torch

    return not torch.cuda.is_available()
