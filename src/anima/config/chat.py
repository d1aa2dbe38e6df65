"""Schema of `anima chat` (conf/chat.yaml): which model to talk to, sampling, where feedback goes.

Also holds what chat, serve and export share: the registry reference that gives the default model URI
(`models:/<registry.name>@champion`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from anima.config.fields import setting
from anima.config.groups import SamplingConfig
from anima.config.stage_schemas import StageConfig, register_schema

BACKENDS = ["auto", "compiled", "fast", "hf"]
BACKEND_HELP = ("Decode backend: auto (the compiled step when built for this architecture, else the eager fast "
                "step, else transformers), compiled (build it now if missing), fast, hf.")
COMPILE_HELP = ("backend=auto: build the compiled decode step in the background the first time this "
                "architecture is used (about a minute of CPU; cached under paths.cache_dir/decode); replies use "
                "the eager step until it is ready. false = use it only when already built.")


@dataclass
class RegistryRef:
    name: str = setting("anima-tiny", "Registered model whose @champion is used when `model` is not given.")


@dataclass
class ChatOptions:
    max_retries: int = setting(2, "Fresh replies the model may try after a `n` rating before asking for a "
                                  "better reply.", ge=0, le=20)
    feedback: Optional[str] = setting("${paths.data_dir}/feedback.jsonl",
                                      "Feedback file (JSONL, append-only); null = do not save ratings.")
    system_prompt: Optional[str] = setting(None, "System message sent before the conversation (none by default).")
    transcripts_dir: str = setting("${paths.experiments_dir}/chat", "Where `/save` without a path writes.")
    backend: str = setting("auto", BACKEND_HELP, choices=BACKENDS)
    compile: bool = setting(True, COMPILE_HELP)
    assistant_name: str = setting("anima", "Name shown before the model's replies.")


@dataclass
class ModelSamplingStageConfig(StageConfig):
    """What chat and serve share: the model to load (the champion by default) and how it samples."""

    model: str = setting("models:/${registry.name}@champion",
                         "Model URI: models:/name@alias, models:/name/N, runs:/<id>/model or a local dir.")
    registry: RegistryRef = field(default_factory=RegistryRef)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)


@dataclass
class ChatStageConfig(ModelSamplingStageConfig):
    chat: ChatOptions = field(default_factory=ChatOptions)


register_schema("chat", ChatStageConfig)
