"""Team mode for real: a fresh PostgreSQL database, `anima server` (a real `mlflow server` serving artifacts) on a
free loopback port, and project roots that share no files. Root A trains and registers, then is deleted; root B
(and root C, a second sweep worker) do everything else through the server. Faults: an unreachable database,
the server killed mid-run, a model download cut half-way."""

from __future__ import annotations

import http.client
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.helpers import NANO_FAST, REPO, postgres_url
from tests.helpers.servers import (fresh_database, free_port, kill_server, start_anima_server, start_mlflow_server,
                                   stop_server)

NAME = "anima-nano"
FAST = [*NANO_FAST, "device.threads=1", "trainer.num_samples=0"]
SWEEP = ["sweep=nano_test", "sweep.stage=sft", "sweep.n_trials=3", "sweep.top_k=0", "sweep.plots=false",
         "sweep.pruner=none", "sweep.n_startup_trials=1", "device.threads=1",
         "sweep.overrides=[" + ",".join(f"'{o}'" for o in ("model=nano", "trainer=smoke", "trainer.max_steps=4",
                                                           "trainer.num_samples=0", "tracking.log_checkpoints=false",
                                                           f"init_from=models:/{NAME}/1")) + "]"]


def anima(root: Path, *args: str, input: str | None = None, timeout: float = 600, check: bool = True):
    env = {**os.environ, "ANIMA_ROOT": str(root), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "anima", *args], cwd=REPO, env=env, input=input, capture_output=True,
                       text=True, timeout=timeout)
    print(f"anima {args[0]}: {time.monotonic() - t0:.1f}s (rc {p.returncode})")
    if check:
        assert p.returncode == 0, f"anima {' '.join(args[:2])} failed ({p.returncode}):\n{p.stdout[-3000:]}\n" \
                                  f"{p.stderr[-3000:]}"
    return p


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    """(tracking URI, Optuna storage URL): `anima server` on a fresh database; both databases dropped after."""
    url = postgres_url()  # skips when PostgreSQL is absent; fails under CI=true
    base = tmp_path_factory.mktemp("team-server")
    port = free_port()
    with fresh_database(url) as backend, fresh_database(url, "anima_team_optuna") as optuna_db:
        proc = start_anima_server(base / "root", port, backend, base / "artifacts")
        try:
            yield f"http://127.0.0.1:{port}", optuna_db
        finally:
            stop_server(proc)


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@pytest.mark.slow
@pytest.mark.postgres
def test_two_roots_share_nothing_but_the_server(team, tmp_path, raw_dir):
    uri, optuna_db = team
    common = ["tracking=server", f"tracking.uri={uri}", f"paths.raw_dir={raw_dir}"]
    root_a, root_b, root_c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for r in (root_a, root_b, root_c):
        r.mkdir()

    anima(root_a, "pretrain", *FAST, *common)
    c = _client(uri)
    v1 = c.get_model_version(NAME, "1")
    assert v1.source.startswith("mlflow-artifacts:/") and str(root_a) not in v1.source, v1.source
    shutil.rmtree(root_a)  # as on another machine: nothing of root A is left

    out = anima(root_b, "sft", *FAST, f"init_from=models:/{NAME}/1", *common).stdout
    assert f"models:/{NAME}/2" in out
    cache = root_b / "mlruns" / "cache" / "models" / NAME / "1"
    assert (cache / "config.json").is_file() and (cache / "model.safetensors").is_file()
    assert not list((root_b / "mlruns" / "cache" / ".partial").glob("*"))
    assert c.get_model_version(NAME, "2").tags["parent"] == f"models:/{NAME}/1"

    # two sweep workers in two roots share one study on PostgreSQL and the one tracking server
    args = [*SWEEP, f"sweep.storage={optuna_db}", "sweep.study_name=team", *common]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen([sys.executable, "-m", "anima", "sweep", *args, f"sweep.sampler_seed={i}"],
                                cwd=REPO, env={**env, "ANIMA_ROOT": str(r)}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for i, r in enumerate((root_b, root_c))]
    outs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [o[-3000:] for o in outs]
    _check_shared_study(c, optuna_db, outs)

    anima(root_b, "merge", f"registry.name={NAME}", "eval.max_examples=16", "eval.batch_size=8", *common)
    anima(root_b, "eval", f"registry.name={NAME}", "eval=smoke", "sampling.max_new_tokens=8", *common)
    anima(root_b, "promote", f"registry.name={NAME}", "eval.max_examples=16", "eval.batch_size=8", *common)
    champion = c.get_model_version_by_alias(NAME, "champion")
    chat = anima(root_b, "chat", f"model=models:/{NAME}@champion", "chat.compile=false", "chat.feedback=null",
                 "sampling.max_new_tokens=6", "device.threads=1", *common, input="Hello\n/quit\n").stdout
    # the champion resolved through the server answered a turn (the rating prompt follows a reply); the reply's
    # text is not asserted: this nano merge of a shared sweep differs run to run and may end at its first token
    assert f"chatting with models:/{NAME}/{champion.version}" in chat, chat[-2000:]
    assert re.search(r"^anima> ", chat, re.M) and "rate [y/n/s]" in chat, chat[-2000:]
    anima(root_b, "export", f"model=models:/{NAME}@champion", "export.verify=false", *common)
    assert list((root_b / "exports").rglob("*.gguf"))
    lineage = anima(root_b, "lineage", f"models:/{NAME}@champion", f"tracking.uri={uri}").stdout
    assert f"models:/{NAME}/1" in lineage and "pretrain" in lineage
    status = anima(root_b, "status", *common).stdout
    assert NAME in status and f"v{champion.version}" in status
    for mv in c.search_model_versions(f"name='{NAME}'"):  # no version names a path of one machine
        assert mv.source.startswith("mlflow-artifacts:/"), mv.source


def _check_shared_study(c, storage: str, outs: list[str]) -> None:
    """No trial lost or run twice; both workers ran trials; every trial is a child of the study's one run."""
    import optuna

    from anima.sweep.study import STUDY_RUN, make_storage

    study = optuna.load_study(study_name="team", storage=make_storage(storage, 60))
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2] and {t.state.name for t in trials} == {"COMPLETE"}
    ran = [o.count(" COMPLETE ") for o in outs]
    assert sum(ran) == 3 and min(ran) >= 1, outs
    parent = study.user_attrs[STUDY_RUN]
    exp = c.get_experiment_by_name("anima").experiment_id
    workers = c.search_runs([exp], "tags.`anima.stage` = 'sweep' and tags.`anima.sweep.study` = 'team'")
    assert len(workers) == 2 and parent in {w.info.run_id for w in workers}
    assert {w.data.tags["anima.sweep.study_run"] for w in workers} == {parent}
    for t in trials:
        run = c.get_run(t.user_attrs["run_id"])
        assert run.data.tags["mlflow.parentRunId"] == parent, (t.number, run.data.tags)


# ------------------------------------------------------------------------------------------------- faults
def test_unreachable_or_refused_database_is_one_line_fast(tmp_path):
    for backend in ("postgresql://127.0.0.1:1/mlflow", "postgresql://no_such_role_x:secret@127.0.0.1:5432/mlflow"):
        t0 = time.monotonic()
        p = anima(tmp_path, "server", f"server.backend_uri={backend}", f"server.port={free_port()}", check=False,
                  timeout=60)
        assert p.returncode == 2, (p.stdout, p.stderr)
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("anima: error: server.backend_uri=postgresql://"), p.stderr
        assert "secret" not in p.stderr and time.monotonic() - t0 < 20


@pytest.mark.slow
def test_server_killed_mid_run_is_one_line_and_resumable(tmp_path, raw_dir):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_mlflow_server(tmp_path, port)
    args = ["pretrain", *FAST, "trainer.max_steps=100000", "trainer.ckpt_every=5", "trainer.val_every=1000",
            "tracking=server", f"tracking.uri={uri}", f"paths.raw_dir={raw_dir}"]
    env = {**os.environ, "ANIMA_ROOT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "anima", *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while not list((tmp_path / "experiments").rglob("*.ckpt")) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.5)
        assert list((tmp_path / "experiments").rglob("*.ckpt")), "no checkpoint within 180 s"
    finally:
        kill_server(server)
    t0 = time.monotonic()
    out, err = proc.communicate(timeout=300)
    print(f"failed {time.monotonic() - t0:.1f}s after the server died")
    assert proc.returncode == 2, (out[-2000:], err[-3000:])
    assert "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"anima: error: tracking.uri={uri}: ") and "stopped answering" in last, err[-3000:]

    server = start_mlflow_server(tmp_path, port)  # same store: the run is still there, its checkpoint on disk
    try:
        c = _client(uri)
        exp = c.get_experiment_by_name("anima").experiment_id
        (killed,) = [r.info.run_id for r in c.search_runs([exp])]
        p = anima(tmp_path, *args, "resume=auto", "trainer.max_time=00:00:00:05", timeout=300)
        runs = c.search_runs([exp])
        assert [(r.info.run_id, r.info.status) for r in runs] == [(killed, "FINISHED")], runs  # the same run, ended
        assert f"run {killed}" in p.stdout, p.stdout[-2000:]
    finally:
        stop_server(server)


class _CutProxy(BaseHTTPRequestHandler):
    """Forwards to the tracking server, but sends only half of every model.safetensors download, then hangs up."""

    upstream: tuple[str, int] = ("127.0.0.1", 0)
    cut: list[str] = []

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        conn = http.client.HTTPConnection(*self.upstream, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "host")}
        conn.request(self.command, self.path, body=body or None, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command == "GET" and self.path.endswith("model.safetensors"):
            self.cut.append(self.path)
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

    def log_message(self, *a) -> None:  # quiet
        pass


def test_download_cut_half_way_leaves_no_cache(tmp_path, monkeypatch):
    """A download that breaks mid-file leaves neither a cache entry nor a partial folder; the next call
    downloads it whole. A dead process's leftover partial download is cleared too."""
    import mlflow
    from omegaconf import OmegaConf

    from anima.errors import AnimaError
    from anima.model.download import PARTIAL, cache_root
    from anima.model.resolve import resolve_model
    from anima.tracking.registry import log_model_dir, register_model
    from anima.tracking.store import setup_mlflow
    from tests.helpers.models import build_nano_model_dir

    monkeypatch.setenv("ANIMA_ROOT", str(tmp_path))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    port = free_port()
    server = start_mlflow_server(tmp_path / "server", port)
    proxy = None
    try:
        direct = OmegaConf.create({"uri": f"http://127.0.0.1:{port}", "artifact_root": None, "experiment": "anima"})
        setup_mlflow(direct)
        model_dir = build_nano_model_dir(tmp_path / "nano")
        with mlflow.start_run() as run:
            source = log_model_dir(model_dir)
        assert source.startswith("mlflow-artifacts:/"), source
        register_model(NAME, run.info.run_id, source, {"stage": "test"})

        _CutProxy.upstream = ("127.0.0.1", port)
        proxy = ThreadingHTTPServer(("127.0.0.1", 0), _CutProxy)
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        via_proxy = OmegaConf.create({**direct, "uri": f"http://127.0.0.1:{proxy.server_address[1]}"})
        dead = cache_root() / PARTIAL / "999999999-dead"
        dead.mkdir(parents=True)
        with pytest.raises(Exception) as e:
            resolve_model(f"models:/{NAME}/1", via_proxy)
        assert _CutProxy.cut, "the proxy never saw the weights download"
        print(f"cut download: {type(e.value).__name__}: {str(e.value)[:200]}")
        entry = cache_root() / "models" / NAME / "1"
        assert not entry.exists() and not dead.exists()
        assert not list((cache_root() / PARTIAL).glob("*"))

        got = resolve_model(f"models:/{NAME}/1", direct)
        assert got.path == entry and (entry / "model.safetensors").stat().st_size == \
            (model_dir / "model.safetensors").stat().st_size
        assert resolve_model(f"models:/{NAME}@latest", direct).path == entry  # a cache hit
        with pytest.raises(AnimaError, match="is not on this machine"):  # a file:// source of another machine
            from anima.model.resolve import _materialize
            _materialize(f"file://{tmp_path}/gone/model", "models/x/1", direct)
    finally:
        if proxy is not None:
            proxy.shutdown()
        stop_server(server)
