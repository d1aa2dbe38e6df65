"""anima eval: perplexity on the val and held-out persona sets plus the eval suite's generation metrics for one
model, optionally side by side with another (compare=champion). One MLflow run; metrics eval/*, compare/*;
the replies as a table artifact (prompt, reply, scores); results also written as eval.* tags on the version."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig

from anima.config.eval import EvalStageConfig
from anima.config.typed import typed
from anima.errors import ModelError
from anima.tracking.registry import model_uri, tag_version


def _compare_uri(compare: str, name: str | None) -> str:
    if compare.startswith(("models:/", "runs:/")) or "/" in compare:
        return compare
    if not name:
        raise ModelError(f"compare={compare}: the evaluated model is not a registry version; give a full model URI")
    return model_uri(name, alias=compare)


def run(cfg: DictConfig):
    return eval_stage(cfg)


def eval_stage(cfg: DictConfig, overrides: Sequence[str] | None = None) -> dict:
    """Evaluate (and compare); `cfg` is converted once to `EvalStageConfig` and stays as the run's logged config."""
    import mlflow
    from rich.console import Console

    from anima.evaluation.candidates import candidate_from_uri
    from anima.evaluation.evalsets import load_eval_sets
    from anima.evaluation.comparison import interval_figure, intervals, paired, side_by_side
    from anima.evaluation.suite import evaluate_candidate, suite_fingerprint, suite_prompts
    from anima.tracking.datasets import log_dataset_input
    from anima.tracking.run import stage_run
    from anima.tracking.store import setup_mlflow

    spec = typed(cfg, EvalStageConfig)
    console, tracking = Console(), spec.tracking
    setup_mlflow(tracking)
    target = candidate_from_uri(spec.model, tracking)
    other = None
    if spec.compare:
        uri = _compare_uri(spec.compare, target.name or spec.registry.name)
        try:
            other = candidate_from_uri(uri, tracking)
        except ModelError as e:
            if spec.compare_missing != "skip" or "@" not in uri:
                raise ModelError(f"compare={spec.compare}: {e}") from None
            console.print(f"[yellow]no comparison: {uri} does not exist yet[/] (compare_missing=skip)")
    sets = load_eval_sets(spec)
    judge_cache = Path(spec.paths.cache_dir) / "judge"
    reports = [evaluate_candidate(target, sets, spec.eval, spec.sampling, tracking, spec.seed, judge_cache)]
    if other is not None:
        reports.append(evaluate_candidate(other, sets, spec.eval, spec.sampling, tracking, spec.seed, judge_cache)
                       if other.uri != target.uri else reports[0])
    opts = spec.eval
    ivs = [intervals(r, opts.confidence, opts.resamples, spec.seed) for r in reports]
    diffs = paired(reports[0], reports[1], opts.confidence, opts.resamples, spec.seed) if other else {}
    prompts = suite_prompts(opts)
    data = ",".join([f"{s}:{es.fingerprint}" for s, es in sets.items()]
                    + ([f"suite:{suite_fingerprint(prompts)}"] if prompts else []))
    with stage_run(cfg, overrides=overrides, extra_tags={"anima.eval.model": target.uri,
                                                        "anima.eval.compare": other.uri if other else "",
                                                        "anima.eval.data": data}) as active:
        for es in sets.values():
            log_dataset_input(es.source.split("@")[0] + f":{es.name}", es.fingerprint, es.source, "eval")
        if prompts:
            log_dataset_input(f"suite:{opts.suite}", suite_fingerprint(prompts), f"conf/eval/{opts.suite}.yaml",
                              "eval")
        for prefix, rep, iv in zip(("eval", "compare"), reports, ivs):
            _log_metrics(prefix, rep.metrics, iv)
        for k, d in diffs.items():
            _log_metrics("compare", {f"{k}_diff": d.value}, {f"{k}_diff": d})
        table = side_by_side(reports[0], reports[1] if other else None)
        if table["prompt"]:
            mlflow.log_table(table, artifact_file="eval/suite.json")
            mlflow.log_text(_csv([dict(zip(table, vals)) for vals in zip(*table.values())]), "eval/suite.csv")
        if ivs[0]:
            fig = interval_figure(ivs[0], ivs[1] if other else None, (target.label, other.label if other else ""))
            mlflow.log_figure(fig, "eval/intervals.png")
            import matplotlib.pyplot as plt

            plt.close(fig)
        summary = {"model": target.uri, "compare": other.uri if other else None,
                   "metrics": reports[0].metrics, "compare_metrics": reports[1].metrics if other else None,
                   "intervals": {k: v.as_dict() for k, v in ivs[0].items()},
                   "compare_intervals": {k: v.as_dict() for k, v in ivs[1].items()} if other else None,
                   "differences": {k: v.as_dict() for k, v in diffs.items()},
                   "eval_data": {s: es.source for s, es in sets.items()}, "data": data,
                   "fingerprints": {s: es.fingerprint for s, es in sets.items()}, "suite": opts.suite}
        mlflow.log_text(json.dumps(summary, indent=2) + "\n", "eval/summary.json")
        if spec.tag_version:
            _tag_versions([target] + ([other] if other else []), reports, ivs, diffs, data, opts.suite)
        summary["run_id"] = active.info.run_id
    _print(console, reports, ivs, diffs, target.uri, other.uri if other else None)
    return summary


def _log_metrics(prefix: str, metrics: dict, ivs: dict) -> None:
    import mlflow

    out = {}
    for k, v in metrics.items():
        iv = ivs.get(k)
        for key, val in ((k, v), (f"{k}_ci_low", iv.low if iv else None), (f"{k}_ci_high", iv.high if iv else None)):
            if val is not None and math.isfinite(val):
                out[f"{prefix}/{key}"] = val
    mlflow.log_metrics(out)


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _tag_versions(cands, reports, ivs, diffs, data: str, suite: str) -> None:
    """eval.<metric> (+ _ci_low/_ci_high) on each version; on the evaluated one also the paired result against the
    compared version, eval.vs.v<N>.<metric>, which `anima promote` reads."""
    from anima.evaluation.comparison import pair_record, pair_tag

    for cand, rep, iv in zip(cands, reports, ivs):
        if not (cand.name and cand.version):
            continue
        tags = {f"eval.{k}": f"{v:.6g}" for k, v in rep.metrics.items()}
        tags.update({f"eval.{k}_ci_low": f"{i.low:.6g}" for k, i in iv.items()})
        tags.update({f"eval.{k}_ci_high": f"{i.high:.6g}" for k, i in iv.items()})
        tag_version(cand.name, cand.version, {**tags, "eval.data": data, "eval.suite": suite})
    if len(cands) == 2 and cands[0].name and cands[1].version and cands[0].name == cands[1].name:
        tag_version(cands[0].name, cands[0].version,
                    {pair_tag(cands[1].version, k): pair_record(d, data) for k, d in diffs.items()})


def _fmt(v: float, iv) -> str:
    return f"{v:.4g}" + (f" [{iv.low:.4g}, {iv.high:.4g}]" if iv is not None and iv.n > 1 else "")


def _print(console, reports, ivs, diffs, uri: str, other: str | None) -> None:
    from rich.table import Table

    from anima.evaluation.suite import better

    level = next((f"{100 * i.confidence:g}%" for i in ivs[0].values()), "95%")
    t = Table(title=f"eval {uri}" + (f" vs {other}" if other else "") + f"  (value [{level} bootstrap interval])",
              title_justify="left")
    t.add_column("metric")
    t.add_column("n", justify="right")
    t.add_column(uri, justify="right")
    if other:
        t.add_column(other, justify="right")
        t.add_column("Δ [interval]", justify="right")
    for k, v in reports[0].metrics.items():
        iv = ivs[0].get(k)
        cells = [str(iv.n) if iv else "-", _fmt(v, iv)]
        if other:
            w = reports[1].metrics.get(k)
            d = diffs.get(k)
            if w is None:
                cells += ["-", "-"]
            else:
                b = better(k, v, w)
                sure = d is not None and d.excludes_zero()
                color = ("green" if b else "red" if b is False else "white") if sure else "white"
                delta = _fmt(d.value, d) if d is not None else f"{v - w:+.4g}"
                cells += [_fmt(w, ivs[1].get(k)), f"[{color}]{delta}[/]"]
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
    if other:
        console.print("(Δ = this model minus the other on the same examples, paired bootstrap; coloured only when "
                      "its interval excludes zero)")
