"""anima merge: candidates from the registry -> perplexity ranking (cached as version tags) -> selection
(max_perplexity, top_k) -> a merge method -> a new registry version tagged with its recipe, alias `candidate`.

Everything that can fail on bad input (unknown method, no matching versions, an ingredient that does not
load, all candidates over max_perplexity, incompatible models, bad parameters) fails before the MLflow run
starts and before anything is registered; a failure inside the run marks it FAILED and registers nothing.
"""

from __future__ import annotations

import json
import math
import resource
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from omegaconf import DictConfig

from anima.config.merge import MergeConfig, MergeStageConfig
from anima.config.typed import plain_dict, typed
from anima.errors import ConfigError, ModelError
from anima.tracking.registry import model_uri

if TYPE_CHECKING:  # anima.merge imports torch: only inside the stage, never at CLI start-up
    from anima.merge import MergeMethod


@dataclass
class MergeResult:
    run_id: str | None
    model_dir: Path | None
    method: str
    ingredients: list[str]
    weights: list[float]
    scores: dict[str, float]  # merged model: eval set -> perplexity
    best_ingredient: dict[str, float]  # the best-ranked ingredient's perplexities
    ranking: list[dict] = field(default_factory=list)
    version: str | None = None
    registered_name: str | None = None

    @property
    def model_uri(self) -> str | None:
        return model_uri(self.registered_name, self.version) if self.version else None


def check_method(method: str) -> MergeMethod:
    """The registered method merge.method names; an unknown name fails with one line listing them all."""
    from anima.merge import registered

    methods = registered()
    if method not in methods:
        listing = "; ".join(f"{m.name}: {m.description}" for m in methods.values())
        raise ConfigError(f"merge.method={method!r} is unknown; methods: {listing}")
    return methods[method]


def check_base(m: MergeConfig, spec: MergeMethod) -> None:
    """merge.base is given exactly when the method needs a base model."""
    from anima.merge import registered

    if spec.needs_base and not m.base:
        raise ConfigError(f"merge.method={spec.name} needs merge.base=<model URI> (the model the candidates were "
                          f"fine-tuned from)")
    if m.base and not spec.needs_base:
        takes = ", ".join(name for name, other in registered().items() if other.needs_base)
        raise ConfigError(f"merge.base={m.base}: merge.method={spec.name} takes no base model (only {takes})")


def fit_ingredients(spec: MergeMethod, chosen: list[Any]) -> list[Any]:
    """The first ``spec.n_models`` selected candidates for a method that takes an exact number (slerp: 2)."""
    n = spec.n_models
    if n is None:
        return chosen
    if len(chosen) < n:
        raise ConfigError(f"merge.method={spec.name} needs {n} ingredients, {len(chosen)} selected "
                          f"(merge.models=[{','.join(['uri'] * n)}] or raise merge.top_k / merge.max_perplexity)")
    return chosen[:n]


def method_params(m: MergeConfig, spec: MergeMethod, scores: Sequence[float]) -> tuple[dict[str, Any], list[float]]:
    """(params passed to the method, the weight each ingredient gets, for the version's tags). A method reads
    its parameters from the `merge` group as a plain mapping (`MergeMethod.from_config`)."""
    if m.weights is not None and len(m.weights) != len(scores):
        raise ConfigError(f"merge.weights has {len(m.weights)} values for {len(scores)} ingredients")
    return spec.from_config(plain_dict(m), len(scores), scores)


def _candidate(uri: str, tracking: Any, what: str) -> Any:
    from anima.evaluation.candidates import candidate_from_uri

    try:
        return candidate_from_uri(uri, tracking)
    except ModelError as e:
        raise ModelError(f"{what}: {e}") from None


def _candidates(spec: MergeStageConfig) -> tuple[list[Any], Any]:
    """The candidates (merge.models, else the registry filters) and the base model (None without one)."""
    from anima.evaluation.candidates import select_candidates

    m, name, tracking = spec.merge, spec.registry.name, spec.tracking
    if m.models:
        cands = [_candidate(uri, tracking, "merge.models") for uri in m.models]
    else:
        cands = select_candidates(name, tags=m.tags, aliases=m.aliases, study=m.study, versions=m.versions,
                                  include_merges=m.include_merges)
    base = _candidate(_alias_or_uri(m.base, name), tracking, "merge.base") if m.base else None
    return cands, base


def _rank_set(rank_on: str, sets: dict[str, Any], console: Any) -> str:
    if rank_on in sets:
        return rank_on
    fallback = "val" if "val" in sets else next(iter(sets))
    console.print(f"[yellow]no {rank_on!r} eval set in this data; ranking on {fallback!r}[/]")
    return fallback


def _ingredient_dirs(chosen: list[Any], tracking: Any) -> list[Path]:
    dirs = []
    for c in chosen:
        try:
            dirs.append(c.local_path(tracking))
        except ModelError as e:
            raise ModelError(f"ingredient {c.uri}: {e}") from None
    return dirs


def _alias_or_uri(spec: str, name: str) -> str:
    if spec.startswith(("models:/", "runs:/")) or "/" in spec or Path(spec).exists():
        return spec
    return model_uri(name, alias=spec)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run(cfg: DictConfig) -> MergeResult | None:
    return merge_stage(cfg)


def merge_stage(cfg: DictConfig, overrides: Sequence[str] | None = None) -> MergeResult | None:
    """Rank, select, merge, register; `cfg` is converted once to `MergeStageConfig` and stays as the run's
    logged (and hashed) config."""
    from rich.console import Console

    from anima.evaluation.candidates import score_candidates
    from anima.evaluation.evalsets import load_eval_sets
    from anima.evaluation.ranking import rank_candidates, ranking_records, ranking_table, require_selection
    from anima.tracking.store import setup_mlflow

    console = Console()
    stage = typed(cfg, MergeStageConfig)
    m, tracking = stage.merge, stage.tracking
    spec = check_method(m.method)
    check_base(m, spec)
    setup_mlflow(tracking)

    # 1. candidates
    cands, base = _candidates(stage)

    # 2. rank (perplexities cached on the versions as ppl.<fingerprint> tags)
    sets = load_eval_sets(stage)
    rank_on = _rank_set(m.rank_on, sets, console)
    to_score = cands + ([base] if base is not None and base.uri not in {c.uri for c in cands} else [])
    score_candidates(to_score, sets, tracking, batch_size=stage.eval.batch_size, cache=stage.eval.cache,
                     on_progress=lambda c: console.print(f"  scoring {c.uri} ...", style="dim"))
    exclude = [base.uri] if base is not None else []
    shown = to_score  # the base is listed (status "base model") so its perplexity can be compared, never merged
    rows = rank_candidates(shown, rank_on, top_k=m.top_k, max_perplexity=m.max_perplexity, exclude=exclude)
    set_names = list(sets)
    es0 = sets[rank_on]
    plus = " + base" if len(shown) > len(cands) else ""
    console.print(ranking_table(rows, set_names, rank_on,
                                f"Ranking of {len(cands)} candidate(s){plus} on {es0.source} ({len(es0)} examples, "
                                f"ppl.{es0.fingerprint}; * = cached)"))
    if m.dry_run:
        console.print("[bold]dry run[/]: nothing merged, no run, no version.")
        return None

    # 3. select, check, resolve: all before the run starts
    chosen = require_selection(rows, rank_on, m.max_perplexity)
    if m.models:  # explicit ingredients keep the order they were given in (slerp: t=0 is the first)
        keep = {c.uri for c in chosen}
        chosen = [c for c in cands if c.uri in keep]
    chosen = fit_ingredients(spec, chosen)
    params, weights = method_params(m, spec, [c.scores[rank_on] for c in chosen])
    dirs = _ingredient_dirs(chosen, tracking)
    base_dir = base.local_path(tracking) if base is not None else None
    from anima.merge import check_compatible

    check_compatible(dirs + ([base_dir] if base_dir else []))
    spec.resolve_params(len(dirs), params)
    return _merge_and_register(cfg, stage, console, spec, chosen, dirs, base, base_dir, params, weights, sets,
                               rank_on, ranking_records(rows, set_names), rows, overrides)


def _trial_scorer(dirs: list[Path], chosen: list[Any], sets: dict[str, Any], rank_on: str,
                  batch_size: int) -> Callable[[Path], float]:
    """Ranking perplexity of a model dir a procedure tries (greedy soup), logged as soup/trial_ppl; the
    ingredients' own scores are known already."""
    import mlflow

    from anima.evaluation.perplexity import score_model_dir

    known = {str(d): c.scores[rank_on] for d, c in zip(dirs, chosen)}
    trials: list[float] = []

    def evaluate(d: Path) -> float:
        if str(d) in known:
            return known[str(d)]
        score = score_model_dir(d, {rank_on: sets[rank_on]}, batch_size)[rank_on]
        trials.append(score)
        mlflow.log_metric("soup/trial_ppl", score, step=len(trials))
        return score

    return evaluate


def _merge_and_register(cfg: DictConfig, stage: MergeStageConfig, console, spec, chosen, dirs, base, base_dir, params,
                        weights, sets, rank_on, records, rows, overrides) -> MergeResult:
    """The MLflow run: merge, score, log and register. `cfg` (the composed DictConfig) is what the run logs and
    hashes; `stage` is its typed view."""
    import mlflow

    from anima.evaluation.perplexity import score_model_dir
    from anima.evaluation.ranking import ranking_csv
    from anima.merge import merge_models
    from anima.tracking.context import stage_output_dir
    from anima.tracking.datasets import log_dataset_input
    from anima.tracking.registry import log_model_dir, register_model
    from anima.tracking.run import config_hash, stage_run

    m = stage.merge
    method = spec.name
    out_dir = stage_output_dir(stage) / "model"
    name = m.register_name or (chosen[0].name if m.models and chosen[0].name else stage.registry.name)
    bs = stage.eval.batch_size
    with stage_run(cfg, overrides=overrides, extra_tags={"anima.merge.method": method}) as active:
        run_id = active.info.run_id
        for es in sets.values():
            log_dataset_input(es.source.split("@")[0] + f":{es.name}", es.fingerprint, es.source, "eval")
        mlflow.log_text(ranking_csv(rows, list(sets)), "ranking.csv")
        mlflow.log_text(json.dumps(records, indent=2, default=str) + "\n", "ranking.json")
        kept = merge_models(method, dirs, out_dir, base_dir=base_dir, check=False,
                            evaluate=_trial_scorer(dirs, chosen, sets, rank_on, bs), **params)
        if spec.procedure:  # it kept some of the ingredients (greedy soup)
            kept_set = {str(d) for d in kept}
            chosen = [c for d, c in zip(dirs, chosen) if str(d) in kept_set]
            weights = spec.from_config(plain_dict(m), len(chosen), [c.scores[rank_on] for c in chosen])[1]
            console.print(f"{method.replace('_', ' ')} kept {len(chosen)}: {', '.join(c.uri for c in chosen)}")
        peak = _peak_rss_mb()
        merged = score_model_dir(out_dir, sets, bs)
        best = min((c.scores for c in chosen), key=lambda sc: sc.get(rank_on, math.inf))  # best single ingredient
        metrics = {"merge/n_ingredients": float(len(chosen)), "merge/peak_rss_mb": peak}
        for s, v in merged.items():
            metrics[f"merged/{s}_ppl"] = v
            if s in best:
                metrics[f"best_ingredient/{s}_ppl"] = best[s]
        mlflow.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)})
        mlflow.log_params({"merge.ingredients_resolved": ",".join(c.uri for c in chosen)[:500]})
        source = log_model_dir(out_dir)
        uris = [c.uri for c in chosen]
        tags: dict[str, Any] = {
            "stage": "merge", "method": method, "ingredients": ",".join(uris), "parent": ",".join(uris),
            "ingredient_versions": ",".join(c.version or c.uri for c in chosen),
            "weights": json.dumps([round(w, 6) for w in weights]),
            "scores": json.dumps({c.uri: {s: round(v, 4) for s, v in c.scores.items()} for c in chosen}),
            "merge_params": json.dumps({k: v for k, v in params.items() if v is not None}, default=str),
            "base": base.uri if base is not None else None, "rank_on": rank_on,
            "eval_data": sets[rank_on].source, "val_ppl": merged.get("val"), "persona_ppl": merged.get("persona"),
            "config_hash": config_hash(cfg),
            "chat_template": chosen[0].tags.get("chat_template"),
            **{es.tag: f"{merged[s]:.6g}" for s, es in sets.items() if s in merged},
        }
        mv = register_model(name, run_id, source, tags, alias=m.alias,
                            description=f"{method} merge of {', '.join(uris)}")
    result = MergeResult(run_id, out_dir, method, uris, weights, merged, dict(best), records, mv.version, mv.name)
    _print_summary(console, result, rank_on)
    return result


def _print_summary(console, result: MergeResult, rank_on: str) -> None:
    from rich.table import Table

    t = Table(title=f"{result.method} merge of {len(result.ingredients)} ingredient(s) -> {result.model_uri}",
              title_justify="left")
    t.add_column("eval set")
    t.add_column("best ingredient ppl", justify="right")
    t.add_column("merged ppl", justify="right")
    t.add_column("change", justify="right")
    for s, v in result.scores.items():
        b = result.best_ingredient.get(s)
        change = f"{(v - b) / b * 100:+.2f}%" if b else "-"
        t.add_row(s + (" (ranking)" if s == rank_on else ""), f"{b:.4g}" if b else "-", f"{v:.4g}", change)
    console.print(t)
    console.print(f"[bold green]✓ merge[/] registered [bold]{result.model_uri}[/]  "
                  f"(eval: anima eval model={result.model_uri} compare=champion)")
