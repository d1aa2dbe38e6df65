"""`anima export` end to end on a pretrained champion: GGUF written under exports/<name>-v<version>/, loaded back
by transformers with logits compared, llama2.c files checked against config.json, and both logged as artifacts
on the run that produced the model; the real CLI prints paths and how to run them with llama.cpp / run.c."""

from __future__ import annotations

import struct

import pytest

from tests.helpers import compose_cfg
from tests.helpers.champion import anima, champion_project

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def champ(tmp_path_factory, raw_dir):
    return champion_project(tmp_path_factory, raw_dir)


def _artifacts(run_id: str, path: str) -> set[str]:
    from mlflow import MlflowClient

    return {a.path.rsplit("/", 1)[-1] for a in MlflowClient().list_artifacts(run_id, path)}


@pytest.mark.parametrize("dtype", ["f16", "q8_0"])
def test_gguf_roundtrip_through_the_stage(champ, monkeypatch, dtype):
    from mlflow import MlflowClient

    from anima.stages.export import export

    root, run_id = champ
    monkeypatch.setenv("ANIMA_ROOT", str(root))
    res = export(compose_cfg("export", ["model=models:/anima-tiny@champion", "format=gguf", f"export.dtype={dtype}"]))
    out = root / "exports" / "anima-tiny-v1" / f"anima-tiny-v1-{dtype}.gguf"
    assert res.files == [out] and out.is_file() and (out.parent / "tokenizer.json").is_file()
    assert res.source_uri == "models:/anima-tiny/1"
    print(f"gguf {dtype}: max |logit diff| = {res.max_logit_diff:.3g}")
    assert res.max_logit_diff is not None and res.max_logit_diff < {"f16": 0.05, "q8_0": 0.5}[dtype]
    assert res.logged_to_run == run_id and out.name in _artifacts(run_id, "exports/gguf")
    mv = MlflowClient().get_model_version("anima-tiny", "1")
    assert mv.tags[f"export_gguf_{dtype}"] == str(out)
    assert float(mv.tags[f"export_gguf_{dtype}_max_logit_diff"]) == pytest.approx(res.max_logit_diff, rel=1e-2)


def test_llama2c_through_the_cli(champ):
    root, run_id = champ
    proc = anima(root, "export", "format=llama2c")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = root / "exports" / "anima-tiny-v1"
    model_bin, tok_bin = out / "model.bin", out / "tokenizer.bin"
    assert str(model_bin) in proc.stdout and str(tok_bin) in proc.stdout and "./run" in proc.stdout
    from anima.export.llama2c import RUNC_LIMITS

    assert "what run.c cannot do" in proc.stdout and all(limit in proc.stdout for limit in RUNC_LIMITS)
    dim, hidden, layers, heads, kv, vocab, seq = struct.unpack("<7i", model_bin.read_bytes()[:28])
    assert (dim, layers, heads, kv, seq) == (64, 2, 4, 4, 128) and vocab <= -262  # own classifier: id 1 = end of turn
    assert {"model.bin", "tokenizer.bin"} <= _artifacts(run_id, "exports/llama2c")


def test_export_cli_prints_llama_cpp_usage_and_rejects_bad_input(champ, monkeypatch, capsys):
    from anima.cli import main

    root, _ = champ
    proc = anima(root, "export", "export.dtype=f32")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "llama-cli -m" in proc.stdout and "max |logit difference|" in proc.stdout
    # current llama.cpp: llama-cli always chats (-cnv is gone from it); plain completion is llama-completion
    assert "-cnv" not in next(ln for ln in proc.stdout.splitlines() if "llama-cli" in ln)
    assert "llama-completion -m" in proc.stdout and "-no-cnv" in proc.stdout
    monkeypatch.setenv("ANIMA_ROOT", str(root))
    for args, expected in ((["export", "export.dtype=q4"], "export.dtype='q4' is not one of f32, f16, q8_0"),
                           (["export", "format=onnx"], "format='onnx' is not one of gguf, llama2c")):
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err
    with pytest.raises(SystemExit):
        main(["export", "model=models:/anima-tiny@nope"])
    assert "@champion (v1)" in capsys.readouterr().err
