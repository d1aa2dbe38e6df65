"""Schema of `anima sweep`: the `sweep` group (search space, objective, sampler, pruner, storage) on top of
the keys every stage has. Registered as `sweep_schema` when `anima.config.compose` imports it (the stage catalog names it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from anima.config.fields import setting
from anima.config.stage_schemas import StageConfig, register_schema

TRIAL_STAGES = ("pretrain", "sft", "distill")


@dataclass
class ParamSpec:
    """One searched key (a leaf of `sweep.params`); the parser in `anima.sweep.space` checks it."""

    type: str = setting("float", "Distribution: float or int range, or categorical choices.",
                        choices=["float", "int", "categorical"])
    low: Optional[float] = setting(None, "Lower bound (float/int).")
    high: Optional[float] = setting(None, "Upper bound, inclusive (float/int).")
    log: bool = setting(False, "Sample on a log scale (float/int; low must be > 0).")
    step: Optional[float] = setting(None, "Discretisation step (float/int); needed for sampler=grid.", gt=0)
    choices: Optional[List[Any]] = setting(None, "Values of a categorical key, or options of a config group.")


@dataclass
class SweepConfig:
    name: str = setting("sweep", "Name of this search space; default study names are <name>-<N>.")
    stage: str = setting("pretrain", "The stage every trial runs.", choices=list(TRIAL_STAGES))
    overrides: List[str] = setting(doc="Base overrides of every trial (Hydra syntax: model=nano, trainer.max_steps=200).",
                                   factory=list)
    set: Dict[str, Any] = setting(doc="Extra key values for every trial, applied after `overrides`; handy on the "
                                  "command line: sweep.set.trainer.max_steps=50.", factory=dict)
    params: Dict[str, Any] = setting(doc="Search space: config key -> {type, low, high, log, step, choices}; "
                                     "keys nest (optim: {lr: {...}}) or use dots (optim.lr: {...}).", factory=dict)
    metric: str = setting("val/loss", "Objective: a metric the trial logs at each validation and at the end.")
    direction: str = setting("minimize", "Optimisation direction of `metric`.", choices=["minimize", "maximize"])
    n_trials: Optional[int] = setting(20, "Trials the study should hold in total (shared by all workers; a resumed "
                                      "study runs only the rest). null: until timeout.", ge=1)
    timeout: Optional[float] = setting(None, "Stop starting new trials after this many seconds (this worker).", gt=0)
    sampler: str = setting("tpe", "tpe (default), random, or grid (every param discrete).",
                           choices=["tpe", "random", "grid"])
    sampler_seed: Optional[int] = setting(None, "Sampler seed (null: random; give parallel workers different ones).")
    n_startup_trials: int = setting(5, "TPE: random trials before the model-based sampling starts.", ge=0)
    pruner: str = setting("median", "Stop unpromising trials early: median, hyperband or none.",
                          choices=["median", "hyperband", "none"])
    pruner_startup_trials: int = setting(2, "median: trials that finish before any pruning.", ge=0)
    pruner_warmup_steps: int = setting(0, "Optimizer steps a trial runs before it may be pruned "
                                       "(median: n_warmup_steps; hyperband: min_resource).", ge=0)
    reduction_factor: int = setting(3, "hyperband: keep 1/reduction_factor of the trials at each rung.", ge=2)
    storage: Optional[str] = setting("sqlite:///${paths.root}/mlruns/optuna.db",
                                     "Optuna storage: sqlite file or any database URL (postgresql://...); "
                                     "null = in memory (no resume, no parallel workers).")
    study_name: Optional[str] = setting(None, "Study to create or resume (null: a new <name>-<N>). Workers that "
                                        "share a study pass the same name.")
    heartbeat: int = setting(60, "Seconds between trial heartbeats; a trial silent for 3x this is failed and "
                             "retried once by the next worker (machines that died). A dead worker on the same "
                             "machine is noticed at once by the next sweep of the study.", ge=1)
    top_k: int = setting(3, "Register the models of the k best trials (0: none).", ge=0)
    register_name: Optional[str] = setting(None, "Registered model name for the top trials (default: the trial "
                                           "config's registry.name).")
    plots: bool = setting(True, "Log PNG plots: history, importances, intermediate values, parallel coordinates.")
    preset_dir: Optional[str] = setting(None, "Where the best trial's experiment preset goes (default: "
                                        "<user conf dir>/experiment/sweeps, i.e. conf.local/ or $ANIMA_USER_CONF, "
                                        "so `+experiment=sweeps/<study>-best` works and conf/ stays clean).")


@dataclass
class SweepStageConfig(StageConfig):
    sweep: SweepConfig = field(default_factory=SweepConfig)


register_schema("sweep", SweepStageConfig)
