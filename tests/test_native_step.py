"""The C++ decode kernels (native_step.py): the eager fast backend's logits and KV cache for one token, a batch of
sequences at their own positions, and a prompt, at any thread count and head layout; built once per machine and
reused; a failed build is a note, not a crash."""

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
                    assert torch.allclose(native.step(tok), ref._step(tok), atol=1e-4, rtol=1e-5), (start, pos)
                n = mine.position
                assert torch.allclose(mine.k_cache[..., :n], ref.k_cache[..., :n], atol=1e-5)
                assert torch.allclose(mine.v_cache[:, :, :n], ref.v_cache[:, :, :n], atol=1e-5)
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("kw", [{}, {"num_key_value_heads": 2, "hidden_size": 40, "num_attention_heads": 4,
                                     "intermediate_size": 70}])
def test_native_batch_step_and_prefill_are_the_fast_ones(kw, cache_dir, cxx_compiler):
    """Six sequences at ragged positions decoded together, and prompts prefilled from an empty slot and after a
    cached prefix: the eager batched step's and prefill's logits and K/V."""
    model = random_llama(**kw)
    ref, mine = FastLlamaBackend(model), FastLlamaBackend(model)
    native = _native(mine, cache_dir, cxx_compiler)
    g = torch.Generator().manual_seed(4)
    with torch.inference_mode():
        for backend in (ref, mine):
            backend.ensure_slots(8)  # two idle slots beyond the batch
        for slot in range(6):
            ids = torch.randint(0, 300, (3 + 5 * slot,), generator=g).tolist()
            ref.select(slot)
            mine.select(slot)
            expected = ref.forward(ids)
            mine.forward(ids[:1])  # one token, then the rest through the kernel after that cached prefix
            assert torch.allclose(native.prefill(ids[1:]), expected, atol=1e-4, rtol=1e-5), slot
        for _ in range(3):
            toks = torch.randint(0, 300, (6,), generator=g).tolist()
            assert torch.allclose(native.step_batch(toks), ref.step_batch(toks), atol=1e-4, rtol=1e-5)
        assert mine.positions == ref.positions
        assert torch.allclose(mine.k_slots, ref.k_slots, atol=1e-5)
        assert torch.allclose(mine.v_slots, ref.v_slots, atol=1e-5)


def test_native_draws_are_the_torch_draws(cache_dir, cxx_compiler):
    """The full-vocabulary sampling path through the kernel's draws (one call per try) picks the tokens the torch
    ops pick from the same generators: every nucleus size (including one so small that rejection falls back to the
    sort), top-k beyond the shortcut, and 1.0. A token may differ only where a uniform lands on a rounding edge."""
    from anima.generation.sampling import SamplingParams, make_generator, sample_batch

    native = _native(FastLlamaBackend(random_llama()), cache_dir, cxx_compiler)
    logits = torch.randn(6, 700, generator=torch.Generator().manual_seed(5)) * 4
    logits[5] = torch.linspace(0.0, 1.0, 700)  # nearly flat: at top_p 0.02 most draws miss the nucleus
    params = [SamplingParams(temperature=0.8, top_p=0.9), SamplingParams(temperature=1.3, top_p=0.3),
              SamplingParams(temperature=0.8, top_p=1.0), SamplingParams(temperature=0.7, top_k=400, top_p=0.95),
              SamplingParams(temperature=0.8), SamplingParams(temperature=1.0, top_p=0.02)]
    torch_gens = [make_generator(i) for i in range(6)]
    native_gens = [make_generator(i) for i in range(6)]
    picked = [(sample_batch(logits, params, torch_gens), sample_batch(logits, params, native_gens, draw=native.draw))
              for _ in range(200)]
    differ = sum(a != b for pair in picked for a, b in zip(*pair))
    assert differ <= 2, differ
    assert len({pair[1][2] for pair in picked}) > 10  # it samples: not one token every time
    assert all(pair[1][5] >= 680 for pair in picked)  # the ~2% most likely tokens only


def test_native_slot_swap_is_the_torch_swap(cache_dir, cxx_compiler):
    """Swapping two slots in place moves exactly their valid positions, as FastLlamaBackend.swap_slots does."""
    ref, mine = FastLlamaBackend(random_llama(num_key_value_heads=2)), FastLlamaBackend(random_llama(num_key_value_heads=2))
    native = _native(mine, cache_dir, cxx_compiler)
    for backend in (ref, mine):
        backend.ensure_slots(4)
        gen = torch.Generator().manual_seed(0)
        backend.k_slots.copy_(torch.randn(backend.k_slots.shape, generator=gen))
        backend.v_slots.copy_(torch.randn(backend.v_slots.shape, generator=gen))
        backend.positions[:4] = [5, 0, 17, 9]
    for a, b in ((0, 2), (3, 1), (2, 2)):
        ref.swap_slots(a, b)
        native.swap_slots(a, b)
        assert ref.positions == mine.positions
        assert torch.equal(ref.k_slots, mine.k_slots) and torch.equal(ref.v_slots, mine.v_slots)
    with pytest.raises(IndexError):
        native.swap_slots(0, 4)


def test_out_of_range_is_an_error_not_a_crash(cache_dir, cxx_compiler):
    backend = FastLlamaBackend(random_llama())
    native = _native(backend, cache_dir, cxx_compiler)
    with pytest.raises(ValueError, match="outside the vocabulary of 300"):
        native.step(300)
    with pytest.raises(ValueError, match="outside the vocabulary of 300"):
        native.step_batch([1, 300])
    backend.position = 64
    with pytest.raises(ValueError, match="context of 64"):
        native.step(1)
    with pytest.raises(ValueError, match="1 to 64 at once"):
        native.rows(list(range(65)), range(65), [0] * 65)
    assert backend.position == 64 and backend.positions == [64]  # nothing advanced


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


def test_the_compiled_backend_decodes_with_the_native_kernels_before_any_package(tmp_path, cxx_compiler):
    """With the kernels and no AOTI package (as while one builds in the background), the backend's prefills,
    single steps and batched steps time the kernels against the eager ones and match the eager fast backend."""
    model = random_llama()
    backend = CompiledLlamaBackend(model, None, tmp_path / "cache", build="never")
    assert backend.native is None and backend.batch_ways.ways == ("eager",)
    backend.native, _ = load_native_step(backend, tmp_path / "cache", cxx_compiler, build=True)
    backend.batch_ways = backend._batch_ways()
    assert backend.native is not None and backend.compiled is None and backend.batch_ways.ways == ("eager", "native")
    assert backend.status().endswith("; native step")
    ref = FastLlamaBackend(model)
    with torch.inference_mode():
        for backend_ in (backend, ref):
            backend_.ensure_slots(3)
        for round_ in range(6):  # each way of each FasterPath runs (a warm-up, then timed ones)
            for slot in range(3):
                backend.select(slot)
                ref.select(slot)
                prompt = [5 + slot, 6, 7, round_ + 1] if round_ == 0 else [round_ + 1, 9]
                a, b = backend.forward(prompt), ref.forward(prompt)
                assert int(a.argmax()) == int(b.argmax()) and torch.allclose(a, b, atol=1e-4, rtol=1e-5)
                tok = int(a.argmax())
                assert torch.allclose(backend.forward([tok]), ref.forward([tok]), atol=1e-4, rtol=1e-5)
            toks = [round_, round_ + 1, round_ + 2]
            assert torch.allclose(backend.step_batch(toks), ref.step_batch(toks), atol=1e-4, rtol=1e-5)
    assert backend.positions == ref.positions
    assert set(backend.prefill_ways._warm) == {"native", "eager"} and set(backend.batch_ways._warm) == {"eager", "native"}


def test_a_model_too_big_to_pack_twice_keeps_the_single_token_kernel_only(tmp_path, cxx_compiler, monkeypatch):
    """Over MAX_PACKED_BYTES of weights the rows kernel (which runs on a packed copy) is off: batches and prompts go
    the other ways, single tokens still through the kernel."""
    import anima.generation.native_step as native_step

    monkeypatch.setattr(native_step, "MAX_PACKED_BYTES", 1024)
    model = random_llama()
    backend = CompiledLlamaBackend(model, None, tmp_path / "cache", build="never")
    backend.native, _ = load_native_step(backend, tmp_path / "cache", cxx_compiler, build=True)
    backend.batch_ways = backend._batch_ways()
    assert backend.native is not None and not backend.native.has_rows and backend.batch_ways.ways == ("eager",)
    with pytest.raises(RuntimeError, match="rows kernel is off"):
        backend.native.rows([1, 2], [0, 1], [0, 0])
    ref = FastLlamaBackend(model)
    with torch.inference_mode():
        for backend_ in (backend, ref):
            backend_.ensure_slots(2)
        a, b = backend.forward([5, 6, 7]), ref.forward([5, 6, 7])
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-5)
        assert torch.allclose(backend.native.step(9), ref.forward([9]), atol=1e-4, rtol=1e-5)
        assert torch.allclose(backend.step_batch([3, 4]), ref.step_batch([3, 4]), atol=1e-4, rtol=1e-5)
