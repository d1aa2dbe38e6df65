"""Process facts shared by the parts that judge whether another process is still there, and how background
builds run."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """True while a process with this pid exists on this host (one we may not signal counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lower_priority() -> None:
    """``preexec_fn`` of a background build: it must not slow the chat that is decoding meanwhile."""
    os.nice(10)


def build_env(threads: int) -> dict[str, str]:
    """A build child's environment: one compile worker (it runs beside a chat) and the intra-op thread count the
    compiled code is laid out for."""
    return {**os.environ, "TORCHINDUCTOR_COMPILE_THREADS": "1", "OMP_NUM_THREADS": str(threads)}


def lock_holder_alive(lock: Path) -> bool:
    """A build's lock file names its builder's pid: True while that process runs."""
    try:
        return pid_alive(int(lock.read_text().strip() or 0))
    except (OSError, ValueError):
        return False


def spawn_holding(lock: Path, cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen | None:
    """Start ``cmd`` as a detached, low-priority build (output in ``log``) that holds ``lock`` (its pid inside).
    None when another process took the lock first. OSError when the lock, the log or the process cannot be made
    (no lock is left behind)."""
    lock.unlink(missing_ok=True)  # stale: its builder is gone (callers check lock_holder_alive first)
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return None
    with os.fdopen(fd, "w") as held:
        try:
            with open(log, "w", encoding="utf-8") as out:
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True, preexec_fn=lower_priority)
        except OSError:
            lock.unlink(missing_ok=True)
            raise
        held.write(str(proc.pid))
    return proc


def release_lock(lock: Path) -> None:
    """In the build itself, at its end: remove the lock if it is this process's."""
    try:
        if lock.read_text().strip() == str(os.getpid()):
            lock.unlink(missing_ok=True)
    except OSError:
        pass
