"""The one model a server serves, as clients see it: the names it answers to, and what ``/v1/models``,
Ollama's ``/api/tags``, ``/api/show`` and ``/api/ps`` report about it (size, digest, details, model info).

The digest is the SHA-256 of the model dir's files (names and contents), computed once on first use, off the
event loop by the caller: it identifies the weights a client talks to, as Ollama's digest does.
"""

from __future__ import annotations

import hashlib
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from anima.generation.sampling import SamplingParams
from anima.serve.errors import APIError

LATEST = ":latest"


def iso_time(ts: float | None = None) -> str:
    """RFC 3339 UTC time (now, or a POSIX timestamp), as Ollama's ``created_at`` / ``modified_at``."""
    when = datetime.now(timezone.utc) if ts is None else datetime.fromtimestamp(ts, timezone.utc)
    return when.isoformat().replace("+00:00", "Z")


def ollama_name(name: str) -> str:
    """Ollama's full ``model:tag`` form of a name (tag ``latest`` when it has none)."""
    return name if ":" in name.rsplit("/", 1)[-1] else name + LATEST


def check_model(requested: Any, name: str) -> None:
    """404 unless ``requested`` names the served model (``name`` or ``name:latest``); a request that names no
    model gets the served one."""
    if requested is None or requested == "":
        return
    if not isinstance(requested, str):
        raise APIError(400, f"'model' must be a string, got {requested!r}", param="model", code="invalid_value")
    if requested not in (name, ollama_name(name)) and ollama_name(requested) != ollama_name(name):
        raise APIError(404, f"The model '{requested}' does not exist (this server serves '{name}')",
                       param="model", code="model_not_found")


def _param_size(n: int) -> str:
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(n)


class ModelCard:
    """What the Ollama-style endpoints say about the served model; every value comes from the model dir."""

    def __init__(self, engine: Any, name: str, defaults: SamplingParams) -> None:
        self.engine = engine
        self.name = name
        self.defaults = defaults
        model_dir = getattr(engine, "model_dir", None)
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self._digest: str | None = None
        self._lock = threading.Lock()

    def files(self) -> list[Path]:
        if self.model_dir is None or not self.model_dir.is_dir():
            return []
        return sorted(p for p in self.model_dir.rglob("*") if p.is_file())

    def size(self) -> int:
        return sum(p.stat().st_size for p in self.files())

    def digest(self) -> str:
        """SHA-256 over the model dir's relative file names and contents (slow on big models: call off-loop)."""
        with self._lock:
            if self._digest is None:
                h = hashlib.sha256()
                for p in self.files():
                    h.update(str(p.relative_to(self.model_dir)).encode() + b"\0")
                    with p.open("rb") as f:
                        for block in iter(lambda: f.read(1 << 20), b""):
                            h.update(block)
                self._digest = h.hexdigest()
            return self._digest

    def modified_at(self) -> str:
        files = self.files()
        return iso_time(max(p.stat().st_mtime for p in files)) if files else iso_time()

    def _config(self) -> Any:
        return getattr(getattr(self.engine, "model", None), "config", None)

    def parameter_count(self) -> int:
        model = getattr(self.engine, "model", None)
        return sum(p.numel() for p in model.parameters()) if model is not None else 0

    def details(self) -> dict[str, Any]:
        family = str(getattr(self._config(), "model_type", "") or "unknown")
        model = getattr(self.engine, "model", None)
        dtype = next(iter(model.parameters())).dtype if model is not None else None
        quant = {"torch.float32": "F32", "torch.bfloat16": "BF16", "torch.float16": "F16"}.get(str(dtype), "unknown")
        return {"parent_model": "", "format": "safetensors", "family": family, "families": [family],
                "parameter_size": _param_size(self.parameter_count()), "quantization_level": quant}

    def tag(self) -> dict[str, Any]:
        """One entry of ``/api/tags``."""
        full = ollama_name(self.name)
        return {"name": full, "model": full, "modified_at": self.modified_at(), "size": self.size(),
                "digest": self.digest(), "details": self.details()}

    def model_info(self) -> dict[str, Any]:
        """Ollama's GGUF-style keys, from the model's config (those it has)."""
        cfg = self._config()
        arch = str(getattr(cfg, "model_type", "") or "unknown")
        keys = {"context_length": "max_position_embeddings", "embedding_length": "hidden_size",
                "block_count": "num_hidden_layers", "feed_forward_length": "intermediate_size",
                "attention.head_count": "num_attention_heads", "attention.head_count_kv": "num_key_value_heads",
                "attention.layer_norm_rms_epsilon": "rms_norm_eps", "rope.freq_base": "rope_theta",
                "vocab_size": "vocab_size"}
        info: dict[str, Any] = {"general.architecture": arch, "general.parameter_count": self.parameter_count()}
        for key, attr in keys.items():
            value = getattr(cfg, attr, None)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                info[f"{arch}.{key}"] = value
        tok = getattr(self.engine, "tokenizer", None)
        for key in ("bos_token_id", "eos_token_id"):
            if isinstance(getattr(tok, key, None), int):
                info[f"tokenizer.ggml.{key}"] = getattr(tok, key)
        return info

    def template(self) -> str:
        """The chat template (Jinja, as the tokenizer holds it), or the preset's name."""
        tpl = getattr(getattr(self.engine, "tokenizer", None), "chat_template", None)
        return tpl if isinstance(tpl, str) else str(getattr(self.engine, "template_name", ""))

    def parameter_lines(self) -> list[tuple[str, str]]:
        d = self.defaults
        lines = [("temperature", str(d.temperature)), ("top_p", str(d.top_p)), ("top_k", str(d.top_k)),
                 ("repeat_penalty", str(d.repetition_penalty)), ("num_predict", str(d.max_new_tokens)),
                 ("num_ctx", str(getattr(self.engine, "context_length", 0)))]
        return lines + [("stop", f'"{s}"') for s in d.stop]

    def show(self) -> dict[str, Any]:
        """The ``/api/show`` answer."""
        params = self.parameter_lines()
        modelfile = (f"# Modelfile generated by anima\nFROM {self.model_dir or self.name}\n"
                     f'TEMPLATE """{self.template()}"""\n' + "".join(f"PARAMETER {k} {v}\n" for k, v in params))
        return {"modelfile": modelfile, "parameters": "\n".join(f"{k:<30} {v}" for k, v in params),
                "template": self.template(), "details": self.details(), "model_info": self.model_info(),
                "capabilities": ["completion"], "modified_at": self.modified_at()}
