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
    assert "dim: 64" in proc.stdout and "lr: 0.0006" in proc.stdout
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
