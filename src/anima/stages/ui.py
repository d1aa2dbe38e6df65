"""`anima ui [--port 5000] [--host 127.0.0.1]`: the MLflow UI over this project's store, on localhost.

One `mlflow server` worker without the job runner (which would outlive us), started in its own process group
so Ctrl-C, SIGTERM, SIGHUP (or any exit but SIGKILL) stops the server and everything it forked.

MLflow 3 opens an experiment in its GenAI view (traces) unless the URL asks for the classic one; the URL printed
is the `anima` experiment's runs table: `#/experiments/<id>/runs?workflowType=machine_learning` (the route and
parameter the bundled UI reads; its default otherwise comes from the browser's localStorage).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
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


def runs_view_url(url: str, experiment: str = "anima") -> str:
    """The runs table of `experiment` in MLflow 3's classic (machine learning) view; the experiments list in
    that view when the experiment does not exist (yet)."""
    query = "workflowType=machine_learning"
    lookup = f"{url}/api/2.0/mlflow/experiments/get-by-name?" + urllib.parse.urlencode({"experiment_name": experiment})
    try:
        with urllib.request.urlopen(lookup, timeout=10) as r:
            exp_id = json.load(r)["experiment"]["experiment_id"]
    except (OSError, ValueError, KeyError):
        return f"{url}/#/experiments?{query}"
    return f"{url}/#/experiments/{exp_id}/runs?{query}"


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


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
    parser.add_argument("--experiment", default="anima", help="experiment whose runs the printed URL opens")
    args = parser.parse_args(list(argv))
    root = project_root()
    if not (root / "mlruns" / "mlflow.db").is_file():
        raise AnimaError(f"no MLflow store at {root / 'mlruns' / 'mlflow.db'}: run a stage first "
                         "(e.g. `anima pipeline experiment=demo`)")
    url = f"http://{args.host}:{args.port}"
    print(f"anima ui: starting MLflow on {url} over {root / 'mlruns'} ...", flush=True)
    # SIGTERM/SIGHUP take the same way out as Ctrl-C, so `finally` stops the server's whole process group.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)
    proc = start(args.port, args.host, root, log=None)
    interrupted = False
    try:
        if not wait_ready(url, proc):
            raise AnimaError(f"mlflow server did not come up on {url} (port in use? try --port 5001)")
        print(f"anima ui: open {runs_view_url(url, args.experiment)}", flush=True)
        print(f"  (runs of experiment '{args.experiment}'; models: {url}/#/models?workflowType=machine_learning)."
              " Ctrl-C stops it.", flush=True)
        proc.wait()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        stop(proc)
    if interrupted:
        print("anima ui: stopped", flush=True)
        return 0
    return 0 if proc.returncode in (0, -signal.SIGTERM) else 1
