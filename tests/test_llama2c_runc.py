"""llama2.c's own run.c (compiled here from the reference copy) on anima's model.bin/tokenizer.bin export.

run.c hard-codes Llama 2's layout (bytes from id 3, stop only at id 1); the export lays ids out for it. Checked
with the real binary: its encoder gives anima's token ids (non-ASCII prompts included), its greedy generation
is anima's token for token, and it stops where anima's end-of-turn token ends the reply.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import REPO, require, require_module
from tests.helpers.models import build_hot_nano_model_dir

require_module("torch")

PROMPTS = ["The quick brown fox", "What is your name?", "Où est le château? ☃ naïve", "Once upon a time"]
HARNESS = r"""
#define TESTING
#include RUN_C
/* argv: tokenizer.bin vocab_size prompt [model.bin steps]. Line 1: run.c's encode() ids of the prompt (with BOS);
   line 2 (with a model): the ids generate()'s greedy loop samples, with run.c's forward(), until id 1 or steps. */
int main(int argc, char **argv) {
    Tokenizer t; build_tokenizer(&t, argv[1], atoi(argv[2]));
    int n = 0; int *ids = malloc((strlen(argv[3]) + 3) * sizeof(int));
    encode(&t, argv[3], 1, 0, ids, &n);
    for (int i = 0; i < n; i++) printf("%d ", ids[i]);
    printf("\n");
    if (argc < 6) return 0;
    Transformer tr; build_transformer(&tr, argv[4]);
    int token = ids[0], steps = atoi(argv[5]);
    for (int pos = 0; pos < steps; pos++) {
        float *logits = forward(&tr, token, pos);
        int next = pos < n - 1 ? ids[pos + 1] : sample_argmax(logits, tr.config.vocab_size);
        if (next == 1) break;
        if (pos >= n - 1) printf("%d ", next);
        token = next;
    }
    printf("\n"); return 0;
}
"""

def run_c_source() -> Path | None:
    """llama2.c's run.c: $ANIMA_LLAMA2C_RUN_C, the shared reference copy, or .cache/llama2.c (CI fetches it)."""
    for p in (os.environ.get("ANIMA_LLAMA2C_RUN_C"), "/work/shared/anchors/llama2.c/run.c",
              REPO / ".cache" / "llama2.c" / "run.c"):
        if p and Path(p).is_file():
            return Path(p)
    return None


@pytest.fixture(scope="module")
def runc(tmp_path_factory):
    """(run binary, encode harness binary) built with gcc from run.c."""
    src = run_c_source()
    require(src, "llama2.c's run.c not found (set ANIMA_LLAMA2C_RUN_C; .ci/run fetches it into .cache/llama2.c)")
    cc = shutil.which("gcc") or shutil.which("cc")
    require(cc, "no C compiler (gcc) to build llama2.c's run.c")
    out = tmp_path_factory.mktemp("runc")
    (out / "harness.c").write_text(HARNESS)
    subprocess.run([cc, "-O2", "-o", str(out / "run"), str(src), "-lm"], check=True, capture_output=True)
    subprocess.run([cc, "-O2", f'-DRUN_C="{src}"', "-o", str(out / "encode"), str(out / "harness.c"), "-lm"],
                   check=True, capture_output=True)
    return out / "run", out / "encode"


def _anima_greedy(model_dir: Path, prompt: str, n: int):
    from anima.generation.engine import ChatEngine
    from anima.generation.sampling import SamplingParams

    return ChatEngine(model_dir).complete(prompt, SamplingParams(temperature=0, max_new_tokens=n))


def _runc_text(entries, ids: list[int]) -> bytes:
    """What run.c prints for run.c ids (prompt then generated): decode() + safe_printf()."""
    out, prev = b"", ids[0]
    for t in ids[1:]:
        p = entries[t][0]
        if prev == 1 and p.startswith(b" "):
            p = p[1:]
        if len(p) == 6 and p.startswith(b"<0x") and p.endswith(b">"):
            b = int(p[3:5], 16)
            p = bytes([b]) if (32 <= b < 127 or b in b"\t\n\v\f\r") else b""
        out += p
        prev = t
    return out


@pytest.mark.slow
def test_runc_encodes_and_generates_like_anima(runc, tmp_path):
    from anima.export import export_llama2c
    from anima.export.llama2c import runc_layout, tokenizer_entries
    from anima.export.llama_source import load_llama_source
    from anima.tokenizer.hf import load_tokenizer

    run, encode = runc
    model_dir = build_hot_nano_model_dir(tmp_path / "model")
    model_bin, tok_bin = export_llama2c(model_dir, tmp_path / "l2c")
    src = load_llama_source(model_dir)
    order, eot = runc_layout(src)
    entries = tokenizer_entries(src, order, eot)
    to_runc = {old: new for new, old in enumerate(order)}
    tok = load_tokenizer(model_dir)
    for prompt in PROMPTS:
        got = subprocess.run([encode, tok_bin, str(src.vocab_size), prompt], capture_output=True, text=True,
                             check=True).stdout.split()
        want = [to_runc[i] for i in tok.encode(prompt)]
        assert [int(i) for i in got] == want, prompt  # byte fallbacks included (é, ☃ are not in the vocab)

        _check_generation(runc, model_bin, tok_bin, model_dir, prompt, entries, to_runc)


def _check_generation(runc, model_bin, tok_bin, model_dir, prompt, entries, to_runc) -> list[int]:
    """run.c's greedy output is anima's, token for token (as text: run.c prints pieces, not ids); when anima's
    reply ends with <|im_end|>, run.c stops there by itself although it is allowed 16 more steps."""
    run, encode = runc
    c = _anima_greedy(model_dir, prompt, 24)
    ids = [to_runc[i] for i in c.prompt_ids + c.token_ids]
    eot_old = next(old for old, new in to_runc.items() if entries[new][0] == b"\n<s>\n" and new != 1)
    ended = c.finish_reason == "stop" and c.token_ids[-1] == eot_old  # run.c samples it as id 1 and stops
    steps = len(ids) - 1 + (16 if ended else 0)  # run.c samples one token per position, the last one included
    harness = subprocess.run([encode, tok_bin, str(len(entries)), prompt, model_bin, str(steps)],
                             capture_output=True, text=True, check=True).stdout.splitlines()
    generated = ids[len(c.prompt_ids):len(ids) - 1] if ended else ids[len(c.prompt_ids):]
    assert [int(i) for i in harness[1].split()] == generated  # token for token, byte tokens included
    if c.finish_reason == "stop" and not ended:  # a ChatML model's </s>: anima stops there, run.c goes on
        steps = len(ids) - 1
    out = subprocess.run([run, model_bin, "-z", tok_bin, "-t", "0", "-n", str(steps), "-i", prompt],
                         capture_output=True, check=True).stdout
    print(f"{prompt!r}: anima {c.token_ids} ({c.finish_reason}) -> run.c {out!r}")
    want = _runc_text(entries, ids[:-1] if ended else ids)
    if c.finish_reason == "stop" and not ended:  # a ChatML model's </s>: anima stops, run.c prints it, goes on
        assert out.startswith(want + b"\n</s>\n")
    else:
        assert out.rstrip(b"\n") == want
    return c.token_ids


@pytest.mark.slow
def test_runc_stops_at_the_end_of_turn(runc, tmp_path):
    """<|im_end|>'s output row is made likely (a scaled copy of a token anima generates), so the reply ends."""
    from safetensors.torch import load_file, save_file

    from anima.export import export_llama2c
    from anima.export.llama2c import runc_layout, tokenizer_entries
    from anima.export.llama_source import load_llama_source
    from anima.tokenizer.hf import load_tokenizer

    model_dir = build_hot_nano_model_dir(tmp_path / "model")
    im_end = load_tokenizer(model_dir).convert_tokens_to_ids("<|im_end|>")
    first = _anima_greedy(model_dir, PROMPTS[0], 24).token_ids
    weights = load_file(str(model_dir / "model.safetensors"))
    weights["lm_head.weight"][im_end] = weights["lm_head.weight"][first[6]] * 1.5
    save_file(weights, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    c = _anima_greedy(model_dir, PROMPTS[0], 24)
    assert c.finish_reason == "stop" and c.token_ids[-1] == im_end, c.token_ids

    model_bin, tok_bin = export_llama2c(model_dir, tmp_path / "l2c")
    src = load_llama_source(model_dir)
    order, eot = runc_layout(src)
    assert order[eot] == im_end
    to_runc = {old: new for new, old in enumerate(order)}
    _check_generation(runc, model_bin, tok_bin, model_dir, PROMPTS[0], tokenizer_entries(src, order, eot), to_runc)
