"""Real tracking servers and throwaway PostgreSQL databases for the tests that need them.

`start_mlflow_server` runs `mlflow server` directly (a sqlite backend under a project's mlruns/, or any backend
URI); `start_anima_server` runs it through `anima server`. Both start in their own process group, so
`stop_server` ends the server and every worker it forked. `fresh_database` creates a uniquely named database on
the test PostgreSQL and drops it afterwards."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

REPO = Path(__file__).resolve().parents[2]
MLFLOW = str(Path(sys.executable).parent / "mlflow")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(port: int, proc: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    """Until the server on `port` answers /health; fails with the tail of its log if it exits or never answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"tracking server exited ({proc.returncode}): {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    stop_server(proc)
    raise AssertionError(f"tracking server did not answer /health within {timeout:.0f} s: {log.read_text()[-2000:]}")


def start_mlflow_server(root: Path, port: int, backend: str | None = None,
                        artifacts: Path | None = None) -> subprocess.Popen:
    """A real `mlflow server` serving artifacts; by default its store lives under `root`/mlruns/."""
    (root / "mlruns").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log_path = root / "mlflow-server.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([MLFLOW, "server", "--backend-store-uri", backend or f"sqlite:///{root}/mlruns/server.db",
                                 "--artifacts-destination", str(artifacts or root / "mlruns" / "server-artifacts"),
                                 "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                                cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait_healthy(port, proc, log_path)
    return proc


def start_anima_server(root: Path, port: int, backend: str, artifacts: Path, *extra: str) -> subprocess.Popen:
    """`anima server` (database check, then `mlflow server --serve-artifacts`) in project root `root`."""
    root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "ANIMA_ROOT": str(root)}
    log_path = root / "anima-server.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "anima", "server", f"server.backend_uri={backend}",
                                 f"server.artifacts_destination={artifacts}", f"server.port={port}", *extra],
                                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait_healthy(port, proc, log_path)
    return proc


def stop_server(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM the server's process group (`anima server` stops its `mlflow server` on SIGTERM), then SIGKILL."""
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)  # whatever is left (workers of a server killed mid-shutdown)
    proc.wait(timeout=10)


def kill_server(proc: subprocess.Popen) -> None:
    """kill -9 the whole server group at once: the server is gone as after a crash or a lost machine."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(os.getpgid(proc.pid), signal.SIGKILL)
    proc.wait(timeout=10)


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))


@contextlib.contextmanager
def fresh_database(url: str, prefix: str = "anima_team") -> Iterator[str]:
    """CREATE DATABASE <prefix>_<random> on the server of `url` (autocommit); yields its URL; drops it after."""
    import psycopg2

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"

    def admin(sql: str) -> None:
        conn = psycopg2.connect(url, connect_timeout=5)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql)
        finally:
            conn.close()

    admin(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(url, name)
    finally:
        admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
