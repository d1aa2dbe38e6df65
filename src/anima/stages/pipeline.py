"""`anima pipeline`: a whole study in one command; finished steps with the same config and inputs are reused."""

from __future__ import annotations

from omegaconf import DictConfig


def run(cfg: DictConfig):
    from anima.pipeline.runner import Runner

    return Runner(cfg).run()
