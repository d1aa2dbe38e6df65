"""Composition as a library: conf/<name>.yaml + overrides -> a validated DictConfig, the way `anima <stage>` does.

The CLI, the pipeline (one compose per step), sweeps (one per trial), retrain and the data presets all compose
here, so a config means the same everywhere. Hydra and OmegaConf are imported only when composing; their
multi-line errors become one line (`one_line`) and a `ConfigError`.
"""

from __future__ import annotations

from typing import Any, Sequence

from anima.config.catalog import Stage, stage_for_config
from anima.errors import ConfigError


def schema_for(config_name: str) -> type | None:
    """The schema the stage catalog names for conf/<config_name>.yaml, registered with Hydra's ConfigStore as
    `<config_name>_schema` (the first entry of the yaml's defaults). None for a config no stage owns."""
    stage = stage_for_config(config_name)
    schema = stage.schema_class() if stage else None
    if schema is not None:
        from anima.config.stage_schemas import STAGE_SCHEMAS, register_schema

        if STAGE_SCHEMAS.get(config_name) is not schema:
            register_schema(config_name, schema)
    return schema


def compose(config_name: str, overrides: Sequence[str] = (), validate: bool = True):  # -> DictConfig
    """Compose <config_name>.yaml with overrides, as Hydra would, and (by default) validate it: every key's
    range and the cross-field rules (`anima.config.validate`); raises ConfigError in one line.

    The search path is the CLI's: the user config dir (anima.paths.user_conf_dir) ahead of the shipped conf/
    (anima.config.store)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from anima.config.store import register_configs
    from anima.paths import conf_dir

    schema = schema_for(config_name)
    register_configs(config_name)
    overrides, values = split_value_overrides(config_name, overrides)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
    except Exception as e:  # hydra/omegaconf composition errors
        raise ConfigError(one_line(e)) from None
    apply_values(cfg, values)
    if validate and schema is not None:
        from anima.config.validate import validate as check

        check(cfg, schema)
    return cfg


def split_value_overrides(config_name: str, overrides: Sequence[str]) -> tuple[list[str], list]:
    """Take out the overrides Hydra cannot apply (anima.config.overrides): a plain string key named like a
    config group (`anima chat model=models:/anima-tiny@champion`), a new entry of a typed dict
    (`+data.sources.mine={kind: jsonl_chat, path: my.jsonl}`). `apply_values` applies them after composition."""
    from anima.config.overrides import split_late
    from anima.paths import conf_dir, user_conf_dir

    return split_late(schema_for(config_name), overrides, (conf_dir(), user_conf_dir()))


def apply_values(cfg: Any, values: list) -> None:
    from anima.config.overrides import apply_late

    apply_late(cfg, values)


def check_jobs(config_name: str, overrides: Sequence[str], multirun: bool) -> None:
    """Compose and validate every job before Hydra runs any: one job, or each job of a `--multirun` sweep
    (Hydra would otherwise print its multi-line error, or fail half way through the sweep)."""
    jobs = [list(overrides)]
    if multirun:
        from anima.config.overrides import expand_sweep

        kept, late = split_value_overrides(config_name, overrides)  # the same late overrides in every job
        jobs = [job + [o.text for o in late] for job in expand_sweep(kept)]
    for job in jobs:
        compose(config_name, job)


def run_stage(stage: Stage, cfg: Any) -> Any:
    """Validate a config Hydra composed, then hand it to the stage's implementation; returns its result."""
    from anima.config.validate import validate

    schema = schema_for(stage.config_name)
    if schema is not None:
        validate(cfg, schema)
    try:
        return stage.implementation()(cfg)
    except Exception as e:  # the tracking server went away mid-run: one line naming it, not a traceback
        from anima.tracking.store import tracking_failure

        failure = tracking_failure(e, cfg.tracking.uri) if "tracking" in cfg else None
        if failure is None:
            raise
        raise failure from None


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
