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

run.c hard-codes Llama 2's vocabulary layout: BOS is id 1, EOS id 2, its encoder writes a byte b
that is not in the vocab as id b + 3, and `generate` stops only when it samples id 1. anima's
vocabulary puts <pad> and the chat tokens at 3-5 and the bytes after them, and ends chat turns with
<|im_end|> (or EOS). So the token ids of model.bin are a permutation of the model's (see
`runc_layout`): the 256 byte pieces move to 3..258, and *output* id 1 is the end-of-turn token's
classifier row (input id 1 stays BOS's embedding), so run.c stops exactly where anima stops. What
run.c still cannot do is listed in `RUNC_LIMITS` (printed by `anima export format=llama2c`).
It also hard-codes RMSNorm eps 1e-5 and, in newer versions, rope theta 10000.
"""

from __future__ import annotations

import logging
import math
import struct
from pathlib import Path

import numpy as np

from anima.atomic import atomic_path
from anima.errors import ModelError
from anima.export.llama_source import TOKEN_BYTE, LlamaSource, SpVocab, load_llama_source, permute_qk

log = logging.getLogger(__name__)

#: What llama2.c's run.c computes with, regardless of the file.
RUNC_ROPE_THETA = 10000.0
RUNC_RMS_EPS = 1e-5
#: Ids run.c hard-codes (Llama 2's): BOS, EOS, and where its byte fallback starts.
RUNC_BOS, RUNC_EOS, RUNC_FIRST_BYTE = 1, 2, 3

#: What run.c (github.com/karpathy/llama2.c) cannot do with an anima model, whatever the export writes.
RUNC_LIMITS: tuple[str, ...] = (
    "prompts are plain text: run.c cannot encode special tokens, so a ChatML prompt (<|im_start|>...) cannot be "
    "written; a qa-template model's 'Q: ...\\nA:' prompt can",
    "generation stops at the end-of-turn token only (<|im_end|> for ChatML models, </s> for qa); "
    "a ChatML model's </s> is printed as text and generation goes on",
    "characters outside the vocabulary are generated as byte tokens, which run.c does not print "
    "(its safe_printf drops non-printable single bytes)",
    "'-m chat' renders Llama 2's [INST] template, which anima models were not trained on: use generate mode",
    "token ids in model.bin are a permutation of the model's (bytes at 3..258; output id 1 = end of turn)",
)


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


def _vocab_rows(src: LlamaSource, order: list[int], eot: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    """(embedding, classifier or None when shared) with rows in run.c's id order. With an end-of-turn
    slot, output id 1 is the end of turn and the end-of-turn slot is BOS (input and output), which needs
    an unshared classifier."""
    embed = src.embed[order]
    if eot is None:
        return embed, (None if src.tied else src.lm_head[order])
    bos = src.vocab.bos_id
    embed[eot] = src.embed[bos]
    wcls = src.lm_head[order]
    wcls[RUNC_BOS], wcls[eot] = src.lm_head[order[eot]], src.lm_head[bos]
    return embed, wcls


def _weights(src: LlamaSource, embed: np.ndarray, wcls: np.ndarray | None) -> list[np.ndarray]:
    """The fp32 arrays in run.c's order (after the header)."""
    n = range(src.n_layers)
    cos, sin = rope_tables(src.head_dim, src.context_length, src.rope_theta)
    arrays = [embed]
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
    if wcls is not None:
        arrays.append(wcls)
    return arrays


def runc_layout(src: LlamaSource) -> tuple[list[int], int | None]:
    """(order, end-of-turn id in model.bin): ``order[new_id]`` is the model's id at run.c id ``new_id``.

    unk/BOS/EOS keep ids 0-2, the 256 byte pieces go to 3..258 by byte value (run.c's fallback id b + 3),
    the rest follow in their order. The end-of-turn id is where BOS's output row goes once output id 1
    becomes the end of turn; None (identity order, no swap) when the vocabulary cannot be laid out so.
    """
    v = src.vocab
    identity = list(range(len(v.pieces)))
    index = {p: i for i, p in enumerate(v.pieces) if v.types[i] == TOKEN_BYTE}
    byte_ids = [index.get(f"<0x{b:02X}>") for b in range(256)]
    if (v.unk_id, v.bos_id, v.eos_id) != (0, RUNC_BOS, RUNC_EOS) or None in byte_ids:
        log.warning("%s: vocabulary is not unk/bos/eos at 0-2 with 256 byte pieces; run.c will encode "
                    "characters outside the vocabulary wrongly and not stop at the end of a turn", src.model_dir)
        return identity, None
    moved = set(byte_ids)
    order = [0, RUNC_BOS, RUNC_EOS, *byte_ids, *(i for i in identity[3:] if i not in moved)]
    eot = _end_of_turn_id(src.model_dir, v)
    return order, (order.index(eot) if eot is not None else None)


def _end_of_turn_id(model_dir: Path, v: SpVocab) -> int | None:
    """The model's end-of-turn id (its chat template's; <|im_end|> when it names none, else EOS)."""
    from anima.tokenizer.chat_template import get_template
    from anima.tokenizer.hf import read_template_name

    name = read_template_name(model_dir) or ("chatml" if "<|im_end|>" in v.pieces else "qa")
    piece = get_template(name).end_of_turn
    if piece == "eos":
        return v.eos_id
    return v.pieces.index(piece) if piece in v.pieces else None


def tokenizer_entries(src: LlamaSource, order: list[int] | None = None,
                      eot: int | None = None) -> list[tuple[bytes, float]]:
    """(bytes, score) per run.c id, as llama2.c's tokenizer.py exports a SentencePiece model; the slot
    of the end-of-turn token ``eot`` holds BOS's output, so it reads as BOS."""
    v = src.vocab
    out = []
    for new_id, i in enumerate(order or range(len(v.pieces))):
        piece, score = v.pieces[i], v.scores[i]
        if i == v.bos_id or (eot is not None and new_id == eot):
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

    Run them with `./run model.bin -z tokenizer.bin -i 'prompt'`; token ids are laid out as run.c expects
    (`runc_layout`), and what run.c still cannot do is `RUNC_LIMITS`.
    """
    src = load_llama_source(model_dir)
    _check_runc_compatible(src)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    order, eot = runc_layout(src)
    embed, wcls = _vocab_rows(src, order, eot)
    vocab = src.vocab_size if wcls is None else -src.vocab_size
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
        [header, *(np.ascontiguousarray(a, dtype="<f4").tobytes() for a in _weights(src, embed, wcls))],
    )

    entries = tokenizer_entries(src, order, eot)
    max_len = max(len(b) for b, _ in entries)
    tok_chunks = [struct.pack("<i", max_len)]
    for b, score in entries:
        tok_chunks.append(struct.pack("<fi", score, len(b)) + b)
    tokenizer_bin = out_dir / tokenizer_name
    _write_atomic(tokenizer_bin, tok_chunks)
    return model_bin, tokenizer_bin
