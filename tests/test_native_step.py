"""The single-token C++ decode kernel (native_step.py): the eager fast step's logits and KV cache, at any position,
thread count and head layout; built once per machine and reused; a failed build is a note, not a crash."""

from __future__ import annotations

import pytest
import torch

from anima.generation.backends import FastLlamaBackend
from anima.generation.compiled import CompiledLlamaBackend
from anima.generation.native_step import NativeStep, library_path, load_native_step
from tests.helpers.models import random_llama

pytestmark = pytest.mark.usefixtures("cxx_compiler")  # skips without one; fails under CI=true


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("native-cache")


def _native(backend: FastLlamaBackend, cache_dir, compiler: str) -> NativeStep:
    native, why = load_native_step(backend, cache_dir, compiler, build=True)
    assert native is not None, why
    return native


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("kw", [{}, {"num_key_value_heads": 2, "tie_word_embeddings": True},
                                {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0}},
                                {"hidden_size": 40, "num_attention_heads": 2, "num_key_value_heads": 1,
                                 "intermediate_size": 70}])
def test_native_step_is_the_fast_step(kw, threads, cache_dir, cxx_compiler):
    """From an empty cache and after a prefill, with GQA, a tied head, RoPE scaling and widths that are not a
    multiple of the kernel's 32 lanes: the same logits and the same K/V as FastLlamaBackend._step."""
    model = random_llama(**kw)
    ref, mine = FastLlamaBackend(model), FastLlamaBackend(model)
    native = _native(mine, cache_dir, cxx_compiler)
    ids = torch.randint(0, 300, (24,), generator=torch.Generator().manual_seed(3)).tolist()
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            for start in (0, 8):
                ref.truncate(0)
                mine.truncate(0)
                if start:
                    ref.forward(ids[:start])
                    mine.forward(ids[:start])
                for tok in ids[start:]:
                    pos = mine.position
                    logits = native.run(tok, pos, mine.k_cache, mine.v_cache)
                    mine.position = pos + 1
                    expected = ref._step(tok)
                    assert torch.allclose(logits, expected, atol=1e-4, rtol=1e-5), (start, pos)
                n = mine.position
                assert torch.allclose(mine.k_cache[..., :n], ref.k_cache[..., :n], atol=1e-5)
                assert torch.allclose(mine.v_cache[:, :, :n], ref.v_cache[:, :, :n], atol=1e-5)
    finally:
        torch.set_num_threads(old)


def test_a_token_outside_the_vocabulary_is_an_error_not_a_crash(cache_dir, cxx_compiler):
    backend = FastLlamaBackend(random_llama())
    native = _native(backend, cache_dir, cxx_compiler)
    with pytest.raises(ValueError, match="outside the vocabulary of 300"):
        native.run(300, 0, backend.k_cache, backend.v_cache)
    with pytest.raises(ValueError, match="context of 64"):
        native.run(1, 64, backend.k_cache, backend.v_cache)


def test_built_once_per_machine_and_reused(tmp_path, cxx_compiler):
    backend = FastLlamaBackend(random_llama())
    path = library_path(tmp_path, cxx_compiler)
    assert load_native_step(backend, tmp_path, cxx_compiler, build=False) == (None, "not built")
    _native(backend, tmp_path, cxx_compiler)
    built = path.stat().st_mtime_ns
    _native(FastLlamaBackend(random_llama(num_key_value_heads=2)), tmp_path, cxx_compiler)  # any architecture
    assert path.stat().st_mtime_ns == built
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files left


def test_a_failed_build_is_noted_once_and_decoding_goes_on(tmp_path, monkeypatch):
    """A compiler that fails: a ``.failed`` note naming it, no retry, and the backend decodes with the eager step."""
    broken = tmp_path / "broken-cxx"
    broken.write_text("#!/bin/sh\necho 'fatal error: omp.h: No such file' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CXX", str(broken))
    model = random_llama()
    backend = CompiledLlamaBackend(model, None, tmp_path / "cache", build="never")
    assert backend.native is None and "not built" in backend.status()
    native, why = load_native_step(backend, tmp_path / "cache", str(broken), build=True)
    assert native is None and "broken-cxx exited 1: fatal error: omp.h" in why
    note = library_path(tmp_path / "cache", str(broken)).with_suffix(".failed")
    assert "omp.h" in note.read_text()
    assert load_native_step(backend, tmp_path / "cache", str(broken), build=True)[1] == why  # noted: no retry
    ref = FastLlamaBackend(model)
    with torch.inference_mode():
        backend.forward([1, 2, 3])
        ref.forward([1, 2, 3])
        assert torch.allclose(backend.forward([4]), ref.forward([4]), atol=1e-5)


def test_the_compiled_backend_decodes_with_the_native_step_before_any_package(tmp_path, cxx_compiler):
    """With the kernel and no AOTI package (as while one builds in the background), the backend's steps are the
    kernel's, and a greedy decode through it equals the eager fast step token for token."""
    model = random_llama()
    backend = CompiledLlamaBackend(model, None, tmp_path / "cache", build="never")
    assert backend.native is None
    backend.native, _ = load_native_step(backend, tmp_path / "cache", cxx_compiler, build=True)
    assert backend.native is not None and backend.compiled is None
    assert backend.status().endswith("; native step")
    ref = FastLlamaBackend(model)
    with torch.inference_mode():
        a, b = backend.forward([5, 6, 7]), ref.forward([5, 6, 7])
        for _ in range(10):
            tok = int(a.argmax())
            assert tok == int(b.argmax())
            a, b = backend.forward([tok]), ref.forward([tok])
            assert torch.allclose(a, b, atol=1e-4, rtol=1e-5)
    assert backend.position == ref.position == 13

