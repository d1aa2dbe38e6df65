"""The CLI's contract: fast help without heavy imports, one-line errors with non-zero exit, Hydra flags."""

from __future__ import annotations

import subprocess
import sys

import pytest

from anima.cli import main

HEAVY = ("torch", "lightning", "mlflow", "transformers")


def _anima(*args: str, env_root=None) -> subprocess.CompletedProcess:
    import os

    env = dict(os.environ)
    if env_root:
        env["ANIMA_ROOT"] = str(env_root)
    return subprocess.run([sys.executable, "-m", "anima", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_help_lists_stages_without_heavy_imports():
    code = ("import sys, anima.cli as c; c.main(['--help']); "
            f"print('HEAVY', [m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "pretrain" in out and "tokenizer" in out and "status" in out
    assert "HEAVY []" in out


def test_unknown_stage_is_one_line_error(capsys):
    assert main(["nosuchstage"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nosuchstage" in err


@pytest.mark.parametrize(
    "override, expected",
    [
        ("foo=1", "foo"),
        ("optim.lr=-1", "optim.lr=-1.0 must be > 0"),
        ("optim.lr=fast", "optim.lr"),
        ("model.vocab_size=100", "model.vocab_size=100 must be >= 262"),
        ("device.precision=fp8", "device.precision"),
        ("trainer.max_time=soon", "trainer.max_time"),
        ("model=gigantic", "gigantic"),
    ],
)
def test_bad_overrides_fail_before_work_naming_the_key(project, override, expected):
    proc = _anima("pretrain", override, env_root=project)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("anima: error:") and expected in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (project / "mlruns").exists()  # nothing started


def test_cfg_job_prints_composed_config(project):
    proc = _anima("pretrain", "model=nano", "--cfg", "job", env_root=project)
    assert proc.returncode == 0, proc.stderr
    assert "dim: 64" in proc.stdout and "lr: 0.005" in proc.stdout and "name: muon" in proc.stdout
    assert not (project / "mlruns").exists()


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("anima: error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_missing_data_file(project):
    proc = _anima("pretrain", "model=nano", f"data.sources.plays.path={project}/nowhere", env_root=project)
    assert f"{project}/nowhere does not exist" in _one_error_line(proc)


def test_empty_corpus(project):
    (project / "empty").mkdir()
    (project / "empty" / "a.txt").write_text("  \n")
    proc = _anima("pretrain", "model=nano", "data.sources.plays.kind=text",
                  f"data.sources.plays.path={project}/empty", env_root=project)
    assert "corpus is empty" in _one_error_line(proc)


def test_vocab_the_corpus_cannot_support(project):
    (project / "small").mkdir()
    (project / "small" / "a.txt").write_text("to be or not to be, that is the question\n" * 50)
    (project / "small" / "b.txt").write_text("whether tis nobler in the mind to suffer\n" * 50)
    proc = _anima("tokenizer", "tokenizer.vocab_size=4096", "data.sources.plays.kind=text",
                  f"data.sources.plays.path={project}/small", "data.split.holdout=[b]", env_root=project)
    line = _one_error_line(proc)
    assert "tokenizer.vocab_size" in line and "4096" in line
    assert not list((project / "data" / "cache" / "tokenizers").glob("v4096*"))  # nothing half-written


@pytest.mark.slow
def test_multirun_trains_one_run_per_value(project, raw_dir):
    proc = _anima("pretrain", "--multirun", "model=nano", "trainer=smoke", "optim.lr=1e-3,3e-3",
                  f"paths.raw_dir={raw_dir}", "trainer.progress=none", env_root=project)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("✓ pretrain run") == 2
    assert "models:/anima-nano/2" in proc.stdout


# ------------------------------------------------------------------ user configs, command-line sources, bad inputs
def _main(capsys, *args: str) -> tuple[int, str]:
    """`anima <args>` in this process: (exit status, the single `anima: error:` line or '')."""
    try:
        code = main(list(args))
    except SystemExit as e:  # an error inside the Hydra task exits with the CLI's status
        code = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("anima: error:")]
    assert len(lines) <= 1, err
    return code, (lines[0] if lines else "")


def _talk(path, *pairs: tuple[str, str]):
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": a}]}) + "\n"
                            for q, a in pairs))
    return path


@pytest.fixture
def user_mix(project):
    """conf.local/ (the default user config dir, under the project root): data/mine.yaml with two real sources and
    experiment/mine.yaml that picks it and re-weights one."""
    talk = _talk(project / "mine" / "talk.jsonl", ("hello there", "good day to you, friend"),
                 ("what is your name", "they call me anima, a small model"),
                 ("do you like plays", "the play is the thing, good sir"))
    more = _talk(project / "mine" / "more.jsonl", ("is it raining", "not a drop since morning"))
    (project / "conf.local" / "data").mkdir(parents=True)
    (project / "conf.local" / "data" / "mine.yaml").write_text(
        f"name: mine\nkind: chat\nsources:\n  talk: {{kind: jsonl_chat, path: {talk}}}\n"
        f"  more: {{kind: jsonl_chat, path: {more}}}\nsplit: {{val: 0.0, test: 0.0}}\n")
    (project / "conf.local" / "experiment").mkdir()
    (project / "conf.local" / "experiment" / "mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /data: mine\n  - _self_\ndata:\n  sources:\n"
        "    talk: {weight: 2}\n")
    return project


def _processed_files(project) -> list:
    return [p for p in (project / "data" / "processed").rglob("*") if p.is_file()]


def test_user_mix_with_sources_changed_on_the_command_line_builds(user_mix, capsys):
    import json

    extra = _talk(user_mix / "extra.jsonl", ("how old are you", "older than the hills, younger than the sea"))
    code, err = _main(capsys, "data", "+experiment=mine", "~data.sources.more",
                      f"+data.sources.extra={{kind: jsonl_chat, path: {extra}}}", "data.sources.extra.weight=0.5")
    assert code == 0, err
    (manifest,) = (user_mix / "data" / "processed" / "mine").glob("*/manifest.json")
    m = json.loads(manifest.read_text())
    assert set(m["sources"]) == {"talk", "extra"}
    assert (m["sources"]["talk"]["weight"], m["sources"]["extra"]["weight"]) == (2.0, 0.5)
    assert m["counts"]["sources"]["extra"]["in"] == 1 and m["counts"]["sources"]["talk"]["in"] == 3


def test_empty_source_or_dataset_fails_in_one_line(user_mix, capsys):
    empty = user_mix / "empty.jsonl"
    empty.write_text("\n")
    code, err = _main(capsys, "data", "data=mine", f"+data.sources.nothing={{kind: jsonl_chat, path: {empty}}}")
    assert (code, err) == (2, f"anima: error: data source 'nothing' ({empty}) yielded no records")
    assert _processed_files(user_mix) == []
    # every source read, but nothing survives: the mix as a whole is empty
    code, err = _main(capsys, "data", "data=mine", "data.clean.min_example_chars=5000")
    assert code == 2
    assert err.startswith("anima: error: data=mine: the dataset is empty") and "'talk' 3 read (too_short 3)" in err
    assert _processed_files(user_mix) == []


def test_unreachable_tracking_server_fails_fast_in_one_line(user_mix, capsys, monkeypatch):
    import socket
    import time

    for var in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "MLFLOW_HTTP_REQUEST_TIMEOUT",
                "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)  # restored (unset) after the test
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    t0 = time.monotonic()
    code, err = _main(capsys, "data", "data=mine", f"tracking.uri=http://user:pw@127.0.0.1:{port}")
    assert time.monotonic() - t0 < 10
    assert code == 2
    assert err.startswith(f"anima: error: tracking.uri=http://user:***@127.0.0.1:{port}: cannot reach the MLflow "
                          "tracking server")
    assert not (user_mix / "mlruns").exists() and _processed_files(user_mix) == []


@pytest.mark.parametrize("args, expected", [
    (["optim.lr=-1,1e-3"], "anima: error: optim.lr=-1.0 must be > 0"),
    (["foo=1,2"], "anima: error: Could not override 'foo'. Key 'foo' not in 'TrainConfig'"),
    (["model=nano,gigantic"], "anima: error: In 'pretrain': Could not find 'model/gigantic' Available options"),
    (["optim.lr=1e-3", "trainer.batch_size=4,0"], "anima: error: trainer.batch_size=0 must be >= 1"),
])
@pytest.mark.parametrize("flag", ["--multirun", "-m"])
def test_multirun_errors_are_one_line_before_any_job(project, capsys, flag, args, expected):
    code, err = _main(capsys, "pretrain", flag, "model=nano", *args)
    assert code == 2 and err.startswith(expected), err
    assert not (project / "experiments").exists() and not (project / "mlruns").exists()


def test_cfg_job_shows_sources_added_on_the_command_line(project, capsys):
    assert main(["data", "data=chat_mix", "+data.sources.mine={kind: jsonl_chat, path: my.jsonl}",
                 "data.sources.mine.weight=2", "~data.sources.coding", "--cfg", "job"]) == 0
    out = capsys.readouterr().out
    assert "    mine:\n      kind: jsonl_chat\n      path: my.jsonl\n      weight: 2.0\n" in out
    assert "    coding:" not in out and "    emotion:" in out
