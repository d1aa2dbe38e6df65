"""`anima <stage> [hydra overrides]`: the one entry point.

Start-up stays light (no torch, lightning, mlflow or transformers): the stage's implementation is imported
only when it runs. Errors the user can fix print one line and exit 2; no traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Callable, Sequence

from anima.errors import AnimaError, ConfigError
from anima.stages import STAGES, Stage

USAGE = "usage: anima <stage> [key=value ...] [--multirun] [--cfg job] [--help]"


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


def _load(target: str) -> Callable:
    module, _, func = target.partition(":")
    return getattr(importlib.import_module(module), func)


def one_line(exc: BaseException) -> str:
    """Condense Hydra/OmegaConf's multi-line errors into `full_key: reason`."""
    parts: list[str] = []
    key = None
    e: BaseException | None = exc
    while e is not None:
        text = _join_options(str(e).strip())
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("full_key:"):
                key = key or line.split(":", 1)[1].strip()
            elif line and not line.startswith(("object_type", "reference_type", "To append", "Set the env")):
                if line not in parts:
                    parts.append(line)
        e = e.__cause__ or e.__context__
    msg = " ".join(parts[:2]) if parts else type(exc).__name__
    return f"{key}: {msg}" if key and key not in msg else msg


def _join_options(text: str) -> str:
    """Hydra lists a group's options one per indented line, then its search path: fold the options into their
    line (`Available options in 'model': base, nano, tiny`) and drop the search path."""
    out: list[str] = []
    for line in text.split("Config search path:")[0].splitlines():
        if line.startswith("\t") and out and "options in" in out[-1]:
            out[-1] += (" " if out[-1].endswith(":") else ", ") + line.strip()
        else:
            out.append(line)
    return "\n".join(out)


def _schema_for(config_name: str) -> type:
    from anima.config.stages import STAGE_SCHEMAS

    return STAGE_SCHEMAS[config_name]


def compose(config_name: str, overrides: Sequence[str] = ()):  # -> DictConfig
    """Compose <config_name>.yaml with overrides, as Hydra would (used by tests, sweeps, pipeline).

    The search path is the same as the CLI's: the user config dir (anima.paths.user_conf_dir) ahead of the
    shipped conf/ (anima.config.store)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from anima.config.store import register_configs
    from anima.paths import conf_dir

    _import_stage_schema(config_name)
    register_configs()
    overrides, values = split_value_overrides(config_name, overrides)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
    except Exception as e:  # hydra/omegaconf composition errors
        raise ConfigError(one_line(e)) from None
    apply_values(cfg, values)
    return cfg


def split_value_overrides(config_name: str, overrides: Sequence[str]) -> tuple[list[str], list]:
    """Take out the overrides Hydra cannot apply (anima.config.overrides): a plain string key named like a
    config group (`anima chat model=models:/anima-tiny@champion`), a new entry of a typed dict
    (`+data.sources.mine={kind: jsonl_chat, path: my.jsonl}`). `apply_values` applies them after composition."""
    from anima.config.overrides import split_late
    from anima.config.stages import STAGE_SCHEMAS
    from anima.paths import conf_dir, user_conf_dir

    return split_late(STAGE_SCHEMAS.get(config_name), overrides, (conf_dir(), user_conf_dir()))


def apply_values(cfg, values: list) -> None:
    from anima.config.overrides import apply_late

    apply_late(cfg, values)


def _import_stage_schema(config_name: str) -> None:
    """Stages that define their own schema register it on import of `anima.config.<name>` (if present)."""
    if importlib.util.find_spec(f"anima.config.{config_name}") is not None:
        importlib.import_module(f"anima.config.{config_name}")


def run_stage(stage: Stage, cfg):
    """Validate a composed config, then hand it to the stage's implementation; returns its result."""
    from anima.config.validate import validate

    config_name = stage.name.replace(" ", "_")
    validate(cfg, _schema_for(config_name))
    return _load(stage.target)(cfg)


MULTIRUN_FLAGS = ("--multirun", "-m")


def _validate_up_front(config_name: str, argv: list[str]) -> None:
    """Compose and validate before Hydra runs anything, so a bad key fails in one line before any work.

    A plain run is checked once; a `--multirun` every job of the sweep (Hydra would otherwise print its
    multi-line error, or fail half way through the sweep). Other Hydra flags (--cfg, --help, --info) are left
    to Hydra."""
    from anima.config.validate import validate

    flags = [a for a in argv if a.startswith("-")]
    overrides = [a for a in argv if not a.startswith("-")]
    if not flags:
        jobs = [overrides]
    elif all(f in MULTIRUN_FLAGS for f in flags):
        from anima.config.overrides import expand_sweep

        kept, late = split_value_overrides(config_name, overrides)  # the same late overrides in every job
        jobs = [job + [o.text for o in late] for job in expand_sweep(kept)]
    else:
        return
    for job in jobs:
        validate(compose(config_name, job), _schema_for(config_name))


def _cfg_job_only(argv: list[str]) -> bool:
    flags = [a for i, a in enumerate(argv) if a.startswith("-") or (i and argv[i - 1] in ("--cfg", "-c"))]
    return flags in (["--cfg", "job"], ["-c", "job"])


def _run_hydra(stage: Stage, argv: list[str]) -> int:
    import hydra

    from anima.config.store import register_configs
    from anima.paths import conf_dir

    config_name = stage.name.replace(" ", "_")
    _import_stage_schema(config_name)
    register_configs()
    _validate_up_front(config_name, argv)
    argv, values = split_value_overrides(config_name, argv)
    if values and _cfg_job_only(argv):
        # Hydra would print the config without the late overrides: print what the job will run with.
        from omegaconf import OmegaConf

        job = [a for a in argv if a not in ("--cfg", "-c", "job")] + [v.text for v in values]
        print(OmegaConf.to_yaml(compose(config_name, job)), end="")
        return 0

    def task(cfg) -> None:
        try:
            apply_values(cfg, values)
            run_stage(stage, cfg)
        except AnimaError as e:
            print(f"anima: error: {e}", file=sys.stderr)
            sys.exit(2)

    sys.argv = [f"anima {stage.name}", *argv]
    hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name=config_name)(task)()
    return 0


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
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        if not stage.hydra:
            return int(_load(stage.target)(args) or 0)
        return _run_hydra(stage, args)
    except AnimaError as e:
        print(f"anima: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("anima: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
