"""Is a RUNNING run's process still alive? A run that was killed -9 never ends itself, so others judge it.

The live run holds an exclusive `flock` on `<mlruns>/locks/<run_id>.lock` (pid + host inside) for as long as it
runs; the kernel drops the lock when the process dies, however it dies. Its run carries tags naming the lock,
the pid and the host. On another host (a shared tracking server) the lock file is not visible, so a run on a
non-local store also refreshes an `anima.heartbeat` tag; a run whose heartbeat is stale is dead.

Any anima command that reads the store (`stage_run`, resume lookup, `anima status`) calls `mark_dead_runs`,
which ends dead RUNNING runs as KILLED: a run is never shown RUNNING forever.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterable

from anima.procs import pid_alive

LOCK_TAG, HOST_TAG, PID_TAG, HEARTBEAT_TAG = "anima.lock", "anima.host", "anima.pid", "anima.heartbeat"
KILLED_TAG = "anima.killed"
#: The heartbeat period and the age after which a heartbeat counts as stale (several missed beats).
HEARTBEAT_EVERY_S = 30.0
STALE_AFTER_S = 300.0


def host() -> str:
    return socket.gethostname()


def process_tags() -> dict[str, str]:
    """Tags a run gets when it starts (or is continued): who runs it, and a fresh heartbeat."""
    return {HOST_TAG: host(), PID_TAG: str(os.getpid()), HEARTBEAT_TAG: str(int(time.time()))}


def _local_store(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def lock_dir(tracking: Any) -> Path:
    """Beside the sqlite file for a local store; under the artifact root's parent otherwise."""
    uri = str(tracking.uri)
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "locks").resolve()
    from anima.paths import project_root

    root = str(getattr(tracking, "artifact_root", None) or "")
    base = Path(root).parent if root and "://" not in root else project_root() / "mlruns"
    return (base / "locks").resolve()


class RunLock:
    """Held by the process that runs `run_id`: an flock'ed lock file, plus a heartbeat on a shared store."""

    def __init__(self, run_id: str, tracking: Any):
        self.run_id = run_id
        self.path = lock_dir(tracking) / f"{run_id}.lock"
        self._heartbeat = not _local_store(str(tracking.uri))
        self._fd: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        """Take the lock, then tag the run with it (so nobody sees the tag before the lock is held)."""
        from mlflow import MlflowClient

        from anima.errors import AnimaError

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AnimaError(f"run {self.run_id} is still running ({self.path} is held by its process)") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": host(), "since": time.time()}).encode())
        self._fd = fd
        client = MlflowClient()
        client.set_tag(self.run_id, LOCK_TAG, str(self.path))
        if self._heartbeat:
            client.set_tag(self.run_id, HEARTBEAT_TAG, str(int(time.time())))
            self._thread = threading.Thread(target=self._beat, name=f"anima-heartbeat-{self.run_id[:8]}",
                                            daemon=True)
            self._thread.start()

    def _beat(self) -> None:
        from mlflow import MlflowClient

        client = MlflowClient()
        while not self._stop.wait(HEARTBEAT_EVERY_S):
            try:
                client.set_tag(self.run_id, HEARTBEAT_TAG, str(int(time.time())))
            except Exception:  # a missed beat is harmless; several in a row mean the server is gone anyway
                pass

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._fd is not None:
            try:
                self.path.unlink(missing_ok=True)
            finally:
                os.close(self._fd)  # closing drops the flock
                self._fd = None


def _lock_free(path: Path) -> bool | None:
    """True: nobody holds the lock (its holder died); False: held; None: no lock file to judge by."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def dead_reason(tags: dict[str, str]) -> str | None:
    """Why a RUNNING run's process is known to be gone, or None when it is (or may be) alive."""
    run_host, pid = tags.get(HOST_TAG), tags.get(PID_TAG)
    if run_host is None or pid is None or not pid.isdigit():
        return None  # not started by this anima: nothing to judge by
    if run_host == host():
        if int(pid) == os.getpid():
            return None
        lock = tags.get(LOCK_TAG)
        if lock and _lock_free(Path(lock)):
            return f"its process {pid} on {run_host} is gone (lock {lock} is free)"
        if (not lock or _lock_free(Path(lock)) is None) and not pid_alive(int(pid)):
            return f"its process {pid} on {run_host} is gone"
        return None
    import mlflow

    if _local_store(mlflow.get_tracking_uri()):
        return None  # runs on a local store do not refresh their heartbeat: only the lock can tell
    beat = tags.get(HEARTBEAT_TAG)
    if beat is not None and beat.isdigit() and time.time() - float(beat) > STALE_AFTER_S:
        return f"its heartbeat from {run_host} stopped {int(time.time() - float(beat))} s ago"
    return None


def is_alive(run) -> bool:
    return run.info.status == "RUNNING" and dead_reason(run.data.tags) is None


def mark_dead_runs(experiment_ids: Iterable[str] | None = None) -> list[str]:
    """End every RUNNING run whose process is gone as KILLED (tagged with the reason); returns their ids."""
    from mlflow import MlflowClient

    client = MlflowClient()
    if experiment_ids is None:
        experiment_ids = [e.experiment_id for e in client.search_experiments()]
    ids = list(experiment_ids)
    if not ids:
        return []
    killed = []
    for run in client.search_runs(ids, filter_string="attributes.status = 'RUNNING'", max_results=1000):
        reason = dead_reason(run.data.tags)
        if reason is None:
            continue
        client.set_tag(run.info.run_id, KILLED_TAG, reason)
        client.set_terminated(run.info.run_id, "KILLED")
        lock = run.data.tags.get(LOCK_TAG)
        if lock and run.data.tags.get(HOST_TAG) == host():
            Path(lock).unlink(missing_ok=True)
        killed.append(run.info.run_id)
    return killed


__all__ = ["RunLock", "mark_dead_runs", "dead_reason", "is_alive", "process_tags", "LOCK_TAG", "HOST_TAG",
           "PID_TAG", "HEARTBEAT_TAG", "KILLED_TAG"]
