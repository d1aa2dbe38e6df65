"""Report the monitored metric to Optuna at every validation, keyed by optimizer step.

optuna-integration's `PyTorchLightningPruningCallback` imports and runs with Lightning 2.6, but it reports at
`step=current_epoch`. anima trains by steps on one long epoch, so every validation would land on step 0 and
Optuna would ignore all but the first report: the pruner would never see the curve. This subclass reports at
`trainer.global_step` (also the unit of `sweep.pruner_warmup_steps` and Hyperband's resources), and does not
prune during the final `trainer.validate` that only measures the finished weights.
"""

from __future__ import annotations

from typing import Any, Callable

import optuna
from optuna_integration import PyTorchLightningPruningCallback


class StepPruningCallback(PyTorchLightningPruningCallback):
    def __init__(self, trial: optuna.trial.Trial, monitor: str,
                 on_start: Callable[[str], None] | None = None) -> None:
        super().__init__(trial, monitor)
        self._on_start = on_start
        self.run_id: str | None = None
        self.reported: dict[int, float] = {}
        self.pruned_at: int | None = None
        self.steps = 0  # optimizer steps this trial spent (the benchmark's cost measure)

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        super().on_fit_start(trainer, pl_module)
        self.run_id = getattr(trainer.logger, "run_id", None)
        if self._on_start and self.run_id:
            self._on_start(self.run_id)

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        self.steps = int(trainer.global_step)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking or self.is_ddp_backend:
            if self.is_ddp_backend:
                super().on_validation_end(trainer, pl_module)
            return
        score = trainer.callback_metrics.get(self.monitor)
        if score is None:
            return  # the final objective check names a missing metric; pruning just has nothing to see
        step = int(trainer.global_step)
        if step in self.reported:
            return
        value = float(score.item())
        self.reported[step] = value
        self._trial.report(value, step=step)  # NaN is fine: the median pruner prunes it
        if trainer.state.fn == "fit" and self._trial.should_prune():
            self.pruned_at = step
            raise optuna.TrialPruned(f"pruned at step {step} ({self.monitor}={value:.4g})")
