"""The decode steps as small C++ kernels (native_step.cpp), built once per machine in a second: the single-token
step, and a rows kernel for a continuous-batching step or a prompt (up to ``MAX_ROWS`` tokens in one pass).

Why: a decode step of a small model reads every weight once, so its speed is how fast the matrix-vector products
stream memory. AOTInductor's step (compiled.py) reduces each weight row with one vector accumulator and recomputes
the fused inputs of a product for every row; torch's own mv/linear run a single-row product on one thread. On a
2-core EPYC Zen 2, tiny (288x6, 29 MB of fp32 weights), 128 cached positions: the AOTI step 1.24-1.39 ms a token,
this kernel 1.00-1.08 ms; llama2.c's run.c decodes at ~1.09 ms (``scripts/bench/decode_vs_run_c.py``). The rows
kernel runs on a packed copy of the weights (``pack_blocks``: blocks of output rows stored input by input), so a tile of
tokens x outputs accumulates in registers with no horizontal sums; on a Xeon (AMX, AVX-512), 100 cached positions,
an 8-row step took 1.9 ms reading weight rows one at a time, 1.7 blocked four by four, 1.3 packed (the eager step
~5-6 ms). The packed copy doubles the kernel's weight memory (29 MB more for tiny), so, as for the eager step's
oneDNN copies, models with more than ``MAX_PACKED_BYTES`` of weights get the single-token kernel only.

The single-token kernel takes the fast backend's folded step weights as they are, the rows kernel their packed copy;
both work on the backend's KV cache in place (the new K/V written by the kernel) and write the logits into a fresh
tensor. It is compiled with the C++ compiler AOTInductor uses (-O3
-march=native -fopenmp) into ``<cache_dir>/decode/native-<key>.so``, keyed by the source, the compiler and the CPU;
a failed build leaves a ``.failed`` note beside it and decoding goes on without it. Its OpenMP is the libgomp torch
has loaded already (the same soname), so it shares the engine thread's worker pool.
"""

from __future__ import annotations

import ctypes
import hashlib
import platform
import subprocess
from pathlib import Path

import torch

from anima.atomic import atomic_path, temp_sibling
from anima.generation.packed import MAX_PACKED_BYTES
from anima.generation.step_graphs import cpu_flags

SOURCE = Path(__file__).with_name("native_step.cpp")
#: Bumped when the build flags change, so a library built the old way is not reused.
BUILD_VERSION = 1
#: Tokens ``NativeStep.rows`` takes in one call (the kernel's per-thread arrays are this long).
MAX_ROWS = 64


def _flags() -> list[str]:
    arch = "-mcpu=native" if platform.machine() in ("arm64", "aarch64") else "-march=native"
    return ["-O3", arch, "-fopenmp", "-shared", "-fPIC", "-std=c++17"]


class _Spec(ctypes.Structure):
    """native_step.cpp's ``Spec``, field for field."""

    _fields_ = [(name, ctypes.c_int64) for name in
                ("n_layers", "hidden", "n_heads", "n_kv", "head_dim", "inter", "vocab", "max_positions",
                 "k_layer", "k_head", "k_dim", "v_layer", "v_head", "v_pos")]
    _fields_ += [("eps", ctypes.c_double)]
    _fields_ += [(name, ctypes.c_void_p) for name in ("embed", "cos", "sin", "head", "weights", "packed", "packed_head")]


def library_path(cache_dir: str | Path, compiler: str) -> Path:
    """Where this machine's build of the kernel lives (the source, compiler, flags and CPU in its name)."""
    ident = "\n".join([SOURCE.read_text(encoding="utf-8"), compiler, " ".join(_flags()), cpu_flags(),
                       platform.machine(), str(BUILD_VERSION)])
    digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
    return Path(cache_dir).expanduser() / "decode" / f"native-{digest}.so"


def build_library(out: Path, compiler: str, timeout: float = 300.0) -> None:
    """Compile the kernel to ``out`` (temp file, then rename); raises RuntimeError with the compiler's last words."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, tmp=temp_sibling(out, ".tmp.so")) as tmp:
        try:
            done = subprocess.run([compiler, *_flags(), str(SOURCE), "-o", str(tmp)], capture_output=True,
                                  text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise RuntimeError(f"{compiler}: {e}") from None
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"{compiler} exited {done.returncode}: {' | '.join(tail)}")


def unsupported(backend) -> str | None:
    """Why the kernel cannot run this backend's step (None when it can)."""
    if backend.dtype != torch.float32:
        return f"weights are {str(backend.dtype).removeprefix('torch.')}, the kernel is fp32"
    if backend.head_dim > 512:
        return f"head_dim {backend.head_dim} > 512"
    k, v = backend.k_cache, backend.v_cache
    if k.stride(3) != 1 or v.stride(3) != 1:
        return "the KV cache is not laid out as (L, Hkv, D, P) and (L, Hkv, P, D)"
    return None


def pack_blocks(w: torch.Tensor, lanes: int) -> torch.Tensor:
    """A (rows, n) matrix as the rows kernel reads it (native_step.cpp, ``gemm``): blocks of ``lanes`` output rows,
    each stored input by input, (blocks, n, lanes); the last block padded with zero rows."""
    rows, n = w.shape
    blocks = -(-rows // lanes)
    padded = torch.zeros(blocks * lanes, n, dtype=w.dtype)
    padded[:rows] = w
    return padded.view(blocks, lanes, n).transpose(1, 2).contiguous()


def pack_gate_up_blocks(w: torch.Tensor, inter: int, lanes: int) -> torch.Tensor:
    """The MLP's stacked gate and up rows (2 * inter, n) packed with their blocks interleaved (gate 0, up 0, gate 1,
    ...), so one tile holds both halves of SiLU(gate) * up."""
    gate, up = pack_blocks(w[:inter], lanes), pack_blocks(w[inter:], lanes)
    return torch.stack([gate, up], 1).reshape(-1, *gate.shape[1:]).contiguous()


class NativeStep:
    """The kernels bound to one fast backend's weights and KV cache: ``step`` (one token at the selected slot),
    ``step_batch`` (one token for each of slots 0..B-1) and ``prefill`` (a prompt's tokens at the selected slot),
    each advancing the positions as the backend's own steps do."""

    def __init__(self, backend, library: Path):
        lib = ctypes.CDLL(str(library))
        fn = lib.anima_decode_step
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.POINTER(_Spec), ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                       ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
        rows = lib.anima_decode_rows
        rows.restype = ctypes.c_int
        rows.argtypes = [ctypes.POINTER(_Spec), ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                         ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                         ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
        swap = lib.anima_swap_slots
        swap.restype = None
        swap.argtypes = [ctypes.POINTER(_Spec), *[ctypes.c_void_p] * 2, *[ctypes.c_int64] * 5, ctypes.c_int]
        self._fn, self._rows, self._swap, self.library = fn, rows, swap, library
        self.draw = NativeDraw(lib)
        self.backend = b = backend
        # held here: the kernel reads them through raw pointers
        self._weights = [w.contiguous() for layer in b.step_layers for w in layer]
        self._tables = [t.contiguous() for t in (b.embed, b.cos, b.sin, b.step_head)]
        self._pointers = (ctypes.c_void_p * len(self._weights))(*[w.data_ptr() for w in self._weights])
        size = sum(w.numel() * w.element_size() for w in [*self._weights, self._tables[3]])
        self.has_rows = size <= MAX_PACKED_BYTES  # the rows kernel runs on a packed copy: the same size again
        lanes = lib.anima_pack_lanes()
        self._packed = [(pack_blocks(w, lanes) if i % 4 != 2 else pack_gate_up_blocks(w, b.inter, lanes))
                        for i, w in enumerate(self._weights)] if self.has_rows else []
        self._packed_head = pack_blocks(self._tables[3], lanes) if self.has_rows else torch.empty(0)
        self._packed_pointers = (ctypes.c_void_p * len(self._packed))(*[w.data_ptr() for w in self._packed])
        k, v = b.k_cache, b.v_cache
        self._spec = _Spec(len(b.step_layers), b.hidden, b.n_heads, b.n_kv, b.head_dim, b.inter,
                           int(b.embed.shape[0]), b.max_positions, k.stride(0), k.stride(1), k.stride(2),
                           v.stride(0), v.stride(1), v.stride(2), float(b.eps_h),
                           *[t.data_ptr() for t in self._tables], ctypes.cast(self._pointers, ctypes.c_void_p),
                           ctypes.cast(self._packed_pointers, ctypes.c_void_p), self._packed_head.data_ptr())
        self._spec_ref = ctypes.byref(self._spec)
        per_head = 2 * b.head_dim + b.max_positions + 1
        # per token: x, q|k|v, attention output, MLP activation, and each query head's q, k and scores
        self._row_floats = (b.hidden + (b.n_heads + 2 * b.n_kv) * b.head_dim + b.q_dim + b.inter
                            + b.n_heads * per_head)
        self._scratch = torch.empty(self._row_floats)  # the single step's (one token)
        self._row_scratch = torch.empty(0)  # the rows kernel's, grown to the most rows seen
        self._vocab = int(b.embed.shape[0])

    def step(self, tok: int) -> torch.Tensor:
        """The logits after ``tok`` at the selected slot's position; its K/V go into that slot."""
        b = self.backend
        pos = b.position
        logits = torch.empty(self._vocab)
        status = self._fn(self._spec_ref, tok, pos, b.k_cache.data_ptr(), b.v_cache.data_ptr(), logits.data_ptr(),
                          self._scratch.data_ptr(), torch.get_num_threads())
        if status != 0:
            raise self._out_of_range([tok], [pos])
        b.position = pos + 1
        return logits

    def step_batch(self, toks: list[int]) -> torch.Tensor:
        """One token for each of slots 0..B-1 at its own position: (B, vocab) logits."""
        b, n = self.backend, len(toks)
        chunks = [range(c, min(c + MAX_ROWS, n)) for c in range(0, n, MAX_ROWS)]
        out = [self.rows(toks[r.start : r.stop], b.positions[r.start : r.stop], r) for r in chunks]
        for i in range(n):
            b.positions[i] += 1
        return out[0] if len(out) == 1 else torch.cat(out)

    def prefill(self, ids: list[int]) -> torch.Tensor:
        """A prompt's tokens (at most ``MAX_ROWS``) at the selected slot from its position on: the last one's logits."""
        b = self.backend
        pos, n = b.position, len(ids)
        logits = self.rows(ids, range(pos, pos + n), [b.slot] * n, logits_from=n - 1)[0]
        b.position = pos + n
        return logits

    def rows(self, toks: list[int], positions, slots, logits_from: int = 0) -> torch.Tensor:
        """Up to ``MAX_ROWS`` tokens in one pass, each in its slot at its position (a batch's decode step, or a
        prompt in one slot); their K/V go into the caches. The logits of rows ``logits_from``.. as (rows, vocab)."""
        n, b = len(toks), self.backend
        if not self.has_rows:
            raise RuntimeError(f"the rows kernel is off for models over {MAX_PACKED_BYTES >> 20} MB of weights")
        if not 0 < n <= MAX_ROWS:
            raise ValueError(f"{n} rows: the native kernel takes 1 to {MAX_ROWS} at once")
        if self._row_scratch.numel() < n * self._row_floats:
            self._row_scratch = torch.empty(n * self._row_floats)
        ints = ctypes.c_int64 * n
        logits = torch.empty(n - logits_from, self._vocab)
        status = self._rows(self._spec_ref, n, ints(*toks), ints(*positions), ints(*slots), b.k_slots.stride(0),
                            b.v_slots.stride(0), b.k_slots.data_ptr(), b.v_slots.data_ptr(), logits_from,
                            logits.data_ptr(), self._row_scratch.data_ptr(), torch.get_num_threads())
        if status != 0:
            raise self._out_of_range(toks, list(positions))
        return logits

    def swap_slots(self, a: int, b: int) -> None:
        """Exchange slots a and b: their caches' valid positions (in place) and their positions."""
        if a == b:
            return
        positions, k, v = self.backend.positions, self.backend.k_slots, self.backend.v_slots
        if not (0 <= a < k.shape[0] and 0 <= b < k.shape[0]):
            raise IndexError(f"slots {a}, {b}: the cache has {k.shape[0]}")
        self._swap(self._spec_ref, k.data_ptr(), v.data_ptr(), k.stride(0), v.stride(0), a, b,
                   max(positions[a], positions[b]), torch.get_num_threads())
        positions[a], positions[b] = positions[b], positions[a]

    def _out_of_range(self, toks: list[int], positions: list[int]) -> ValueError:
        return ValueError(f"tokens {toks} at positions {positions}: outside the vocabulary of {self._vocab} or the "
                          f"context of {self._spec.max_positions}")


class NativeDraw:
    """``anima_sample_rows``: one try of the full-vocabulary sampling path (``sampling._sample_full``) for every
    listed row in one call: the tempered softmax, the draw and the nucleus check."""

    def __init__(self, lib: ctypes.CDLL):
        fn = lib.anima_sample_rows
        fn.restype = None
        fn.argtypes = [ctypes.c_int64, ctypes.c_int64, *[ctypes.c_void_p] * 6]
        self._fn = fn

    def __call__(self, x: torch.Tensor, rows: list[int], inv_temp: list[float], u: torch.Tensor,
                 top_p: list[float]) -> list[int]:
        """Per listed row of logits ``x`` (contiguous fp32, (B, vocab), not divided by the temperature), the token
        drawn from softmax(x * ``inv_temp[i]``) at uniform ``u[i]`` (fp32), or -1 where it falls outside the row's
        nucleus ``top_p[i]`` (>= 1: none)."""
        n = len(rows)
        ints, floats = ctypes.c_int64 * n, ctypes.c_float * n
        out = ints()
        self._fn(n, x.shape[-1], x.data_ptr(), ints(*rows), floats(*inv_temp), u.data_ptr(), floats(*top_p), out)
        return list(out)


def load_native_step(backend, cache_dir: str | Path, compiler: str | None, build: bool) -> tuple[NativeStep | None, str]:
    """The kernel for ``backend``, building it first when ``build`` and it is missing; (None, why) when it cannot."""
    why = unsupported(backend)
    if why is not None:
        return None, why
    if compiler is None:
        return None, "no C++ compiler"
    path = library_path(cache_dir, compiler)
    failed = path.with_suffix(".failed")
    if not path.is_file():
        if failed.is_file():
            return None, failed.read_text(encoding="utf-8").strip()
        if not build:
            return None, "not built"
        try:
            build_library(path, compiler)
        except (RuntimeError, OSError) as e:
            try:
                failed.write_text(f"{e}\n", encoding="utf-8")
            except OSError:
                pass
            return None, str(e)
    try:
        return NativeStep(backend, path), ""
    except OSError as e:  # a damaged library: say so and decode without it
        return None, f"{path}: cannot load ({e})"
