"""Packed chat batches (trainer.packing): a conversation inside a packed row gets exactly the logits it gets
alone (attention and positions restart per conversation), labels never cross a boundary, an epoch scores the
same assistant tokens as the padded batches, batches are a pure function of (seed, step), and a real sft run
trains on packed rows and records what packing gave."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from anima.errors import DataError
from tests.helpers.models import cached_nano_model_dir, random_llama
from tests.helpers import NANO_FAST, compose_cfg

WORDS = "the sea ship wave island story name model small well thank you asking today tell me about".split()


def _chat(i: int) -> list[dict]:
    """Conversations of varied length (1-2 exchanges, 1-6 words a turn), some with a system message."""
    msgs = [{"role": "system", "content": "You are anima."}] if i % 3 == 0 else []
    for turn in range(1 + i % 2):
        q = " ".join(WORDS[(i + k + turn) % len(WORDS)] for k in range(1 + (i * 5 + turn) % 4))
        a = " ".join(WORDS[(i * 3 + k + turn) % len(WORDS)] for k in range(1 + (i * 7 + turn) % 6))
        msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return msgs


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from anima.tokenizer.hf import load_tokenizer

    return load_tokenizer(cached_nano_model_dir(tmp_path_factory))


@pytest.fixture(scope="module")
def rows(tok):
    from anima.train.chat_rows import encode_examples

    return encode_examples([{"id": str(i), "messages": _chat(i)} for i in range(40)], tok, "chatml", 128, "t")


def _segments(position_ids: torch.Tensor) -> list[tuple[int, int]]:
    """(start, end) of each run of positions 0, 1, 2, ... in one packed row."""
    starts = [t for t in range(len(position_ids)) if int(position_ids[t]) == 0] + [len(position_ids)]
    return list(zip(starts[:-1], starts[1:]))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_a_packed_conversation_has_the_logits_it_has_alone(rows, tok, attn):
    from anima.train.distill_terms import _forward
    from anima.train.packing import pack_conversations, packed_batch

    packing = pack_conversations([len(x) for x in rows.input_ids], 256, seed=3)
    packs = [p for p in packing.rows if len(p) >= 3][:2]
    assert len(packs) == 2, "the fixture should pack at least 3 conversations into a row"
    batch = packed_batch(rows, packs, tok.pad_token_id)
    assert "attention_mask" not in batch
    model = random_llama(vocab_size=len(tok), max_position_embeddings=256, attn_implementation=attn)
    with torch.no_grad():
        packed = _forward(model, batch)  # the teacher's forward in kd: it must pass position_ids too
        for r, pack in enumerate(packs):
            start = 0
            for i in pack:
                ids = rows.input_ids[i]
                alone = model(input_ids=torch.tensor([ids])).logits[0]
                torch.testing.assert_close(packed[r, start:start + len(ids)], alone, atol=1e-4, rtol=1e-4)
                start += len(ids)
        # control: the same row under one plain causal mask differs (attention would cross the boundary)
        crossing = model(input_ids=batch["input_ids"]).logits
    second = slice(len(rows.input_ids[packs[0][0]]), sum(len(rows.input_ids[i]) for i in packs[0][:2]))
    assert (crossing[0, second] - packed[0, second]).abs().max() > 1e-2


def test_labels_stay_inside_their_conversation_and_an_epoch_scores_the_padded_targets(rows, tok):
    from anima.train.chat_rows import pad_rows
    from anima.train.packing import pack_conversations, packed_batch

    packing = pack_conversations([len(x) for x in rows.input_ids], 256, seed=0)
    placed = sorted(i for p in packing.rows for i in p)
    assert placed == list(range(len(rows)))  # every conversation exactly once
    assert all(n <= 256 for n in packing.lengths) and len(packing.rows) < len(rows) // 2
    batch = packed_batch(rows, packing.rows, tok.pad_token_id)
    for r, pack in enumerate(packing.rows):
        segs = _segments(batch["position_ids"][r])
        for (a, b), i in zip(segs, pack):  # conversation i's own tokens and labels, nothing of its neighbours
            assert batch["input_ids"][r, a:b].tolist() == rows.input_ids[i]
            assert batch["labels"][r, a:b].tolist() == rows.labels[i]
        tail = slice(packing.lengths[r], None)
        assert batch["labels"][r, tail].eq(-100).all() and batch["input_ids"][r, tail].eq(tok.pad_token_id).all()
        assert len(segs) == len(pack) + (packing.lengths[r] < batch["input_ids"].size(1))
    padded = pad_rows(rows.input_ids, rows.labels, tok.pad_token_id)
    targets = int((batch["labels"] != -100).sum())
    assert targets == int((padded["labels"] != -100).sum()) == rows.target_tokens
    assert torch.equal(batch["labels"][batch["labels"] != -100].sort().values,
                       padded["labels"][padded["labels"] != -100].sort().values)


def test_packing_is_deterministic_fills_rows_and_rejects_overlong(rows):
    from anima.train.packing import pack_conversations

    lengths = [len(x) for x in rows.input_ids]
    a, b = pack_conversations(lengths, 256, seed=5), pack_conversations(lengths, 256, seed=5)
    assert a == b and a != pack_conversations(lengths, 256, seed=6)
    assert a.fill > 0.85
    with pytest.raises(DataError, match="more than a packed row's 8"):
        pack_conversations([3, 9], 8, seed=0)


def test_packed_batches_are_a_pure_function_of_the_step(rows, tok):
    from anima.train.packing import PackedChatBatches, pack_conversations, train_batches

    packing = pack_conversations([len(x) for x in rows.input_ids], 256, seed=7)
    a = PackedChatBatches(rows, packing, 4, tok.pad_token_id, seed=7)
    resumed = list(PackedChatBatches(rows, packing, 4, tok.pad_token_id, seed=7, start=lambda: 3, total=6))
    assert len(resumed) == 3
    for k, batch in zip(range(3, 6), resumed):
        assert batch.keys() == {"input_ids", "labels", "position_ids", "example_index"}
        for key in batch:
            assert torch.equal(batch[key], a.batch_at(k)[key])
    n = a.rows_per_epoch()
    seen = [i for k in range(2 * n // 4 + 2) for i in a.indices_at(k)]
    assert sorted(seen[:n]) == list(range(n)) and sorted(seen[n:2 * n]) == list(range(n))  # epochs of packed rows
    # what prepare_chat_data builds: the same batches from (seed, step), and the stats the run logs
    make, stats = train_batches(rows, 4, tok.pad_token_id, 7, 256, packing=True)
    assert torch.equal(make(lambda: 0, 9).batch_at(4)["input_ids"], a.batch_at(4)["input_ids"])
    assert stats["packing"] is True and stats["train_rows_per_epoch"] == n and stats["train_fill"] > 0.85
    _, padded = train_batches(rows, 4, tok.pad_token_id, 7, 256, packing=False)
    assert padded["train_rows_per_epoch"] == len(rows) and padded["train_fill"] < stats["train_fill"]


def test_a_model_that_ignores_position_ids_is_refused():
    from anima.errors import ConfigError
    from anima.train.packing import check_packing_support

    model = random_llama()
    check_packing_support(model)  # Llama keeps packed conversations apart

    class NoPacking(torch.nn.Module):  # an architecture whose attention ignores restarting position_ids
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def get_input_embeddings(self):
            return self.inner.get_input_embeddings()

        def forward(self, input_ids, position_ids=None, use_cache=False):
            return self.inner(input_ids=input_ids, use_cache=use_cache)

    with pytest.raises(ConfigError, match="attends across packed conversations.*trainer.packing=false"):
        check_packing_support(NoPacking(model), "model.path=x")


class CrashAtStep(L.Callback):
    """Simulates a crash after the checkpoint at `step` was written."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


@pytest.mark.slow
def test_sft_trains_on_packed_rows_records_the_packing_and_resumes_exactly(raw_dir, project):
    import mlflow
    from safetensors.torch import load_file

    from anima.stages.train import train

    overrides = [*NANO_FAST, "trainer.max_steps=4", "trainer.ckpt_every=2", "trainer.val_every=2",
                 "trainer.val_batches=1", "device.threads=1", "registry.register=false", "optim.warmup_steps=1"]
    cfg = compose_cfg("sft", overrides, raw_dir)
    assert cfg.trainer.packing is True  # on by default for sft
    full = train(cfg)
    run = mlflow.get_run(full.run_id)
    params = run.data.params
    assert params["data.packing"] == "True" and params["trainer.packing"] == "True"
    assert int(params["data.train_rows_per_epoch"]) < int(params["data.train_examples"])
    assert float(params["data.train_fill"]) > 0.85
    assert full.metrics["val/ppl"] > 1.0 and "train/lm" in run.data.metrics
    # interrupted after the step-2 checkpoint, resumed: the packed batches replay, the weights match bitwise
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(compose_cfg("sft", overrides, raw_dir), callbacks=[CrashAtStep(2)])
    resumed = train(compose_cfg("sft", [*overrides, "resume=auto"], raw_dir))
    a, b = load_file(str(full.model_dir / "model.safetensors")), load_file(str(resumed.model_dir / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
