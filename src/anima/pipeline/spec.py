"""The pipeline config -> an ordered list of `Step`s, each a stage plus its Hydra overrides."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from anima.config.pipeline import PipelineStageConfig
from anima.config.typed import plain_dict, typed
from anima.errors import ConfigError

# Keys of the pipeline config itself (the schema); every other top-level key is a step's overrides.
OWN_KEYS = {f.name for f in fields(PipelineStageConfig)}


@dataclass
class Step:
    name: str
    stage: str
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted key -> value (references unresolved)

    @property
    def config_name(self) -> str:
        return self.stage


def format_value(value: Any) -> str:
    """A Python value as a Hydra override value (lists and dicts in Hydra's own syntax)."""
    from anima.sweep.space import format_value as scalar

    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{format_value(v)}" for k, v in value.items()) + "}"
    return scalar(value)


def flatten_overrides(node: Mapping[str, Any], prefix: str = "", where: str = "") -> dict[str, Any]:
    """{defaults: {sweep: sft_lr}, trainer: {max_steps: 3}, model: nano} -> sweep=sft_lr, trainer.max_steps=3,
    model=nano.

    A leaf is anything that is not a non-empty mapping. A group is chosen by a string value (`model: nano`), or
    under `defaults:` when keys inside the same group are set too (`defaults: {merge: soup}` + `merge: {top_k:
    3}`). A key given twice (dotted and nested) is an error rather than a silent pick.
    """
    out: dict[str, Any] = {}
    for k, v in node.items():
        if not prefix and k == "defaults" and isinstance(v, Mapping):
            items = [(str(g), c) for g, c in v.items()]
        elif isinstance(v, Mapping) and v:
            items = list(flatten_overrides(v, f"{prefix}{k}.", where).items())
        else:
            items = [(f"{prefix}{k}", v)]
        for key, value in items:
            if key in out and out[key] != value:
                raise ConfigError(f"{where}{key} is set twice ({out[key]!r} and {value!r}): write it once, nested "
                                  f"(`{key.split('.')[0]}: {{...}}`), so command-line overrides replace it")
            out[key] = value
    return out


def to_override_list(flat: Mapping[str, Any]) -> list[str]:
    return [f"{k}={format_value(v)}" for k, v in flat.items()]


def available_stages() -> set[str]:
    from anima.config.pipeline import STEP_STAGES
    from anima.paths import conf_dir

    return {s for s in STEP_STAGES if (conf_dir() / f"{s}.yaml").is_file()}


def pipeline_spec(cfg: Any) -> PipelineStageConfig:
    """The pipeline's own keys of the composed config (a DictConfig), converted once to the schema's dataclass.
    The step bodies are left out: they are overrides, resolved only when their step runs."""
    from omegaconf import OmegaConf

    return typed(OmegaConf.masked_copy(cfg, sorted(OWN_KEYS & set(cfg.keys()))), PipelineStageConfig)


def parse_steps(spec: PipelineStageConfig, raw: Mapping[str, Any]) -> list[Step]:
    """Read `pipeline.stages` and each step's overrides; names the key at fault when something is off.

    `raw`: the composed config as a plain, unresolved container (`OmegaConf.to_container(cfg)`): a step's
    overrides are top-level keys outside the schema, and their `${step:...}` references are substituted only
    when the step runs."""
    names = list(spec.pipeline.stages)
    if not names:
        raise ConfigError("pipeline.stages is empty: pick a study (experiment=demo, experiment=arianna, "
                          "experiment=persona_distill) or list the steps: pipeline.stages=[pretrain,sft]")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"pipeline.stages lists {dupes[0]!r} twice: give the second one its own name and map "
                          f"it in pipeline.stage_of (e.g. {dupes[0]}_2: {dupes[0]})")
    stage_of = spec.pipeline.stage_of
    known = available_stages()
    steps: list[Step] = []
    for name in names:
        stage = stage_of.get(name, name)
        if stage not in known:
            where = f"pipeline.stage_of.{name}={stage}" if name in stage_of else f"pipeline.stages: {name!r}"
            raise ConfigError(f"{where} is not a stage a pipeline can run (available: {', '.join(sorted(known))})")
        body = raw.get(name) or {}
        if not isinstance(body, Mapping):
            raise ConfigError(f"{name}={body!r}: a step's value must be a mapping of overrides "
                              f"(e.g. {name}.optim.lr=3e-4)")
        steps.append(Step(name, stage, flatten_overrides(body, where=f"{name}.")))
    for key, value in raw.items():
        if key in OWN_KEYS or key in names or key == "hydra":
            continue
        if isinstance(value, Mapping) and not value:
            continue  # an unused step slot (every stage name has one)
        raise ConfigError(f"{key}: overrides given for {key!r}, which is not a step of pipeline.stages "
                          f"({', '.join(names)})")
    unknown_force = [f for f in spec.force if f != "all" and f not in names]
    if unknown_force:
        raise ConfigError(f"force=[{unknown_force[0]}]: not a step of this pipeline ({', '.join(names)})")
    return steps


def forced(spec: PipelineStageConfig, step: str) -> bool:
    """`force=[<step>]` or `force=[all]`: re-run the step even when a finished run matches."""
    return "all" in spec.force or step in spec.force


def propagated(spec: PipelineStageConfig) -> dict[str, Any]:
    """What the pipeline passes to every step (before the step's own overrides): where data and runs live,
    the device, the seed."""
    from anima.tracking.run import flatten

    out: dict[str, Any] = {}
    for group, node in (("paths", spec.paths), ("device", spec.device)):
        out.update(flatten({group: plain_dict(node)}))
    tracking = spec.tracking
    out.update({"tracking.uri": tracking.uri, "tracking.artifact_root": tracking.artifact_root,
                "tracking.experiment": tracking.experiment, "seed": spec.seed})
    return {k: v for k, v in out.items() if not isinstance(v, dict)}
