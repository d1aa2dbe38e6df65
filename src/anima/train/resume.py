"""`resume=auto|<run_id>`: find an interrupted run, its config and its last checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from anima.errors import AnimaError

CHECKPOINT_TAG = "anima.checkpoint_dir"


def find_resume(cfg: DictConfig) -> tuple[DictConfig, str, Path]:
    """(the interrupted run's own config, its run id, its last.ckpt). The run continues where it stopped."""
    import mlflow

    from anima.config.stages import TrainConfig
    from anima.tracking.store import setup_mlflow

    exp_id = setup_mlflow(cfg.tracking)
    stage = str(cfg.stage)
    if cfg.resume == "auto":
        runs = mlflow.search_runs([exp_id], filter_string=f"tags.`anima.stage` = '{stage}'",
                                  order_by=["attributes.start_time DESC"], output_format="list", max_results=50)
        runs = [r for r in runs if r.info.status != "FINISHED"]
    else:
        try:
            runs = [mlflow.get_run(str(cfg.resume))]
        except Exception:
            raise AnimaError(f"resume={cfg.resume}: no such run in {cfg.tracking.uri}") from None
    for run in runs:
        ckpt = Path(run.data.tags.get(CHECKPOINT_TAG, "")) / "last.ckpt"
        if ckpt.is_file():
            text = mlflow.artifacts.load_text(f"{run.info.artifact_uri}/config.yaml")
            saved = OmegaConf.merge(OmegaConf.structured(TrainConfig), OmegaConf.create(text))
            saved.resume = str(cfg.resume)
            saved.paths = cfg.paths
            saved.tracking = cfg.tracking
            return saved, run.info.run_id, ckpt
    raise AnimaError(f"resume={cfg.resume}: no interrupted {stage} run with a last.ckpt to resume "
                     f"in {cfg.tracking.uri}")


__all__ = ["find_resume", "CHECKPOINT_TAG", "Any"]
