"""The code version a run was produced by."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_state(cwd: Path) -> tuple[str, bool]:
    """(commit sha or 'unknown', dirty flag)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                    capture_output=True, text=True, timeout=5).stdout.strip())
        return (sha or "unknown", dirty)
    except (OSError, subprocess.SubprocessError):
        return ("unknown", False)
