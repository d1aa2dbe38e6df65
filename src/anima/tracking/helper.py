"""The tracking helper: a child process that holds a training stage's MLflow run, so the trainer never loads MLflow.

Why: importing MLflow and opening its store (SQLAlchemy, Alembic's schema check, the run with its tags and config)
took ~1.5 s of the trainer's start-up on 2 cores, while the second core sat idle during the trainer's own imports.
Started before those imports, the helper does that work beside them, and later takes every metric, text and
artifact upload off the training loop: most calls are fire-and-forget (``send``). (wandb runs a service process
for the same reasons.)

Protocol: requests ``(target, args, kwargs, wants_reply)`` over one pipe; over the other, ``("reply", ok, value)`` in
request order, and ``("notice", False, error)`` for a fire-and-forget request that failed, which the trainer raises
at its next request (a tracking server that went away: the same one-line error as in-process). ``target`` is
"module:function", "client:<MlflowClient method>", or the run's own "enter" / "exit". The helper ignores Ctrl-C
(the trainer decides how the run ends); when the trainer dies its pipe closes and the helper ends the run KILLED.
"""

from __future__ import annotations

import collections
import importlib
import os
import pickle
import signal
import subprocess
import sys
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from anima.errors import AnimaError

#: How the trainer's ``stage_run`` exit maps onto the exception ``stage_run`` sees in the helper.
_EXIT_AS = {"FINISHED": None, "FAILED": RuntimeError, "KILLED": KeyboardInterrupt, "DISCARD": RuntimeError}


def resolve(target: str) -> Any:
    """``"pkg.module:attr"`` -> the attribute; ``"client:method"`` -> that method of an MlflowClient."""
    module, _, attr = target.partition(":")
    if module == "client":
        from mlflow import MlflowClient

        return getattr(MlflowClient(), attr)
    return getattr(importlib.import_module(module), attr)


class _Pending:
    """A reply that has been asked for and is read when needed (replies come back in request order)."""

    def __init__(self, helper: "TrackingHelper", target: str):
        self.helper, self.target = helper, target
        self.done, self.ok, self.value = False, False, None

    def result(self) -> Any:
        while not self.done:
            self.helper._read_one(self.target)
        if self.ok:
            return self.value
        raise self.value


class TrackingHelper:
    """The trainer's end: starts the helper process and talks to it."""

    def __init__(self) -> None:
        import anima

        to_child, from_parent = os.pipe()
        to_parent, from_child = os.pipe()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            filter(None, [str(Path(anima.__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen([sys.executable, "-m", "anima.tracking.helper", str(to_child), str(from_child)],
                                     pass_fds=(to_child, from_child), env=env, start_new_session=True)
        os.close(to_child)
        os.close(from_child)
        self._out = Connection(from_parent, readable=False)
        self._in = Connection(to_parent, writable=False)
        self._waiting: collections.deque[_Pending] = collections.deque()

    def submit(self, target: str, *args: Any, **kwargs: Any) -> _Pending:
        """Send a request whose answer ``.result()`` reads later (the trainer goes on meanwhile)."""
        pending = _Pending(self, target)
        self._send(target, args, kwargs, True)
        self._waiting.append(pending)
        return pending

    def call(self, target: str, *args: Any, **kwargs: Any) -> Any:
        """Run ``target(*args, **kwargs)`` in the helper and return its result (or raise its error)."""
        return self.submit(target, *args, **kwargs).result()

    def send(self, target: str, *args: Any, **kwargs: Any) -> None:
        """Fire and forget: a failure comes back as a notice, raised by this helper's next send or call."""
        while self._in.poll():  # a notice (or replies not asked for yet) waiting: read it now
            self._read_one(target)
        self._send(target, args, kwargs, False)

    def close(self, timeout: float = 30.0) -> None:
        self._out.close()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._in.close()

    def _send(self, target: str, args: tuple, kwargs: dict, reply: bool) -> None:
        try:
            self._out.send((target, args, kwargs, reply))
        except OSError:
            raise self._gone(target) from None

    def _read_one(self, target: str) -> None:
        """Read the next message: a reply goes to the oldest request waiting for one; a notice is raised."""
        try:
            kind, ok, value = self._in.recv()
        except (EOFError, OSError):
            raise self._gone(target) from None
        if kind == "notice":
            raise value
        pending = self._waiting.popleft()
        pending.ok, pending.value, pending.done = ok, value, True

    def _gone(self, target: str) -> AnimaError:
        code = self.proc.poll()
        return AnimaError(f"the tracking helper (pid {self.proc.pid}) exited with status {code} before {target} "
                          "finished (its error is printed above); tracking.helper=false keeps MLflow in this process")


class _Run:
    """The stage's run inside the helper: ``stage_run`` entered on "enter" and left on "exit"."""

    def __init__(self) -> None:
        self.context: Any = None

    def enter(self, cfg: dict, run_context: Any, argv: list[str], kwargs: dict) -> str:
        from omegaconf import OmegaConf

        from anima.tracking.context import _CURRENT
        from anima.tracking.run import stage_run

        _CURRENT.set(run_context)
        sys.argv = argv  # MLflow's source tags name the trainer's program, not this one
        self.context = stage_run(OmegaConf.create(cfg), **kwargs)
        return self.context.__enter__().info.run_id

    def exit(self, status: str, reason: str | None = None) -> None:
        context, self.context = self.context, None
        if context is None:
            return
        exc = _EXIT_AS[status]
        if exc is None:
            context.__exit__(None, None, None)
        else:
            import mlflow

            from anima.tracking.liveness import KILLED_TAG

            run_id = mlflow.active_run().info.run_id
            if reason:
                mlflow.set_tag(KILLED_TAG, reason)
            context.__exit__(exc, exc(), None)
            if status == "DISCARD":  # the stage failed before its run was used: leave no run behind
                from mlflow import MlflowClient

                MlflowClient().delete_run(run_id)


def _failure(e: BaseException) -> BaseException:
    """What the trainer is told: a server that went away as the one-line error naming it, else ``e`` itself."""
    import mlflow

    from anima.tracking.store import tracking_failure

    failure = tracking_failure(e, mlflow.get_tracking_uri())
    if failure is not None:
        return failure
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:  # noqa: BLE001 - some library exceptions do not survive pickling
        return AnimaError(f"{type(e).__name__}: {e}")


def serve(inbox: Connection, outbox: Connection) -> int:
    """The helper's loop: run requests in order until the trainer closes its pipe."""
    import mlflow  # noqa: F401 - loaded now, while the trainer imports torch and Lightning
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401

    run, trainer = _Run(), os.getppid()
    while True:
        try:
            target, args, kwargs, reply = inbox.recv()
        except (EOFError, OSError):  # the trainer is done, or died: a run still open was killed
            run.exit("KILLED", f"its process {trainer} is gone (the tracking helper saw it go)")
            return 0
        try:
            fn = run.enter if target == "enter" else run.exit if target == "exit" else resolve(target)
            message = ("reply", True, fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 - every failure goes back to the trainer
            message = ("reply" if reply else "notice", False, _failure(e))
        if reply or message[0] == "notice":
            outbox.send(message)


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's: it tells the helper how the run ends
    return serve(Connection(int(argv[0]), writable=False), Connection(int(argv[1]), readable=False))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
