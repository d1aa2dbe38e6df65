"""Intervals for one eval report, the paired comparison of two, the side-by-side per-example table and the
interval chart that `anima eval` logs; plus the paired-result tag that `anima promote` reads."""

from __future__ import annotations

import json
from typing import Any

from anima.errors import AnimaError
from anima.evaluation.bootstrap import Interval, bootstrap, paired_bootstrap
from anima.evaluation.suite import EvalReport


def intervals(rep: EvalReport, confidence: float, resamples: int, seed: int) -> dict[str, Interval]:
    """A seeded bootstrap interval for every metric of the report that has a per-example statistic."""
    return {k: bootstrap(stat, rep.n[k], confidence=confidence, resamples=resamples, seed=seed)
            for k, stat in rep.stats.items()}


def paired(a: EvalReport, b: EvalReport, confidence: float, resamples: int, seed: int) -> dict[str, Interval]:
    """a minus b on the same examples, per metric (left out where the two scored a different number of units:
    a chat template that drops different conversations)."""
    return {k: paired_bootstrap(a.stats[k], b.stats[k], a.n[k], confidence=confidence, resamples=resamples,
                                seed=seed)
            for k in a.stats if k in b.stats and a.n[k] == b.n[k]}


def side_by_side(a: EvalReport, b: EvalReport | None) -> dict[str, list]:
    """The per-example table: prompt, reference, candidate reply, champion reply, then every score of both."""
    cols: dict[str, list] = {"prompt": [], "reference": [], "reply": []}
    if b is not None:
        cols["champion_reply"] = []
    for i, row in enumerate(a.rows):
        other = b.rows[i] if b is not None and i < len(b.rows) else {}
        cols["prompt"].append(row["prompt"])
        cols["reference"].append(row["reference"])
        cols["reply"].append(row["reply"])
        if b is not None:
            cols["champion_reply"].append(other.get("reply"))
        for k, v in row.items():
            if k in ("prompt", "reference", "reply"):
                continue
            cols.setdefault(k, []).append(v)
            if b is not None:
                cols.setdefault(f"champion_{k}", []).append(other.get(k))
    return cols


def interval_figure(ivs: dict[str, Interval], other: dict[str, Interval] | None, labels: tuple[str, str]):
    """One figure, a small panel per metric: value with its interval, candidate vs champion (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(ivs)
    cols = min(3, max(1, len(keys)))
    rows = max(1, -(-len(keys) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 1.6 * rows), squeeze=False)
    for ax, k in zip(axes.flat, keys):
        series = [(labels[0], ivs[k])] + ([(labels[1], other[k])] if other and k in other else [])
        for y, (_, iv) in enumerate(series):
            ax.errorbar([iv.value], [y], xerr=[[iv.value - iv.low], [iv.high - iv.value]], fmt="o", capsize=4,
                        color="C0" if y == 0 else "C1")
        ax.set_yticks(range(len(series)), [s[0] for s in series], fontsize=7)
        ax.set_ylim(-0.6, len(series) - 0.4)
        ax.set_title(k, fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.suptitle(f"{int(round(100 * next(iter(ivs.values())).confidence)) if ivs else 95}% bootstrap intervals",
                 fontsize=10)
    fig.tight_layout()
    return fig


def pair_tag(champion_version: str, metric: str) -> str:
    return f"eval.vs.v{champion_version}.{metric}"


def pair_record(iv: Interval, data: str) -> str:
    """The paired result as a version tag value (JSON): difference, interval, n, level and the eval data."""
    return json.dumps({"diff": iv.value, "low": iv.low, "high": iv.high, "n": iv.n, "confidence": iv.confidence,
                       "data": data}, sort_keys=True)


def read_pair(tags: dict[str, str], champion_version: str, metric: str, where: str) -> dict[str, Any] | None:
    raw = tags.get(pair_tag(champion_version, metric))
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise AnimaError(f"{where}: tag {pair_tag(champion_version, metric)} is not JSON: {raw[:80]!r}") from None


def require_same_data(a: str | None, b: str | None, what: str) -> None:
    """Two evals compare only on the same eval sets (fingerprints); otherwise one line naming both."""
    if a and b and a != b:
        raise AnimaError(f"{what}: evaluated on different eval sets ({a} vs {b}); re-run `anima eval` on one set")
