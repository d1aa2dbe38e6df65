"""The Lightning loggers of a training stage's run: MLflow's own in this process, or one that hands every metric to
the tracking helper (tracking/helper.py) without waiting."""

from __future__ import annotations

import logging
import re
import time
from typing import Any, Mapping

from lightning.fabric.utilities.logger import _convert_params, _flatten_dict
from lightning.pytorch.loggers import Logger, MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only

log = logging.getLogger(__name__)
#: Characters MLflow refuses in a metric name (Lightning's MLflow logger drops them the same way).
_BAD_METRIC_CHARS = re.compile("[^a-zA-Z0-9_/. -]+")


class StageRunLogger(MLFlowLogger):
    """Logs metrics into the stage's run but never marks it terminated.

    Lightning's logger sets the run FINISHED as soon as `fit` returns, before the model is saved and registered;
    a kill in that window would leave a FINISHED run without its model that `resume=auto` never looks at.
    `stage_run` ends the run (FINISHED, FAILED or KILLED) once everything is recorded.
    """

    def finalize(self, status: str = "success") -> None:
        if self._initialized and self._checkpoint_callback:
            self._scan_and_log_checkpoints(self._checkpoint_callback)


class _HelperClient:
    """``logger.experiment`` for callbacks: MlflowClient's logging methods, run in the helper without waiting."""

    def __init__(self, tracker: Any):
        self._tracker = tracker

    def __getattr__(self, method: str) -> Any:
        if not method.startswith(("log_", "set_")):
            raise AttributeError(f"{method}: only MlflowClient's log_*/set_* methods are forwarded to the helper")
        return lambda *args, **kwargs: self._tracker.send(f"client:{method}", *args, **kwargs)


class HelperRunLogger(Logger):
    """Lightning logger for a run held by the tracking helper: same metric names and timestamps as Lightning's
    MLflow logger, sent off the training loop. Like ``StageRunLogger`` it never ends the run."""

    def __init__(self, tracker: Any, run_id: str, experiment_name: str):
        super().__init__()
        self._tracker, self._run_id, self._experiment_name = tracker, run_id, experiment_name
        self._client = _HelperClient(tracker)

    @property
    def name(self) -> str:
        return self._experiment_name

    @property
    def version(self) -> str:
        return self._run_id

    @property
    def run_id(self) -> str:
        return self._run_id

    @property
    def experiment(self) -> _HelperClient:
        return self._client

    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        flat = _flatten_dict(_convert_params(params))
        items = [(k, str(v)[:250]) for k, v in flat.items()]
        for i in range(0, len(items), 100):
            self._tracker.send("mlflow:log_params", dict(items[i:i + 100]))

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        stamp, rows = int(time.time() * 1000), []
        for key, value in metrics.items():
            if isinstance(value, str):
                log.warning("Discarding metric with string value %s=%s.", key, value)
                continue
            rows.append((_BAD_METRIC_CHARS.sub("", key), float(value), stamp, step or 0))
        if rows:
            self._tracker.send("anima.tracking.run:log_metric_rows", self._run_id, rows)
