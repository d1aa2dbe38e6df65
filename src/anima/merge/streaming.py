"""Streamed merging: read one tensor per ingredient at a time, write the merged model atomically.

Peak memory is about one model (the merged state dict being filled) plus a few copies of the largest
tensor, independent of the number of ingredients: ingredients are read tensor by tensor with
``safetensors.safe_open`` and each file is closed again right after the read, so its memory map does
not stay resident.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from anima.errors import ConfigError, ModelError
from anima.merge.compat import check_compatible
from anima.merge.methods import COMPUTE_DTYPE, MergeMethod, get_method
from anima.tokenizer.hf import sync_special_token_flags

WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
# Files of a model dir that are weights (never copied from the first ingredient).
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")
_WEIGHT_NAMES = {WEIGHTS_INDEX, "pytorch_model.bin.index.json"}
# Tied parameters that save_pretrained leaves out of the file: missing key -> key holding its value.
TIED_ALIASES = {"lm_head.weight": "model.embed_tokens.weight"}


class SafetensorsModel:
    """Key -> file map of one model dir (single file or sharded), read one tensor at a time."""

    def __init__(self, model_dir: Path) -> None:
        from safetensors import safe_open

        self.dir = Path(model_dir)
        single, index = self.dir / WEIGHTS, self.dir / WEIGHTS_INDEX
        self.files: dict[str, Path] = {}
        self.meta: dict[str, tuple[str, list[int]]] = {}  # key -> (safetensors dtype, shape)
        try:
            if single.is_file():
                shard_files = [single]
            elif index.is_file():
                weight_map = json.loads(index.read_text())["weight_map"]
                shard_files = sorted({self.dir / f for f in weight_map.values()})
            else:
                raise ModelError(f"{self.dir}: no {WEIGHTS} (nor {WEIGHTS_INDEX}) in model dir")
            for path in shard_files:
                with safe_open(str(path), framework="pt") as f:
                    for key in f.keys():
                        sl = f.get_slice(key)
                        self.files[key] = path
                        self.meta[key] = (sl.get_dtype(), list(sl.get_shape()))
        except ModelError:
            raise
        except Exception as exc:  # corrupt header, bad index json, unreadable shard
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ModelError(f"{self.dir}: cannot read safetensors weights: {msg}") from exc

    def keys(self) -> list[str]:
        return list(self.files)

    def resolve(self, key: str) -> str:
        """The key actually stored for ``key`` (tied weights are stored once)."""
        if key in self.files:
            return key
        alias = TIED_ALIASES.get(key)
        if alias is not None and alias in self.files:
            return alias
        raise ModelError(f"{self.dir}: tensor {key!r} missing from the weights")

    def shape(self, key: str) -> list[int]:
        return self.meta[self.resolve(key)][1]

    def load(self, key: str) -> torch.Tensor:
        from safetensors import safe_open

        real = self.resolve(key)
        # Open per read: the mmap is released when the handle closes, so reading N ingredients does
        # not keep N models' pages resident.
        with safe_open(str(self.files[real]), framework="pt") as f:
            return f.get_tensor(real)


class _Source:
    """TensorSource for one key: ingredient tensors (and the base) in ``dtype``, read on demand."""

    def __init__(
        self,
        key: str,
        models: Sequence[SafetensorsModel],
        base: SafetensorsModel | None,
        dtype: torch.dtype = COMPUTE_DTYPE,
    ):
        self.key, self.n, self._models, self._base, self.dtype = key, len(models), models, base, dtype
        self._base_cache: torch.Tensor | None = None

    def get(self, i: int) -> torch.Tensor:
        return self._models[i].load(self.key).to(self.dtype)

    def base(self) -> torch.Tensor:
        if self._base is None:
            raise ModelError(f"merge of {self.key!r} needs a base model and none was given")
        if self._base_cache is None:  # read once per key: methods use it in several passes
            self._base_cache = self._base.load(self.key).to(self.dtype)
        return self._base_cache


def _tensor_method(method: str) -> MergeMethod:
    """The registered per-tensor method; a procedure (greedy soup) runs through ``merge_models``."""
    spec = get_method(method)
    if spec.procedure:
        raise ConfigError(f"merge method '{method}' works on whole models: run it with anima.merge.merge_models")
    return spec


def merge_state_dict(
    method: str,
    ingredient_dirs: Sequence[Path],
    base_dir: Path | None = None,
    **params: Any,
) -> dict[str, torch.Tensor]:
    """Merged tensors (stored dtype of the first ingredient), keys of the first ingredient."""
    spec = _tensor_method(method)
    resolved = spec.resolve_params(len(ingredient_dirs), params)
    if spec.needs_base and base_dir is None:
        raise ModelError(f"merge method '{method}' needs a base model (merge.base)")
    _large_allocations_via_mmap()
    models = [SafetensorsModel(Path(d)) for d in ingredient_dirs]
    base = SafetensorsModel(Path(base_dir)) if (spec.needs_base and base_dir is not None) else None
    ref = models[0]
    for other in models[1:] + ([base] if base else []):
        extra = sorted(set(other.keys()) - set(ref.keys()) - set(TIED_ALIASES))
        if extra:
            raise ModelError(f"{other.dir}: tensor {extra[0]!r} is not in {ref.dir}")
    out: dict[str, torch.Tensor] = {}
    for key in ref.keys():
        shape = ref.shape(key)
        for other in models[1:] + ([base] if base else []):
            if other.shape(key) != shape:
                raise ModelError(
                    f"tensor {key!r} has shape {other.shape(key)} in {other.dir} but {shape} in {ref.dir}"
                )
        merged = spec.fn(_Source(key, models, base, spec.compute_dtype), **resolved)
        out[key] = merged.to(_dtype_of(ref, key)).reshape(shape).contiguous()
        del merged
    return out


def _large_allocations_via_mmap(threshold: int = 1 << 20) -> None:
    """Make glibc serve allocations >= 1 MiB with mmap, so freed tensors go straight back to the OS.

    By default glibc raises its mmap threshold after a large block is freed; later tensor-sized
    temporaries then come from the heap and stay resident once freed (fragmentation), and peak RSS
    creeps up with every ingredient although nothing is kept. Process-wide and harmless for torch
    (big tensors cost one mmap each); a no-op off glibc.
    """
    global _MMAP_SET
    if _MMAP_SET:
        return
    _MMAP_SET = True
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, threshold)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


_MMAP_SET = False

_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _dtype_of(model: SafetensorsModel, key: str) -> torch.dtype:
    name = model.meta[model.resolve(key)][0]
    if name not in _ST_DTYPES:
        raise ModelError(f"{model.dir}: tensor {key!r} has unsupported dtype {name}")
    return _ST_DTYPES[name]


@contextmanager
def atomic_dir(out_dir: Path) -> Iterator[Path]:
    """Yield a temp dir beside ``out_dir``; on success it replaces ``out_dir``, on error it vanishes."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        yield tmp
        if out_dir.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, trash / "old")
            os.replace(tmp, out_dir)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _copy_side_files(src_dir: Path, dst_dir: Path) -> None:
    """Config, generation config, tokenizer files, anima.json...: everything that is not weights."""
    for p in sorted(Path(src_dir).iterdir()):
        if not p.is_file() or p.name in _WEIGHT_NAMES or p.name.endswith(_WEIGHT_SUFFIXES):
            continue
        shutil.copy2(p, dst_dir / p.name)
    sync_special_token_flags(dst_dir)  # a model saved before this was fixed may misstate add_bos_token


def merge(
    method: str,
    ingredient_dirs: Sequence[Path | str],
    out_dir: Path | str,
    *,
    base_dir: Path | str | None = None,
    check: bool = True,
    **params: Any,
) -> Path:
    """Merge ``ingredient_dirs`` with ``method`` into the HF model dir ``out_dir`` (atomic).

    Side files (config.json, tokenizer, anima.json, ...) come from the first ingredient; anima.json
    gains a ``merge`` record (method, ingredients, base, params). ``params`` are the method's
    parameters (see :func:`anima.merge.methods.registered`).
    """
    from safetensors.torch import save_file

    dirs = [Path(d) for d in ingredient_dirs]
    if not dirs:
        raise ModelError("merge needs at least one ingredient model dir")
    base = Path(base_dir) if base_dir is not None else None
    spec = _tensor_method(method)
    spec.resolve_params(len(dirs), params)  # bad params fail before any reading
    if base is not None and not spec.needs_base:
        raise ConfigError(f"merge method '{method}' takes no base model, got base {base}")
    if check:
        check_compatible(dirs + ([base] if base is not None and spec.needs_base else []))
    state = merge_state_dict(method, dirs, base, **params)
    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        _copy_side_files(dirs[0], tmp)
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
        del state
        meta_path = tmp / "anima.json"
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        meta["merge"] = {
            "method": method,
            "ingredients": [str(d) for d in dirs],
            "base": str(base) if base is not None and spec.needs_base else None,
            "params": {k: v for k, v in params.items()},
        }
        meta_path.write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return out
