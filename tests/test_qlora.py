"""QLoRA and the GPU preset on a CPU machine: every refusal through the real CLI, the full-precision merge of
trained adapters, and (where bitsandbytes is installed: its 4-bit kernels run on a CPU too) the 4-bit base."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from tests.helpers import require_module
from tests.helpers.models import build_nano_model_dir

ROOT = Path(__file__).resolve().parents[1]
ANIMA = [sys.executable, "-m", "anima"]
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusals of a machine without CUDA")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    d = build_nano_model_dir(tmp_path_factory.mktemp("hf") / "tiny-llama", vocab_size=400, seed=3)
    (d / "anima.json").unlink()
    return d


def _anima(args: list[str], root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "ANIMA_ROOT": str(root), "MLFLOW_DISABLE_TELEMETRY": "true"}
    return subprocess.run([*ANIMA, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


@no_cuda
@pytest.mark.parametrize("args, expected", [
    (["pretrain", "model=nano", "device=gpu"], r"device.accelerator=gpu needs a CUDA GPU \(torch.cuda.is_available"),
    (["sft", "model=hf_qlora", "model.path={hf}"], r"model.quant.bits=4 \(QLoRA\) needs .*a CUDA GPU"),
    (["sft", "model=hf", "model.path={hf}", "model.quant.bits=4"], r"needs LoRA adapters to train: set model.lora.r"),
    (["pretrain", "model=nano", "model.quant.bits=4"], r"needs model=hf .*model=nano is built fresh"),
    (["sft", "model=hf_qlora", "model.path={hf}", "model.quant.quant_type=int4"],
     r"model.quant.quant_type='int4' is not one of nf4, fp4"),
])
def test_refused_before_any_work_in_one_line(args, expected, hf_dir, tmp_path):
    """Exit 2, one line naming what is missing, and no MLflow run, data cache or model left behind."""
    import re

    proc = _anima([a.format(hf=hf_dir) for a in args], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("anima: error: "), proc.stderr
    assert re.search(expected, lines[0]), lines[0]
    if "QLoRA) needs bitsandbytes" in lines[0] or "QLoRA) needs a CUDA" in lines[0]:  # names bnb iff missing
        assert ("bitsandbytes" in lines[0]) == (importlib.util.find_spec("bitsandbytes") is None)
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "data").exists()
    assert not list(tmp_path.glob("experiments/*/*/model"))


def test_gpu_and_auto_presets_compose(project):
    from anima.config.stage_schemas import TrainConfig
    from anima.config.typed import typed
    from anima.train.precision import attention_implementation, resolve_precision
    from tests.helpers import compose_cfg

    gpu = typed(compose_cfg("pretrain", ["model=nano", "device=gpu"]), TrainConfig).device
    assert (gpu.accelerator, gpu.devices, gpu.precision, gpu.matmul_precision, gpu.attention) == \
        ("gpu", 1, "auto", "high", "sdpa")
    auto = typed(compose_cfg("pretrain", ["model=nano", "device=auto"]), TrainConfig).device
    assert (auto.accelerator, auto.devices, auto.precision) == ("auto", 1, "auto")
    if not torch.cuda.is_available():  # auto without a GPU is the CPU preset's choice
        cpu = typed(compose_cfg("pretrain", ["model=nano"]), TrainConfig).device
        assert resolve_precision(auto) == resolve_precision(cpu)
        assert attention_implementation(auto) == attention_implementation(cpu)


def test_fp16_scaler_gets_an_unfused_optimizer_so_clipping_works():
    """fp16-mixed (a GPU without bf16) clips through GradScaler, which Lightning refuses for a fused AdamW."""
    from anima.config.groups import OptimConfig
    from anima.train.losses import LanguageModelingLoss
    from anima.train.module import CausalLMModule
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2))
    fused = {}
    for precision in ("16-mixed", "bf16-mixed"):
        module = CausalLMModule(model, [LanguageModelingLoss(1.0)], OptimConfig(), 10)
        module._trainer = SimpleNamespace(precision=precision)
        fused[precision] = bool(module.configure_optimizers()["optimizer"].defaults["fused"])
    assert fused == {"16-mixed": False, "bf16-mixed": True}


def test_peak_memory_is_logged_only_on_cuda():
    from anima.train.callbacks import peak_memory_gb

    assert peak_memory_gb(torch.device("cpu")) is None


def _model_cfg(**over):
    base = {"gradient_checkpointing": False,
            "lora": {"r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": ["q_proj", "v_proj", "up_proj"]},
            "quant": {"bits": 4, "quant_type": "nf4", "double_quant": True, "compute_dtype": "bfloat16",
                      "merge_dtype": "float32"}}
    return OmegaConf.merge(OmegaConf.create(base), OmegaConf.create(over))


def _train_steps(model, steps: int = 3) -> torch.Tensor:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    x = torch.randint(4, 300, (2, 16))
    for _ in range(steps):
        logits = model(input_ids=x).logits[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return x


def _assert_merged_is_base_plus_adapters(merged, peft_model, hf_dir: Path, lora) -> None:
    """Every targeted weight of the merged model is base + B·A·alpha/r; every other weight is the base's."""
    from anima.model.build import load_model_dir
    from anima.train.qlora import adapter_state

    assert type(merged).__name__ == "LlamaForCausalLM" and not any("lora" in k for k in merged.state_dict())
    base, merged_state = load_model_dir(hf_dir).state_dict(), merged.state_dict()
    adapters = adapter_state(peft_model)
    scale = lora.alpha / lora.r
    for key, value in base.items():
        module = key.rsplit(".", 1)[0]
        a = adapters.get(f"base_model.model.{module}.lora_A.weight")
        expected = value if a is None else value + scale * adapters[f"base_model.model.{module}.lora_B.weight"] @ a
        assert torch.allclose(merged_state[key].float(), expected, atol=1e-5), key
    assert any(f"{t}.lora_A" in k for k in adapters for t in lora.target_modules)


def test_full_precision_merge_equals_the_lora_merge(hf_dir):
    """The QLoRA save path (adapters onto a reload of the base) gives the plain LoRA merge when the training base
    was the full-precision one: the step is exact, whatever the training base's precision was."""
    from anima.model.build import load_model_dir
    from anima.train.lora import apply_lora
    from anima.train.qlora import merge_into_full_precision

    cfg = _model_cfg()
    torch.manual_seed(0)
    model = apply_lora(load_model_dir(hf_dir).train(), cfg.lora)
    x = _train_steps(model)
    merged = merge_into_full_precision(model, hf_dir, "float32")
    _assert_merged_is_base_plus_adapters(merged, model, hf_dir, cfg.lora)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=x).logits, model.merged_for_save()(input_ids=x).logits, atol=1e-5)
    assert merge_into_full_precision(model, hf_dir, "bfloat16").dtype == torch.bfloat16


def test_gradient_checkpointing_key_turns_it_on(hf_dir):
    from anima.train.initial_model import adapted_model

    cfg = OmegaConf.merge(_model_cfg(gradient_checkpointing=True, quant={"bits": 0}), {"arch": "hf", "name": "hf"})
    model = adapted_model(cfg, None, hf_dir, str(hf_dir))
    base = model.get_base_model()
    assert getattr(base, "is_activation_checkpointing", None) or base.is_gradient_checkpointing
    assert model.training
    _train_steps(model, 1)  # frozen base, non-reentrant checkpointing: the adapters still get gradients
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)


def test_qlora_trains_adapters_on_a_4bit_base_and_saves_a_full_precision_merge(hf_dir):
    """Real bitsandbytes NF4 (its CPU kernels: no GPU needed for correctness, only for speed)."""
    bnb = require_module("bitsandbytes")  # a dev dependency: CI runs this on its CPU kernels

    from anima.model.build import count_parameters, load_model_dir
    from anima.train.initial_model import adapted_model
    from anima.train.lora import trainable_parameters

    cfg = OmegaConf.merge(_model_cfg(gradient_checkpointing=True), {"arch": "hf", "name": "hf"})
    torch.manual_seed(0)
    model = adapted_model(cfg, None, hf_dir, str(hf_dir))
    q_proj = model.get_base_model().model.layers[0].self_attn.q_proj
    assert isinstance(q_proj.base_layer, bnb.nn.Linear4bit) and q_proj.base_layer.weight.quant_type == "nf4"
    assert count_parameters(model.get_base_model()) >= count_parameters(load_model_dir(hf_dir))
    trainable, _ = trainable_parameters(model)
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad) and trainable > 0
    x = _train_steps(model)
    model.eval()
    with torch.no_grad():
        quantized_logits = model(input_ids=x).logits.float()
    merged = model.merged_for_save()
    assert merged.dtype == torch.float32
    _assert_merged_is_base_plus_adapters(merged, model, hf_dir, cfg.lora)
    with torch.no_grad():  # the merge differs from the 4-bit model only by the base's quantization error
        full_logits = merged(input_ids=x).logits
    assert torch.nn.functional.cosine_similarity(full_logits.flatten(), quantized_logits.flatten(), dim=0) > 0.9


def test_make_hf_model_script_builds_a_loadable_base(hf_dir, tmp_path):
    from anima.model.build import load_model_dir

    proc = subprocess.run([sys.executable, str(ROOT / "scripts/make_hf_model.py"), str(tmp_path / "m"),
                           "--tokenizer-from", str(hf_dir), "--dim", "64", "--layers", "2", "--intermediate", "128"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    model = load_model_dir(tmp_path / "m")
    assert model.config.hidden_size == 64 and model.config.num_key_value_heads == 2
    assert (tmp_path / "m" / "tokenizer.json").is_file() and not (tmp_path / "m" / "anima.json").exists()
