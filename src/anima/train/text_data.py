"""Pretraining data: tokenized documents packed into one token stream per split, cached on disk.

The cache key is the corpus content fingerprint plus the tokenizer's fingerprint (never file mtimes).
Training batches are random windows (nanoGPT style) whose offsets are a pure function of
(seed, batch index), so resuming at step k replays exactly the batches an uninterrupted run would see.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from anima.errors import DataError
from anima.fingerprint import hash_files, hash_obj, publish_dir
from anima.train.distributed import rank_slice, worker_indices


@dataclass
class TokenSplit:
    tokens: np.ndarray  # uint16/uint32 memmap
    n_chars: int

    @property
    def chars_per_token(self) -> float:
        return self.n_chars / max(1, len(self.tokens))


def _encode_docs(docs: dict[str, str], tokenizer) -> tuple[np.ndarray, int]:
    """One stream: BOS doc EOS BOS doc EOS ...; returns the ids and the characters they encode."""
    ids: list[int] = []
    n_chars = 0
    eos = tokenizer.eos_token_id
    for name in sorted(docs):
        # Encode paragraph by paragraph: identical to SentencePiece per line, and bounded memory per call.
        paras = [p + "\n\n" for p in docs[name].split("\n\n") if p.strip()]
        n_chars += sum(len(p) for p in paras)
        ids.append(tokenizer.bos_token_id)
        for para_ids in tokenizer(paras, add_special_tokens=False)["input_ids"]:
            ids.extend(para_ids)
        ids.append(eos)
    dtype = np.uint16 if len(tokenizer) <= 65535 else np.uint32
    return np.asarray(ids, dtype=dtype), n_chars


def build_token_cache(corpus, tokenizer_dir: Path, cache_dir: str | Path) -> tuple[dict[str, TokenSplit], str]:
    """Tokenize both splits once per (corpus, tokenizer); returns the splits and the data fingerprint."""
    from anima.tokenizer.hf import load_tokenizer

    tok_fp = hash_files([tokenizer_dir / "tokenizer.json"])
    fp = hash_obj({"corpus": corpus.fingerprint, "tokenizer": tok_fp})
    final = Path(str(cache_dir)) / "tokens" / fp
    if not (final / "meta.json").is_file():
        tokenizer = load_tokenizer(tokenizer_dir)
        final.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".tmp-", dir=final.parent))
        try:
            meta = {"corpus": corpus.fingerprint, "tokenizer": tok_fp, "splits": {}}
            for split in ("train", "val"):
                arr, n_chars = _encode_docs(getattr(corpus, split), tokenizer)
                arr.tofile(work / f"{split}.bin")
                meta["splits"][split] = {"n_tokens": int(len(arr)), "n_chars": n_chars, "dtype": arr.dtype.name,
                                         "documents": sorted(getattr(corpus, split))}
            (work / "meta.json").write_text(json.dumps(meta, indent=1))
            publish_dir(work, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    meta = json.loads((final / "meta.json").read_text())
    splits = {}
    for split, info in meta["splits"].items():
        tokens = np.memmap(final / f"{split}.bin", dtype=info["dtype"], mode="r")
        splits[split] = TokenSplit(tokens, info["n_chars"])
    return splits, fp


class RandomWindows(torch.utils.data.IterableDataset):
    """Batches of random (block+1)-token windows; batch i depends only on (seed, i).

    `start` is read when iteration begins, so after Lightning restores a checkpoint the stream continues
    at the restored position. Sharded (`shard(rank, world)`), batch i is rank `rank`'s `batch_size` rows of
    the unsharded batch i of `world * batch_size` rows: the ranks together see what one process would.
    """

    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int, seed: int,
                 start: Callable[[], int], total: int):
        if len(tokens) <= block_size + 1:
            raise DataError(f"training split has {len(tokens)} tokens, fewer than one block of {block_size + 1}")
        self.tokens, self.block, self.batch, self.seed = tokens, block_size, batch_size, seed
        self.start, self.total = start, total
        self.rank, self.world = 0, 1

    def shard(self, rank: int, world: int) -> None:
        """Yield rank `rank`'s share of every batch (data parallelism over `world` ranks)."""
        self.rank, self.world = rank, world

    def batch_at(self, index: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        offsets = torch.randint(0, len(self.tokens) - self.block - 1, (self.batch * self.world,), generator=g)
        mine = offsets[rank_slice(self.batch, self.rank, self.world)]
        rows = np.stack([self.tokens[o:o + self.block + 1].astype(np.int64) for o in mine.tolist()])
        data = torch.from_numpy(rows)
        return {"input_ids": data[:, :-1].contiguous(), "labels": data[:, 1:].contiguous()}

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for index in worker_indices(self.start(), self.total):
            yield self.batch_at(index)


class SequentialWindows(torch.utils.data.Dataset):
    """Non-overlapping windows covering a split in order (validation: every token scored once)."""

    def __init__(self, tokens: np.ndarray, block_size: int):
        self.tokens, self.block = tokens, block_size
        self.n = max(0, (len(tokens) - 1) // block_size)
        if self.n == 0:
            raise DataError(f"validation split has {len(tokens)} tokens, fewer than one block of {block_size + 1}")

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = torch.from_numpy(self.tokens[i * self.block:(i + 1) * self.block + 1].astype(np.int64))
        return {"input_ids": row[:-1], "labels": row[1:]}
