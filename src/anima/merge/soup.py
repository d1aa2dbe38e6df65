"""Greedy soup: a procedure over the uniform merge, registered as the method ``greedy_soup``."""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Sequence

from anima.errors import ModelError
from anima.merge.compat import check_compatible
from anima.merge.methods import register
from anima.merge.streaming import atomic_dir, merge

log = logging.getLogger(__name__)

GREEDY_SOUP_PAPER = "Wortsman et al. 2022, Model soups, ICML, arXiv:2203.05482 (Recipe 1)"


def _score(evaluate_fn: Callable[[Path], float], model_dir: Path) -> float:
    score = float(evaluate_fn(model_dir))
    if math.isnan(score):
        raise ModelError(f"{model_dir}: evaluation returned NaN")
    return score


def greedy_soup(
    ranked_dirs: Sequence[Path | str],
    evaluate_fn: Callable[[Path], float],
    out_dir: Path | str,
) -> tuple[list[Path], float]:
    """Add ingredients in rank order (best first); keep one only if the soup's score goes down.

    ``evaluate_fn(model_dir)`` returns a held-out score where lower is better (perplexity). The first
    ingredient is always kept; ties do not count as improvement (strictly lower), so the soup is never
    worse than the best ingredient on the held-out set. ``out_dir`` receives the uniform merge of the
    kept ingredients. Returns (kept dirs, their soup's score).
    """
    dirs = [Path(d) for d in ranked_dirs]
    if not dirs:
        raise ModelError("greedy soup needs at least one ingredient")
    check_compatible(dirs)
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.soup-", dir=out.parent))
    try:
        kept = [dirs[0]]
        best_score = _score(evaluate_fn, dirs[0])
        best_dir: Path | None = None  # None: the best soup is the first ingredient itself
        log.info("greedy soup: start with %s, score %.4f", dirs[0], best_score)
        for i, cand in enumerate(dirs[1:], start=1):
            trial = work / f"trial-{i}"
            merge("uniform", kept + [cand], trial, check=False)
            score = _score(evaluate_fn, trial)
            if score < best_score:
                log.info("greedy soup: keep %s (%.4f < %.4f)", cand, score, best_score)
                kept.append(cand)
                best_score = score
                if best_dir is not None:
                    shutil.rmtree(best_dir, ignore_errors=True)
                best_dir = trial
            else:
                log.info("greedy soup: skip %s (%.4f >= %.4f)", cand, score, best_score)
                shutil.rmtree(trial, ignore_errors=True)
        if best_dir is None:
            merge("uniform", kept, out, check=False)  # one ingredient: a faithful copy
        else:
            with atomic_dir(out) as tmp:
                shutil.rmtree(tmp)
                shutil.move(str(best_dir), str(tmp))
        return kept, best_score
    finally:
        shutil.rmtree(work, ignore_errors=True)


@register(
    "greedy_soup",
    description="add candidates in rank order, keep one only if held-out perplexity improves",
    paper=GREEDY_SOUP_PAPER,
    procedure=True,
)
def _greedy_soup_method(dirs: list[Path], out_dir: Path, *, evaluate: Callable[[Path], float]) -> list[Path]:
    return greedy_soup(dirs, evaluate, out_dir)[0]
