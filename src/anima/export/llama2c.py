"""Export a Llama model dir to Karpathy's llama2.c legacy format (version 0), read by run.c.

model.bin: 7 little-endian int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
seq_len; vocab_size negative when the classifier is not shared with the embedding), then fp32
arrays, each stacked over layers: token_embedding, rms_att, wq, wk, wv, wo, rms_ffn, w1 (gate),
w2 (down), w3 (up), rms_final, freq_cis_real, freq_cis_imag (seq_len x head_size/2 each; newer
run.c skips them and recomputes RoPE with theta 10000), then wcls if not shared. Q/K rows are
permuted from HF's rotate-half order to the interleaved pairs run.c rotates.

tokenizer.bin: int32 max_token_length, then per token: float32 score, int32 byte length, bytes;
SentencePiece's "▁" becomes a space, byte pieces stay as "<0xNN>" (run.c decodes them),
BOS/EOS become "\\n<s>\\n" / "\\n</s>\\n" as llama2.c's tokenizer.py writes them.

Known run.c limits (not fixable in the file format): it hard-codes RMSNorm eps 1e-5 and, in
newer versions, rope theta 10000; its encoder assumes byte pieces start at id 3 (Llama 2's
layout), so characters outside the vocab encode wrongly when a tokenizer has extra specials.
"""

from __future__ import annotations

import logging
import math
import struct
from pathlib import Path

import numpy as np

from anima.atomic import atomic_path
from anima.errors import ModelError
from anima.export.llama_source import LlamaSource, load_llama_source, permute_qk

log = logging.getLogger(__name__)

#: What llama2.c's run.c computes with, regardless of the file.
RUNC_ROPE_THETA = 10000.0
RUNC_RMS_EPS = 1e-5


def rope_tables(head_size: int, seq_len: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """freq_cis_real/imag as llama2.c's model.py `precompute_freqs_cis` builds them."""
    freqs = 1.0 / (theta ** (np.arange(0, head_size, 2)[: head_size // 2].astype(np.float32) / head_size))
    angles = np.outer(np.arange(seq_len, dtype=np.float32), freqs.astype(np.float32))
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def _check_runc_compatible(src: LlamaSource) -> None:
    cfg = src.model_dir / "config.json"
    if src.head_dim * src.n_heads != src.hidden_size:
        raise ModelError(
            f"{cfg}: head_dim={src.head_dim} x num_attention_heads={src.n_heads} != hidden_size={src.hidden_size}; "
            "llama2.c's run.c assumes head_size = dim / n_heads"
        )
    if not math.isclose(src.rope_theta, RUNC_ROPE_THETA):
        raise ModelError(
            f"{cfg}: rope_theta={src.rope_theta:g} but llama2.c's run.c hard-codes {RUNC_ROPE_THETA:g}; export GGUF instead"
        )
    if not math.isclose(src.rms_norm_eps, RUNC_RMS_EPS, rel_tol=1e-6):
        log.warning(
            "%s: rms_norm_eps=%g but llama2.c's run.c uses %g; logits will differ slightly",
            cfg,
            src.rms_norm_eps,
            RUNC_RMS_EPS,
        )


def _weights(src: LlamaSource) -> list[np.ndarray]:
    """The fp32 arrays in run.c's order (after the header)."""
    n = range(src.n_layers)
    cos, sin = rope_tables(src.head_dim, src.context_length, src.rope_theta)
    arrays = [src.embed]
    arrays += [src.layer(i, "input_layernorm") for i in n]
    arrays += [permute_qk(src.layer(i, "self_attn.q_proj"), src.n_heads) for i in n]
    arrays += [permute_qk(src.layer(i, "self_attn.k_proj"), src.n_kv_heads) for i in n]
    arrays += [src.layer(i, "self_attn.v_proj") for i in n]
    arrays += [src.layer(i, "self_attn.o_proj") for i in n]
    arrays += [src.layer(i, "post_attention_layernorm") for i in n]
    arrays += [src.layer(i, "mlp.gate_proj") for i in n]
    arrays += [src.layer(i, "mlp.down_proj") for i in n]
    arrays += [src.layer(i, "mlp.up_proj") for i in n]
    arrays += [src.tensors["model.norm.weight"], cos, sin]
    if not src.tied:
        arrays.append(src.tensors["lm_head.weight"])
    return arrays


def tokenizer_entries(src: LlamaSource) -> list[tuple[bytes, float]]:
    """(bytes, score) per token id, as llama2.c's tokenizer.py exports a SentencePiece model."""
    v = src.vocab
    out = []
    for i, (piece, score) in enumerate(zip(v.pieces, v.scores)):
        if i == v.bos_id:
            piece = "\n<s>\n"
        elif i == v.eos_id:
            piece = "\n</s>\n"
        out.append((piece.replace("\u2581", " ").encode("utf-8"), float(score)))
    return out


def _write_atomic(path: Path, chunks) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        for chunk in chunks:
            f.write(chunk)


def export_llama2c(
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    model_name: str = "model.bin",
    tokenizer_name: str = "tokenizer.bin",
) -> tuple[Path, Path]:
    """Write llama2.c's model.bin (legacy v0, fp32) and tokenizer.bin into `out_dir`; return both paths.

    Run them with `./run model.bin -z tokenizer.bin`.
    """
    src = load_llama_source(model_dir)
    _check_runc_compatible(src)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    vocab = src.vocab_size if src.tied else -src.vocab_size
    header = struct.pack(
        "<7i",
        src.hidden_size,
        src.intermediate_size,
        src.n_layers,
        src.n_heads,
        src.n_kv_heads,
        vocab,
        src.context_length,
    )
    model_bin = out_dir / model_name
    _write_atomic(
        model_bin,
        [header, *(np.ascontiguousarray(a, dtype="<f4").tobytes() for a in _weights(src))],
    )

    entries = tokenizer_entries(src)
    max_len = max(len(b) for b, _ in entries)
    tok_chunks = [struct.pack("<i", max_len)]
    for b, score in entries:
        tok_chunks.append(struct.pack("<fi", score, len(b)) + b)
    tokenizer_bin = out_dir / tokenizer_name
    _write_atomic(tokenizer_bin, tok_chunks)
    return model_bin, tokenizer_bin
