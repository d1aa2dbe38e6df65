"""anima eval: perplexity on the val and held-out persona sets plus the eval suite's generation metrics for one
model, optionally side by side with another (compare=champion). One MLflow run; metrics eval/*, compare/*;
the replies as a table artifact (prompt, reply, scores); results also written as eval.* tags on the version."""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Sequence

from omegaconf import DictConfig

from anima.errors import ModelError
from anima.tracking.registry import model_uri, tag_version


def _compare_uri(spec: str, name: str | None) -> str:
    spec = str(spec)
    if spec.startswith(("models:/", "runs:/")) or "/" in spec:
        return spec
    if not name:
        raise ModelError(f"compare={spec}: the evaluated model is not a registry version; give a full model URI")
    return model_uri(name, alias=spec)


def run(cfg: DictConfig):
    return eval_stage(cfg)


def eval_stage(cfg: DictConfig, overrides: Sequence[str] | None = None) -> dict:
    import mlflow
    from rich.console import Console

    from anima.evaluation.candidates import candidate_from_uri
    from anima.evaluation.evalsets import load_eval_sets
    from anima.evaluation.suite import evaluate_candidate
    from anima.tracking.datasets import log_dataset_input
    from anima.tracking.run import stage_run
    from anima.tracking.store import setup_mlflow

    console = Console()
    setup_mlflow(cfg.tracking)
    target = candidate_from_uri(str(cfg.model), cfg.tracking)
    other = None
    if cfg.get("compare"):
        uri = _compare_uri(str(cfg.compare), target.name or str(cfg.registry.name))
        try:
            other = candidate_from_uri(uri, cfg.tracking)
        except ModelError as e:
            if str(cfg.get("compare_missing", "error")) != "skip" or "@" not in uri:
                raise ModelError(f"compare={cfg.compare}: {e}") from None
            console.print(f"[yellow]no comparison: {uri} does not exist yet[/] (compare_missing=skip)")
    sets = load_eval_sets(cfg)
    reports = [evaluate_candidate(target, sets, cfg)]
    if other is not None:
        reports.append(evaluate_candidate(other, sets, cfg) if other.uri != target.uri else reports[0])
    with stage_run(cfg, overrides=overrides, extra_tags={"anima.eval.model": target.uri,
                                                        "anima.eval.compare": other.uri if other else ""}) as active:
        for es in sets.values():
            log_dataset_input(es.source.split("@")[0] + f":{es.name}", es.fingerprint, es.source, "eval")
        for prefix, rep in zip(("eval", "compare"), reports):
            mlflow.log_metrics({f"{prefix}/{k}": v for k, v in rep.metrics.items() if math.isfinite(v)})
        rows = [r for rep in reports for r in rep.rows] if other is None or other.uri != target.uri else reports[0].rows
        if rows:
            mlflow.log_table({k: [r.get(k) for r in rows] for k in rows[0]}, artifact_file="eval/suite.json")
            mlflow.log_text(_csv(rows), "eval/suite.csv")
        summary = {"model": target.uri, "compare": other.uri if other else None,
                   "metrics": reports[0].metrics, "compare_metrics": reports[1].metrics if other else None,
                   "eval_data": {s: es.source for s, es in sets.items()},
                   "fingerprints": {s: es.fingerprint for s, es in sets.items()}, "suite": str(cfg.eval.suite)}
        mlflow.log_text(json.dumps(summary, indent=2) + "\n", "eval/summary.json")
        if bool(cfg.tag_version):
            _tag_versions([target] + ([other] if other else []), reports, sets, str(cfg.eval.suite))
        summary["run_id"] = active.info.run_id
    _print(console, reports, target.uri, other.uri if other else None)
    return summary


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _tag_versions(cands, reports, sets, suite: str) -> None:
    data = ",".join(f"{s}:{es.fingerprint}" for s, es in sets.items())
    for cand, rep in zip(cands, reports):
        if not (cand.name and cand.version):
            continue
        tags = {f"eval.{k}": f"{v:.6g}" for k, v in rep.metrics.items()}
        tag_version(cand.name, cand.version, {**tags, "eval.data": data, "eval.suite": suite})


def _print(console, reports, uri: str, other: str | None) -> None:
    from rich.table import Table

    from anima.evaluation.suite import better

    t = Table(title=f"eval {uri}" + (f" vs {other}" if other else ""), title_justify="left")
    t.add_column("metric")
    t.add_column(uri, justify="right")
    if other:
        t.add_column(other, justify="right")
        t.add_column("Δ", justify="right")
    for k, v in reports[0].metrics.items():
        mark = "*" if reports[0].cached.get(k) else ""
        cells = [f"{v:.4g}{mark}"]
        if other:
            w = reports[1].metrics.get(k)
            if w is None:
                cells += ["-", "-"]
            else:
                b = better(k, v, w)
                color = "green" if b else ("red" if b is False else "white")
                cells += [f"{w:.4g}{'*' if reports[1].cached.get(k) else ''}", f"[{color}]{v - w:+.4g}[/]"]
        t.add_row(k, *cells)
    console.print(t)
    if reports[0].rows:
        r = Table(title="suite replies", title_justify="left", show_lines=True)
        r.add_column("prompt")
        r.add_column(uri)
        if other:
            r.add_column(other)
        for i, row in enumerate(reports[0].rows):
            cells = [row["prompt"], row["reply"]]
            if other:
                cells.append(reports[1].rows[i]["reply"] if i < len(reports[1].rows) else "")
            r.add_row(*cells)
        console.print(r)
    console.print("(* = perplexity read from the version's cached ppl.<fingerprint> tag)")
