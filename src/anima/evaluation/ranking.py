"""Rank candidates by perplexity, select with max_perplexity / top_k, and show the table (rich, CSV, JSON)."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from typing import Sequence

from anima.errors import AnimaError
from anima.evaluation.candidates import Candidate

SELECTED = "selected"


@dataclass
class RankRow:
    rank: int
    cand: Candidate
    score: float
    status: str  # selected | over max_perplexity | beyond top_k | base model | ...


def rank_candidates(cands: Sequence[Candidate], rank_on: str, *, top_k: int = 0,
                    max_perplexity: float | None = None, exclude: Sequence[str] = ()) -> list[RankRow]:
    """Best (lowest perplexity on ``rank_on``) first; NaN counts as infinitely bad."""
    def key(c: Candidate) -> float:
        s = c.scores.get(rank_on, math.inf)
        return math.inf if math.isnan(s) else s

    rows, n_selected = [], 0
    for i, c in enumerate(sorted(cands, key=lambda c: (key(c), int(c.version or 0))), start=1):
        score = key(c)
        if c.uri in exclude:
            status = "base model"
        elif max_perplexity is not None and not score <= max_perplexity:
            status = f"over max_perplexity ({max_perplexity:g})"
        elif top_k and n_selected >= top_k:
            status = f"beyond top_k ({top_k})"
        else:
            status, n_selected = SELECTED, n_selected + 1
        rows.append(RankRow(i, c, score, status))
    return rows


def selected(rows: Sequence[RankRow]) -> list[Candidate]:
    return [r.cand for r in rows if r.status == SELECTED]


def require_selection(rows: Sequence[RankRow], rank_on: str, max_perplexity: float | None) -> list[Candidate]:
    chosen = selected(rows)
    if not chosen:
        scored = [r for r in rows if r.status != "base model"]
        if not scored:
            raise AnimaError("no candidates left to merge (the only candidate is the base model)")
        best = min(scored, key=lambda r: r.score)
        raise AnimaError(f"all {len(scored)} candidates exceed merge.max_perplexity={max_perplexity:g} on {rank_on} "
                         f"(best: {best.cand.uri} at {best.score:.4g})")
    return chosen


def _fmt(x: float | None) -> str:
    return "-" if x is None else ("inf" if math.isinf(x) else f"{x:.4g}")


def ranking_records(rows: Sequence[RankRow], set_names: Sequence[str]) -> list[dict]:
    out = []
    for r in rows:
        c = r.cand
        rec = {"rank": r.rank, "model": c.uri, "version": c.version or "", "aliases": ",".join(c.aliases),
               "stage": c.tags.get("stage", ""), "status": r.status}
        for s in set_names:
            rec[f"{s}_ppl"] = c.scores.get(s)
            rec[f"{s}_cached"] = c.cached.get(s)
        out.append(rec)
    return out


def ranking_csv(rows: Sequence[RankRow], set_names: Sequence[str]) -> str:
    recs = ranking_records(rows, set_names)
    buf = io.StringIO()
    if recs:
        w = csv.DictWriter(buf, fieldnames=list(recs[0]))
        w.writeheader()
        w.writerows(recs)
    return buf.getvalue()


def ranking_table(rows: Sequence[RankRow], set_names: Sequence[str], rank_on: str, title: str):
    """A rich Table: rank, model, aliases, stage, perplexity per set (* = cached tag), status."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("model", overflow="fold")
    table.add_column("aliases")
    table.add_column("stage")
    for s in set_names:
        table.add_column(f"{s} ppl" + (" ↑rank" if s == rank_on else ""), justify="right")
    table.add_column("status")
    for r in rows:
        c = r.cand
        cells = [f"{_fmt(c.scores.get(s))}{'*' if c.cached.get(s) else ''}" for s in set_names]
        style = "green" if r.status == SELECTED else "dim"
        aliases = ",".join(f"@{a}" for a in c.aliases) or "-"
        table.add_row(str(r.rank), c.uri.removeprefix("models:/"), aliases, c.tags.get("stage", "-"), *cells,
                      f"[{style}]{r.status}[/]")
    return table
