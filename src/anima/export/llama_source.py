"""Read an anima/Hugging Face Llama model dir into plain numpy arrays for the exporters.

Both exporters (GGUF, llama2.c) need the same things: the Llama hyperparameters, fp32 weights
by their HF names, the SentencePiece vocabulary, and the Q/K rotary permutation. Keeping them
here means a model dir is validated once, with one-line `ModelError`s that name the file at fault.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anima.errors import ModelError

#: SentencePiece piece kinds, as GGUF token types (gguf.TokenType values, kept literal so that
#: this module does not import gguf).
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6


@dataclass
class SpVocab:
    """The SentencePiece vocabulary as the exporters need it (index = token id)."""

    pieces: list[str]
    scores: list[float]
    types: list[int]
    bos_id: int
    eos_id: int
    unk_id: int
    pad_id: int
    add_dummy_prefix: bool


@dataclass
class LlamaSource:
    """A validated Llama model dir: hyperparameters, fp32 weights (HF names), vocabulary."""

    model_dir: Path
    config: dict[str, Any]
    hidden_size: int
    intermediate_size: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int
    context_length: int
    rope_theta: float
    rms_norm_eps: float
    tied: bool
    tensors: dict[str, np.ndarray] = field(repr=False)
    vocab: SpVocab = field(repr=False)
    tokenizer_config: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        """Model name for metadata: anima.json's `name` if any, else the dir name."""
        meta = self.model_dir / "anima.json"
        if meta.is_file():
            try:
                value = json.loads(meta.read_text(encoding="utf-8")).get("name")
            except (OSError, ValueError, AttributeError):
                value = None
            if isinstance(value, str) and value:
                return value
        return self.model_dir.resolve().name

    @property
    def chat_template(self) -> str | None:
        """tokenizer_config.json's `chat_template`, else chat_template.jinja (transformers 5 saves it there)."""
        value = self.tokenizer_config.get("chat_template")
        if isinstance(value, str) and value:
            return value
        jinja = self.model_dir / "chat_template.jinja"
        if jinja.is_file():
            return jinja.read_text(encoding="utf-8") or None
        return None

    def layer(self, i: int, part: str) -> np.ndarray:
        return self.tensors[f"model.layers.{i}.{part}.weight"]

    @property
    def embed(self) -> np.ndarray:
        return self.tensors["model.embed_tokens.weight"]

    @property
    def lm_head(self) -> np.ndarray:
        return self.embed if self.tied else self.tensors["lm_head.weight"]


def permute_qk(weights: np.ndarray, n_head: int) -> np.ndarray:
    """HF "rotate-half" Q/K rows -> Meta's interleaved RoPE rows.

    Same operation as llama.cpp's `LlamaModel.permute` in convert_hf_to_gguf.py (pass n_kv_heads
    for K) and llama2.c's `permute_reverse`: both runtimes rotate adjacent pairs (x[2i], x[2i+1]),
    while HF rotates (x[i], x[i + d/2]). transformers' GGUF loader undoes it on load.
    """
    rows = weights.shape[0]
    return (
        weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise ModelError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a JSON object")
    return data


def _rope(config: dict[str, Any], path: Path) -> float:
    """rope theta from transformers 5 `rope_parameters` or the older flat `rope_theta`."""
    params = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling") or {}
    rope_type = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type != "default":
        raise ModelError(f"{path}: rope_type={rope_type!r} is not supported by the exporters (only 'default')")
    theta = params.get("rope_theta", config.get("rope_theta", 10000.0))
    return float(theta)


def _load_tensors(model_dir: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    single = model_dir / "model.safetensors"
    index = model_dir / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        weight_map = _read_json(index).get("weight_map") or {}
        files = [model_dir / name for name in sorted(set(weight_map.values()))]
    else:
        raise ModelError(f"{model_dir}: no model.safetensors (nor model.safetensors.index.json)")
    out: dict[str, np.ndarray] = {}
    for f in files:
        try:
            state = load_file(str(f))
        except (OSError, SafetensorError) as exc:
            raise ModelError(f"{f}: cannot read safetensors ({exc})") from None
        for k, v in state.items():
            out[k] = v.float().numpy()
    return out


def read_sp_vocab(sp_path: Path) -> SpVocab:
    """Pieces, scores and kinds straight from the SentencePiece model (what llama.cpp expects)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor()
    try:
        sp.Load(str(sp_path))
    except (OSError, RuntimeError) as exc:
        raise ModelError(f"{sp_path}: not a SentencePiece model ({exc})") from None

    user_defined: set[int] = set()
    add_dummy_prefix = True
    try:
        from sentencepiece import sentencepiece_model_pb2 as pb2

        proto = pb2.ModelProto()
        proto.ParseFromString(sp_path.read_bytes())
        user_defined = {i for i, p in enumerate(proto.pieces) if p.type == pb2.ModelProto.SentencePiece.USER_DEFINED}
        add_dummy_prefix = bool(proto.normalizer_spec.add_dummy_prefix)
        if proto.trainer_spec.model_type not in (1, 2):  # UNIGRAM, BPE: SPM-style scores
            raise ModelError(f"{sp_path}: SentencePiece model_type {proto.trainer_spec.model_type} is not BPE/unigram")
    except ImportError:  # protobuf missing: user-defined pieces export as NORMAL, as llama.cpp does
        pass

    pieces, scores, types = [], [], []
    for i in range(sp.GetPieceSize()):
        pieces.append(sp.IdToPiece(i))
        scores.append(float(sp.GetScore(i)))
        if sp.IsUnknown(i):
            kind = TOKEN_UNKNOWN
        elif sp.IsControl(i):
            kind = TOKEN_CONTROL
        elif sp.IsUnused(i):
            kind = TOKEN_UNUSED
        elif sp.IsByte(i):
            kind = TOKEN_BYTE
        elif i in user_defined:
            kind = TOKEN_USER_DEFINED
        else:
            kind = TOKEN_NORMAL
        types.append(kind)
    return SpVocab(
        pieces=pieces,
        scores=scores,
        types=types,
        bos_id=sp.bos_id(),
        eos_id=sp.eos_id(),
        unk_id=sp.unk_id(),
        pad_id=sp.pad_id(),
        add_dummy_prefix=add_dummy_prefix,
    )


def _llama_config(model_dir: Path) -> tuple[Path, dict[str, Any]]:
    """config.json of a Llama model dir the exporters can handle (no biases), with its path."""
    if not model_dir.is_dir():
        raise ModelError(f"{model_dir}: model dir does not exist")
    cfg_path = model_dir / "config.json"
    if not cfg_path.is_file():
        raise ModelError(f"{cfg_path}: missing (not a Hugging Face model dir)")
    config = _read_json(cfg_path)
    model_type = config.get("model_type")
    archs = config.get("architectures") or []
    if model_type != "llama":
        raise ModelError(
            f"{cfg_path}: model_type={model_type!r} (architectures={archs}); only Llama models can be exported"
        )
    if config.get("attention_bias") or config.get("mlp_bias"):
        raise ModelError(f"{cfg_path}: attention_bias/mlp_bias=true is not supported by the exporters")
    return cfg_path, config


def _hyperparameters(config: dict[str, Any], cfg_path: Path) -> dict[str, Any]:
    """The :class:`LlamaSource` hyperparameter fields, with config.json's defaults filled in."""
    try:
        hidden = int(config["hidden_size"])
        n_layers = int(config["num_hidden_layers"])
        n_heads = int(config["num_attention_heads"])
        n_kv = int(config.get("num_key_value_heads") or n_heads)
        ffn = int(config["intermediate_size"])
        vocab_size = int(config["vocab_size"])
        ctx = int(config.get("max_position_embeddings") or 2048)
        eps = float(config.get("rms_norm_eps", 1e-6))
        head_dim = int(config.get("head_dim") or hidden // n_heads)
    except KeyError as exc:
        raise ModelError(f"{cfg_path}: missing key {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{cfg_path}: bad hyperparameter value ({exc})") from None
    return dict(
        hidden_size=hidden, intermediate_size=ffn, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv,
        head_dim=head_dim, vocab_size=vocab_size, context_length=ctx, rope_theta=_rope(config, cfg_path),
        rms_norm_eps=eps,
    )


def _pad_vocab(vocab: SpVocab, vocab_size: int, sp_path: Path, cfg_path: Path) -> None:
    """Extend the vocabulary to the embedding's rows; padded rows are never produced by the tokenizer."""
    n_pieces = len(vocab.pieces)
    if n_pieces > vocab_size:
        raise ModelError(f"{sp_path}: {n_pieces} pieces but {cfg_path} vocab_size={vocab_size}")
    for i in range(n_pieces, vocab_size):
        vocab.pieces.append(f"<pad_{i}>")
        vocab.scores.append(-1e9)
        vocab.types.append(TOKEN_UNUSED)


def _expected_shapes(hp: dict[str, Any], tied: bool) -> dict[str, tuple[int, ...]]:
    """Every tensor a Llama model of these hyperparameters holds, by HF name, with its shape."""
    hidden, ffn, vocab_size = hp["hidden_size"], hp["intermediate_size"], hp["vocab_size"]
    q_rows, kv_rows = hp["n_heads"] * hp["head_dim"], hp["n_kv_heads"] * hp["head_dim"]
    expected = {
        "model.embed_tokens.weight": (vocab_size, hidden),
        "model.norm.weight": (hidden,),
    }
    if not tied:
        expected["lm_head.weight"] = (vocab_size, hidden)
    for i in range(hp["n_layers"]):
        p = f"model.layers.{i}."
        expected.update(
            {
                p + "input_layernorm.weight": (hidden,),
                p + "post_attention_layernorm.weight": (hidden,),
                p + "self_attn.q_proj.weight": (q_rows, hidden),
                p + "self_attn.k_proj.weight": (kv_rows, hidden),
                p + "self_attn.v_proj.weight": (kv_rows, hidden),
                p + "self_attn.o_proj.weight": (hidden, q_rows),
                p + "mlp.gate_proj.weight": (ffn, hidden),
                p + "mlp.up_proj.weight": (ffn, hidden),
                p + "mlp.down_proj.weight": (hidden, ffn),
            }
        )
    return expected


def _check_shapes(tensors: dict[str, np.ndarray], expected: dict[str, tuple[int, ...]], model_dir: Path) -> None:
    for key, shape in expected.items():
        if key not in tensors:
            raise ModelError(f"{model_dir}/model.safetensors: tensor {key!r} missing")
        if tuple(tensors[key].shape) != shape:
            raise ModelError(
                f"{model_dir}/model.safetensors: tensor {key!r} has shape {tuple(tensors[key].shape)}, "
                f"config.json implies {shape}"
            )


def load_llama_source(model_dir: str | Path) -> LlamaSource:
    """Validate `model_dir` as a Llama model dir with a SentencePiece tokenizer and load it."""
    model_dir = Path(model_dir)
    cfg_path, config = _llama_config(model_dir)
    sp_path = model_dir / "tokenizer.model"
    if not sp_path.is_file():
        raise ModelError(f"{sp_path}: missing; the exporters need the SentencePiece model in the model dir")
    hp = _hyperparameters(config, cfg_path)
    vocab = read_sp_vocab(sp_path)
    _pad_vocab(vocab, hp["vocab_size"], sp_path, cfg_path)
    tensors = _load_tensors(model_dir)
    tied = bool(config.get("tie_word_embeddings", False)) or "lm_head.weight" not in tensors
    _check_shapes(tensors, _expected_shapes(hp, tied), model_dir)
    tok_cfg_path = model_dir / "tokenizer_config.json"
    tok_cfg = _read_json(tok_cfg_path) if tok_cfg_path.is_file() else {}
    if (model_dir / "tokenizer.json").is_file() and tok_cfg:  # what the tokenizer does, not what a config says
        from anima.tokenizer.hf import special_token_flags

        tok_cfg.update(special_token_flags(model_dir))
    return LlamaSource(
        model_dir=model_dir, config=config, **hp, tied=tied, tensors=tensors, vocab=vocab,
        tokenizer_config=tok_cfg,
    )
