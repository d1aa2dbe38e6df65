"""Schema of `anima promote` (conf/promote.yaml): the rule that moves the champion alias, or a manual move."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from anima.config.chat import RegistryRef
from anima.config.data import DataConfig
from anima.config.eval import EvalOptions
from anima.config.fields import setting
from anima.config.stage_schemas import StageConfig, register_schema


@dataclass
class PromoteRule:
    metric: str = setting("persona_ppl", "Deciding metric: val_ppl / persona_ppl (measured, cached per eval data) or "
                                         "any eval.* tag written by `anima eval` (rouge_l, chrf, ...).")
    mode: str = setting("min", "min: lower wins (perplexity); max: higher wins.", choices=["min", "max"])
    min_delta: float = setting(0.0, "The candidate must beat the champion by more than this.", ge=0)
    confidence: float = setting(0.95, "The candidate wins only when the paired-bootstrap interval of its difference "
                                      "to the champion, at this level, excludes zero (and min_delta).", gt=0, lt=1)
    min_examples: int = setting(30, "Fewest paired examples a comparison must rest on to promote.", ge=1)
    candidate: str = setting("candidate", "Alias of the version that challenges the champion.")
    previous: Optional[str] = setting("previous", "Alias the replaced champion keeps (null: none).")


@dataclass
class PromoteStageConfig(StageConfig):
    registry: RegistryRef = field(default_factory=RegistryRef)
    version: Optional[int] = setting(None, "Move `alias` to this version by hand (no rule is applied).", ge=1)
    alias: str = setting("champion", "The alias that is moved.")
    force: bool = setting(False, "Promote the candidate even if it does not win.")
    promote: PromoteRule = field(default_factory=PromoteRule)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalOptions = field(default_factory=EvalOptions)


register_schema("promote", PromoteStageConfig)
