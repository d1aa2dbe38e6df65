"""Schema of `anima retrain` (conf/retrain.yaml): SFT of the champion on chat feedback, with rehearsal.

retrain composes conf/sft.yaml with overrides built from these keys (plus `retrain.sft_overrides`), so every
training knob stays the sft stage's; only what retrain decides lives here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from anima.config.fields import setting
from anima.config.stage_schemas import StageConfig, register_schema


@dataclass
class RetrainRegistry:
    name: str = setting("anima-tiny", "Registered model: retrain starts from its @champion and adds a version.")
    alias: Optional[str] = setting("candidate", "Alias set on the new version (promote it with `anima promote`).")


@dataclass
class RetrainOptions:
    feedback: str = setting("${paths.data_dir}/feedback.jsonl", "Feedback file written by `anima chat`.")
    rehearsal_source: Optional[str] = setting("${model}", "Earlier data replayed with the feedback (default: the "
                                                          "starting model's own training data); null = none.")
    rehearsal_ratio: float = setting(0.5, "Fraction of the train mix drawn from the rehearsal source.", ge=0, lt=1)
    val_fraction: float = setting(0.2, "data.split.val of the feedback dataset (val/ppl is measured on it).",
                                  gt=0, lt=1)
    min_examples: int = setting(1, "Refuse to train on fewer usable feedback examples than this.", ge=1)
    max_steps: Optional[int] = setting(None, "trainer.max_steps of the SFT run (none = the sft default).", ge=1)
    lr: Optional[float] = setting(None, "optim.lr of the SFT run (none = the sft default).", gt=0)
    sft_overrides: List[str] = setting(doc="More sft overrides, e.g. ['trainer=smoke', 'optim.warmup_steps=0'].",
                                       factory=list)


@dataclass
class RetrainStageConfig(StageConfig):
    model: str = setting("models:/${registry.name}@champion", "Model to fine-tune (any model URI).")
    registry: RetrainRegistry = field(default_factory=RetrainRegistry)
    retrain: RetrainOptions = field(default_factory=RetrainOptions)


register_schema("retrain", RetrainStageConfig)
