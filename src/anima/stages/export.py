"""anima export: a registered model as GGUF (llama.cpp) or llama2.c's model.bin + tokenizer.bin.

Files go to `<export.out_dir>/<name>-v<version>/`. A GGUF export is verified by loading it back with
transformers' GGUF loader and comparing logits with the source model (the max difference is printed and
recorded); a llama2.c export by reading its header back against config.json. The files are then logged as
artifacts on the source version's own run, next to the model they came from.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from anima.config.export import ExportStageConfig
from anima.config.typed import typed
from anima.errors import ModelError
from anima.export.llama2c import RUNC_LIMITS

DEFAULT_TOLERANCE = {"f32": 1e-4, "f16": 0.05, "q8_0": 0.5}


@dataclass
class ExportResult:
    files: list[Path]
    out_dir: Path
    source_uri: str
    max_logit_diff: float | None = None
    logged_to_run: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def export_name(resolved: Any) -> str:
    """`anima-tiny-v3` for a registry version, `run-<id8>` for a run, the dir name for a local dir."""
    if resolved.name and resolved.version:
        return f"{resolved.name}-v{resolved.version}"
    if resolved.run_id:
        return f"run-{resolved.run_id[:8]}"
    return re.sub(r"[^\w.-]+", "-", Path(resolved.path).name) or "model"


def gguf_logit_diff(model_dir: Path, gguf_path: Path, text: str) -> float:
    """max |logit difference| between the source model and its GGUF, loaded back by transformers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the GGUF loader's de-quantizing bar
    tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    ids = tok(text, return_tensors="pt").input_ids[:, :64]
    ref = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, use_safetensors=True,
                                               local_files_only=True).eval()
    try:
        got = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                   dtype=torch.float32).eval()
    except Exception as e:  # noqa: BLE001 - a file transformers cannot read is a failed export
        raise ModelError(f"{gguf_path}: transformers cannot load the exported GGUF ({str(e).splitlines()[0]})") from None
    with torch.no_grad():
        a, b = ref(ids).logits.float(), got(ids).logits.float()
    if a.shape != b.shape:
        raise ModelError(f"{gguf_path}: logits shape {tuple(b.shape)} != source {tuple(a.shape)}")
    return float((a - b).abs().max())


def check_llama2c(model_bin: Path, tokenizer_bin: Path, model_dir: Path) -> dict[str, int]:
    """Read model.bin's header back and check it (and the file size) against config.json."""
    hf_config = json.loads((model_dir / "config.json").read_text())
    with open(model_bin, "rb") as f:
        dim, hidden, layers, heads, kv, vocab, seq = struct.unpack("<7i", f.read(28))
    n_heads = hf_config["num_attention_heads"]
    want = (hf_config["hidden_size"], hf_config["intermediate_size"], hf_config["num_hidden_layers"], n_heads,
            hf_config.get("num_key_value_heads") or n_heads, hf_config["vocab_size"],
            hf_config["max_position_embeddings"])
    got = (dim, hidden, layers, heads, kv, abs(vocab), seq)
    if got != tuple(want):
        raise ModelError(f"{model_bin}: header {got} does not match {model_dir}/config.json {tuple(want)}")
    head = dim // heads
    kv_dim = kv * head
    n = (abs(vocab) * dim + layers * (2 * dim + dim * dim + 2 * dim * kv_dim + dim * dim + 3 * dim * hidden)
         + dim + seq * head + (0 if vocab > 0 else abs(vocab) * dim))
    if model_bin.stat().st_size != 28 + 4 * n:
        raise ModelError(f"{model_bin}: {model_bin.stat().st_size} bytes, expected {28 + 4 * n}")
    with open(tokenizer_bin, "rb") as f:
        (max_len,) = struct.unpack("<i", f.read(4))
    return {"dim": dim, "n_layers": layers, "vocab_size": abs(vocab), "seq_len": seq, "max_token_length": max_len}


def _log_on_source_run(resolved: Any, files: list[Path], fmt: str, metrics: dict[str, float],
                       tags: dict[str, str]) -> str | None:
    """Attach the exports to the run that produced the source model (and tag its registry version)."""
    if not resolved.run_id:
        return None
    from mlflow import MlflowClient

    from anima.tracking.registry import tag_version

    client = MlflowClient()
    for f in files:
        client.log_artifact(resolved.run_id, str(f), f"exports/{fmt}")
    for k, v in metrics.items():
        client.log_metric(resolved.run_id, k, v)
    if resolved.name and resolved.version:
        tag_version(resolved.name, resolved.version, tags)
    return resolved.run_id


def export(cfg: DictConfig) -> ExportResult:
    """Export and verify; `cfg` is converted once to `ExportStageConfig`."""
    from anima.export import export_gguf, export_llama2c
    from anima.model.resolve import resolve_model

    spec = typed(cfg, ExportStageConfig)
    resolved = resolve_model(spec.model, spec.tracking)
    opts, fmt = spec.export, spec.format
    out_dir = Path(opts.out_dir).expanduser() / export_name(resolved)
    metrics: dict[str, float] = {}
    tags: dict[str, str] = {}
    result = ExportResult([], out_dir, resolved.canonical_uri)
    if fmt == "gguf":
        dtype = opts.dtype
        path = export_gguf(resolved.path, out_dir / f"{export_name(resolved)}-{dtype}.gguf", dtype,
                           name=resolved.name or export_name(resolved))
        result.files = [path]
        tags[f"export_gguf_{dtype}"] = str(path)
        if opts.verify:
            diff = gguf_logit_diff(resolved.path, path, opts.verify_text)
            tol = opts.tolerance or DEFAULT_TOLERANCE[dtype]
            result.max_logit_diff = diff
            metrics[f"export/gguf_{dtype}_max_logit_diff"] = diff
            tags[f"export_gguf_{dtype}_max_logit_diff"] = f"{diff:.3g}"
            if diff > tol:
                raise ModelError(f"{path}: max |logit difference| {diff:.3g} vs the source model exceeds "
                                 f"export.tolerance={tol:g}")
    else:
        model_bin, tok_bin = export_llama2c(resolved.path, out_dir)
        result.files = [model_bin, tok_bin]
        tags["export_llama2c"] = str(model_bin)
        if opts.verify:
            result.extra["header"] = check_llama2c(model_bin, tok_bin, resolved.path)
    if opts.log_artifacts:
        result.logged_to_run = _log_on_source_run(resolved, result.files, fmt, metrics, tags)
    return result


def llama_cpp_hints(gguf: Path) -> list[str]:
    """Commands current llama.cpp accepts (tools/cli, tools/completion, tools/server READMEs); `-cnv` is gone
    from llama-cli (it always chats), and plain completion moved to llama-completion."""
    return [
        f"llama-cli -m {gguf}    # chat, with the embedded chat template",
        f"llama-completion -m {gguf} -no-cnv -p 'Once upon a time' -n 64 --temp 0    # plain completion",
        f"llama-server -m {gguf} --port 8080    # OpenAI-compatible server",
    ]


def run(cfg: DictConfig) -> ExportResult:
    res = export(cfg)
    print(f"✓ exported {cfg.model} ({res.source_uri}) as {cfg.format}:")
    for f in res.files:
        print(f"  {f}  ({f.stat().st_size / 1e6:.2f} MB)")
    if res.max_logit_diff is not None:
        print(f"  verified: transformers loads it back; max |logit difference| vs the source = "
              f"{res.max_logit_diff:.3g}")
    if res.extra.get("header"):
        print(f"  verified: header {res.extra['header']}")
    if res.logged_to_run:
        print(f"  logged as artifacts on run {res.logged_to_run} (exports/{cfg.format}/)")
    if cfg.format == "gguf":
        g = res.files[0]
        print("  llama.cpp:")
        for line in llama_cpp_hints(g):
            print(f"    {line}")
    else:
        m, t = res.files
        print("  llama2.c:")
        print(f"    ./run {m} -z {t} -i 'Once upon a time'    # run.c from github.com/karpathy/llama2.c")
        print("  what run.c cannot do with this model:")
        for limit in RUNC_LIMITS:
            print(f"    - {limit}")
    return res
