"""GGUF and llama2.c exports of a real nano Llama with a real SentencePiece tokenizer.

GGUF: written with gguf, loaded back with transformers' GGUF loader, logits compared.
llama2.c: files parsed back per run.c's layout; a numpy port of run.c's forward pass over the
.bin must reproduce the HF model's logits.
"""

from __future__ import annotations

import json
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from anima.errors import ConfigError, ModelError
from anima.export import GGUF_DTYPES, export_gguf, export_llama2c
from tests.helpers import require, require_module

torch = require_module("torch")  # skipped when absent; a failure under CI=true
spm = require_module("sentencepiece")
gguf = require_module("gguf")

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SAMPLE = "Permission is granted to use, copy and modify this software.\nThe Python license."

# Tolerances on (max, mean) |logit difference| over 21 positions x 400 logits. Measured on these
# deliberately "hot" nano models (weights ~N(0, 0.1), norms ~1 +- 0.2; logits std ~0.8, max ~3.6):
#   f32  max 0        mean 0        (bit-identical weights; brief: 1e-5)
#   f16  max 2.3-3.6e-3 mean 4-5e-4 (f16 rounds each weight by <= 2^-11 ~ 4.9e-4 relative; the max
#        over 8,400 logits exceeds STACK.md's 3e-3, measured on a trained model with smaller logits)
#   q8_0 max 0.05-0.075 mean ~0.011 (8-bit codes with one f16 scale per 32 weights: error up to
#        1/254 of each block's max, ~17x f16's per-weight error, matching the ~24x in the means)
# A wrong Q/K permutation, swapped tensor or vocab shift gives O(1) differences, far above these.
TOL = {"f32": (1e-5, 1e-6), "f16": (5e-3, 1e-3), "q8_0": (0.15, 0.03)}


def _license_text() -> str:
    candidates = [
        Path(sys.base_prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "LICENSE.txt",
        Path("/usr/lib/python3.11/LICENSE.txt"),
        Path("/usr/share/common-licenses/Apache-2.0"),
        Path("/usr/share/common-licenses/GPL-3"),
    ]
    for p in candidates:
        if p.is_file():
            return p.read_text(encoding="utf-8", errors="replace")
    require(False, "no local license text to train a tokenizer on")


def _build_hf_tokenizer(sp_path: Path, out_dir: Path) -> None:
    """tokenizer.json + tokenizer_config.json as STACK.md describes (matches SentencePiece)."""
    try:
        from anima.tokenizer.hf import build_hf_tokenizer  # type: ignore[import-not-found]
    except ImportError:
        build_hf_tokenizer = None
    if build_hf_tokenizer is not None:
        try:
            tok = build_hf_tokenizer(sp_path, chat_template=CHATML)
            tok.save_pretrained(out_dir)
            return
        except TypeError:
            pass
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import SentencePieceExtractor

    kw = SentencePieceExtractor(str(sp_path)).extract(models.BPE)
    bpe = models.BPE(vocab=kw["vocab"], merges=kw["merges"], unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    tk = Tokenizer(bpe)
    tk.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tk.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        add_bos_token=True,
        chat_template=CHATML,
    )
    fast.save_pretrained(out_dir)


def _make_model_dir(root: Path, sp_path: Path, tok_dir: Path, vocab: int, tied: bool, eps: float = 1e-5) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1234 + int(tied))
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=eps,
        tie_word_embeddings=tied,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # O(1) logits and non-trivial norms, so layout bugs show
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    d = root / ("tied" if tied else "untied")
    model.save_pretrained(d)
    for f in tok_dir.iterdir():
        shutil.copy(f, d / f.name)
    shutil.copy(sp_path, d / "tokenizer.model")
    (d / "anima.json").write_text(json.dumps({"chat_template": "chatml", "name": "anima-nano-test"}))
    return d


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("export")
    corpus = root / "corpus.txt"
    corpus.write_text(_license_text(), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(root / "sp"),
        model_type="bpe",
        vocab_size=400,
        byte_fallback=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        user_defined_symbols=["<|im_start|>", "<|im_end|>"],
        character_coverage=1.0,
        normalization_rule_name="identity",  # what the HF tokenizer reproduces (no NFKC, keep newlines)
        remove_extra_whitespaces=False,
        minloglevel=2,
    )
    sp_path = root / "sp.model"
    sp = spm.SentencePieceProcessor(model_file=str(sp_path))
    tok_dir = root / "tok"
    tok_dir.mkdir()
    _build_hf_tokenizer(sp_path, tok_dir)
    dirs = {tied: _make_model_dir(root, sp_path, tok_dir, sp.GetPieceSize(), tied) for tied in (True, False)}
    ids = [1] + sp.encode(SAMPLE)[:20]
    return {"root": root, "sp": sp, "sp_path": sp_path, "dirs": dirs, "ids": ids}


def _hf_logits(model_dir: Path, ids: list[int], **kw) -> np.ndarray:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, **kw).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


# --------------------------------------------------------------------------------------- GGUF


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("dtype", GGUF_DTYPES)
def test_gguf_roundtrip_logits(assets, tmp_path, dtype, tied):
    src = assets["dirs"][tied]
    out = export_gguf(src, tmp_path / "gguf" / f"model-{dtype}.gguf", dtype)
    assert out.is_file() and not list(out.parent.glob(".*tmp*"))
    assert (out.parent / "tokenizer.json").is_file()

    ref = _hf_logits(src, assets["ids"])
    got = _hf_logits(out.parent, assets["ids"], gguf_file=out.name)
    err, mean = float(np.abs(ref - got).max()), float(np.abs(ref - got).mean())
    top1 = float((ref.argmax(-1) == got.argmax(-1)).mean())
    print(f"gguf {dtype} tied={tied}: max|dlogit|={err:.3g} mean={mean:.2g} top1 agree={top1:.2f} (logit std {ref.std():.2f})")
    assert err <= TOL[dtype][0] and mean <= TOL[dtype][1], (err, mean)
    # same greedy predictions everywhere for the lossless formats
    if dtype != "q8_0":
        assert (ref.argmax(-1) == got.argmax(-1)).all()


def test_gguf_metadata_and_tokenizer(assets, tmp_path):
    from transformers import AutoTokenizer

    sp = assets["sp"]
    out = export_gguf(assets["dirs"][True], tmp_path / "m.gguf", "q8_0")
    r = gguf.GGUFReader(out)

    def field(key):
        f = r.fields[key]
        return f.contents()

    assert field("general.architecture") == "llama"
    assert field("general.name") == "anima-nano-test"
    assert field("llama.context_length") == 64
    assert field("llama.embedding_length") == 64
    assert field("llama.block_count") == 2
    assert field("llama.feed_forward_length") == 160
    assert field("llama.attention.head_count") == 4
    assert field("llama.attention.head_count_kv") == 2
    assert field("llama.rope.freq_base") == pytest.approx(10000.0)
    assert field("llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-5)
    assert field("llama.vocab_size") == sp.GetPieceSize()
    assert field("general.file_type") == int(gguf.LlamaFileType.MOSTLY_Q8_0)
    assert field("tokenizer.ggml.model") == "llama"
    assert field("tokenizer.ggml.tokens") == [sp.IdToPiece(i) for i in range(sp.GetPieceSize())]
    scores = field("tokenizer.ggml.scores")
    assert scores == pytest.approx([sp.GetScore(i) for i in range(sp.GetPieceSize())])
    types = field("tokenizer.ggml.token_type")
    assert types[0] == gguf.TokenType.UNKNOWN and types[1] == types[2] == types[3] == gguf.TokenType.CONTROL
    assert types[sp.PieceToId("<|im_start|>")] == gguf.TokenType.USER_DEFINED
    assert types[sp.PieceToId("<0x0A>")] == gguf.TokenType.BYTE
    assert (field("tokenizer.ggml.bos_token_id"), field("tokenizer.ggml.eos_token_id")) == (1, 2)
    assert (field("tokenizer.ggml.unknown_token_id"), field("tokenizer.ggml.padding_token_id")) == (0, 3)
    assert field("tokenizer.ggml.add_bos_token") is True
    assert field("tokenizer.chat_template") == CHATML

    tensors = {t.name: t for t in r.tensors}
    assert "output.weight" not in tensors  # tied: written once
    assert tensors["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    assert len(tensors) == 1 + 2 * 9 + 1

    # the tokenizer next to the file is the model's own: same ids as SentencePiece
    tok = AutoTokenizer.from_pretrained(out.parent)
    own = AutoTokenizer.from_pretrained(assets["dirs"][True])
    assert tok(SAMPLE)["input_ids"] == own(SAMPLE)["input_ids"]
    assert tok(SAMPLE, add_special_tokens=False)["input_ids"] == sp.encode(SAMPLE)
    assert tok.chat_template == CHATML


def test_gguf_bad_input(assets, tmp_path):
    src = assets["dirs"][True]
    with pytest.raises(ConfigError) as e:
        export_gguf(src, tmp_path / "x.gguf", "q4_k")
    assert "f32, f16, q8_0" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "x.gguf").exists()

    no_sp = tmp_path / "no_sp"
    shutil.copytree(src, no_sp)
    (no_sp / "tokenizer.model").unlink()
    with pytest.raises(ModelError, match="tokenizer.model") as e:
        export_gguf(no_sp, tmp_path / "x.gguf", "f16")
    assert "\n" not in str(e.value)
    with pytest.raises(ModelError, match="tokenizer.model"):
        export_llama2c(no_sp, tmp_path / "l2c")

    gpt = tmp_path / "gpt"
    shutil.copytree(src, gpt)
    cfg = json.loads((gpt / "config.json").read_text())
    cfg.update(model_type="gpt2", architectures=["GPT2LMHeadModel"])
    (gpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="model_type='gpt2'") as e:
        export_gguf(gpt, tmp_path / "x.gguf", "f32")
    assert "\n" not in str(e.value)
    with pytest.raises(ModelError, match="only Llama"):
        export_llama2c(gpt, tmp_path / "l2c")
    with pytest.raises(ModelError, match="does not exist"):
        export_gguf(tmp_path / "nope", tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists() and not (tmp_path / "l2c").exists()


# ----------------------------------------------------------------------------------- llama2.c


def _read_llama2c(model_bin: Path) -> tuple[dict, dict]:
    """Parse model.bin exactly as run.c's memory_map_weights does (GQA-aware version)."""
    raw = model_bin.read_bytes()
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = struct.unpack("<7i", raw[:28])
    shared = vocab > 0
    vocab = abs(vocab)
    head = dim // n_heads
    kv_dim = n_kv * head
    f = np.frombuffer(raw, dtype="<f4", offset=28)
    sizes = [
        ("emb", (vocab, dim)),
        ("rms_att", (n_layers, dim)),
        ("wq", (n_layers, dim, dim)),
        ("wk", (n_layers, kv_dim, dim)),
        ("wv", (n_layers, kv_dim, dim)),
        ("wo", (n_layers, dim, dim)),
        ("rms_ffn", (n_layers, dim)),
        ("w1", (n_layers, hidden, dim)),
        ("w2", (n_layers, dim, hidden)),
        ("w3", (n_layers, hidden, dim)),
        ("rms_final", (dim,)),
        ("freq_real", (seq_len, head // 2)),
        ("freq_imag", (seq_len, head // 2)),
    ]
    if not shared:
        sizes.append(("wcls", (vocab, dim)))
    w, pos = {}, 0
    for name, shape in sizes:
        n = int(np.prod(shape))
        w[name] = f[pos : pos + n].reshape(shape)
        pos += n
    assert pos == f.size, "trailing or missing data"
    if shared:
        w["wcls"] = w["emb"]
    cfg = dict(dim=dim, hidden=hidden, n_layers=n_layers, n_heads=n_heads, n_kv=n_kv, vocab=vocab, seq_len=seq_len)
    return cfg, {"shared": shared, **w}


def _runc_forward(cfg: dict, w: dict, tokens: list[int]) -> np.ndarray:
    """A numpy port of run.c's `forward` (one token at a time, KV cache, GQA, eps 1e-5)."""
    dim, n_heads, n_kv = cfg["dim"], cfg["n_heads"], cfg["n_kv"]
    head = dim // n_heads
    kv_dim, kv_mul = n_kv * head, n_heads // n_kv

    def rmsnorm(x, weight):
        return weight * (x / np.sqrt(np.mean(x * x) + 1e-5))

    def rope(v, pos):  # rotate adjacent pairs within each head
        v = v.copy()
        for i in range(0, v.size, 2):
            fcr = w["freq_real"][pos, (i % head) // 2]
            fci = w["freq_imag"][pos, (i % head) // 2]
            v0, v1 = v[i], v[i + 1]
            v[i], v[i + 1] = v0 * fcr - v1 * fci, v0 * fci + v1 * fcr
        return v

    kc = np.zeros((cfg["n_layers"], len(tokens), kv_dim), np.float32)
    vc = np.zeros_like(kc)
    out = []
    for pos, tok in enumerate(tokens):
        x = w["emb"][tok].astype(np.float32).copy()
        for l in range(cfg["n_layers"]):
            xb = rmsnorm(x, w["rms_att"][l])
            q = rope(w["wq"][l] @ xb, pos)
            kc[l, pos] = rope(w["wk"][l] @ xb, pos)
            vc[l, pos] = w["wv"][l] @ xb
            att_out = np.zeros(dim, np.float32)
            for h in range(n_heads):
                qh = q[h * head : (h + 1) * head]
                kvh = (h // kv_mul) * head
                scores = kc[l, : pos + 1, kvh : kvh + head] @ qh / np.sqrt(head)
                a = np.exp(scores - scores.max())
                a /= a.sum()
                att_out[h * head : (h + 1) * head] = a @ vc[l, : pos + 1, kvh : kvh + head]
            x = x + w["wo"][l] @ att_out
            xb = rmsnorm(x, w["rms_ffn"][l])
            h1 = w["w1"][l] @ xb
            h1 = h1 * (1.0 / (1.0 + np.exp(-h1))) * (w["w3"][l] @ xb)
            x = x + w["w2"][l] @ h1
        out.append(w["wcls"] @ rmsnorm(x, w["rms_final"]))
    return np.stack(out)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_llama2c_model_bin(assets, tmp_path, tied):
    from safetensors.torch import load_file

    src = assets["dirs"][tied]
    model_bin, tok_bin = export_llama2c(src, tmp_path / "l2c")
    assert model_bin.name == "model.bin" and tok_bin.name == "tokenizer.bin"
    assert not list(model_bin.parent.glob(".*tmp*"))
    cfg, w = _read_llama2c(model_bin)
    vocab = assets["sp"].GetPieceSize()
    assert cfg == dict(dim=64, hidden=160, n_layers=2, n_heads=4, n_kv=2, vocab=vocab, seq_len=64)
    # output id 1 is the end-of-turn token's row while input id 1 stays BOS: never a shared classifier
    assert w["shared"] is False
    assert struct.unpack("<i", model_bin.read_bytes()[20:24])[0] == -vocab
    order, eot, out_order = _runc_orders(src)

    # weights round-trip (the non-rotary ones bit-exactly); vocabulary rows in run.c's id order
    sd = {k: v.float().numpy() for k, v in load_file(str(src / "model.safetensors")).items()}
    embed = sd["model.embed_tokens.weight"]
    np.testing.assert_array_equal(w["emb"], embed[[1 if i == eot else o for i, o in enumerate(order)]])
    np.testing.assert_array_equal(w["wv"][1], sd["model.layers.1.self_attn.v_proj.weight"])
    np.testing.assert_array_equal(w["w2"][0], sd["model.layers.0.mlp.down_proj.weight"])
    np.testing.assert_array_equal(w["w3"][0], sd["model.layers.0.mlp.up_proj.weight"])
    np.testing.assert_array_equal(w["rms_final"], sd["model.norm.weight"])
    np.testing.assert_array_equal(w["wcls"], (embed if tied else sd["lm_head.weight"])[out_order])
    # Q/K are row permutations of HF's (same multiset of rows)
    q_hf = sd["model.layers.0.self_attn.q_proj.weight"]
    assert sorted(map(tuple, w["wq"][0].tolist())) == sorted(map(tuple, q_hf.tolist()))
    # freq tables equal what newer run.c recomputes: 1 / 10000^(head_dim / head_size)
    head = 16
    pos, j = np.meshgrid(np.arange(64), np.arange(head // 2), indexing="ij")
    ang = pos * (1.0 / 10000.0 ** (2 * j / head))
    np.testing.assert_allclose(w["freq_real"], np.cos(ang), atol=2e-6)
    np.testing.assert_allclose(w["freq_imag"], np.sin(ang), atol=2e-6)

    # run.c's math over the file reproduces the HF model (ids and logits mapped to run.c's order)
    ids = assets["ids"][:8]
    ref = _hf_logits(src, ids)[:, out_order]
    got = _runc_forward(cfg, w, [order.index(i) for i in ids])
    err = float(np.abs(ref - got).max())
    print(f"llama2.c tied={tied}: max|dlogit| vs HF = {err:.3g}")
    assert err < 1e-4


def _runc_orders(model_dir: Path) -> tuple[list[int], int, list[int]]:
    """(model id per run.c id, run.c's end-of-turn slot, model id of each run.c *output* row)."""
    from anima.export.llama2c import runc_layout
    from anima.export.llama_source import load_llama_source

    order, eot = runc_layout(load_llama_source(model_dir))
    assert order[:3] == [0, 1, 2] and eot is not None
    out_order = list(order)
    out_order[1], out_order[eot] = order[eot], 1
    return order, eot, out_order


def test_llama2c_tokenizer_bin(assets, tmp_path):
    sp = assets["sp"]
    _, tok_bin = export_llama2c(assets["dirs"][True], tmp_path)
    order, eot, _ = _runc_orders(assets["dirs"][True])
    raw = tok_bin.read_bytes()
    max_len = struct.unpack("<i", raw[:4])[0]
    pos, pieces, scores = 4, [], []
    for _ in range(sp.GetPieceSize()):  # run.c reads exactly vocab_size entries
        score, n = struct.unpack("<fi", raw[pos : pos + 8])
        pieces.append(raw[pos + 8 : pos + 8 + n])
        scores.append(score)
        pos += 8 + n
    assert pos == len(raw)
    assert max_len == max(len(p) for p in pieces)
    assert scores == pytest.approx([sp.GetScore(i) for i in order])
    assert pieces[1] == b"\n<s>\n" and pieces[2] == b"\n</s>\n" and pieces[0] == b"<unk>"
    # run.c encodes a byte b outside the vocabulary as id b + 3 (Llama 2's layout)
    assert [pieces[3 + b] for b in range(256)] == [f"<0x{b:02X}>".encode() for b in range(256)]
    assert order[eot] == sp.PieceToId("<|im_end|>") and pieces[eot] == b"\n<s>\n"  # its slot outputs BOS
    assert pieces[order.index(sp.PieceToId("<|im_start|>"))] == b"<|im_start|>"
    assert all(b"\xe2\x96\x81" not in p for p in pieces)  # no "▁" left

    # run.c's decode(): strip the space after BOS, turn <0xNN> into the raw byte
    def runc_decode(ids):
        out, prev = b"", 1
        for t in ids:
            p = pieces[t]
            if prev == 1 and p.startswith(b" "):
                p = p[1:]
            if len(p) == 6 and p.startswith(b"<0x") and p.endswith(b">"):
                p = bytes([int(p[3:5], 16)])
            out += p
            prev = t
        return out.decode("utf-8")

    text = SAMPLE + " \u00e9\u00e8 \u2603"  # accents and a snowman: byte fallback
    assert runc_decode([order.index(i) for i in sp.encode(text)]) == sp.decode(sp.encode(text))


def test_llama2c_rejects_what_runc_cannot_run(assets, tmp_path):
    d = tmp_path / "theta"
    shutil.copytree(assets["dirs"][True], d)
    cfg = json.loads((d / "config.json").read_text())
    params = cfg.get("rope_parameters") or {}
    params["rope_theta"] = 500000.0
    params.setdefault("rope_type", "default")
    cfg["rope_parameters"] = params
    cfg["rope_theta"] = 500000.0
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="rope_theta=500000") as e:
        export_llama2c(d, tmp_path / "out")
    assert "\n" not in str(e.value)
    # GGUF carries the theta in its metadata, so the same model exports there
    out = export_gguf(d, tmp_path / "g" / "m.gguf", "f32")
    assert gguf.GGUFReader(out).fields["llama.rope.freq_base"].contents() == pytest.approx(500000.0)


def test_llama2c_warns_on_eps_mismatch(assets, tmp_path, caplog):
    d = tmp_path / "eps"
    shutil.copytree(assets["dirs"][True], d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["rms_norm_eps"] = 1e-6  # transformers' LlamaConfig default; run.c uses 1e-5
    (d / "config.json").write_text(json.dumps(cfg))
    with caplog.at_level("WARNING", logger="anima.export.llama2c"):
        model_bin, _ = export_llama2c(d, tmp_path / "out")
    assert model_bin.is_file() and "rms_norm_eps=1e-06" in caplog.text
