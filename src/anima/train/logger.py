"""Lightning's MLflow logger, minus the one thing the stage owns: ending the run."""

from __future__ import annotations

from lightning.pytorch.loggers import MLFlowLogger


class StageRunLogger(MLFlowLogger):
    """Logs metrics into the stage's run but never marks it terminated.

    Lightning's logger sets the run FINISHED as soon as `fit` returns, before the model is saved and registered;
    a kill in that window would leave a FINISHED run without its model that `resume=auto` never looks at.
    `stage_run` ends the run (FINISHED, FAILED or KILLED) once everything is recorded.
    """

    def finalize(self, status: str = "success") -> None:
        if self._initialized and self._checkpoint_callback:
            self._scan_and_log_checkpoints(self._checkpoint_callback)
