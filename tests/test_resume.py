"""resume=auto continues an interrupted run (same MLflow run) and ends bitwise equal to an uninterrupted run."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from anima.errors import AnimaError
from tests.helpers import NANO_FAST, compose_cfg

pytestmark = pytest.mark.slow


class CrashAtStep(L.Callback):
    """Simulates a crash after the checkpoint at `step` was written."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


def _weights(model_dir):
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


@pytest.mark.parametrize("optim", ["adamw", "muon"])  # muon: two optimizers' state in one checkpoint
def test_resume_auto_matches_an_uninterrupted_run(project, raw_dir, optim):
    import mlflow

    from anima.stages.train import train

    overrides = [*NANO_FAST, "trainer.max_steps=6", "trainer.ckpt_every=3", "trainer.val_every=3",
                 "registry.register=false", "optim.warmup_steps=2", f"optim={optim}"]
    with pytest.raises(AnimaError, match="nothing|no interrupted"):
        train(compose_cfg("pretrain", [*overrides, "resume=auto"], raw_dir))

    full = train(compose_cfg("pretrain", overrides, raw_dir))
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(compose_cfg("pretrain", overrides, raw_dir), callbacks=[CrashAtStep(3)])
    crashed = mlflow.search_runs(filter_string="attributes.status = 'FAILED'", output_format="list")
    assert len(crashed) == 1

    resumed = train(compose_cfg("pretrain", [*overrides, "resume=auto"], raw_dir))
    assert resumed.run_id == crashed[0].info.run_id  # the same MLflow run continues
    assert mlflow.get_run(resumed.run_id).info.status == "FINISHED"
    a, b = _weights(full.model_dir), _weights(resumed.model_dir)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed.metrics["val/loss"] == full.metrics["val/loss"]


def test_same_seed_is_bitwise_reproducible(project, raw_dir):
    from anima.stages.train import train

    overrides = [*NANO_FAST, "registry.register=false"]
    a = train(compose_cfg("pretrain", overrides, raw_dir))
    b = train(compose_cfg("pretrain", overrides, raw_dir))
    wa, wb = _weights(a.model_dir), _weights(b.model_dir)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
