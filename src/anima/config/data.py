"""Schema of the `data` group: sources, cleaning, dedup, quality filter, mixing, rehearsal, split."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from anima.config.fields import setting

SOURCE_KINDS = ["plays", "text", "jsonl_chat", "sharegpt", "alpaca", "qa", "chatterbot", "persona_pairs",
                "feedback", "hf", "synth"]


@dataclass
class SourceConfig:
    kind: str = setting("text", "Reader for this source.", choices=SOURCE_KINDS)
    path: str = setting("", "File, directory or glob (for kind=hf: a dataset name or local path).")
    weight: float = setting(1.0, "Sampling weight of this source in the mix (> 0).", gt=0)
    domain_weights: Dict[str, float] = setting(doc="Per-category weights within the source.", factory=dict)
    categories: Optional[List[str]] = setting(None, "Keep only these categories/domains (default: all).")
    character: Optional[str] = setting(None, "kind=persona_pairs: the character whose replies are kept.")
    split: str = setting("train", "kind=hf: the split to load.")
    options: Dict[str, Any] = setting(doc="Reader-specific options.", factory=dict)


@dataclass
class CleanConfig:
    normalize_unicode: bool = setting(True, "Unicode NFC normalization.")
    strip_markup: bool = setting(True, "Strip HTML/markdown markup.")
    min_turn_chars: int = setting(1, "Drop turns shorter than this.", ge=0)
    max_turn_chars: int = setting(4000, "Drop turns longer than this.", ge=1)
    min_example_chars: int = setting(2, "Drop examples shorter than this.", ge=0)
    max_example_chars: int = setting(20000, "Drop examples longer than this.", ge=1)


@dataclass
class DedupConfig:
    exact: bool = setting(True, "Drop exact duplicates (normalized-text hash).")
    near: bool = setting(True, "Drop near duplicates (MinHash/LSH over character n-grams).")
    threshold: float = setting(0.85, "Jaccard similarity above which two examples are near duplicates.", gt=0, le=1)
    ngram: int = setting(5, "Character n-gram size for near-duplicate detection.", ge=1)
    num_perm: int = setting(64, "MinHash permutations.", ge=8)


@dataclass
class FilterConfig:
    enabled: bool = setting(True, "Apply heuristic quality rules.")
    max_symbol_ratio: float = setting(0.3, "Drop examples whose non-alphanumeric ratio exceeds this.", ge=0, le=1)
    max_repetition: float = setting(0.5, "Drop examples whose repeated word-trigram fraction exceeds this.", ge=0, le=1)
    model: Optional[str] = setting(None, "Reference model URI for perplexity scoring (none = off).")
    max_perplexity: Optional[float] = setting(None, "Drop examples above this reference perplexity.", gt=0)
    drop_worst: float = setting(0.0, "Drop this worst-scored fraction.", ge=0, lt=1)
    min_words: int = setting(0, "Drop examples with fewer words than this (0 = off).", ge=0)
    max_words: Optional[int] = setting(None, "Drop examples with more words than this (none = off).", ge=1)
    min_alpha_ratio: float = setting(0.0, "Drop examples whose letter fraction (of non-space chars) is below this.",
                                     ge=0, le=1)
    score_batch: int = setting(16, "Examples per forward pass when scoring with the reference model.", ge=1)
    score_max_tokens: int = setting(256, "Tokens of an example the reference model scores (longer: truncated).",
                                    ge=8)


@dataclass
class RehearsalConfig:
    source: Optional[str] = setting(None, "Earlier data: dataset name, name/fingerprint, or a models:/ URI.")
    ratio: float = setting(0.0, "Fraction of the final train mix drawn from the rehearsal source.", ge=0, lt=1)
    top_ratio: float = setting(1.0, "Replay only the best-scored fraction of the rehearsal source.", gt=0, le=1)


@dataclass
class SplitConfig:
    val: float = setting(0.05, "Validation fraction (by stable content hash).", ge=0, lt=1)
    test: float = setting(0.0, "Test fraction (by stable content hash).", ge=0, lt=1)
    holdout: List[str] = setting(doc="Whole documents (e.g. play slugs) held out for validation.", factory=list)


@dataclass
class DataConfig:
    name: str = setting("shakespeare", "Dataset name: data/processed/<name>/<fingerprint>/.")
    kind: str = setting("text", "text: plain documents for pretraining; chat: conversations.",
                        choices=["text", "chat"])
    sources: Dict[str, SourceConfig] = setting(doc="Named sources that make up the mix.", factory=dict)
    clean: CleanConfig = field(default_factory=CleanConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    rehearsal: RehearsalConfig = field(default_factory=RehearsalConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    persona: Optional[str] = setting(None, "Source name (in `sources`) that defines the persona seed set.")
    seed: int = setting(1234, "Seed of the mix sampling.")
    on_error: str = setting("raise", "Malformed records: raise, or skip and count them.", choices=["raise", "skip"])
    shard_records: int = setting(100000, "Records per output shard file (<split>-NNNNN.jsonl).", ge=1)
