"""No secret in the record: URI passwords, secret query values and secret-named keys are masked wherever a run
writes text. The slow tests run the real CLI (so Hydra writes its own files) with one sentinel as every
secret, then grep every byte under the project's mlruns/, experiments/ and data/ for it."""

from __future__ import annotations

import getpass
import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from anima.tracking.redact import RedactingFilter, is_secret_key, redact, redact_overrides, redact_text
from tests.helpers import NANO_FAST, compose_cfg, postgres_url
from tests.helpers.servers import free_port, start_mlflow_server, stop_server

REPO = Path(__file__).resolve().parent.parent
ANIMA = [sys.executable, "-m", "anima"]
S = "s3ntinel-9f2c"

TEXT = [  # (input, redacted)
    (f"tracking.uri=http://anima:{S}@127.0.0.1:5000", "tracking.uri=http://anima:***@127.0.0.1:5000"),
    (f"sweep.storage=postgresql+psycopg2://u:{S}@db:5432/optuna",
     "sweep.storage=postgresql+psycopg2://u:***@db:5432/optuna"),
    (f"https://api.x.io/v1?api_key={S}&model=a", "https://api.x.io/v1?api_key=***&model=a"),
    (f"https://h/p?password={S}", "https://h/p?password=***"),
    (f"https://h/p?x=1&token={S}", "https://h/p?x=1&token=***"),
    (f"hf_token={S}", "hf_token=***"),
    (f"+teacher.openai_api_key='{S} x'", "+teacher.openai_api_key='***'"),
    (f"x={{api_key: {S}, kind: a}}", "x={api_key: ***, kind: a}"),
    (f'{{"password": "{S}"}}', '{"password": "***"}'),
    (f"sweep.overrides=[access_token={S},b=2]", "sweep.overrides=[access_token=***,b=2]"),
    # Hydra's multirun records overrides with ':' and '=' escaped
    (f"tracking.uri=http\\://anima\\:{S}@127.0.0.1\\:5000", "tracking.uri=http\\://anima\\:***@127.0.0.1\\:5000"),
    (f"hf_token\\={S}", "hf_token\\=***"),
    ("max_new_tokens=8 eos_token=</s> teacher.api_key_env=OPENAI_API_KEY", None),
    ("http://127.0.0.1:8080/v1 sqlite:///a/b.db models:/anima-tiny@champion", None),
]


@pytest.mark.parametrize("text,expected", TEXT)
def test_redact_text(text, expected):
    assert redact_text(text) == (text if expected is None else expected)


@pytest.mark.parametrize("key,secret", [
    ("api_key", True), ("teacher.openai_api_key", True), ("hf_token", True), ("access_token", True),
    ("password", True), ("db.passwd", True), ("client_secret", True), ("secret", True), ("+x.apiKey", True),
    ("aws_secret_access_key", True), ("max_new_tokens", False), ("eos_token", False), ("pad_token", False),
    ("api_key_env", False), ("tokenizer", False), ("key", False), ("sample_tokens", False),
])
def test_secret_key_names(key, secret):
    assert is_secret_key(key) is secret


def test_redact_config_and_overrides():
    cfg = {"tracking": {"uri": f"http://u:{S}@h:1"}, "hf_token": S, "password": 1234, "eos_token": "</s>",
           "ref": "${oc.env:HF_TOKEN}", "lst": ["a=1", f"token={S}"], "none": None, "api_key": None}
    out = redact(cfg)
    assert out == {"tracking": {"uri": "http://u:***@h:1"}, "hf_token": "***", "password": "***",
                   "eos_token": "</s>", "ref": "${oc.env:HF_TOKEN}", "lst": ["a=1", "token=***"], "none": None,
                   "api_key": None}
    assert redact_overrides([f"+hf_token={S}", f"tracking.uri=http://u:{S}@h", "optim.lr=3e-4"]) == \
        ["+hf_token=***", "tracking.uri=http://u:***@h", "optim.lr=3e-4"]


def test_log_filter_masks_messages_and_tracebacks(tmp_path):
    log = logging.getLogger("anima.test_secrets")
    handler = logging.FileHandler(tmp_path / "job.log")
    handler.addFilter(RedactingFilter())
    log.addHandler(handler)
    try:
        log.warning("connecting to %s", f"postgresql://u:{S}@db/x")
        try:
            raise RuntimeError(f"cannot open http://u:{S}@h/ with api_key={S}")
        except RuntimeError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
        handler.close()
    text = (tmp_path / "job.log").read_text()
    assert "postgresql://u:***@db/x" in text and "RuntimeError" in text and S not in text


def test_dataset_source_and_tags_are_redacted(project):
    import json

    import mlflow

    from anima.tracking.datasets import log_dataset_input
    from anima.tracking.run import stage_run

    overrides = ["registry.name=anima-nano", f"run_name=x-http://u:{S}@h"]
    cfg = compose_cfg("promote", overrides)
    with stage_run(cfg, overrides=overrides, extra_tags={"anima.where": f"s3://k:{S}@bucket/x"}) as run:
        log_dataset_input("remote", "f" * 64, f"https://u:{S}@data.example/set?token={S}", "train")
    got = mlflow.get_run(run.info.run_id)
    source = json.loads(got.inputs.dataset_inputs[0].dataset.source)["uri"]
    assert source == "https://u:***@data.example/set?token=***"
    assert got.info.run_name == "x-http://u:***@h" and got.data.tags["anima.where"] == "s3://k:***@bucket/x"
    assert S not in got.data.tags["anima.command"] and ":***@" in got.data.tags["anima.command"]


# ---------------------------------------------------------------- end to end, through the real CLI

def _anima(args: list[str], root: Path, env: dict[str, str] | None = None, timeout: int = 600):
    e = {**os.environ, "ANIMA_ROOT": str(root), **(env or {})}
    p = subprocess.run([*ANIMA, *args], cwd=REPO, env=e, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, \
        f"anima {' '.join(args[:2])} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


def _grep(root: Path, needle: str) -> tuple[list[str], int]:
    """Files under mlruns/, experiments/, data/ whose bytes hold `needle` (sqlite files included), and how many
    files were read."""
    hits, n = [], 0
    for top in ("mlruns", "experiments", "data"):
        for f in (root / top).rglob("*"):
            if f.is_file() and not f.is_symlink():
                n += 1
                if needle.encode() in f.read_bytes():
                    hits.append(str(f.relative_to(root)))
    return hits, n


def _start_mlflow_server(root: Path, port: int) -> subprocess.Popen:
    """A real MLflow tracking server whose store lives under the project's mlruns/ (so the grep covers it)."""
    return start_mlflow_server(root, port)


@pytest.mark.slow
def test_no_secret_under_the_project_pretrain_synth_multirun(project, raw_dir, monkeypatch):
    """pretrain and a --multirun against a real tracking server whose URI carries a password; synth with an API
    key and a base URL with credentials; nothing under mlruns/, experiments/ or data/ holds the sentinel."""
    import mlflow
    from mlflow import MlflowClient

    from anima.serve.server import start_server_thread
    from anima.stages.serve import build_app

    secret = f"{S}-{uuid.uuid4().hex[:8]}"
    port = free_port()
    server = _start_mlflow_server(project, port)
    uri = f"http://anima:{secret}@127.0.0.1:{port}"
    try:
        common = [f"tracking.uri={uri}", f"paths.raw_dir={raw_dir}"]
        _anima(["pretrain", *NANO_FAST, *common], project)

        # synth asks a live anima serve (in this process) for replies: key from the environment, URL credentials
        prompts = project / "prompts.txt"
        prompts.write_text("Hello, who are you?\nWhat is love?\n")
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        serve_cfg = compose_cfg("serve", [f"tracking.uri={uri}", "registry.name=anima-nano",
                                          "model=models:/anima-nano/1", "device.threads=1", "serve.compile=false"])
        app, _, _ = build_app(serve_cfg)
        with start_server_thread(app) as srv:
            base = urlsplit(srv.url)
            cred_url = urlunsplit((base.scheme, f"anima:{secret}@{base.netloc}", "/v1", "", ""))
            _anima(["synth", f"teacher.base_url={cred_url}", "teacher.model=anima-nano",
                    "teacher.api_key_env=ANIMA_TEST_SECRET_KEY", f"synth.prompts={prompts}", "synth.name=secret_test",
                    "sampling.max_new_tokens=4", "synth.min_success=0.5", *common], project,
                   env={"ANIMA_TEST_SECRET_KEY": secret})

        # a Hydra multirun (Hydra writes multirun.yaml itself) with the credentialed URI
        _anima(["promote", "--multirun", f"tracking.uri={uri}", "registry.name=anima-nano", "version=1",
                "alias=blue,green"], project)

        mlflow.set_tracking_uri(uri)
        runs = MlflowClient().search_runs([mlflow.get_experiment_by_name("anima").experiment_id])
    finally:
        stop_server(server)

    by_stage = {}
    for r in runs:
        by_stage.setdefault(r.data.tags["anima.stage"], []).append(r)
    assert {"pretrain", "synth", "promote"} <= set(by_stage), set(by_stage)
    assert all(r.info.status == "FINISHED" for r in runs)
    assert by_stage["pretrain"][0].info.run_name == "pretrain-nano-shakespeare-lr=5e-3-steps=4-bs=2"
    assert by_stage["pretrain"][0].data.params["tracking.uri"] == f"http://anima:***@127.0.0.1:{port}"
    synth = by_stage["synth"][0]
    assert synth.data.tags["anima.teacher.base_url"].startswith("http://anima:***@127.0.0.1:")
    assert synth.data.params["teacher.base_url"].startswith("http://anima:***@127.0.0.1:")
    assert "tracking.uri=http://anima:***@" in synth.data.tags["anima.command"]
    assert len(by_stage["promote"]) == 2 and {r.info.run_name for r in by_stage["promote"]} == {"promote-anima-nano-v1"}

    # Hydra's own files exist (redacted) and were read by the grep
    hydra_files = list((project / "experiments").rglob(".hydra/*.yaml"))
    assert len(hydra_files) >= 3 * 4, hydra_files  # pretrain, synth, two promote jobs
    multirun = list((project / "experiments").rglob("multirun.yaml"))
    assert multirun and "anima:***@" in multirun[0].read_text()
    assert any("anima:***@" in f.read_text() for f in hydra_files if f.name == "overrides.yaml")
    assert list((project / "experiments").rglob("*.log"))
    assert (project / "data" / "synth" / "secret_test.jsonl").is_file()
    hits, n = _grep(project, secret)
    assert n > 20 and (project / "mlruns" / "server.db").is_file()
    assert hits == [], f"the secret reached: {hits}"


def _credentialed(url: str, secret: str) -> str:
    parts = urlsplit(url)
    user = parts.username or getpass.getuser()
    host = parts.hostname or "127.0.0.1"
    netloc = f"{user}:{secret}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@pytest.mark.slow
@pytest.mark.postgres
def test_no_secret_under_the_project_sweep_with_postgres_credentials(project, raw_dir):
    """`anima sweep` with a PostgreSQL storage URL carrying a password (trust auth accepts any password)."""
    import mlflow

    secret = f"{S}-{uuid.uuid4().hex[:8]}"
    storage = _credentialed(postgres_url(), secret)  # skips when PostgreSQL is absent; fails under CI=true
    study = f"secret-{uuid.uuid4().hex[:8]}"
    _anima(["sweep", "sweep=nano_test", f"sweep.storage={storage}", f"sweep.study_name={study}", "sweep.n_trials=2",
            "sweep.top_k=1", "sweep.plots=false", f"paths.raw_dir={raw_dir}"], project)

    mlflow.set_tracking_uri(f"sqlite:///{project}/mlruns/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["anima"], output_format="list")
    parent = [r for r in runs if r.data.tags.get("anima.stage") == "sweep"]
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    assert parent[0].info.run_name == f"sweep-{study}"
    assert ":***@" in parent[0].data.params["sweep.storage"] and ":***@" in parent[0].data.tags["anima.command"]
    assert len(runs) >= 3  # the sweep and its trials
    hits, n = _grep(project, secret)
    assert n > 10 and list((project / "experiments").rglob(".hydra/overrides.yaml"))
    assert hits == [], f"the secret reached: {hits}"
