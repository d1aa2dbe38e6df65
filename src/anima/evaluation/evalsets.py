"""Eval sets: named lists of conversations (or plain texts) with a content fingerprint.

The fingerprint is the cache key of a perplexity (tag ``ppl.<fingerprint>`` on a registry version), so it is
computed from the examples themselves (never file paths or mtimes): the same held-out data gives the same key
on any machine, and any change to it gives a new key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from anima.errors import ConfigError, DataError
from anima.fingerprint import hash_obj

# eval set name -> dataset split
SPLIT_OF = {"val": "val", "persona": "persona_val", "test": "test", "train": "train"}


@dataclass(frozen=True)
class EvalSet:
    name: str  # "val", "persona", ... (metric prefix)
    kind: str  # "chat": {"messages": [...]} examples, loss on assistant tokens; "text": {"text": ...}
    examples: tuple[dict, ...]
    fingerprint: str  # content hash (16 hex)
    source: str = ""  # where it came from, for humans: "chat_mix@<fp>:persona_val"
    max_tokens: int = 0  # kind=text: tokens scored (0 = all)

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def tag(self) -> str:
        """The registry version tag that caches a model's perplexity on this set."""
        return f"ppl.{self.fingerprint}"


def make_eval_set(name: str, examples: Sequence[Any], kind: str | None = None, *, source: str = "",
                  max_tokens: int = 0) -> EvalSet:
    """An eval set from any list of conversations (lists of messages or {"messages": [...]}) or texts."""
    rows: list[dict] = []
    for i, ex in enumerate(examples):
        if isinstance(ex, str):
            rows.append({"text": ex})
        elif isinstance(ex, list):
            rows.append({"messages": ex})
        elif isinstance(ex, dict) and ("messages" in ex or "text" in ex):
            rows.append({"messages": ex["messages"]} if "messages" in ex else {"text": ex["text"]})
        else:
            raise DataError(f"eval set {name!r}: example {i} is neither a conversation nor a text: {ex!r:.80}")
    kinds = {"chat" if "messages" in r else "text" for r in rows}
    if len(kinds) > 1:
        raise DataError(f"eval set {name!r} mixes conversations and plain texts")
    kind = kind or (kinds.pop() if kinds else "chat")
    fp = hash_obj({"kind": kind, "examples": rows, "max_tokens": max_tokens if kind == "text" else 0})
    return EvalSet(name, kind, tuple(rows), fp, source, max_tokens)


def spread(examples: Sequence[dict], limit: int) -> list[dict]:
    """``limit`` examples spread evenly over the split (every k-th): a split is stored source by source, so its
    first N would all come from one source (the persona is read first)."""
    examples = list(examples)
    if not limit or len(examples) <= limit:
        return examples
    step = len(examples) / limit
    return [examples[int(i * step)] for i in range(limit)]


def _dataset(cfg: Any):
    """The built dataset the eval data comes from: eval.data (name, name/fingerprint, models:/ URI) or `data`."""
    from anima.data.dataset import ensure_dataset, resolve_rehearsal

    ref = cfg.eval.data
    if ref:
        try:
            return resolve_rehearsal(ref, cfg.paths, cfg.tracking)
        except DataError as e:
            raise DataError(f"eval.data={ref}: {e}") from None
    return ensure_dataset(cfg.data, cfg.paths, cfg.tracking)


def load_eval_sets(cfg: Any, names: Sequence[str] | None = None) -> dict[str, EvalSet]:
    """The configured eval sets (eval.sets, or ``names``) of the eval dataset; empty splits are left out.
    ``cfg``: a typed stage config (its schema's dataclass) with the `eval` (EvalOptions), `data`, `paths` and
    `tracking` groups: the data library takes those groups typed."""
    names = list(names if names is not None else cfg.eval.sets)
    for n in names:
        if n not in SPLIT_OF:
            raise ConfigError(f"eval.sets: unknown set {n!r}; one of {', '.join(SPLIT_OF)}")
    built = _dataset(cfg)
    limit = cfg.eval.max_examples
    out: dict[str, EvalSet] = {}
    for n in names:
        split = SPLIT_OF[n]
        examples = spread(built.split(split), limit)
        if not examples:
            continue
        out[n] = make_eval_set(n, examples, built.kind, source=f"{built.name}@{built.fingerprint}:{split}",
                               max_tokens=cfg.eval.max_tokens)
    if not out:
        raise DataError(f"dataset {built.name}@{built.fingerprint} has no examples in {', '.join(names)}")
    return out
