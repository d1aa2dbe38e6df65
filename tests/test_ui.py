"""`anima ui`: the MLflow UI over the project's store on 127.0.0.1, printing the URL of the `anima` experiment's
runs table in MLflow 3's classic view (a headless Chromium renders it: the runs table with the run, not the GenAI
traces page); SIGTERM or Ctrl-C stops the server's whole process group."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import NANO_FAST, compose_cfg, require

RUNS_URL = re.compile(r"anima ui: open (http://127\.0\.0\.1:\d+/#/experiments/(\d+)/runs\?workflowType=machine_learning)")


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


def _group_of_children(pid: int) -> set[int]:
    """Every pid in the process groups of `pid`'s children (the mlflow server runs in its own group)."""
    stats = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(p.name)] = (int(fields[1]), int(fields[2]))  # (ppid, pgrp)
    groups = {pgrp for ppid, pgrp in stats.values() if ppid == pid} | {
        stats[c][1] for c, (ppid, _) in stats.items() if ppid == pid}
    return {q for q, (_, pgrp) in stats.items() if pgrp in groups}


def _alive(pids: set[int]) -> set[int]:
    """The pids that still exist and are not zombies."""
    left = set()
    for q in pids:
        try:
            state = Path(f"/proc/{q}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            left.add(q)
    return left


def _printed_url(proc: subprocess.Popen, timeout: float = 120) -> tuple[str, str]:
    """(runs URL, experiment id) from `anima ui`'s output, read line by line until it is printed."""
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        m = RUNS_URL.search(line)
        if m:
            return m.group(1), m.group(2)
    raise AssertionError(f"no runs URL printed: {''.join(seen)[-2000:]}")


def _chromium(url: str, shot: Path) -> str:
    """A headless Chromium screenshot of `url` (written to `shot`) and the DOM after the page's scripts ran."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    require(exe, "chromium is not installed (apt-get install chromium; .ci/run installs it)")
    flags = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,900",
             "--virtual-time-budget=20000", f"--user-data-dir={shot.parent / 'chromium-profile'}"]
    subprocess.run([*flags, f"--screenshot={shot}", url], timeout=120, capture_output=True)
    dom = subprocess.run([*flags, "--dump-dom", url], timeout=120, capture_output=True, text=True).stdout
    return dom


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
        runs_url, exp_id = _printed_url(proc)
        exp = json.load(urllib.request.urlopen(f"{url}/api/2.0/mlflow/experiments/get?experiment_id={exp_id}"))
        assert exp["experiment"]["name"] == "anima"
        shot = project / "ui.png"
        dom = _chromium(runs_url, shot)
        assert shot.is_file() and shot.stat().st_size > 10_000
        # The classic runs table: its "Run Name" column holding this run's name, and no GenAI overview/traces page
        assert "Run Name" in dom and run["info"]["run_name"] in dom, dom[-3000:]
        assert "Detect Issues" not in dom and "No data available for the selected time range" not in dom
        group = _group_of_children(proc.pid)
        assert len(group) >= 2, f"mlflow server and its worker expected in one group: {group}"
        proc.send_signal(signal.SIGTERM)  # a service manager's stop; Ctrl-C is the next test
        out, _ = proc.communicate(timeout=30)
        assert "stopped" in out and proc.returncode == 0, out
        deadline = time.monotonic() + 20
        while _alive(group) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _alive(group), f"left behind after SIGTERM: {_alive(group)}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while _processes_with(f"--port {port}") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _processes_with(f"--port {port}"), "mlflow server processes left behind"
    with pytest.raises(OSError):
        urllib.request.urlopen(url + "/health", timeout=2)


@pytest.mark.slow
def test_ui_ctrl_c_stops_the_process_group(project):
    from mlflow import MlflowClient

    (project / "mlruns").mkdir()
    client = MlflowClient(f"sqlite:///{project}/mlruns/mlflow.db")  # a real store with one experiment
    client.create_experiment("anima")
    port = _free_port()
    env = {**os.environ, "ANIMA_ROOT": str(project)}
    proc = subprocess.Popen([sys.executable, "-m", "anima", "ui", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        _printed_url(proc)
        group = _group_of_children(proc.pid)
        assert len(group) >= 2, group
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        out, _ = proc.communicate(timeout=30)
        assert "anima ui: stopped" in out and proc.returncode == 0, out
        deadline = time.monotonic() + 20
        while _alive(group) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _alive(group), f"left behind after Ctrl-C: {_alive(group)}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


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
