"""Validation under data parallelism: each rank scores its share of exactly the rows one process would.

Lightning's default (a `DistributedSampler`) pads the last rank's share by repeating rows, so a reduced mean
counts some rows twice. Here the rows one process with batch W*b would score in `val_batches` batches (the
first `val_batches * W * b` rows, or all) are dealt to the ranks round-robin, and short shares are padded
with fully masked rows (labels all -100): every rank runs the same number of batches (the collectives line
up), and the token-weighted sums reduced across ranks equal the single-process sums.
"""

from __future__ import annotations

import torch

from anima.train.labels import IGNORE_INDEX


class ValShard(torch.utils.data.Dataset):
    """Rank `rank`'s rows of `dataset` (rows rank, rank+W, ... below `limit`), padded to the longest share."""

    def __init__(self, dataset, rank: int, world: int, limit: int | None = None):
        self.dataset, self.rank, self.world = dataset, rank, world
        rows = len(dataset) if not limit else min(len(dataset), limit)
        self.rows = list(range(rank, rows, world))
        self.length = -(-rows // world)  # every rank: ceil(rows / W)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if i < len(self.rows):
            return self.dataset[self.rows[i]]
        item = {k: v.clone() for k, v in self.dataset[0].items()}  # same shapes; scores nothing
        item["labels"].fill_(IGNORE_INDEX)
        return item


def shard_val_sets(val_sets: dict, batch_size: int, val_batches: int, rank: int, world: int) -> dict:
    """The val sets as rank `rank` of `world` scores them (unchanged for one process)."""
    if world <= 1:
        return dict(val_sets)
    limit = val_batches * batch_size * world if val_batches else None
    return {name: ValShard(ds, rank, world, limit) for name, ds in val_sets.items()}
