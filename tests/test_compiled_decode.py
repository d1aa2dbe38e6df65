"""The compiled decode step (AOTInductor): same logits as the eager fast step, built once per architecture in a
detached child process, picked up by a running engine between requests, and a clean fallback when it can't be
built. One real build (the nano architecture) per test session; it needs a C++ compiler, as Inductor does."""

from __future__ import annotations

import re
import time

import pytest
import torch

from anima.errors import ModelError
from anima.generation import ChatEngine, SamplingParams
from anima.generation.backends import FastLlamaBackend
from anima.generation.frozen_batch import weights_digest
from anima.generation.step_graphs import BATCH_MATMULS
from anima.generation.compiled import (
    BATCH_ROWS,
    CompiledLlamaBackend,
    DecodeBatchStep,
    DecodeStep,
    PackageBuild,
    StepSpec,
    step_weights,
)
from tests.helpers.models import random_llama, streams_queued_together

needs_compiler = pytest.mark.usefixtures("cxx_compiler")  # skips without one; fails under CI=true


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _graph_inputs(backend: FastLlamaBackend, tok: int) -> list:
    pos = backend.position
    return [torch.tensor([tok]), torch.tensor([pos]), backend.k_cache.narrow(3, 0, pos),
            backend.v_cache.narrow(2, 0, pos), backend.embed, backend.cos, backend.sin, backend.eps_h,
            backend.step_head, step_weights(backend)]


@pytest.mark.parametrize("kw", [{}, {"num_key_value_heads": 2, "tie_word_embeddings": True},
                                {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0}}])
def test_step_graph_is_the_fast_step(kw):
    """The graph that gets compiled, run eagerly, equals FastLlamaBackend._step (GQA, tied head, RoPE scaling)."""
    model = random_llama(**kw)
    fast = FastLlamaBackend(model)
    graph = DecodeStep(StepSpec.of(fast))
    ids = torch.randint(0, 300, (20,), generator=torch.Generator().manual_seed(2)).tolist()
    fast.forward(ids[:8])
    with torch.inference_mode():
        for tok in ids[8:]:
            pos = fast.position
            logits, k, v = graph(*_graph_inputs(fast, tok))
            ref = fast._step(tok)
            assert torch.allclose(logits, ref, atol=1e-4, rtol=0), pos
            assert torch.allclose(k, fast.k_cache[:, :, :, pos], atol=1e-5)
            assert torch.allclose(v, fast.v_cache[:, :, pos], atol=1e-5)


def _ragged(backend: FastLlamaBackend, lengths: list[int], seed: int = 5) -> None:
    """Fill slots 0..len-1 with prompts of the given lengths."""
    backend.ensure_slots(len(lengths))
    g = torch.Generator().manual_seed(seed)
    for slot, n in enumerate(lengths):
        backend.select(slot)
        backend.truncate(0)
        backend.forward(torch.randint(0, 300, (n,), generator=g).tolist())


@pytest.mark.parametrize("matmul", sorted(BATCH_MATMULS))
@pytest.mark.parametrize("kw", [{}, {"num_key_value_heads": 2}])
def test_batch_graph_is_the_fast_batch_step(kw, matmul):
    """The batched graph, run eagerly on rows at different positions (one padded at position 0), equals
    FastLlamaBackend._step_batch: logits and each row's new K/V, whichever way it multiplies its rows."""
    model = random_llama(**kw)
    fast = FastLlamaBackend(model)
    lengths = [5, 17, 3, 9, 2, 11, 4]
    _ragged(fast, lengths + [1])
    t = max(lengths)
    toks = [7, 8, 9, 10, 11, 12, 13]
    pos = torch.tensor(lengths + [0])
    with torch.inference_mode():
        logits, k, v = DecodeBatchStep(StepSpec.of(fast), matmul)(
            torch.tensor(toks + [0]), pos, fast.k_slots[:8].narrow(4, 0, t), fast.v_slots[:8].narrow(3, 0, t),
            fast.embed, fast.cos, fast.sin, fast.eps_h, fast.step_head, step_weights(fast))
        ref = fast._step_batch(toks)
    torch.testing.assert_close(logits[:7], ref, atol=1e-4, rtol=0)
    rows, at = torch.arange(7), pos[:7]
    torch.testing.assert_close(k[:7], fast.k_slots[rows, :, :, :, at], atol=1e-5, rtol=0)
    torch.testing.assert_close(v[:7], fast.v_slots[rows, :, :, at], atol=1e-5, rtol=0)


def test_spec_key_names_the_architecture_and_changes_with_it():
    a = StepSpec(n_layers=2, hidden=64, n_heads=4, n_kv=4, head_dim=16, inter=128, vocab=400, max_positions=128)
    b = StepSpec(**{**a.__dict__, "n_kv": 2})
    assert a.key().startswith("llama-2x64-v400-p128-t1-") and a.key() == StepSpec(**a.__dict__).key()
    assert a.key() != b.key() and a.key() != StepSpec(**{**a.__dict__, "threads": 2}).key()


def test_a_build_that_fails_leaves_a_note_and_the_engine_stays_eager(tmp_path):
    """A real child process that cannot build (a context of 2 leaves no cache length to compile for)."""
    bad = StepSpec(n_layers=1, hidden=8, n_heads=2, n_kv=2, head_dim=4, inter=8, vocab=10, max_positions=2)
    build = PackageBuild(bad, tmp_path)
    with pytest.raises(ModelError, match="compiled decode step"):
        build.build_now(timeout=300)
    assert build.failed_note.is_file() and not build.ready() and not build.lock.exists()
    assert not build.start()  # a known failure is not retried in the background


def test_no_compiler_is_a_note_not_a_crash(tmp_path, monkeypatch):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    spec = StepSpec(n_layers=1, hidden=8, n_heads=2, n_kv=2, head_dim=4, inter=8, vocab=10, max_positions=16)
    build = PackageBuild(spec, tmp_path)
    assert build.start() is False
    assert "no C++ compiler" in build.failure()


def test_a_damaged_package_is_noted_and_decoding_stays_eager(tmp_path):
    model = random_llama()
    spec = StepSpec.of(FastLlamaBackend(model))
    build = PackageBuild(spec, tmp_path)
    build.dir.mkdir(parents=True)
    build.path.write_bytes(b"not a zip archive")
    backend = CompiledLlamaBackend(model, None, tmp_path, build="background")
    assert backend.name == "fast" and "cannot load the compiled decode step" in backend.status()
    fast = FastLlamaBackend(model)
    # (the native kernels may run: FMA rounding, so not bit for bit)
    assert torch.allclose(backend.forward([1, 2, 3]), fast.forward([1, 2, 3]), atol=1e-5)
    assert backend.forward([4]).shape == (300,)


def test_a_models_frozen_batched_step_is_keyed_by_its_weights(tmp_path):
    model = random_llama()
    digest = weights_digest(FastLlamaBackend(model))
    assert weights_digest(FastLlamaBackend(model)) == digest
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[0, 0] += 1
    assert weights_digest(FastLlamaBackend(model)) != digest
    # only a model loaded from a dir (the build loads it there) and allowed to build gets one
    assert CompiledLlamaBackend(model, None, tmp_path, build="never", model_dir=tmp_path).frozen is None
    assert CompiledLlamaBackend(model, None, tmp_path, build="never").frozen is None


def test_a_frozen_build_whose_weights_changed_leaves_a_note(tmp_path):
    """The child re-derives the digest from the model dir: a mismatch is a failure note, not a wrong package."""
    from anima.generation import frozen_batch
    from tests.helpers.models import build_nano_model_dir

    model_dir = build_nano_model_dir(tmp_path / "nano")
    out = tmp_path / "decode" / "some-frozen.pt2"
    out.parent.mkdir()
    with pytest.raises(ModelError, match="weights changed"):
        frozen_batch.main([str(model_dir), "64", "0" * 16, str(out)])
    assert "weights changed" in out.with_suffix(".failed").read_text() and not out.exists()


# --------------------------------------------------------------------------- one real build, shared
@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A nano model dir and an engine that started the compiled step's build in the background."""
    from tests.helpers.models import build_nano_model_dir

    root = tmp_path_factory.mktemp("compiled")
    model_dir = build_nano_model_dir(root / "nano")
    cache = root / "cache"
    engine = ChatEngine(model_dir, backend="auto", cache_dir=cache, build="background")
    status = engine.backend_status()
    assert engine.backend_name == "fast" and "building in the background" in status, status
    package = engine.backend.package
    # a second engine (another chat) joins the running build instead of starting its own
    other = PackageBuild(package.spec, cache)
    assert other.building() and other.start() and other._proc is None
    assert package.wait(timeout=900), package.failure() or (package.log.read_text() if package.log.exists() else "")
    return model_dir, cache, engine


@pytest.mark.slow
@needs_compiler
def test_background_build_is_picked_up_between_requests(built):
    model_dir, cache, engine = built
    msgs = [{"role": "user", "content": "What is your name?"}]
    params = SamplingParams(temperature=0.0, max_new_tokens=40)
    reply = engine.chat(msgs, params)
    assert engine.backend_name == "compiled" and engine.backend_status().startswith("compiled backend (")
    assert not engine.backend.package.lock.exists()
    eager = ChatEngine(model_dir, backend="fast").chat(msgs, params)
    assert (reply.text, reply.completion_tokens, reply.finish_reason) == (eager.text, eager.completion_tokens,
                                                                          eager.finish_reason)
    # one request at a time: no batch, so no model-specific package; two at once: a batch, and the engine goes on
    # to build this model's own batched step (frozen_batch.py) once the shared packages are in
    assert engine.backend.frozen is not None and not engine.backend.batched and not engine.backend.frozen.lock.exists()
    engine.scheduler.peak_batch = 0
    streams = streams_queued_together(engine, ["Once upon a time", "the sea", "one two three four"],
                                      [SamplingParams(temperature=1.0, seed=i, max_new_tokens=30) for i in range(3)])
    for stream in streams:
        "".join(stream)
    assert engine.scheduler.peak_batch >= 2, [s.completion_tokens for s in streams]
    engine.chat(msgs, params)  # between requests the engine starts the build
    _wait_frozen(engine.backend.frozen)
    # a later engine loads the cached packages at once, and backend=compiled does not rebuild them
    later = ChatEngine(model_dir, backend="compiled", cache_dir=cache)
    assert later.backend_name == "compiled" and later.backend.frozen_batch is not None
    built = sorted(p.name for p in (cache / "decode").iterdir() if not p.name.endswith(".log"))
    # the native kernel (one per machine), the step, the batched step (both per architecture), and this model's
    # frozen batched step
    assert [name for name in built if name.startswith("native-")] == [later.backend.native.library.name], built
    built = [name for name in built if not name.startswith("native-")]
    assert len(built) == 3 and all(name.endswith(".pt2") for name in built), built
    assert sum(name.endswith("-frozen.pt2") for name in built) == 1, built
    assert "batched step too" in later.backend_status()


def _wait_frozen(frozen, timeout: float = 900) -> None:
    """Wait for a model's frozen batched step that an engine started building."""
    assert frozen is not None and (frozen.ready() or frozen.lock.exists())
    deadline = time.monotonic() + timeout
    while not frozen.ready() and frozen.building() and time.monotonic() < deadline:
        time.sleep(0.5)
    log = frozen.log.read_text() if frozen.log.exists() else ""
    assert frozen.ready() and not frozen.failed(), log


@pytest.mark.slow
@needs_compiler
def test_compiled_logits_match_eager_through_prefix_reuse(built):
    model_dir, cache, _ = built
    from anima.model.build import load_model_dir

    model = load_model_dir(model_dir, dtype=torch.float32).eval()
    ctx = model.config.max_position_embeddings  # the engine's context: the package was built for it
    compiled = CompiledLlamaBackend(model, ctx, cache, build="never")
    fast = FastLlamaBackend(model, ctx)
    assert compiled.name == "compiled"
    ids = torch.randint(0, model.config.vocab_size, (90,), generator=torch.Generator().manual_seed(3)).tolist()
    for backend in (compiled, fast):
        backend.forward(ids[:1])  # cache length 1: the eager step takes it (compiled needs >= 2)
    for tok in ids[1:70]:
        a, b = compiled.forward([tok]), fast.forward([tok])
        assert torch.allclose(a, b, atol=1e-4, rtol=0), compiled.position
    for backend in (compiled, fast):  # reuse a prefix, re-prefill, decode on
        backend.truncate(30)
        backend.forward(ids[30:40])
    for tok in ids[70:90]:
        assert torch.allclose(compiled.forward([tok]), fast.forward([tok]), atol=1e-4, rtol=0)
    torch.testing.assert_close(compiled.k_cache[:, :, :, :60], fast.k_cache[:, :, :, :60], atol=1e-5, rtol=0)


@pytest.mark.slow
@needs_compiler
def test_the_batched_step_is_built_both_ways_and_the_faster_kept(built):
    package = built[2].backend.package
    log = package.log.read_text()
    times = re.search(r"batched step, ms per step: rows ([\d.]+), gemm ([\d.]+)", log)
    assert times and all(float(t) > 0 for t in times.groups()), log
    assert package.batch_path.is_file()
    assert not [p.name for p in package.dir.iterdir() if p.name.startswith(".")]  # no variant or temp file left


@pytest.mark.slow
@needs_compiler
@pytest.mark.parametrize("package", ["shared", "frozen"])
@pytest.mark.parametrize("rows", [2, BATCH_ROWS, BATCH_ROWS + 4])
def test_compiled_batch_step_matches_eager(built, rows, package):
    """The compiled batched step (padded; full; in two chunks) equals the eager one, logits and caches, over several
    steps of rows at different positions (the first at position 1, below the compiled step's minimum cache): the
    package shared by the architecture, and the model's own with its weights frozen in."""
    model_dir, cache, _ = built
    from anima.model.build import load_model_dir

    model = load_model_dir(model_dir, dtype=torch.float32).eval()
    ctx = model.config.max_position_embeddings
    if package == "shared":
        compiled = CompiledLlamaBackend(model, ctx, cache, build="never")
        assert compiled.frozen_batch is None
    else:  # built by test_background_build_is_picked_up_between_requests, or here when this test runs alone
        compiled = CompiledLlamaBackend(model, ctx, cache, build="background", model_dir=model_dir)
        if compiled.frozen_batch is None:
            compiled.batched = True  # as after a first batch
            compiled.refresh()
            _wait_frozen(compiled.frozen)
            compiled.refresh()
        assert compiled.frozen_batch is not None
    fast = FastLlamaBackend(model, ctx)
    assert compiled.compiled_batch is not None
    compiled.batch_ways.fixed = "compiled"
    runs = []
    used = compiled.frozen_batch or compiled.compiled_batch
    package_run = used.run
    used.run = lambda inputs: runs.append(1) or package_run(inputs)
    lengths = [1 + 4 * i for i in range(rows)]
    for backend in (compiled, fast):
        _ragged(backend, lengths)
    g = torch.Generator().manual_seed(4)
    for _ in range(4):
        toks = torch.randint(0, model.config.vocab_size, (rows,), generator=g).tolist()
        torch.testing.assert_close(compiled.step_batch(toks), fast.step_batch(toks), atol=1e-4, rtol=0)
    chunks = -(-rows // BATCH_ROWS)
    assert len(runs) == 4 * chunks
    assert compiled.positions[:rows] == fast.positions[:rows] == [n + 4 for n in lengths]
    end = max(lengths) + 4
    torch.testing.assert_close(compiled.k_slots[:rows, ..., :end], fast.k_slots[:rows, ..., :end], atol=1e-5, rtol=0)
    torch.testing.assert_close(compiled.v_slots[:rows, :, :, :end], fast.v_slots[:rows, :, :, :end], atol=1e-5, rtol=0)
    compiled.batch_ways.fixed = "eager"
    compiled.step_batch(toks[:2])
    assert len(runs) == 4 * chunks


@pytest.mark.slow
@needs_compiler
def test_batches_take_whichever_step_is_faster_here(built):
    """Unforced, each batch size tries every step that is in (eager, compiled, and the native kernel, which the
    module's engine built into the same cache), then keeps running the one that was faster."""
    model_dir, cache, _ = built
    from anima.model.build import load_model_dir

    model = load_model_dir(model_dir, dtype=torch.float32).eval()
    compiled = CompiledLlamaBackend(model, model.config.max_position_embeddings, cache, build="never")
    _ragged(compiled, [5, 9, 13])
    ways = compiled.batch_ways
    assert ways.ways == ("eager", "compiled", "native")
    for _ in range(len(ways.ways) * (ways.trials + 1) + 2):
        compiled.step_batch([7, 8, 9])
    best = ways.best(3)
    assert best in ways.ways
    assert all(len(ts) == ways.trials for ts in ways._times[3].values())
    assert [ways.pick(3) for _ in range(5)] == [best] * 5


@pytest.mark.slow
@needs_compiler
def test_chat_stage_reports_the_compiled_backend(built, tmp_path, monkeypatch):
    """`anima chat` with the package in paths.cache_dir says so; chat.compile=false does not start a build."""
    from tests.helpers.champion import anima

    model_dir, cache, _ = built
    proc = anima(tmp_path, "chat", f"model={model_dir}", f"paths.cache_dir={cache}", "chat.feedback=null",
                 "sampling.max_new_tokens=4", input="hello\n/quit\n")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "[compiled backend (" in proc.stdout, proc.stdout
    proc = anima(tmp_path, "chat", f"model={model_dir}", "chat.compile=false", "chat.feedback=null",
                 "sampling.max_new_tokens=4", input="/quit\n")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "[fast backend" in proc.stdout and not (tmp_path / "data" / "cache" / "decode").exists()


@pytest.mark.slow
@needs_compiler
def test_compiled_engine_batches_and_matches_solo_runs(built):
    """Concurrent requests on the compiled engine share steps (three: the eager batched step on packed weights; one
    left: the compiled single-token step) and produce the tokens they produce alone."""
    _, _, engine = built
    prompts = ["Once upon a time", "the sea", "one two three four"]
    params = [SamplingParams(temperature=0.0, max_new_tokens=30), SamplingParams(temperature=1.0, seed=4,
                                                                                  max_new_tokens=30),
              SamplingParams(temperature=0.7, top_k=10, seed=9, max_new_tokens=25)]
    solo = [engine.complete(p, sp).token_ids for p, sp in zip(prompts, params)]
    assert engine.backend_name == "compiled"
    engine.scheduler.peak_batch = 0
    streams = streams_queued_together(engine, prompts, params)
    for s in streams:
        "".join(s)
    assert engine.scheduler.peak_batch >= 2
    assert [s.token_ids for s in streams] == solo
