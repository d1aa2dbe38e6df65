"""Ctrl-C stops training at the next step boundary, never in the middle of a write.

Python raises KeyboardInterrupt wherever the main thread happens to be. Landing inside an MLflow or Optuna
write can leave a sqlite transaction open in this process, and the run then cannot even be ended KILLED
("database is locked"). So, while training or a sweep runs, the first Ctrl-C only asks to stop: the
`StopOnInterrupt` callback raises at the next batch boundary (Lightning's own interrupt handling takes over
from there) and a sweep stops before its next trial. A second Ctrl-C interrupts at once.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Any, Iterator

from lightning.pytorch.callbacks import Callback


class StopRequest:
    """Set by the first Ctrl-C while installed; `raise_if_requested` turns it into a KeyboardInterrupt."""

    _active: StopRequest | None = None

    def __init__(self) -> None:
        self.requested = False
        self.installed = False

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nanima: stopping after this step (Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    def reinstall(self) -> None:
        """Lightning ignores SIGINT after handling an interrupt; take the signal back."""
        if self.installed:
            signal.signal(signal.SIGINT, self._handler)

    def raise_if_requested(self) -> None:
        if self.requested:
            raise KeyboardInterrupt


@contextlib.contextmanager
def graceful_interrupt() -> Iterator[StopRequest]:
    """The active StopRequest (nested calls share the outermost), or a new one owning SIGINT meanwhile.

    Left alone when SIGINT is not Python's default (ignored in a background job, or owned by the caller) or
    outside the main thread: then the request is never set and Ctrl-C behaves as it would anyway."""
    if StopRequest._active is not None:
        yield StopRequest._active
        return
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield stop
        return
    StopRequest._active, stop.installed = stop, True
    signal.signal(signal.SIGINT, stop._handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        StopRequest._active = None


class StopOnInterrupt(Callback):
    """Raise the requested interrupt where the loop is between steps (no write, no half-done update). Under data
    parallelism every rank stops at the same batch when any rank was asked to (a rank stopping alone would leave
    the others waiting in a collective)."""

    def __init__(self, stop: StopRequest):
        self.stop = stop

    def _check(self, trainer: Any) -> None:
        if trainer.world_size > 1:
            if trainer.strategy.reduce_boolean_decision(self.stop.requested, all=False):
                raise KeyboardInterrupt
            return
        self.stop.raise_if_requested()

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._check(trainer)

    def on_validation_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        self._check(trainer)
