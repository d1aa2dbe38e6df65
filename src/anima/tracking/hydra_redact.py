"""Hydra's record of a job (`.hydra/config.yaml`, `hydra.yaml`, `overrides.yaml`, a sweep's `multirun.yaml`),
written with secrets redacted.

conf/hydra/default.yaml sets `output_subdir: null`, so Hydra itself writes no per-job files and the unredacted
config never touches the disk; `on_job_start` writes the same three files redacted into `subdir` (the
callback's parameter; null for stages that keep no record: chat, serve, export). Should a user set
`hydra.output_subdir` after all, Hydra's own copies there are overwritten redacted. Hydra writes
`multirun.yaml` unconditionally before the first job starts: each job start (and the end of the multirun)
rewrites it redacted, atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from anima.atomic import atomic_write_text
from anima.tracking.redact import redact, redact_overrides

SUBDIR = ".hydra"


def _write(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.create(data)))


def _container(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=False)  # as Hydra saves them: interpolations kept


def write_job_files(config: DictConfig, subdir: str) -> Path:
    """The job's config, Hydra config and overrides, redacted, under <output_dir>/<subdir>."""
    data = _container(config)
    hydra_node = data.pop("hydra", {})
    out = Path(str(config.hydra.runtime.output_dir)) / subdir
    _write(out / "config.yaml", redact(data))
    _write(out / "hydra.yaml", redact({"hydra": hydra_node}))
    _write(out / "overrides.yaml", redact_overrides(list(config.hydra.overrides.task)))
    return out


def redact_multirun_file(config: DictConfig) -> None:
    """Rewrite <sweep dir>/multirun.yaml (Hydra's copy of the whole multirun config) redacted, if it exists."""
    try:
        path = Path(str(config.hydra.sweep.dir)) / "multirun.yaml"
    except Exception:  # no sweep dir in this config
        return
    if path.is_file():
        data = _container(OmegaConf.load(path))
        overrides = (data.get("hydra") or {}).get("overrides") or {}
        for key in ("task", "hydra"):
            if isinstance(overrides.get(key), list):
                overrides[key] = redact_overrides(overrides[key])
        _write(path, redact(data))


class RedactHydraFiles(Callback):
    """Registered in conf/hydra/default.yaml (`hydra.callbacks.redact`)."""

    def __init__(self, subdir: str | None = SUBDIR) -> None:
        self.subdir = subdir

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        for sub in {self.subdir, config.hydra.get("output_subdir")} - {None, ""}:
            write_job_files(config, str(sub))
        if str(config.hydra.mode) == "RunMode.MULTIRUN" or str(config.hydra.mode) == "MULTIRUN":
            redact_multirun_file(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        redact_multirun_file(config)
