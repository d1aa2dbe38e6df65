"""Process facts shared by the parts that judge whether another process is still there, and how background
builds run."""

from __future__ import annotations

import os


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
