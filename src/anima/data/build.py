"""The build: read -> clean -> dedupe -> filter -> (score) -> spool; then split -> mix -> shards + manifest.

Memory stays bounded: records flow through in batches of `BATCH`; what survives the filter is spooled to a
per-source JSONL file inside the staging folder, and the final pass streams the spools into the output
shards. What grows with the data is only the dedup index (a few dozen bytes per unique example, see
anima.data.dedup) and, when a reference model scores examples, one float per example.

Order: the persona source is read first (so a persona example wins over a duplicate elsewhere), then the
other sources in config order. Dedup is across sources; counts are attributed to the source whose
example was dropped.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anima.config.data import DataConfig
from anima.config.groups import TrackingConfig
from anima.data.clean import clean_document, clean_messages
from anima.data.dedup import Deduper, key64, normalize_for_key
from anima.data.manifest import ShardWriter, iter_jsonl
from anima.data.mixing import copies, rehearsal_count, sample_rehearsal, weight_of
from anima.data.quality import example_text, heuristic_reason
from anima.data.readers import read_source
from anima.data.records import Bad
from anima.data.split import SPLITS, assign_split, holdout_matcher
from anima.errors import DataError

BATCH = 2048
MAX_ERRORS_KEPT = 20


@dataclass
class SourceStats:
    read: int = 0
    skipped: int = 0
    excluded: int = 0  # not in `categories`
    cleaned: int = 0  # left after cleaning
    exact_dups: int = 0
    near_dups: int = 0
    deduplicated: int = 0  # left after dedup
    filtered: int = 0  # left after the quality filter
    drops: Counter = field(default_factory=Counter)
    domains: Counter = field(default_factory=Counter)  # kept examples per domain
    splits: Counter = field(default_factory=Counter)  # written per split (train after weighting)

    def as_dict(self) -> dict:
        return {
            "in": self.read, "skipped": self.skipped, "excluded": self.excluded, "cleaned": self.cleaned,
            "exact_dups": self.exact_dups, "near_dups": self.near_dups, "deduplicated": self.deduplicated,
            "filtered": self.filtered, "drop_reasons": dict(sorted(self.drops.items())),
            "domains": dict(sorted(self.domains.items())), "out": dict(self.splits),
        }


@dataclass
class BuildPlan:
    """What `ensure_dataset` resolved before building (so the fingerprint and the build agree)."""

    fingerprint: str
    source_hashes: dict[str, str]
    rehearsal: Any = None  # BuiltDataset | None
    rehearsal_ref: str | None = None
    scorer_uri: str | None = None
    tracking: TrackingConfig | None = None


def _source_order(data_cfg: DataConfig) -> list[str]:
    names = list(data_cfg.sources.keys())
    persona = data_cfg.persona
    return ([persona] + [n for n in names if n != persona]) if persona in names else names


class _Builder:
    """One build's state. `data_cfg` is the typed `DataConfig`: plain attribute reads per record (an OmegaConf
    node read costs ~100 us, far too slow there)."""

    def __init__(self, data_cfg: DataConfig, plan: BuildPlan, out: Path):
        self.cfg = data_cfg
        self.plan = plan
        self.out = out
        self.kind = data_cfg.kind
        self.work = out / "_work"
        self.work.mkdir()
        self.dedup = Deduper(data_cfg.dedup, seed=data_cfg.seed)
        self.stats: dict[str, SourceStats] = {}
        self.errors: list[str] = []
        self.scorer = None
        if plan.scorer_uri:
            from anima.data.quality import PerplexityScorer

            f = data_cfg.filter
            self.scorer = PerplexityScorer(f.model, plan.tracking, f.score_max_tokens, f.score_batch)
        self.scores: list[float] = []

    # ---------------------------------------------------------------------------------- pass 1
    def read_all(self) -> None:
        for name in _source_order(self.cfg):
            self._read_source(name)
            self._check_not_empty(name)

    def _check_not_empty(self, name: str) -> None:
        """A source that yields no record is a mistake (an empty file, a wrong glob or format): say so, naming it,
        instead of building a dataset without it."""
        st = self.stats[name]
        if st.read == 0:
            skipped = f", {st.skipped} malformed record(s) skipped" if st.skipped else ""
            raise DataError(f"data source '{name}' ({self.cfg.sources[name].path}) yielded no records{skipped}")

    def _read_source(self, name: str) -> None:
        src = self.cfg.sources[name]
        st = self.stats.setdefault(name, SourceStats())
        cats = {c.lower() for c in (src.categories or [])} if src.kind != "chatterbot" else set()
        persona = name == self.cfg.persona
        max_chars = self.cfg.clean.max_example_chars
        batch: list[dict] = []
        with open(self.work / f"{name}.jsonl", "w", encoding="utf-8") as spool:
            for item in read_source(name, src, self.kind, max_chars=max_chars):
                if isinstance(item, Bad):
                    if self.cfg.on_error == "raise":
                        raise DataError(item.message())
                    st.skipped += 1
                    if len(self.errors) < MAX_ERRORS_KEPT:
                        self.errors.append(f"[{name}] {item.message()}")
                    continue
                st.read += 1
                domain = (item.domain or name).lower()
                if cats and domain not in cats:
                    st.excluded += 1
                    continue
                if self.kind == "chat":
                    cleaned = clean_messages(item.messages or [], self.cfg.clean)
                    if isinstance(cleaned, str):
                        st.drops[cleaned] += 1
                        continue
                    ex = {"messages": cleaned, "source": name, "domain": domain, "persona": persona, "score": None}
                else:
                    text = clean_document(item.text or "", self.cfg.clean)
                    if isinstance(text, tuple):
                        st.drops[text[0]] += 1
                        continue
                    ex = {"text": text, "source": name, "domain": domain}
                st.cleaned += 1
                ex["_doc"], ex["_group"] = item.doc, item.group
                batch.append(ex)
                if len(batch) >= BATCH:
                    self._process(batch, st, spool)
                    batch = []
            self._process(batch, st, spool)

    def _process(self, batch: list[dict], st: SourceStats, spool: Any) -> None:
        if not batch:
            return
        norms = []
        for ex in batch:
            if self.kind == "chat":
                norms.append(normalize_for_key("\n".join(f"{m['role']}: {m['content']}" for m in ex["messages"])))
            else:
                norms.append(normalize_for_key(ex["text"]))
        keys = [key64(n) for n in norms]
        verdicts = self.dedup.check(norms, keys)
        kept: list[dict] = []
        for ex, norm, key, v in zip(batch, norms, keys, verdicts):
            if v == "exact":
                st.exact_dups += 1
                continue
            if v == "near":
                st.near_dups += 1
                continue
            st.deduplicated += 1
            reason = heuristic_reason(example_text(ex), self.cfg.filter)
            if reason:
                st.drops[reason] += 1
                continue
            ex["id"] = f"{key:016x}" if self.cfg.dedup.exact else f"{key:016x}-{ex['source']}-{st.read}"
            ex["_split_key"] = ex["_group"] or norm
            kept.append(ex)
        if self.scorer is not None and kept:
            for ex, s in zip(kept, self.scorer.score(kept)):
                ex["score"] = s
        max_ppl = self.cfg.filter.max_perplexity
        for ex in kept:
            if self.scorer is not None and max_ppl is not None and ex["score"] > max_ppl:
                st.drops["perplexity"] += 1
                continue
            if self.scorer is not None:
                self.scores.append(ex["score"])
            st.filtered += 1
            spool.write(json.dumps(ex, ensure_ascii=False) + "\n")

    # ---------------------------------------------------------------------------------- pass 2
    def write_all(self) -> dict:
        split_cfg = self.cfg.split
        val, test = split_cfg.val, split_cfg.test
        held_out = holdout_matcher(split_cfg.holdout or [])
        per_shard = self.cfg.shard_records
        writers = {s: ShardWriter(self.out, s, per_shard) for s in SPLITS}
        worst = None
        drop_worst = self.cfg.filter.drop_worst
        if self.scorer is not None and drop_worst > 0 and self.scores:
            worst = float(np.quantile(np.asarray(self.scores), 1 - drop_worst))
        seed = self.cfg.seed
        persona_counts = Counter()
        for name in _source_order(self.cfg):
            st = self.stats[name]
            src = self.cfg.sources[name]
            for ex in iter_jsonl([self.work / f"{name}.jsonl"]):
                if worst is not None and ex["score"] > worst:
                    st.drops["worst_score"] += 1
                    st.filtered -= 1
                    continue
                split = "val" if held_out(ex["_doc"]) else assign_split(ex["_split_key"], val, test)
                n = copies(weight_of(src, ex["domain"]), ex["id"], seed) if split == "train" else 1
                record = _public(ex, self.kind)
                st.domains[ex["domain"]] += 1
                for k in range(n):
                    writers[split].write(record if k == 0 else {**record, "id": f"{record['id']}-r{k}"})
                st.splits[split] += n
                if self.kind == "chat" and ex["persona"] and split in ("train", "val"):
                    persona_counts[f"persona_{split}"] += n
        rehearsed = 0
        if self.plan.rehearsal is not None:
            n = rehearsal_count(self.cfg.rehearsal.ratio, writers["train"].count)
            pool = self.plan.rehearsal.split("train")
            for i, ex in enumerate(sample_rehearsal(pool, n, self.cfg.rehearsal.top_ratio, seed,
                                                    str(self.plan.rehearsal_ref))):
                # replayed examples are earlier data, not this dataset's persona seed set
                rec = {**ex, "id": f"reh-{ex['id']}-{i}", "source": f"rehearsal:{self.plan.rehearsal_ref}",
                       "persona": False}
                writers["train"].write(rec)
                rehearsed += 1
        for w in writers.values():
            w.close()
        out = {s: writers[s].count for s in SPLITS}
        if self.kind == "chat":
            out.update({k: persona_counts.get(k, 0) for k in ("persona_train", "persona_val")})
        return {"out": out, "rehearsal": rehearsed, "worst_threshold": worst,
                "shards": {s: writers[s].shards for s in SPLITS}}


def _empty_message(name: str, stats: dict[str, SourceStats]) -> str:
    """Why a dataset came out empty: where each source's records went."""
    parts = []
    for src, st in stats.items():
        gone = Counter(st.drops)
        gone.update({"excluded by categories": st.excluded, "duplicates": st.exact_dups + st.near_dups})
        why = ", ".join(f"{k} {v}" for k, v in gone.most_common() if v)
        parts.append(f"'{src}' {st.read} read" + (f" ({why})" if why else ""))
    return f"data={name}: the dataset is empty: no example survived cleaning, dedup and filtering: {'; '.join(parts)}"


def _public(ex: dict, kind: str) -> dict:
    if kind == "chat":
        return {"id": ex["id"], "messages": ex["messages"], "source": ex["source"], "domain": ex["domain"],
                "persona": ex["persona"], "score": ex["score"]}
    return {"id": ex["id"], "text": ex["text"], "source": ex["source"], "domain": ex["domain"]}


def build_dataset(data_cfg: DataConfig, plan: BuildPlan, out: Path, resolved_cfg: dict) -> dict:
    """Build into `out` (a staging folder) and return the manifest (also written to out/manifest.json).
    `resolved_cfg` is `plain_dict(data_cfg)`: the manifest records the same dict the fingerprint hashed."""
    import shutil

    from anima.data.manifest import write_json_atomic

    t0 = time.time()
    b = _Builder(data_cfg, plan, out)
    b.read_all()
    result = b.write_all()
    if not any(result["out"][s] for s in SPLITS):
        raise DataError(_empty_message(data_cfg.name, b.stats))
    shutil.rmtree(b.work)
    per_source = {n: s.as_dict() for n, s in b.stats.items()}
    total = lambda k: sum(s[k] for s in per_source.values())  # noqa: E731
    steps = {
        "in": total("in"), "skipped": total("skipped"), "excluded": total("excluded"),
        "cleaned": total("cleaned"), "deduplicated": total("deduplicated"), "filtered": total("filtered"),
        "rehearsal": result["rehearsal"], "out": sum(result["out"][s] for s in SPLITS),
    }
    srcs = resolved_cfg.get("sources") or {}
    manifest = {
        "name": data_cfg.name,
        "kind": data_cfg.kind,
        "fingerprint": plan.fingerprint,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "build_seconds": round(time.time() - t0, 3),
        "seed": data_cfg.seed,
        "persona": data_cfg.persona,
        "sources": {
            n: {"kind": s.get("kind"), "path": s.get("path"), "content_hash": plan.source_hashes[n],
                "weight": s.get("weight"), "domain_weights": s.get("domain_weights") or {},
                "categories": s.get("categories"), "persona": n == data_cfg.persona}
            for n, s in srcs.items()
        },
        "rehearsal": ({"source": plan.rehearsal_ref, "fingerprint": plan.rehearsal.fingerprint,
                       "ratio": data_cfg.rehearsal.ratio, "top_ratio": data_cfg.rehearsal.top_ratio,
                       "examples": result["rehearsal"]} if plan.rehearsal is not None else None),
        "filter_model": plan.scorer_uri,
        "worst_score_threshold": result["worst_threshold"],
        "counts": {"steps": steps, "sources": per_source, "out": result["out"]},
        "errors": b.errors,
        "dedup_index_bytes": b.dedup.memory_bytes(),
        "shards": result["shards"],
        "config": resolved_cfg,
    }
    write_json_atomic(out / "manifest.json", manifest)
    return manifest
