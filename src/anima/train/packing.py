"""Packed chat batches (``trainer.packing``): whole conversations laid end to end in rows of ``max_seq_len``.

Why: chat conversations are short, so one padded conversation per row spends most of a step on padding.
Packed, a step carries several times more assistant tokens for little more compute.

Correctness: a packed batch has ``input_ids``, ``labels`` and ``position_ids`` but *no* ``attention_mask``.
Position ids restart at 0 for every conversation; transformers then builds a block-diagonal causal mask
(``masking_utils.find_packed_sequence_indices``), so no token attends across a conversation boundary and
RoPE sees each conversation at the positions it would have alone. Labels are shifted inside each
conversation by ``encode_conversation`` (the last input token of a conversation predicts that conversation's
final token), so no label crosses a boundary either. A row's unused tail is pad tokens forming one more
"sequence" (positions from 0, labels -100).

Order: conversations are packed once, best-fit over a permutation seeded by the run seed, so a packed row
is a fixed set of conversations; an epoch is one pass over a seeded permutation of the packed rows, and
batch ``i`` is a pure function of ``(seed, i)`` like the padded batches (resume replays the same batches).
Fixed rows also keep ``example_index`` (the packed row id) stable, so the kd teacher top-k cache still hits
from the second epoch on.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from anima.errors import ConfigError, DataError
from anima.train.chat_rows import ChatBatches, ChatRows
from anima.train.labels import IGNORE_INDEX


@dataclass(frozen=True)
class Packing:
    """Which conversations (indices into ChatRows) fill each packed row, and the tokens each row uses."""

    rows: list[list[int]]
    lengths: list[int]
    capacity: int

    @property
    def fill(self) -> float:
        """Real tokens / row capacity over all packed rows."""
        return sum(self.lengths) / max(1, len(self.rows) * self.capacity)


def pack_conversations(lengths: Sequence[int], capacity: int, seed: int) -> Packing:
    """Best-fit packing of conversations of ``lengths`` tokens into rows of ``capacity`` tokens.

    Conversations are taken in a permutation seeded by ``seed``; each goes into the open row with the least
    room that still fits it (ties: the oldest row), else a new row. Deterministic for (lengths, capacity, seed).
    """
    too_long = [i for i, n in enumerate(lengths) if n > capacity]
    if too_long:
        raise DataError(f"conversation {too_long[0]} has {lengths[too_long[0]]} tokens, more than a packed row's "
                        f"{capacity} (model.max_seq_len); it should have been truncated")
    order = list(range(len(lengths)))
    random.Random(f"anima-pack-{seed}").shuffle(order)
    rows: list[list[int]] = []
    used: list[int] = []
    free: list[tuple[int, int]] = []  # (room left, row id), sorted: rows that can still take something
    for i in order:
        need = lengths[i]
        k = bisect.bisect_left(free, (need, -1))
        if k < len(free):
            _, r = free.pop(k)
        else:
            r = len(rows)
            rows.append([])
            used.append(0)
        rows[r].append(i)
        used[r] += need
        if used[r] < capacity:
            bisect.insort(free, (capacity - used[r], r))
    return Packing(rows, used, capacity)


def packed_batch(rows: ChatRows, packs: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """One batch of packed rows (length: the fullest row's): input_ids, labels, position_ids; no attention_mask."""
    length = max(sum(len(rows.input_ids[i]) for i in pack) for pack in packs)
    ids, labels, pos = [], [], []
    for pack in packs:
        x: list[int] = []
        y: list[int] = []
        p: list[int] = []
        for i in pack:
            x += rows.input_ids[i]
            y += rows.labels[i]
            p += range(len(rows.input_ids[i]))
        tail = length - len(x)
        ids.append(x + [pad_id] * tail)
        labels.append(y + [IGNORE_INDEX] * tail)
        pos.append(p + list(range(tail)))
    return {"input_ids": torch.tensor(ids, dtype=torch.long), "labels": torch.tensor(labels, dtype=torch.long),
            "position_ids": torch.tensor(pos, dtype=torch.long)}


class PackedChatBatches(ChatBatches):
    """Training batches of ``batch_size`` packed rows; batch ``i`` depends only on (seed, i) (module doc).

    ``example_index`` holds the packed row ids (stable for the run: the kd top-k cache keys on them).
    """

    def __init__(self, rows: ChatRows, packing: Packing, batch_size: int, pad_id: int, seed: int,
                 start: Callable[[], int] = lambda: 0, total: int = 1 << 62):
        super().__init__(rows, batch_size, pad_id, seed, start, total)
        self.packing = packing

    def rows_per_epoch(self) -> int:
        return len(self.packing.rows)

    def batch_at(self, index: int) -> dict[str, torch.Tensor]:
        idx = self.indices_at(index)
        batch = packed_batch(self.rows, [self.packing.rows[i] for i in idx], self.pad_id)
        batch["example_index"] = torch.tensor(idx, dtype=torch.long)
        return batch


def check_packing_support(model, what: str = "this model") -> None:
    """Fail unless ``model`` keeps packed sequences apart: a 2-conversation row must give each conversation
    its logits alone. Architectures whose mask code ignores restarting ``position_ids`` (possible for a
    ``model=hf`` model) would otherwise attend across conversations silently."""
    vocab = int(model.get_input_embeddings().weight.size(0))
    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(0, vocab, (1, 5), generator=g), torch.randint(0, vocab, (1, 4), generator=g)
    pos = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3]])
    device = next(model.parameters()).device
    was_training = model.training
    saved_precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # exact fp32: `medium` bf16 kernels alone exceed the tolerance
    model.eval()
    try:
        with torch.no_grad():
            packed = model(input_ids=torch.cat([a, b], 1).to(device), position_ids=pos.to(device),
                           use_cache=False).logits[0, 5:].float()
            alone = model(input_ids=b.to(device), use_cache=False).logits[0].float()
    finally:
        model.train(was_training)
        torch.set_float32_matmul_precision(saved_precision)
    tol = (1e-3 if next(model.parameters()).dtype == torch.float32 else 3e-2) * max(1.0, float(alone.abs().max()))
    if float((packed - alone).abs().max()) > tol:
        raise ConfigError(f"{what} attends across packed conversations (its attention ignores restarting "
                          f"position_ids): set trainer.packing=false")


def epoch_fill(batches: ChatBatches, lengths: Sequence[int]) -> float:
    """Real tokens / tokens computed (rows x the batch's row length) over the first epoch's batches."""
    n_batches = max(1, batches.rows_per_epoch() // batches.batch)
    real = computed = 0
    for b in range(n_batches):
        row_lengths = [lengths[i] for i in batches.indices_at(b)]
        real += sum(row_lengths)
        computed += len(row_lengths) * max(row_lengths)
    return real / max(1, computed)


def train_batches(rows: ChatRows, batch_size: int, pad_id: int, seed: int, capacity: int, packing: bool
                  ) -> tuple[Callable[[Callable[[], int], int], ChatBatches], dict[str, object]]:
    """(make_train for the DataBundle, stats the run logs as ``data.*`` params) for padded or packed batches."""
    if len(rows) == 0:
        raise DataError("no training conversation has an assistant token to learn from")
    conv_lengths = [len(x) for x in rows.input_ids]
    if packing:
        packed = pack_conversations(conv_lengths, capacity, seed)

        def make(start: Callable[[], int], total: int) -> ChatBatches:
            return PackedChatBatches(rows, packed, batch_size, pad_id, seed, start, total)

        lengths = packed.lengths
    else:
        def make(start: Callable[[], int], total: int) -> ChatBatches:
            return ChatBatches(rows, batch_size, pad_id, seed, start, total)

        lengths = conv_lengths
    probe = make(lambda: 0, 1)
    stats = {"packing": packing, "train_rows_per_epoch": probe.rows_per_epoch(),
             "train_fill": round(epoch_fill(probe, lengths), 4)}
    return make, stats
