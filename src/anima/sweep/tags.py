"""Names a sweep writes for others to read back: MLflow tags on trial runs, and Optuna trial user attrs.

Their own module so the objective (which writes them) and recovery (which reads them after a worker died)
share them without importing each other.
"""

from __future__ import annotations

TAG_STUDY, TAG_TRIAL, TAG_STATE = "anima.sweep.study", "anima.sweep.trial", "anima.sweep.state"
TAG_RETRY_OF = "anima.sweep.retry_of"
SWEEP_RUN = "sweep_run_id"  # trial user attr: the sweep (parent) run of the worker that runs the trial
