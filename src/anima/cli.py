"""`anima <stage> [hydra overrides]`: the one entry point. Parses argv, prints help, dispatches to a stage.

Start-up stays light (no torch, lightning, mlflow or transformers): the stage's implementation is imported
only when it runs. Composition lives in `anima.config.compose`, the stage list in `anima.config.catalog`.
Errors the user can fix print one line and exit 2; no traceback.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Sequence

from anima.config.catalog import STAGES, Stage
from anima.errors import AnimaError

USAGE = "usage: anima <stage> [key=value ...] [--multirun] [--cfg job] [--help]"
MULTIRUN_FLAGS = ("--multirun", "-m")
OFFLINE_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
               "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def _available(stage: Stage) -> bool:
    return importlib.util.find_spec(stage.target.split(":")[0]) is not None


def print_help() -> None:
    print(USAGE)
    print("\nstages:")
    for stage in STAGES.values():
        if " " not in stage.name and _available(stage):
            print(f"  {stage.name:<10} {stage.help}")
    print("\nEvery stage composes conf/<stage>.yaml with Hydra: override any key (optim.lr=3e-4), pick config")
    print("groups (model=tiny device=gpu), sweep with --multirun, print the config with --cfg job.")
    print("`anima <stage> --help` shows that stage's config groups. Docs: README.md.")


def _cfg_job_only(argv: list[str]) -> bool:
    flags = [a for i, a in enumerate(argv) if a.startswith("-") or (i and argv[i - 1] in ("--cfg", "-c"))]
    return flags in (["--cfg", "job"], ["-c", "job"])


def _run_hydra(stage: Stage, argv: list[str]) -> int:
    """Check every job up front (a plain run, or each job of a --multirun; other Hydra flags such as --cfg,
    --help and --info are left to Hydra), then let `hydra.main` run the stage in its job dir."""
    import hydra

    from anima.config.compose import apply_values, check_jobs, compose, run_stage, split_value_overrides
    from anima.config.store import register_configs
    from anima.paths import conf_dir

    name = stage.config_name
    argv = [*argv, *_rank_overrides()]
    flags = [a for a in argv if a.startswith("-")]
    if all(f in MULTIRUN_FLAGS for f in flags):
        check_jobs(name, [a for a in argv if not a.startswith("-")], multirun=bool(flags))
    argv, values = split_value_overrides(name, argv)
    register_configs(name)
    if values and _cfg_job_only(argv):
        # Hydra would print the config without the late overrides: print what the job will run with.
        from omegaconf import OmegaConf

        job = [a for a in argv if a not in ("--cfg", "-c", "job")] + [v.text for v in values]
        print(OmegaConf.to_yaml(compose(name, job, validate=False)), end="")
        return 0

    def task(cfg) -> None:
        from hydra.core.hydra_config import HydraConfig

        from anima.tracking.context import run_context

        job = HydraConfig.get()
        # What Lightning's DDP launcher re-executes for the other ranks (it appends the job's hydra.run.dir):
        # this program, the stage and this job's own overrides (one job of a --multirun, not the sweep).
        sys.argv = [program, *stage.name.split(), *job.overrides.task, *(v.text for v in values)]
        try:
            apply_values(cfg, values)
            with run_context(output_dir=job.runtime.output_dir, overrides=list(job.overrides.task), command_line=True):
                run_stage(stage, cfg)
        except AnimaError as e:
            print(f"anima: error: {e}", file=sys.stderr)
            sys.exit(2)

    program = sys.argv[0]
    sys.argv = [f"anima {stage.name}", *argv]
    hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name=name)(task)()
    return 0


def _rank_overrides() -> list[str]:
    """A data-parallel rank > 0 (started by Lightning's launcher or torchrun) runs the same command as rank 0 but
    leaves the job's record to it: no .hydra/ files of its own, its log under its own name."""
    from anima.train.distributed import env_rank, torchrun_launched

    rank = env_rank()
    if rank == 0:
        return []
    extra = ["hydra.callbacks.redact.subdir=null"]
    return extra + ([f"hydra.job.name=rank_{rank}"] if torchrun_launched() else [])


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print_help()
        return 0
    if args[0] == "--version":
        from anima import __version__

        print(f"anima {__version__}")
        return 0
    name = args.pop(0)
    if args and f"{name} {args[0]}" in STAGES:
        name = f"{name} {args.pop(0)}"
    stage = STAGES.get(name)
    if stage is None or not _available(stage):
        print(f"anima: error: unknown stage {name!r}; run `anima --help` for the list", file=sys.stderr)
        return 2
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    try:
        if not stage.hydra:
            return int(stage.implementation()(args) or 0)
        return _run_hydra(stage, args)
    except AnimaError as e:
        print(f"anima: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("anima: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
