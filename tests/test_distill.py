"""kd and persona_guard terms on real nano models: frozen teacher, zero loss against itself, top-k caching,
the guard's schedule, the vocabulary check, and the sequence-level fallback for a teacher with another
tokenizer (teacher replies cached as a dataset with its own fingerprint)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from anima.errors import ModelError
from tests.helpers.models import build_nano_model_dir, cached_nano_model_dir

CHATS = [
    [{"role": "user", "content": "What is your name?"}, {"role": "assistant", "content": "My name is anima."}],
    [{"role": "user", "content": "How are you today?"}, {"role": "assistant", "content": "I am well, thank you."}],
    [{"role": "user", "content": "Tell me a story about the sea."},
     {"role": "assistant", "content": "Once upon a time a ship sailed over the waves."}],
    [{"role": "system", "content": "You are anima."}, {"role": "user", "content": "Who are you?"},
     {"role": "assistant", "content": "I am anima, a small model."}, {"role": "user", "content": "Really?"},
     {"role": "assistant", "content": "Yes, really."}],
]


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    return cached_nano_model_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def other_dir(tmp_path_factory):
    """A teacher with a different tokenizer (other vocabulary size and merges)."""
    return build_nano_model_dir(tmp_path_factory.mktemp("other") / "model", vocab_size=420, seed=1)


@pytest.fixture(scope="module")
def rows(student_dir):
    from anima.tokenizer.hf import load_tokenizer
    from anima.train.chat_rows import encode_examples

    tok = load_tokenizer(student_dir)
    return encode_examples([{"id": str(i), "messages": m} for i, m in enumerate(CHATS)], tok, "chatml", 64, "t"), tok


def _cfg(tmp_path: Path, **over):
    from anima.config.stage_schemas import TrainConfig
    from anima.config.typed import typed

    base = OmegaConf.structured(TrainConfig)
    paths = {"root": str(tmp_path), "data_dir": str(tmp_path / "data"), "raw_dir": str(tmp_path / "raw"),
             "processed_dir": str(tmp_path / "data/processed"), "cache_dir": str(tmp_path / "data/cache"),
             "experiments_dir": str(tmp_path / "exp")}
    tracking = {"uri": f"sqlite:///{tmp_path}/mlruns/mlflow.db", "artifact_root": str(tmp_path / "mlruns/artifacts")}
    return typed(OmegaConf.merge(base, {"stage": "distill", "paths": paths, "tracking": tracking,
                                        "data": {"kind": "chat", "name": "chats"}, "model": {"name": "nano"},
                                        "trainer": {"num_samples": 1}}, over), TrainConfig)


def _source():
    from anima.train.chat_source import ChatSource

    examples = [{"id": str(i), "messages": m} for i, m in enumerate(CHATS)]
    return ChatSource("chats", "fp-chats", "/nowhere", {"train": examples, "val": examples[:2],
                                                        "persona_train": examples[3:], "persona_val": examples[3:]})


# ----------------------------------------------------------------------------------------------- kd ----
def test_vocab_mismatch_is_a_one_line_error(student_dir, other_dir):
    from anima.tokenizer.hf import load_tokenizer
    from anima.train.teacher import check_shared_vocab

    tok = load_tokenizer(student_dir)
    check_shared_vocab(student_dir, "same", tok, tok.vocab_size and len(tok))
    with pytest.raises(ModelError) as e:
        check_shared_vocab(other_dir, "models:/teacher/1", tok)
    msg = str(e.value)
    assert "\n" not in msg and "models:/teacher/1" in msg and "distill.mode=sequence" in msg
    assert "vocabulary sizes" in msg
    with pytest.raises(ModelError, match="set model.vocab_size"):
        check_shared_vocab(student_dir, "t", tok, 999)


def test_kd_teacher_frozen_zero_against_itself_and_gradients_reach_the_student(student_dir, rows):
    from anima.model.build import load_model_dir
    from anima.train.chat_rows import ChatBatches
    from anima.train.distill_terms import DistillationLoss
    from anima.train.teacher import load_frozen

    torch.manual_seed(0)
    data, tok = rows
    batch = ChatBatches(data, 3, tok.pad_token_id, seed=0).batch_at(0)
    teacher = load_frozen(student_dir)
    student = load_model_dir(student_dir)
    logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    for kind in ("forward_kl", "reverse_kl", "jsd"):
        term = DistillationLoss(teacher, 1.0, kind, temperature=2.0)
        assert float(term(0, batch, logits, None)) == pytest.approx(0.0, abs=1e-5)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    loss = DistillationLoss(teacher, 1.0, "forward_kl", temperature=2.0)(0, batch, logits, None)
    assert float(loss) > 1e-4
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters()) and not teacher.training
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


def test_kd_top_k_cache(student_dir, rows):
    from anima.model.build import load_model_dir
    from anima.train.chat_rows import ChatBatches
    from anima.train.distill_terms import DistillationLoss
    from anima.train.teacher import load_frozen

    torch.manual_seed(1)
    data, tok = rows
    batches = ChatBatches(data, 2, tok.pad_token_id, seed=0)
    teacher = load_frozen(student_dir)
    student = load_model_dir(student_dir)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    vocab = student.config.vocab_size

    def loss_of(term, batch):
        logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return float(term(0, batch, logits, None))

    b0 = batches.batch_at(0)
    full = loss_of(DistillationLoss(teacher, 1.0, "jsd"), b0)
    assert loss_of(DistillationLoss(teacher, 1.0, "jsd", cache_top_k=vocab), b0) == pytest.approx(full, rel=1e-5)
    cached = DistillationLoss(teacher, 1.0, "forward_kl", temperature=2.0, cache_top_k=8)
    first = loss_of(cached, b0)
    assert (cached.hits, cached.misses) == (0, 2) and len(cached.cache) == 2
    assert loss_of(cached, b0) == pytest.approx(first, rel=1e-6)  # served from the cache
    assert cached.hits == 2
    for r in b0["example_index"].tolist():
        vals, idx = cached.cache[r]
        assert vals.shape[1] == 8 and idx.dtype == torch.int32
    rev = DistillationLoss(teacher, 1.0, "reverse_kl", cache_top_k=8)
    assert torch.isfinite(torch.tensor(loss_of(rev, b0)))


# -------------------------------------------------------------------------------------- persona guard ----
def test_persona_guard_schedule_and_kl_anchor(student_dir, rows):
    from anima.model.build import load_model_dir
    from anima.train.chat_rows import ChatBatches
    from anima.train.distill_terms import PersonaGuardLoss
    from anima.train.teacher import frozen_copy

    data, tok = rows
    model = load_model_dir(student_dir)
    batches = ChatBatches(data, 2, tok.pad_token_id, seed=5)
    seen = []

    def module(ids, att):
        seen.append(ids.clone())
        return model(input_ids=ids, attention_mask=att).logits

    dummy = torch.zeros(1, 1, 8)
    guard = PersonaGuardLoss(batches, 0.3, every=3)
    fired = [s for s in range(10) if guard(s, {}, dummy, module) is not None]
    assert fired == [0, 3, 6, 9] == [s for s in range(10) if guard.fires(s)]
    assert torch.equal(seen[2], batches.batch_at(2)["input_ids"])  # step 6 -> persona batch 2
    ce_only = guard(3, {}, dummy, module)

    anchored = PersonaGuardLoss(batches, 0.3, every=3, kl_weight=0.5, reference=frozen_copy(model))
    with_kl = anchored(3, {}, dummy, module)
    assert float(with_kl) == pytest.approx(float(ce_only), rel=1e-5)  # KL to itself is 0 at the start
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.1)
    moved = anchored(3, {}, dummy, module)
    ce_moved = guard(3, {}, dummy, module)
    assert float(moved) > float(ce_moved)  # the anchor adds a positive KL once the model moves


# ------------------------------------------------------------------------------------ start-up checks ----
def test_logit_distill_with_other_tokenizer_fails_at_data_preparation(tmp_path, student_dir, other_dir):
    from anima.config.store import register_configs
    from anima.train.chat_data import prepare_chat_data

    register_configs()
    cfg = _cfg(tmp_path, teacher=str(other_dir), init_from=str(student_dir))
    with pytest.raises(ModelError, match="distill.mode=sequence"):
        prepare_chat_data(cfg, 2, 64, source=_source())


def test_sequence_level_fallback_generates_caches_and_trains_on_teacher_replies(tmp_path, student_dir, other_dir):
    from anima.train.chat_data import prepare_chat_data
    from anima.train.seqdistill import ensure_teacher_pairs

    torch.set_num_threads(1)
    cfg = _cfg(tmp_path, teacher=str(other_dir), init_from=str(student_dir),
               distill={"mode": "sequence", "max_prompts": 3}, sampling={"max_new_tokens": 6, "temperature": 0.0})
    pairs = ensure_teacher_pairs(cfg, _source())
    assert pairs.generated_now and len(pairs.examples) == 3 and pairs.teacher == str(other_dir)
    manifest = json.loads((pairs.path / "manifest.json").read_text())
    assert manifest["fingerprint"] == pairs.fingerprint == pairs.path.name
    for ex in pairs.examples:
        assert ex["messages"][-1]["role"] == "assistant" and ex["messages"][-2]["role"] == "user"
    again = ensure_teacher_pairs(cfg, _source())
    assert not again.generated_now and again.fingerprint == pairs.fingerprint
    other = ensure_teacher_pairs(_cfg(tmp_path, teacher=str(other_dir), init_from=str(student_dir),
                                      distill={"mode": "sequence", "max_prompts": 3},
                                      sampling={"max_new_tokens": 7, "temperature": 0.0}), _source())
    assert other.fingerprint != pairs.fingerprint  # sampling is part of the fingerprint

    bundle = prepare_chat_data(cfg, 2, 64, source=_source())  # no vocabulary check in sequence mode
    assert bundle.fingerprint == pairs.fingerprint and bundle.dataset_name == "distill-chats"
    assert len(bundle.aux["chat"].train) <= 3 and bundle.lineage["teacher"] == str(other_dir)
    assert ("chats", "fp-chats", "/nowhere", "prompts") in bundle.aux["inputs"]
    assert set(bundle.val_sets) == {"val", "persona"}


def test_persona_guard_seed_set_from_a_jsonl_file(tmp_path, student_dir):
    from anima.train.chat_data import prepare_chat_data
    from anima.train.distill_terms import PersonaGuardLoss, build_extra_terms

    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("\n".join(json.dumps({"messages": m}) for m in CHATS[:2]) + "\n")
    cfg = _cfg(tmp_path, stage="sft", init_from=str(student_dir),
               loss={"persona_guard": {"weight": 0.3, "every": 4, "data": str(seeds)}})
    bundle = prepare_chat_data(cfg, 2, 64, source=_source())
    assert len(bundle.aux["chat"].persona_train) == 2
    assert any(ctx == "persona" and name == "seeds" for name, _, _, ctx in bundle.aux["inputs"])
    assert bundle.lineage["persona_data"] == str(seeds)
    from anima.model.build import load_model_dir

    (guard,) = build_extra_terms(cfg, load_model_dir(student_dir), bundle)
    assert isinstance(guard, PersonaGuardLoss) and guard.every == 4 and guard.weight == 0.3
    no_persona = _cfg(tmp_path, stage="sft", init_from=str(student_dir), loss={"persona_guard": {"weight": 0.3}})
    src = _source()
    src.splits["persona_train"] = []
    from anima.errors import DataError

    with pytest.raises(DataError, match="no persona_train conversations"):
        prepare_chat_data(no_persona, 2, 64, source=src)
