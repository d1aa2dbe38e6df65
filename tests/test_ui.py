"""`anima ui`: the MLflow UI over the project's store on 127.0.0.1; Ctrl-C stops it with no process left."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import NANO_FAST, compose_cfg


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes_with(text: str) -> list[int]:
    """pids whose command line contains `text` (read from /proc; nothing is killed by name)."""
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmd and "pytest" not in cmd:
                pids.append(int(p.name))
    return pids


def _wait_url(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        try:
            urllib.request.urlopen(url + "/health", timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not come up")


@pytest.mark.slow
def test_ui_serves_runs_and_stops_cleanly(project, raw_dir):
    import torch

    from anima.stages.train import train

    torch.set_num_threads(1)
    result = train(compose_cfg("pretrain", NANO_FAST + ["trainer.num_samples=0"], raw_dir), overrides=NANO_FAST)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "ANIMA_ROOT": str(project)}
    proc = subprocess.Popen([sys.executable, "-m", "anima", "ui", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        _wait_url(url, proc)
        assert _processes_with(f"--port {port}"), "mlflow server not found"
        body = json.dumps({"experiment_ids": ["0", "1"], "max_results": 10}).encode()
        req = urllib.request.Request(f"{url}/api/2.0/mlflow/runs/search", data=body,
                                     headers={"Content-Type": "application/json"})
        runs = json.load(urllib.request.urlopen(req, timeout=10))["runs"]
        assert result.run_id in [r["info"]["run_id"] for r in runs]
        run = next(r for r in runs if r["info"]["run_id"] == result.run_id)
        assert any(m["key"] == "val/loss" for m in run["data"]["metrics"])
        models = json.load(urllib.request.urlopen(f"{url}/api/2.0/mlflow/registered-models/search", timeout=10))
        assert "anima-nano" in [m["name"] for m in models["registered_models"]]
        html = urllib.request.urlopen(url + "/", timeout=10).read().decode()
        assert "<html" in html.lower() and "static-files" in html
        if shutil.which("chromium"):
            shot = project / "ui.png"
            subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                            "--window-size=1280,800", f"{url}/#/experiments/1"], timeout=60, capture_output=True)
            assert shot.is_file() and shot.stat().st_size > 10_000
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        out, _ = proc.communicate(timeout=30)
        assert "anima ui: open http://127.0.0.1" in out and "stopped" in out
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while _processes_with(f"--port {port}") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _processes_with(f"--port {port}"), "mlflow server processes left behind"
    with pytest.raises(OSError):
        urllib.request.urlopen(url + "/health", timeout=2)


def test_ui_refuses_a_project_without_store(project, capsys):
    from anima.cli import main

    assert main(["ui", "--port", str(_free_port())]) == 2
    assert "no MLflow store" in capsys.readouterr().err


def test_server_command_is_local_single_worker(project):
    from anima.stages.ui import server_command

    cmd, env = server_command(5999)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--workers") + 1] == "1"
    assert cmd[cmd.index("--backend-store-uri") + 1] == f"sqlite:///{project}/mlruns/mlflow.db"
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
