"""Schema of `anima export` (conf/export.yaml): model, format (gguf | llama2c), GGUF dtype, verification."""

from __future__ import annotations

from dataclasses import dataclass, field

from anima.config.chat import RegistryRef
from anima.config.fields import setting
from anima.config.stage_schemas import StageConfig, register_schema


@dataclass
class ExportOptions:
    dtype: str = setting("f16", "GGUF weight type (norms stay f32).", choices=["f32", "f16", "q8_0"])
    out_dir: str = setting("${paths.root}/exports", "Exports go to <out_dir>/<name>-v<version>/.")
    verify: bool = setting(True, "Load the export back and compare its logits with the source model.")
    verify_text: str = setting("Good morrow! What is your name, and whence come you?",
                               "Text whose logits are compared during verification.")
    tolerance: float = setting(0.0, "Fail when the max |logit difference| exceeds this (0 = per-dtype default: "
                                    "f32 1e-4, f16 0.05, q8_0 0.5).", ge=0)
    log_artifacts: bool = setting(True, "Log the exported files as artifacts on the source model's run.")


@dataclass
class ExportStageConfig(StageConfig):
    model: str = setting("models:/${registry.name}@champion",
                         "Model URI: models:/name@alias, models:/name/N, runs:/<id>/model or a local dir.")
    registry: RegistryRef = field(default_factory=RegistryRef)
    format: str = setting("gguf", "gguf (llama.cpp) or llama2c (run.c's model.bin + tokenizer.bin).",
                          choices=["gguf", "llama2c"])
    export: ExportOptions = field(default_factory=ExportOptions)


register_schema("export", ExportStageConfig)
