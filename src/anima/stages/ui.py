"""`anima ui [--port 5000] [--host 127.0.0.1]`: the MLflow UI over this project's store, on localhost.

One `mlflow server` worker without the job runner (which would outlive us), started in its own process group
so Ctrl-C (or any exit) stops the server and everything it forked.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Sequence


def server_command(port: int, host: str = "127.0.0.1", root: Path | None = None) -> tuple[list[str], dict]:
    """The `mlflow server` command line and environment for the project's sqlite store and artifact root."""
    from anima.paths import project_root

    root = root or project_root()
    db = root / "mlruns" / "mlflow.db"
    artifacts = root / "mlruns" / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow_bin) if mlflow_bin.exists() else "mlflow", "server",
           "--backend-store-uri", f"sqlite:///{db}", "--default-artifact-root", artifacts.as_uri(),
           "--host", host, "--port", str(port), "--workers", "1"]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    return cmd, env


def start(port: int, host: str = "127.0.0.1", root: Path | None = None, log=None) -> subprocess.Popen:
    cmd, env = server_command(port, host, root)
    return subprocess.Popen(cmd, env=env, start_new_session=True, stdout=log or subprocess.DEVNULL,
                            stderr=subprocess.STDOUT if log else subprocess.DEVNULL)


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 90.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.5)
    return False


def stop(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM the whole process group (server + its worker), SIGKILL whatever is left after `timeout`."""
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        if not _group_alive(pgid):
            break
        deadline = time.monotonic() + wait
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not _group_alive(pgid):
            break


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def main(argv: Sequence[str]) -> int:
    from anima.errors import AnimaError
    from anima.paths import project_root

    parser = argparse.ArgumentParser(prog="anima ui", description="MLflow UI over this project's runs and models.")
    parser.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (default 5000)")
    parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1: this machine only)")
    args = parser.parse_args(list(argv))
    root = project_root()
    if not (root / "mlruns" / "mlflow.db").is_file():
        raise AnimaError(f"no MLflow store at {root / 'mlruns' / 'mlflow.db'}: run a stage first "
                         "(e.g. `anima pipeline experiment=demo`)")
    url = f"http://{args.host}:{args.port}"
    print(f"anima ui: starting MLflow on {url} over {root / 'mlruns'} ...", flush=True)
    proc = start(args.port, args.host, root, log=None)
    interrupted = False
    try:
        if not wait_ready(url, proc):
            raise AnimaError(f"mlflow server did not come up on {url} (port in use? try --port 5001)")
        print(f"anima ui: open {url}  (runs: experiment 'anima'; models: {url}/#/models). Ctrl-C stops it.",
              flush=True)
        proc.wait()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        stop(proc)
    if interrupted:
        print("anima ui: stopped", flush=True)
        return 0
    return 0 if proc.returncode in (0, -signal.SIGTERM) else 1
