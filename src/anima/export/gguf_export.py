"""Export a Llama model dir to a GGUF file that llama.cpp (and transformers' GGUF loader) reads.

Layout and conventions follow llama.cpp's convert_hf_to_gguf.py for the `llama` architecture:
tensor names (`token_embd`, `blk.N.attn_q`, ...), Q/K rows permuted to Meta's interleaved RoPE
order, 1-D norm weights kept in F32, the SentencePiece vocabulary as `tokenizer.ggml.model=llama`
with the chat template embedded. A tied lm_head is written once (no `output.weight`), which is
also how readers detect tying.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from anima.atomic import atomic_path
from anima.errors import ConfigError
from anima.export.llama_source import LlamaSource, load_llama_source, permute_qk

#: Accepted values of `export.dtype` for GGUF.
GGUF_DTYPES: tuple[str, ...] = ("f32", "f16", "q8_0")

#: Files copied next to the .gguf so that `AutoTokenizer.from_pretrained(out_dir)` gets the exact
#: tokenizer (the GGUF-derived one differs on leading whitespace, see STACK.md).
TOKENIZER_FILES: tuple[str, ...] = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)


def check_dtype(dtype: str) -> str:
    """Normalise and validate a GGUF dtype; one-line ConfigError listing the allowed values."""
    norm = str(dtype).strip().lower()
    if norm not in GGUF_DTYPES:
        raise ConfigError(f"export.dtype={dtype!r} is not a GGUF dtype; allowed: {', '.join(GGUF_DTYPES)}")
    return norm


def _gguf_tensors(src: LlamaSource) -> list[tuple[str, np.ndarray]]:
    """(gguf name, fp32 array) in llama.cpp's order, Q/K permuted."""
    out = [("token_embd.weight", src.embed)]
    for i in range(src.n_layers):
        b = f"blk.{i}."
        out += [
            (b + "attn_norm.weight", src.layer(i, "input_layernorm")),
            (b + "attn_q.weight", permute_qk(src.layer(i, "self_attn.q_proj"), src.n_heads)),
            (b + "attn_k.weight", permute_qk(src.layer(i, "self_attn.k_proj"), src.n_kv_heads)),
            (b + "attn_v.weight", src.layer(i, "self_attn.v_proj")),
            (b + "attn_output.weight", src.layer(i, "self_attn.o_proj")),
            (b + "ffn_norm.weight", src.layer(i, "post_attention_layernorm")),
            (b + "ffn_gate.weight", src.layer(i, "mlp.gate_proj")),
            (b + "ffn_up.weight", src.layer(i, "mlp.up_proj")),
            (b + "ffn_down.weight", src.layer(i, "mlp.down_proj")),
        ]
    out.append(("output_norm.weight", src.tensors["model.norm.weight"]))
    if not src.tied:
        out.append(("output.weight", src.tensors["lm_head.weight"]))
    return out


def _encode(data: np.ndarray, dtype: str):  # -> (array, raw_dtype | None)
    """Convert one tensor the way llama.cpp's converter does: 1-D stays F32; q8_0 falls back to
    F16 for rows whose length is not a multiple of the 32-wide block."""
    import gguf

    data = np.ascontiguousarray(data, dtype=np.float32)
    if dtype == "f32" or data.ndim <= 1:
        return data, None
    if dtype == "f16":
        return data.astype(np.float16), None
    try:
        return gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0
    except gguf.QuantError:
        return data.astype(np.float16), None


def _add_metadata(writer, src: LlamaSource, dtype: str, name: str | None = None) -> None:
    import gguf

    file_type = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[dtype]
    writer.add_name(name or src.name)
    writer.add_context_length(src.context_length)
    writer.add_embedding_length(src.hidden_size)
    writer.add_block_count(src.n_layers)
    writer.add_feed_forward_length(src.intermediate_size)
    writer.add_head_count(src.n_heads)
    writer.add_head_count_kv(src.n_kv_heads)
    writer.add_rope_dimension_count(src.head_dim)
    writer.add_rope_freq_base(src.rope_theta)
    writer.add_layer_norm_rms_eps(src.rms_norm_eps)
    writer.add_vocab_size(src.vocab_size)
    if src.head_dim * src.n_heads != src.hidden_size:
        writer.add_key_length(src.head_dim)
        writer.add_value_length(src.head_dim)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    v = src.vocab
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(v.pieces)
    writer.add_token_scores(v.scores)
    writer.add_token_types(v.types)
    for setter, token_id in (
        (writer.add_bos_token_id, v.bos_id),
        (writer.add_eos_token_id, v.eos_id),
        (writer.add_unk_token_id, v.unk_id),
        (writer.add_pad_token_id, v.pad_id),
    ):
        if token_id >= 0:
            setter(token_id)
    if "<|im_end|>" in v.pieces:  # chatml turns end here: llama.cpp stops generation on it
        writer.add_eot_token_id(v.pieces.index("<|im_end|>"))
    # As anima's tokenizer.json behaves (load_llama_source reads it), so llama.cpp adds BOS exactly when anima does.
    writer.add_add_bos_token(bool(src.tokenizer_config.get("add_bos_token", True)))
    writer.add_add_eos_token(bool(src.tokenizer_config.get("add_eos_token", False)))
    writer.add_add_space_prefix(v.add_dummy_prefix)
    if src.chat_template:
        writer.add_chat_template(src.chat_template)


def export_gguf(
    model_dir: str | Path,
    out_path: str | Path,
    dtype: str = "f16",
    *,
    copy_tokenizer: bool = True,
    name: str | None = None,
) -> Path:
    """Write `model_dir` as a llama-architecture GGUF at `out_path` (atomically); return the path.

    dtype: "f32", "f16" or "q8_0" (2-D weights; norms stay F32). With `copy_tokenizer`, the model's
    tokenizer files (tokenizer.json, tokenizer_config.json, chat_template.jinja) are copied next to the file so transformers can load the
    exact tokenizer from that dir (`from_pretrained(dir, gguf_file=name)` for the weights). `name` is
    `general.name` (the registry name; default: anima.json's name, else the model dir's name).
    """
    dtype = check_dtype(dtype)
    src = load_llama_source(model_dir)

    import gguf

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_path) as tmp:
        writer = gguf.GGUFWriter(tmp, "llama")
        try:
            _add_metadata(writer, src, dtype, name)
            for name, data in _gguf_tensors(src):
                array, raw_dtype = _encode(data, dtype)
                writer.add_tensor(name, array, raw_dtype=raw_dtype)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()

    if copy_tokenizer:
        src_dir = src.model_dir.resolve()
        dst_dir = out_path.parent.resolve()
        if src_dir != dst_dir:
            for name in TOKENIZER_FILES:
                if (src_dir / name).is_file():
                    with atomic_path(dst_dir / name) as tmp:
                        shutil.copyfile(src_dir / name, tmp)
    return out_path
