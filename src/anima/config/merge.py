"""Schema of `anima merge` (conf/merge.yaml): which registry versions are candidates, how they are ranked and
selected, and the merge method with its parameters (the `merge` group, presets in conf/merge/)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from anima.config.chat import RegistryRef
from anima.config.data import DataConfig
from anima.config.eval import EvalOptions
from anima.config.fields import setting
from anima.config.stage_schemas import StageConfig, register_schema


@dataclass
class MergeConfig:
    method: str = setting("uniform", "uniform, weighted (1/perplexity unless merge.weights), greedy_soup, slerp, "
                                     "task_arithmetic, ties (see `anima.merge.registered()`).")
    models: List[str] = setting(doc="Explicit ingredients (model URIs, in this order); empty: candidates from the "
                                    "registry (registry.name + the filters below).", factory=list)
    base: Optional[str] = setting(None, "task_arithmetic/ties: the base model URI the task vectors are taken from.")
    tags: Dict[str, str] = setting(doc="Candidate filter: version tags that must match (stage: sft).", factory=dict)
    aliases: List[str] = setting(doc="Candidate filter: only versions holding one of these aliases.", factory=list)
    study: Optional[str] = setting(None, "Candidate filter: versions registered by this sweep study (tag sweep_study).")
    versions: List[int] = setting(doc="Candidate filter: only these version numbers.", factory=list)
    include_merges: bool = setting(False, "Also rank versions that are themselves merges (stage=merge).")
    rank_on: str = setting("persona", "Eval set that ranks the candidates (falls back to val when the data has no "
                                      "persona split).", choices=["val", "persona", "test", "train"])
    top_k: int = setting(5, "Merge at most the k best-ranked candidates (0 = all that pass max_perplexity).", ge=0)
    max_perplexity: Optional[float] = setting(None, "Drop candidates whose ranking perplexity exceeds this.", gt=0)
    dry_run: bool = setting(False, "Print the ranking table and exit: no run, no model, no version (scores are still cached as "
                                  "ppl.<fingerprint> tags on the ranked versions).")
    t: float = setting(0.5, "slerp: interpolation position (0 = first model, 1 = second).", ge=0, le=1)
    density: float = setting(0.5, "ties: fraction of each task vector kept (top magnitude).", gt=0, le=1)
    scaling: float = setting(1.0, "task_arithmetic/ties: factor on the merged task vector.")
    weights: Optional[List[float]] = setting(None, "weighted/task_arithmetic/ties: explicit weights, one per "
                                                   "ingredient in rank order (weighted default: 1/perplexity).")
    alias: Optional[str] = setting("candidate", "Alias given to the merged version (null: none).")
    register_name: Optional[str] = setting(None, "Registered model the merge becomes a version of (default: "
                                                 "registry.name, or the first ingredient's name).")


@dataclass
class MergeStageConfig(StageConfig):
    registry: RegistryRef = field(default_factory=RegistryRef)
    merge: MergeConfig = field(default_factory=MergeConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalOptions = field(default_factory=EvalOptions)


register_schema("merge", MergeStageConfig)
