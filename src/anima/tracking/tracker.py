"""Where a training stage's MLflow calls run: in this process, or in the tracking helper (helper.py).

The trainer names what to call ("mlflow:log_params", "anima.tracking.registry:register_model", ...) and a tracker
runs it: ``LocalTracker`` here and now, ``HelperTracker`` in the helper process (``send`` without waiting). Both
hold the stage's run the way ``tracking.run.stage_run`` does: ended FINISHED, FAILED or KILLED.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Callable, Iterator

from anima.errors import ConfigError
from anima.tracking.context import current
from anima.tracking.helper import TrackingHelper, resolve

HELPER_MODES = ("auto", "true", "false")


def use_helper(mode: str, fresh_run: bool, single_process: bool) -> bool:
    """``tracking.helper``: true/false, or auto = the helper for a fresh, unnested, single-process run that is the
    ``anima <stage>`` command's own job. Called as a library (tests, notebooks, a sweep's trials) a stage keeps
    MLflow in the caller's process, set up for the caller to read the run back."""
    mode = str(mode).lower()
    if mode not in HELPER_MODES:
        raise ConfigError(f"tracking.helper={mode}: expected one of {', '.join(HELPER_MODES)}")
    if mode != "auto":
        return mode == "true"
    return current().command_line and fresh_run and single_process


class OpenRun:
    """The stage's run as a tracker's ``stage_run`` yields it: its id, asked for once the stage has built its model
    and data (a stage that fails before asking leaves no run)."""

    def __init__(self, open_run: Callable[[], str]):
        self._open, self._run_id = open_run, None

    @property
    def opened(self) -> bool:
        return self._run_id is not None

    @property
    def run_id(self) -> str:
        if self._run_id is None:
            self._run_id = self._open()
        return self._run_id


class LocalTracker:
    """MLflow in this process: every call runs at once; the run starts when its id is first asked for."""

    name = "local"

    def call(self, target: str, *args: Any, **kwargs: Any) -> Any:
        return resolve(target)(*args, **kwargs)

    send = call

    @contextlib.contextmanager
    def stage_run(self, cfg: Any, **kwargs: Any) -> Iterator[OpenRun]:
        from anima.tracking.run import stage_run

        with contextlib.ExitStack() as stack:  # its exit ends the run as stage_run does, once it was started
            yield OpenRun(lambda: stack.enter_context(stage_run(cfg, **kwargs)).info.run_id)


class HelperTracker:
    """MLflow in the tracking helper, started now so that it opens the run while this process imports the rest."""

    name = "helper"

    def __init__(self) -> None:
        self.helper = TrackingHelper()
        self.call, self.send = self.helper.call, self.helper.send

    @contextlib.contextmanager
    def stage_run(self, cfg: Any, **kwargs: Any) -> Iterator[OpenRun]:
        """The run opens in the helper at once, beside this process's work; a stage that fails before asking for
        its id has its run deleted."""
        from omegaconf import OmegaConf

        data = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg
        run = OpenRun(self.helper.submit("enter", data, current(), sys.argv, kwargs).result)
        try:
            yield run
        except BaseException as e:
            status = "DISCARD" if not run.opened else "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED"
            with contextlib.suppress(Exception):  # a helper that died must not hide why the stage failed
                self.helper.call("exit", status)
            raise
        else:
            self.helper.call("exit", "FINISHED")
        finally:
            self.helper.close()


def open_tracker(helper: bool) -> LocalTracker | HelperTracker:
    return HelperTracker() if helper else LocalTracker()
