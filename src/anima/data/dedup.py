"""Deduplication: exact (hash of normalized text) and near (MinHash + LSH), numpy only, batch-vectorized.

Why this shape: a 500 MB corpus is millions of paragraphs, so per-document Python loops over shingles or
a dict of band buckets would cost minutes and gigabytes. Here a batch of documents is shingled with a
vectorized rolling hash over their UTF-8 bytes, MinHash signatures come from multiply-shift hashing
(`np.minimum.reduceat` per document), and "seen" keys live in sorted uint64 arrays merged LSM-style:
8 bytes per key, so the whole index costs 8 * (1 + bands) bytes per unique document.

Semantics: documents are compared in stream order; the first occurrence is kept. A document is a near
duplicate when it shares an LSH band with any earlier document (bands/rows chosen for `threshold` the way
datasketch does, minimizing false positives + false negatives); candidates are not re-verified, which
keeps memory bounded (no signatures are stored).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from functools import lru_cache
from typing import Sequence

import numpy as np

from anima.config.data import DedupConfig

_WS = re.compile(r"\s+")


def normalize_for_key(text: str) -> str:
    """What two texts must share to be exact duplicates: NFKC, case-folded, whitespace collapsed."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def key64(normalized: str) -> int:
    """A stable 64-bit content hash (also the split hash: see anima.data.split)."""
    return int.from_bytes(hashlib.blake2b(normalized.encode("utf-8"), digest_size=8).digest(), "big")


class SeenSet:
    """A growing set of uint64 keys as sorted numpy arrays (LSM levels): compact and batch-queried."""

    def __init__(self) -> None:
        self.levels: list[np.ndarray] = []

    def __len__(self) -> int:
        return sum(len(a) for a in self.levels)

    def _contains(self, keys: np.ndarray) -> np.ndarray:
        hit = np.zeros(len(keys), dtype=bool)
        for arr in self.levels:
            pos = np.searchsorted(arr, keys)
            pos[pos == len(arr)] = len(arr) - 1
            hit |= arr[pos] == keys
        return hit

    def check_and_add(self, keys: np.ndarray) -> np.ndarray:
        """For each key (in order): True when it was seen before (earlier batch or earlier in this one)."""
        keys = np.asarray(keys, dtype=np.uint64)
        if len(keys) == 0:
            return np.zeros(0, dtype=bool)
        uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        earlier_in_batch = first[inverse] != np.arange(len(keys))
        seen = self._contains(uniq)
        self._add_sorted(uniq[~seen])
        return earlier_in_batch | seen[inverse]

    def _add_sorted(self, new: np.ndarray) -> None:
        if len(new) == 0:
            return
        self.levels.append(new)
        while len(self.levels) > 1 and len(self.levels[-2]) <= 2 * len(self.levels[-1]):
            b = self.levels.pop()
            a = self.levels.pop()
            self.levels.append(np.sort(np.concatenate([a, b]), kind="stable"))


@lru_cache(maxsize=32)
def lsh_params(threshold: float, num_perm: int, fp_weight: float = 0.1) -> tuple[int, int]:
    """(bands, rows) with bands*rows <= num_perm minimizing weighted FP + FN probability mass around the
    threshold (datasketch's rule). False negatives weigh more by default: candidates are verified against
    stored signatures, so a false positive only costs a comparison."""
    s_lo = np.linspace(0.0, threshold, 200)
    s_hi = np.linspace(threshold, 1.0, 200)
    best = (float("inf"), 1, num_perm)
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = np.trapezoid(1 - (1 - s_lo**r) ** b, s_lo)
            fn = np.trapezoid((1 - s_hi**r) ** b, s_hi)
            err = fp_weight * fp + (1 - fp_weight) * fn
            if err < best[0]:
                best = (err, b, r)
    return best[1], best[2]


def _mix64(h: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer: spreads rolling-hash values over all 64 bits."""
    h = h ^ (h >> np.uint64(30))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> np.uint64(27))
    h = h * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


class MinHasher:
    """MinHash signatures over byte n-grams of normalized text, for many documents at once."""

    def __init__(self, num_perm: int = 64, ngram: int = 5, seed: int = 1):
        rng = np.random.default_rng(seed)
        self.num_perm = num_perm
        self.ngram = ngram
        self.a = (rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) | np.uint64(1))
        self.b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)

    def shingles(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(64-bit shingle hashes, start offset of each document's shingles)."""
        n = self.ngram
        blobs = [t.encode("utf-8") for t in texts]
        blobs = [b if len(b) >= n else b.ljust(n, b"\0") for b in blobs]
        lengths = np.fromiter((len(b) for b in blobs), dtype=np.int64, count=len(blobs))
        data = np.frombuffer(b"".join(blobs), dtype=np.uint8).astype(np.uint64)
        ends = np.cumsum(lengths)
        starts = ends - lengths
        counts = lengths - n + 1  # windows per document (>= 1 after padding)
        # window start positions that stay inside their document
        doc_of = np.repeat(np.arange(len(blobs)), counts)
        offs = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
        pos = starts[doc_of] + offs
        h = np.zeros(len(pos), dtype=np.uint64)
        prime = np.uint64(1099511628211)
        for k in range(n):
            h = h * prime + data[pos + k]
        shingle_starts = np.cumsum(counts) - counts
        return _mix64(h), shingle_starts

    def signatures(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), num_perm) uint32 MinHash signatures."""
        if not texts:
            return np.zeros((0, self.num_perm), dtype=np.uint32)
        h, starts = self.shingles(texts)
        sig = np.empty((len(texts), self.num_perm), dtype=np.uint32)
        shift = np.uint64(32)
        for j in range(self.num_perm):
            v = (h * self.a[j] + self.b[j]) >> shift
            sig[:, j] = np.minimum.reduceat(v, starts)
        return sig


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n, bands) uint64 keys: each band's rows hashed together, salted by the band index."""
    n = sig.shape[0]
    keys = np.empty((n, bands), dtype=np.uint64)
    for k in range(bands):
        h = np.full(n, np.uint64(((k + 1) * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF), dtype=np.uint64)
        for r in range(rows):
            h = _mix64(h ^ sig[:, k * rows + r].astype(np.uint64))
        keys[:, k] = h
    return keys


class KeyIndex:
    """uint64 key -> int64 value (first writer wins), as sorted LSM levels; batch lookups."""

    def __init__(self) -> None:
        self.levels: list[tuple[np.ndarray, np.ndarray]] = []

    def __len__(self) -> int:
        return sum(len(k) for k, _ in self.levels)

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        out = np.full(len(keys), -1, dtype=np.int64)
        for karr, varr in self.levels:
            pos = np.searchsorted(karr, keys)
            pos[pos == len(karr)] = len(karr) - 1
            hit = (karr[pos] == keys) & (out < 0)
            out[hit] = varr[pos[hit]]
        return out

    def add(self, keys: np.ndarray, values: np.ndarray) -> None:
        if len(keys) == 0:
            return
        known = self.lookup(keys) >= 0
        keys, values = keys[~known], values[~known]
        uniq, first = np.unique(keys, return_index=True)
        self.levels.append((uniq, values[first]))
        while len(self.levels) > 1 and len(self.levels[-2][0]) <= 2 * len(self.levels[-1][0]):
            kb, vb = self.levels.pop()
            ka, va = self.levels.pop()
            k = np.concatenate([ka, kb])
            v = np.concatenate([va, vb])
            order = np.argsort(k, kind="stable")
            self.levels.append((k[order], v[order]))


class Deduper:
    """Stream dedup over batches: `check(normalized_texts, exact_keys)` -> None | "exact" | "near" each.

    Near duplicates: LSH band collisions give candidates (earlier kept documents, or earlier documents of
    the same batch); a candidate counts when the estimated Jaccard from stored 8-bit MinHash signatures
    (b-bit MinHash, Li & Koenig 2010) reaches the threshold. Memory per kept document: num_perm bytes of
    signature + 16 bytes per band + 8 bytes of exact hash.
    """

    def __init__(self, cfg: DedupConfig, seed: int = 1):
        self.exact = cfg.exact
        self.near = cfg.near
        self.threshold = cfg.threshold
        self.exact_seen = SeenSet()
        if self.near:
            self.hasher = MinHasher(cfg.num_perm, cfg.ngram, seed)
            self.bands, self.rows = lsh_params(self.threshold, cfg.num_perm)
            self.index = [KeyIndex() for _ in range(self.bands)]
            self.store = np.empty((1024, cfg.num_perm), dtype=np.uint8)
            self.n_stored = 0

    def check(self, texts: Sequence[str], keys: Sequence[int]) -> list[str | None]:
        out: list[str | None] = [None] * len(texts)
        idx = list(range(len(texts)))
        if self.exact and idx:
            dup = self.exact_seen.check_and_add(np.asarray(keys, dtype=np.uint64))
            for i in np.flatnonzero(dup):
                out[i] = "exact"
            idx = [i for i in idx if out[i] is None]
        if self.near and idx:
            near = self._near([texts[i] for i in idx])
            for j in np.flatnonzero(near):
                out[idx[j]] = "near"
        return out

    def _estimate(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        match = (a == b).mean(axis=1)
        return (match - 1 / 256) / (1 - 1 / 256)

    def _near(self, texts: list[str]) -> np.ndarray:
        n = len(texts)
        sig8 = (self.hasher.signatures(texts) & 0xFF).astype(np.uint8)
        bk = band_keys_from8(sig8, self.bands, self.rows)
        dup = np.zeros(n, dtype=bool)
        ar = np.arange(n)
        for k in range(self.bands):  # earlier batches
            prev = self.index[k].lookup(bk[:, k])
            has = (prev >= 0) & ~dup
            if has.any():
                est = self._estimate(sig8[has], self.store[prev[has]])
                dup[np.flatnonzero(has)[est >= self.threshold]] = True
        for k in range(self.bands):  # earlier documents of this batch
            _, first, inverse = np.unique(bk[:, k], return_index=True, return_inverse=True)
            cand = first[inverse]
            has = (cand < ar) & ~dup
            if has.any():
                est = self._estimate(sig8[has], sig8[cand[has]])
                dup[np.flatnonzero(has)[est >= self.threshold]] = True
        keep = np.flatnonzero(~dup)
        if len(keep):
            need = self.n_stored + len(keep)
            if need > len(self.store):
                grown = np.empty((max(need, 2 * len(self.store)), self.store.shape[1]), dtype=np.uint8)
                grown[: self.n_stored] = self.store[: self.n_stored]
                self.store = grown
            self.store[self.n_stored:need] = sig8[keep]
            ords = np.arange(self.n_stored, need, dtype=np.int64)
            for k in range(self.bands):
                self.index[k].add(bk[keep, k], ords)
            self.n_stored = need
        return dup

    def memory_bytes(self) -> int:
        n = 8 * len(self.exact_seen)
        if self.near:
            n += self.n_stored * self.store.shape[1] + 16 * sum(len(i) for i in self.index)
        return n


def band_keys_from8(sig8: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """Band keys from the 8-bit signatures: rows bytes per band, viewed as integers and mixed."""
    return band_keys(sig8.astype(np.uint32), bands, rows)


def jaccard(a: str, b: str, n: int = 5) -> float:
    """Exact Jaccard of byte n-gram sets (tests and diagnostics)."""
    def grams(t: str) -> set[bytes]:
        x = t.encode("utf-8")
        x = x if len(x) >= n else x.ljust(n, b"\0")
        return {x[i:i + n] for i in range(len(x) - n + 1)}

    ga, gb = grams(a), grams(b)
    return len(ga & gb) / max(1, len(ga | gb))
