"""Chats as training rows: rendered with the model's template, loss only on assistant tokens; padded batches.

Rendering: every conversation goes through ``anima.tokenizer.chat_template.render_chat``, which marks assistant
tokens *while* rendering (including each turn's end-of-turn token, ``<|im_end|>`` for chatml and ``</s>`` for
qa, so the model learns to stop). Labels are shifted by one like pretraining batches: ``labels[t]`` is the token
at ``t+1`` when that token is an assistant token, else -100.

Truncation policy (conversations longer than the context, ``model.max_seq_len`` tokens of input): the chat is
rendered with at most ``max_seq_len + 1`` tokens (one extra because of the shift). Whole oldest exchanges (a user
message and the replies after it) are dropped first, keeping the leading system message; if the last exchange
alone is still too long, the text is cut from the left keeping BOS, so the final reply survives. A
conversation left with no assistant token is dropped and counted (``data.dropped_no_target``); a split
with no assistant tokens at all is an error.

Batches: one conversation per row, right-padded to the longest row of the batch (``attention_mask`` 0 and
label -100 on padding); with ``trainer.packing`` training rows hold several whole conversations instead
(``anima.train.packing``). Training batch ``i`` is a pure function of ``(seed, i)``: rows are visited in a
seeded permutation per epoch, so resuming at step k replays exactly the batches of an uninterrupted run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch

from anima.errors import DataError
from anima.train.distributed import worker_indices
from anima.train.labels import IGNORE_INDEX


@dataclass
class ChatRows:
    """Tokenized conversations: per row the input ids and shifted labels (same length), and its example id."""

    input_ids: list[list[int]]
    labels: list[list[int]]
    ids: list[str]
    truncated: int = 0
    dropped: int = 0

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def target_tokens(self) -> int:
        return sum(sum(1 for x in row if x != IGNORE_INDEX) for row in self.labels)


def encode_conversation(messages: Sequence[dict], tokenizer, template, max_tokens: int
                        ) -> tuple[list[int], list[int], bool]:
    """(input_ids, labels, truncated) for one chat; ``max_tokens`` is the input length (context)."""
    from anima.tokenizer.chat_template import render_chat

    full = render_chat(messages, tokenizer, template)
    truncated = len(full.input_ids) > max_tokens + 1
    out = render_chat(messages, tokenizer, template, max_length=max_tokens + 1) if truncated else full
    ids, mask = out.input_ids, out.assistant_mask
    labels = [tok if m else IGNORE_INDEX for tok, m in zip(ids[1:], mask[1:])]
    return ids[:-1], labels, truncated


def encode_examples(examples: Sequence[dict], tokenizer, template, max_tokens: int, what: str) -> ChatRows:
    """Render a list of ``{"id", "messages", ...}`` examples; drops (and counts) those with no target left."""
    rows = ChatRows([], [], [])
    for n, ex in enumerate(examples):
        msgs = ex.get("messages") if isinstance(ex, dict) else None
        if not isinstance(msgs, list):
            raise DataError(f"{what}: example {n} has no 'messages' list")
        ids, labels, truncated = encode_conversation(msgs, tokenizer, template, max_tokens)
        rows.truncated += int(truncated)
        if all(x == IGNORE_INDEX for x in labels):
            rows.dropped += 1
            continue
        rows.input_ids.append(ids)
        rows.labels.append(labels)
        rows.ids.append(str(ex.get("id", n)))
    return rows


def pad_rows(input_ids: Sequence[list[int]], labels: Sequence[list[int]], pad_id: int,
             length: int | None = None) -> dict[str, torch.Tensor]:
    """Right-pad to ``length`` (default: the longest row): attention 0 and label -100 on padding."""
    n = length or max(len(r) for r in input_ids)
    x = torch.full((len(input_ids), n), pad_id, dtype=torch.long)
    y = torch.full((len(input_ids), n), IGNORE_INDEX, dtype=torch.long)
    att = torch.zeros((len(input_ids), n), dtype=torch.long)
    for i, (ids, lab) in enumerate(zip(input_ids, labels)):
        x[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        y[i, :len(lab)] = torch.tensor(lab, dtype=torch.long)
        att[i, :len(ids)] = 1
    return {"input_ids": x, "attention_mask": att, "labels": y}


class ChatBatches(torch.utils.data.IterableDataset):
    """Training batches over ``rows``; batch ``i`` depends only on (seed, i) (see the module doc).

    ``start`` is read when iteration begins, so after Lightning restores a checkpoint the stream continues at
    the restored position. Each batch also carries ``example_index`` (row numbers) for teacher-logit caching.
    Sharded (``shard(rank, world)``), batch ``i`` is rank ``rank``'s ``batch_size`` rows of the unsharded batch
    ``i`` of ``world * batch_size`` rows: the ranks together see what one process would.
    """

    def __init__(self, rows: ChatRows, batch_size: int, pad_id: int, seed: int,
                 start: Callable[[], int] = lambda: 0, total: int = 1 << 62):
        if len(rows) == 0:
            raise DataError("no training conversation has an assistant token to learn from")
        self.rows, self.batch, self.pad_id, self.seed = rows, batch_size, pad_id, seed
        self.start, self.total = start, total
        self.rank, self.world = 0, 1
        self._perms: dict[int, list[int]] = {}

    def shard(self, rank: int, world: int) -> None:
        """Yield rank `rank`'s share of every batch (data parallelism over `world` ranks)."""
        self.rank, self.world = rank, world

    def rows_per_epoch(self) -> int:
        """Rows one epoch visits (one pass over a seeded permutation). Not ``__len__``: Lightning would read
        it as the epoch length of this endless stream."""
        return len(self.rows)

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.clear()
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms[epoch] = torch.randperm(self.rows_per_epoch(), generator=g).tolist()
        return self._perms[epoch]

    def indices_at(self, index: int) -> list[int]:
        n, first = self.rows_per_epoch(), (index * self.world + self.rank) * self.batch
        return [self._perm(p // n)[p % n] for p in range(first, first + self.batch)]

    def batch_at(self, index: int) -> dict[str, torch.Tensor]:
        idx = self.indices_at(index)
        batch = pad_rows([self.rows.input_ids[i] for i in idx], [self.rows.labels[i] for i in idx], self.pad_id)
        batch["example_index"] = torch.tensor(idx, dtype=torch.long)
        return batch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for index in worker_indices(self.start(), self.total):
            yield self.batch_at(index)


class ChatEvalSet(torch.utils.data.Dataset):
    """Validation rows padded to one length (the default collate stacks them); every row scored once."""

    def __init__(self, rows: ChatRows, pad_id: int, what: str):
        if len(rows) == 0:
            raise DataError(f"{what} split has no conversation with an assistant turn")
        self.rows, self.pad_id = rows, pad_id
        self.length = max(len(r) for r in rows.input_ids)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        b = pad_rows([self.rows.input_ids[i]], [self.rows.labels[i]], self.pad_id, self.length)
        return {k: v[0] for k, v in b.items()}


def chars_per_target_token(rows: ChatRows, tokenizer) -> float:
    """Characters per scored token, so `val/bpc` is comparable across tokenizers."""
    chars = sum(len(tokenizer.decode([t for t in lab if t != IGNORE_INDEX], skip_special_tokens=False))
                for lab in rows.labels)
    return chars / max(1, rows.target_tokens)
