"""llama.cpp on anima's GGUF export: the same greedy completion as anima, token for token.

A real llama.cpp build (llama-simple: greedy sampling, BOS added as the GGUF says, every piece printed, stop at
end-of-generation tokens) runs the exported f32 file. Its output is the concatenation of the pieces of the ids it
tokenized and sampled, so it equals the pieces of anima's prompt ids + greedy ids exactly when both tokenize and
sample alike (BOS included: `<s>` is printed). CI builds llama.cpp from the pinned llama-cpp-python sdist into
.cache/llama.cpp (scripts/build_llama_cpp.sh); elsewhere set ANIMA_LLAMA_CPP_BIN or put llama-simple on PATH.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import REPO, require, require_module
from tests.helpers.models import build_hot_nano_model_dir

require_module("torch")
gguf = require_module("gguf")

PROMPTS = ["The quick brown fox", "ROMEO: What light through yonder", "Où est le château? ☃ naïve",
           "<|im_start|>user\nWhat is your name?<|im_end|>\n<|im_start|>assistant\n"]


def llama_cpp_tool(name: str) -> Path | None:
    """A llama.cpp executable: $ANIMA_LLAMA_CPP_BIN/<name>, .cache/llama.cpp/bin/<name>, or <name> on PATH."""
    for d in (os.environ.get("ANIMA_LLAMA_CPP_BIN"), REPO / ".cache" / "llama.cpp" / "bin"):
        if d and (Path(d) / name).is_file():
            return Path(d) / name
    found = shutil.which(name)
    return Path(found) if found else None


@pytest.fixture(scope="module")
def llama_simple() -> Path:
    exe = llama_cpp_tool("llama-simple")
    require(exe, "llama.cpp's llama-simple not found (bash scripts/build_llama_cpp.sh, or ANIMA_LLAMA_CPP_BIN)")
    return exe


def _pieces(model_dir: Path, ids: list[int]) -> bytes:
    """What llama.cpp's token_to_piece(special=true) prints for `ids` of an SPM vocabulary."""
    from anima.export.llama_source import TOKEN_BYTE, read_sp_vocab

    v = read_sp_vocab(model_dir / "tokenizer.model")
    out = b""
    for i in ids:
        p = v.pieces[i]
        out += bytes([int(p[3:5], 16)]) if v.types[i] == TOKEN_BYTE else p.replace("\u2581", " ").encode()
    return out


def _compare(exe: Path, model_dir: Path, gguf_path: Path, prompt: str, n: int = 24) -> None:
    from anima.generation.engine import ChatEngine
    from anima.generation.sampling import SamplingParams
    from anima.tokenizer.chat_template import stop_token_ids

    engine = ChatEngine(model_dir)
    c = engine.complete(prompt, SamplingParams(temperature=0, max_new_tokens=n))
    stops = set(stop_token_ids(engine.tokenizer, engine.template_name))
    generated = c.token_ids[:-1] if c.token_ids and c.token_ids[-1] in stops else c.token_ids
    assert c.prompt_ids[0] == engine.tokenizer.bos_token_id  # anima adds BOS; the GGUF must say so
    proc = subprocess.run([str(exe), "-m", str(gguf_path), "-n", str(n), prompt], capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    want = _pieces(model_dir, c.prompt_ids + generated)
    print(f"{prompt!r}: anima {c.token_ids} ({c.finish_reason}) -> llama.cpp {proc.stdout!r}")
    assert proc.stdout == want + b"\n"  # llama-simple ends with one newline


@pytest.mark.slow
def test_llama_cpp_greedy_matches_anima(llama_simple, tmp_path):
    from anima.export import export_gguf

    model_dir = build_hot_nano_model_dir(tmp_path / "model")
    path = export_gguf(model_dir, tmp_path / "out" / "hot-f32.gguf", "f32", name="hot-nano")
    fields = gguf.GGUFReader(path).fields
    assert fields["tokenizer.ggml.add_bos_token"].contents() is True
    assert fields["general.name"].contents() == "hot-nano"
    for prompt in PROMPTS:
        _compare(llama_simple, model_dir, path, prompt)


@pytest.mark.slow
def test_llama_cpp_on_the_exported_champion(llama_simple, tmp_path_factory, raw_dir, monkeypatch):
    """The registered champion (pretrained a few steps) through `anima export`: name, BOS, greedy text, and the
    printed llama-completion hint runs as printed (when that tool is built too)."""
    from anima.model.resolve import resolve_model
    from anima.stages.export import export, llama_cpp_hints
    from tests.helpers import compose_cfg
    from tests.helpers.champion import champion_project

    root, _ = champion_project(tmp_path_factory, raw_dir)
    monkeypatch.setenv("ANIMA_ROOT", str(root))
    cfg = compose_cfg("export", ["format=gguf", "export.dtype=f32", "export.log_artifacts=false"])
    res = export(cfg)
    path = res.files[0]
    assert gguf.GGUFReader(path).fields["general.name"].contents() == "anima-tiny"
    model_dir = resolve_model("models:/anima-tiny@champion", cfg.tracking).path
    for prompt in PROMPTS:
        _compare(llama_simple, model_dir, path, prompt)
    completion = llama_cpp_tool("llama-completion")
    if completion is not None:
        hint = next(h for h in llama_cpp_hints(path) if h.startswith("llama-completion"))
        argv = shlex.split(hint.split("#")[0].replace("-n 64", "-n 8"))
        proc = subprocess.run([str(completion), *argv[1:]], capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0 and proc.stdout.lstrip().startswith(b"Once upon a time"), proc.stderr[-2000:]
