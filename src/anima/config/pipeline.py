"""Schema of `anima pipeline` (conf/pipeline.yaml): an ordered list of steps, each a stage with its overrides.

Layout of a pipeline config (an `experiment=` preset fills it):

    pipeline:
      name: demo
      stages: [pretrain, sft, eval]          # the steps, in order
      stage_of: {pretrain_more: pretrain}    # only for steps not named after the stage they run
    pretrain:                                # one top-level key per step: its overrides, as on the command line
      model: tiny                            #   a group choice      -> model=tiny
      trainer: {max_steps: 300}              #   a key               -> trainer.max_steps=300
    sft:
      init_from: ${step:pretrain.model_uri}  # an output of an earlier step, resolved when sft starts

So `anima pipeline experiment=demo sft.optim.lr=2e-5` changes one key of one step. The step keys named after
stages are open dicts (any key may be added from the command line); a step with a custom name needs `+` for
keys its preset does not set (`+pretrain_more.optim.lr=1e-4`).

The schema below is what `validate` and the config reference read; the ConfigStore gets `pipeline_base`, the
same keys as an open node plus one open dict per stage name (Hydra would refuse `sft.optim.lr=...` on a
closed dataclass).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from anima.config.fields import setting
from anima.config.stage_schemas import StageConfig, register_schema

# Stages a pipeline step may run (interactive or read-only ones are left out).
STEP_STAGES = ("data", "tokenizer", "pretrain", "sft", "distill", "sweep", "merge", "eval", "promote", "synth",
               "retrain", "export")
STEP_REF = "step"  # the resolver name: ${step:<step>.<output>}


@dataclass
class PipelineSpec:
    name: str = setting("custom", "Name of the study; the parent MLflow run is called pipeline-<name>, each "
                        "step's run <name>/<step>.")
    description: str = setting("", "What the study reproduces (shown at the start and logged).")
    stages: List[str] = setting(doc="The steps, in order. A step is named after the stage it runs (pretrain, "
                                "sft, ...) or mapped to one in `stage_of`. Its overrides are the top-level key "
                                "of the same name.", factory=list)
    stage_of: Dict[str, str] = setting(doc="Step name -> stage, for steps not named after their stage "
                                       "(e.g. {pretrain_more: pretrain}).", factory=dict)


@dataclass
class PipelineStageConfig(StageConfig):
    """`anima pipeline`: paths, tracking, device and seed given here apply to every step."""

    pipeline: PipelineSpec = field(default_factory=PipelineSpec)
    force: List[str] = setting(doc="Steps to re-run even when a finished run matches (`force=[merge]`; "
                               "`force=[all]` re-runs everything). Steps after a re-run step re-run too.",
                               factory=list)
    dry_run: bool = setting(False, "Compose every step and show what would run or be reused; run nothing.")
    champion_alias: str = setting("champion", "Alias whose model is reported at the end (the promoted model).")
    registry_name: Optional[str] = setting(None, "Registered model reported at the end (default: the "
                                           "registry.name of the last step that has one).")


def _step_resolver(ref: str) -> str:
    """Outside a running pipeline a reference stays readable text; the runner substitutes the real value."""
    return "${" + STEP_REF + ":" + ref + "}"


def base_node():
    """The ConfigStore node: the schema's keys (typed) + one open dict per stage name (the steps)."""
    from omegaconf import OmegaConf

    node = OmegaConf.structured(PipelineStageConfig)
    OmegaConf.set_struct(node, False)  # presets may add steps with custom names
    OmegaConf.set_struct(node.pipeline.stage_of, False)  # pipeline.stage_of={more:pretrain} from the command line
    for name in STEP_STAGES:
        node[name] = {}
        OmegaConf.set_struct(node[name], False)  # `sft.optim.lr=2e-5` from the command line, any key
    return node


def register() -> None:
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver(STEP_REF):
        OmegaConf.register_new_resolver(STEP_REF, _step_resolver)
    ConfigStore.instance().store(name="pipeline_base", node=base_node())


register_schema("pipeline", PipelineStageConfig)
register()
