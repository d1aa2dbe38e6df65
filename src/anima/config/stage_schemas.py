"""Top-level schemas of the primary configs: one per stage (conf/<stage>.yaml composes onto it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from anima.config.data import DataConfig
from anima.config.fields import setting
from anima.config.groups import (
    ChatTemplateConfig,
    DeviceConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    PathsConfig,
    RegistryConfig,
    SamplingConfig,
    TokenizerConfig,
    TrackingConfig,
    TrainerConfig,
)


@dataclass
class StageConfig:
    """Keys every stage has."""

    stage: str = setting("", "The stage this config drives (set by the primary config).")
    seed: int = setting(1337, "Global seed: data order, init, sampling.")
    run_name: Optional[str] = setting(None, "MLflow run name (default: generated from stage and overrides).")
    paths: PathsConfig = field(default_factory=PathsConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)


@dataclass
class TokenizerStageConfig(StageConfig):
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    chat: ChatTemplateConfig = field(default_factory=ChatTemplateConfig)


@dataclass
class DistillConfig:
    mode: str = setting("logits", "logits: KL to teacher logits; sequence: train on teacher replies; "
                        "generate: only produce teacher replies.", choices=["logits", "sequence", "generate"])
    prompts: Optional[str] = setting(None, "Dataset whose user turns prompt the teacher (default: `data`).")
    max_prompts: int = setting(256, "Prompts sent to the teacher in sequence/generate mode.", ge=1)


@dataclass
class TrainConfig(StageConfig):
    """pretrain, sft and distill: one LightningModule, the objective a weighted list of loss terms."""

    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    chat: ChatTemplateConfig = field(default_factory=ChatTemplateConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    init_from: Optional[str] = setting(None, "Start from this model URI (models:/name@alias, models:/name/N, "
                                       "runs:/id/model or a local dir).")
    teacher: Optional[str] = setting(None, "distill: the teacher model URI.")
    resume: str = setting("none", "none; auto (the interrupted run of this stage, registry name and config); "
                          "or an MLflow run id.")
    resume_force: bool = setting(False, "With resume=<run_id>: continue even where the config differs from the "
                                 "run's (the new values win).")


@dataclass
class DataStageConfig(StageConfig):
    """`anima data`: read, clean, dedupe, filter, mix, split and version one dataset."""

    data: DataConfig = field(default_factory=DataConfig)


@dataclass
class StatusConfig(StageConfig):
    limit: int = setting(10, "Recent runs to list.", ge=1)


STAGE_SCHEMAS: dict[str, type] = {
    "data": DataStageConfig,
    "tokenizer": TokenizerStageConfig,
    "pretrain": TrainConfig,
    "sft": TrainConfig,
    "distill": TrainConfig,
    "status": StatusConfig,
}


def register_schema(name: str, schema: type) -> None:
    """Let a stage module add its own top-level schema: used for validation and, as `<name>_schema`, as the
    first entry of conf/<name>.yaml's defaults (`anima.config.store.register_configs` stores it with Hydra
    when that config is composed)."""
    STAGE_SCHEMAS[name] = schema


__all__ = ["STAGE_SCHEMAS", "StageConfig", "TrainConfig", "register_schema", "Any", "List"]
