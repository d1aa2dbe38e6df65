"""Time-budgeted training: with trainer.max_time the LR decay's horizon is the time budget, so a run stopped by
time ends annealed; without it the schedule is the step schedule, unchanged."""

from __future__ import annotations

import math

import pytest

from anima.train.schedule import duration_seconds, lr_factor
from tests.helpers import NANO_FAST, compose_cfg


def _step_factor_before(step: int, warmup: int, total: int, schedule: str, min_ratio: float) -> float:
    """The step schedule as it was before time budgets existed (the reference for bit-identity)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return 1.0 - (1.0 - min_ratio) * progress
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_step_schedule_is_unchanged_without_a_budget(schedule):
    for warmup, total in [(0, 10), (5, 50), (50, 200), (10, 5)]:
        for step in range(total + 3):
            assert lr_factor(step, warmup, total, schedule, 0.1) == _step_factor_before(step, warmup, total,
                                                                                        schedule, 0.1)


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_time_budget_reaches_the_floor_when_the_budget_ends(schedule):
    """A fake clock: steps take 0.4 s then slow to 0.7 s; the 30 s budget ends long before max_steps."""
    budget, warmup, elapsed, step, factors = 30.0, 5, 0.0, 0, []
    while elapsed < budget:  # the stopping rule: Lightning's Timer checks after each step
        factors.append(lr_factor(step, warmup, 10_000, schedule, 0.1, elapsed_s=elapsed, budget_s=budget))
        elapsed += 0.4 if step < 30 else 0.7
        step += 1
    assert factors[:warmup] == [(i + 1) / warmup for i in range(warmup)]  # warm-up counts steps
    assert factors[warmup] == 1.0  # no jump when the decay starts
    assert all(a >= b for a, b in zip(factors[warmup:], factors[warmup + 1:]))  # monotone decay
    assert factors[-1] == pytest.approx(0.1, abs=0.03)  # the last step trains at (nearly) the floor
    assert lr_factor(step, warmup, 10_000, schedule, 0.1, elapsed_s=budget, budget_s=budget) == pytest.approx(0.1)
    # the step budget still wins when it is the shorter horizon
    assert lr_factor(100, 0, 100, schedule, 0.1, elapsed_s=1.0, budget_s=1000.0) == pytest.approx(0.1)


def test_duration_seconds():
    assert duration_seconds("00:00:01:25") == 85.0 and duration_seconds("1:02:03:04") == 93784.0


@pytest.mark.slow
def test_time_budgeted_pretrain_ends_annealed(project, raw_dir):
    """A real 8 s nano pretrain with a step budget it cannot reach: the last logged lr is the floor, and
    validation and the `last` checkpoint ran by time; the checkpoint holds the training clock for resume."""
    import mlflow
    import torch

    from anima.stages.train import train

    lr, floor = 2e-3, 0.1
    cfg = compose_cfg("pretrain", [*NANO_FAST, "trainer.max_time=00:00:00:08", "trainer.max_steps=100000",
                                   "trainer.val_every_s=3", "trainer.ckpt_every_s=2", "tracking.log_every_n_steps=2",
                                   f"optim.lr={lr}", f"optim.min_lr_ratio={floor}", "optim.warmup_steps=2",
                                   "registry.register=false"], raw_dir)
    result = train(cfg)
    client = mlflow.MlflowClient()
    run = client.get_run(result.run_id)
    assert run.data.params["trainer.schedule_horizon"] == "time"
    history = sorted(client.get_metric_history(result.run_id, "train/lr"), key=lambda m: m.step)
    assert len(history) >= 5 and history[-1].step < 100000
    assert max(m.value for m in history) == pytest.approx(lr, rel=0.05)  # it did reach the peak
    assert history[-1].value == pytest.approx(floor * lr, rel=0.15)  # and ended annealed
    assert len(client.get_metric_history(result.run_id, "val/loss")) >= 2  # timed validation + the final one
    ckpt = torch.load(result.model_dir.parent / "checkpoints" / "last.ckpt", weights_only=True)
    timer = next(v for k, v in ckpt["callbacks"].items() if "Timer" in k)
    assert timer["time_elapsed"]["train"] > 1.0
