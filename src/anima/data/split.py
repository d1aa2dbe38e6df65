"""Train/val/test by a stable hash of each example's content (or its group), never by position.

Why: a split that depends on order or on the total count moves examples between splits when data is
appended, so a "val" example of yesterday could be trained on today. Here an example's split is a pure
function of its own (normalized) content, so appending data never moves an existing example; examples
that share a `group` (one scene of a play, one conversation cut into pairs) hash the group instead and
so never straddle splits. `split.holdout` sends whole documents (play slugs, file stems) to validation.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

SPLITS = ("train", "val", "test")


def unit_hash(key: str) -> float:
    """A uniform number in [0, 1) from a string (blake2b with its own personalization)."""
    h = hashlib.blake2b(key.encode("utf-8"), digest_size=8, person=b"anima-split").digest()
    return int.from_bytes(h, "big") / 2**64


def assign_split(key: str, val: float, test: float) -> str:
    """'test' for the lowest `test` share of hash space, then 'val', else 'train'."""
    u = unit_hash(key)
    if u < test:
        return "test"
    if u < test + val:
        return "val"
    return "train"


def holdout_matcher(names: Iterable[str]):
    """A predicate doc -> bool for `split.holdout` names given loosely ("Romeo and Juliet", "romeo-and-juliet")."""
    from anima.data.plays import _match_key

    keys = {_match_key(str(n)) for n in names}
    keys.discard("")

    def held_out(doc: str) -> bool:
        return bool(doc) and bool(keys) and _match_key(doc) in keys

    return held_out
