"""Generation metrics from the local `evaluate` modules in ./metrics (nothing is fetched from a hub).

`import evaluate` costs ~6 s, so it happens on first use, and loaded modules are cached per process.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

from anima.errors import DataError

METRICS_DIR = Path(__file__).parent / "metrics"
METRIC_NAMES = ("rouge_l", "chrf", "distinct", "repetition", "reply_length", "persona_keywords")
# Keys returned by compute_generation_metrics (the headline number of each module).
SUMMARY_KEYS = (
    "rouge_l", "chrf", "distinct_1", "distinct_2", "repetition_3", "reply_length", "persona_keyword_rate",
)


def metric_dir(name: str) -> Path:
    path = METRICS_DIR / name
    if not (path / f"{name}.py").is_file():
        raise DataError(f"no local metric module {path / (name + '.py')}; known: {', '.join(METRIC_NAMES)}")
    return path


@lru_cache(maxsize=None)
def load_metric(name: str) -> Any:
    """The `evaluate.EvaluationModule` for a local metric dir, loaded once per process, in memory."""
    import evaluate

    return evaluate.load(str(metric_dir(name)), keep_in_memory=True)


def metric_module(name: str) -> Any:
    """The Python module of a loaded local metric script: its helper functions (per-pair scores, counts) are what
    the bootstrap reuses, so a resampled value is computed by the very code that computes the point value."""
    import sys

    return sys.modules[type(load_metric(name)).__module__]


def _check(predictions: Sequence[str], references: Sequence[str] | None) -> None:
    if references is not None and len(references) != len(predictions):
        raise DataError(f"{len(predictions)} predictions but {len(references)} references")
    bad = next((i for i, p in enumerate(predictions) if not isinstance(p, str)), None)
    if bad is not None:
        raise DataError(f"prediction {bad} is {type(predictions[bad]).__name__}, expected str")


def compute_generation_metrics(
    predictions: Sequence[str],
    references: Sequence[str],
    persona_keywords: Sequence[str] = (),
    *,
    repetition_n: int = 3,
) -> dict[str, float]:
    """Corpus-level scores: rouge_l, chrf (0-100), distinct_1/2, repetition_<n>, reply_length (words),
    persona_keyword_rate. All in [0, 1] except chrf and reply_length."""
    _check(predictions, references)
    preds, refs = list(predictions), list(references)
    out: dict[str, float] = {}
    if preds:
        out["rouge_l"] = load_metric("rouge_l").compute(predictions=preds, references=refs)["rouge_l"]
        out["chrf"] = load_metric("chrf").compute(predictions=preds, references=refs)["chrf"]
        out.update(load_metric("distinct").compute(predictions=preds))
        rep = load_metric("repetition").compute(predictions=preds, n=repetition_n)
        out[f"repetition_{repetition_n}"] = rep[f"repetition_{repetition_n}"]
        out["reply_length"] = load_metric("reply_length").compute(predictions=preds)["reply_length"]
        out["persona_keyword_rate"] = load_metric("persona_keywords").compute(
            predictions=preds, keywords=list(persona_keywords)
        )["persona_keyword_rate"]
    else:  # evaluate refuses empty batches; an empty suite scores 0 rather than crashing
        keys = [k if k != "repetition_3" else f"repetition_{repetition_n}" for k in SUMMARY_KEYS]
        out = {k: 0.0 for k in keys}
    return {k: float(v) for k, v in out.items()}


def score_each(
    predictions: Sequence[str],
    references: Sequence[str],
    persona_keywords: Sequence[str] = (),
    *,
    repetition_n: int = 3,
) -> list[dict[str, float]]:
    """Per-reply scores for the (prompt, reply, scores) table: the same modules on one pair each.

    distinct_n of a single reply is its within-reply diversity; chrf is sentence-level chrF.
    """
    _check(predictions, references)
    return [
        compute_generation_metrics([p], [r], persona_keywords, repetition_n=repetition_n)
        for p, r in zip(predictions, references)
    ]
