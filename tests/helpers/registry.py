"""A real registry of nano models from one initialization, shared by the merge/eval/lineage tests.

v1: a short pretrain on the real plays; v2, v3: continuations of v1 (`init_from`) with other seeds and
learning rates -- the "several checkpoints from one init" that merging is for. Built once per test session
under its own project root (every config gets `paths.root=<root>`, so the process environment is untouched).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import NANO_FAST, compose_cfg


@dataclass
class NanoRegistry:
    root: Path
    raw: Path
    name: str
    results: list  # TrainResult of v1, v2, v3

    def overrides(self, *extra: str) -> list[str]:
        """Common overrides of merge/eval/promote on this registry: the demo chat mix's val and held-out
        persona sets (16 conversations each), one thread."""
        return [f"paths.root={self.root}", f"paths.raw_dir={self.raw}", f"registry.name={self.name}",
                "eval.max_examples=16", "device.threads=1", *extra]

    def cfg(self, stage: str, *extra: str):
        return compose_cfg(stage, self.overrides(*extra))


def build_registry(root: Path, raw: Path) -> NanoRegistry:
    import torch

    from anima.stages.train import train

    torch.set_num_threads(1)
    base = [*NANO_FAST, f"paths.root={root}", "trainer.num_samples=0", "device.threads=1"]
    results = [train(compose_cfg("pretrain", [*base, "trainer.max_steps=6", "trainer.val_every=3"], raw))]
    for seed, lr in ((2, "1e-3"), (3, "3e-3")):
        results.append(train(compose_cfg("pretrain", [*base, "init_from=models:/anima-nano/1", f"seed={seed}",
                                                      f"optim.lr={lr}", "optim.warmup_steps=0",
                                                      "trainer.max_steps=4"], raw)))
    assert [r.version for r in results] == ["1", "2", "3"]
    return NanoRegistry(root, raw, "anima-nano", results)


@pytest.fixture(scope="session")
def nano_registry(raw_dir, tmp_path_factory) -> NanoRegistry:
    return build_registry(tmp_path_factory.mktemp("nano-registry"), raw_dir)
