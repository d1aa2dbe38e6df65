"""The eval suite: prompts with references (conf/eval/<suite>.yaml) answered by a model and scored with the
local generation metrics; plus one model's whole evaluation (perplexities + suite) as a report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from anima.config.eval import EvalOptions
from anima.config.groups import SamplingConfig, TrackingConfig
from anima.evaluation.candidates import Candidate
from anima.evaluation.evalsets import EvalSet


@dataclass
class EvalReport:
    model: str
    metrics: dict[str, float]  # val_ppl, persona_ppl, rouge_l, chrf, distinct_1, ...
    rows: list[dict] = field(default_factory=list)  # prompt, reference, reply, per-reply scores
    cached: dict[str, bool] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)  # metric -> statistic of example indices (bootstrap)
    n: dict[str, int] = field(default_factory=dict)  # metric -> examples it is computed on


def suite_fingerprint(prompts: Sequence[dict]) -> str:
    """Content hash of the suite (prompts, references, system messages): two evals compare only when it matches."""
    from anima.fingerprint import hash_obj

    return hash_obj({"suite": [[p["prompt"], p["reference"], p.get("system") or ""] for p in prompts]})


def suite_prompts(opts: EvalOptions) -> list[dict]:
    """The suite's prompts as {prompt, reference, system} (a prompt's own system message, else the suite's)."""
    out = []
    for i, p in enumerate(opts.prompts or []):
        prompt = (p.prompt or "").strip()
        if not prompt:
            from anima.errors import ConfigError

            raise ConfigError(f"eval.prompts[{i}].prompt is empty (suite {opts.suite})")
        out.append({"prompt": prompt, "reference": p.reference or "", "system": p.system or opts.system_prompt})
    return out


def generate_replies(model_dir, prompts: Sequence[dict], sampling: Any, seed: int, backend: str = "auto"
                     ) -> list[str]:
    """One reply per prompt, in the model's own chat template (greedy when sampling.temperature=0)."""
    from anima.generation.engine import ChatEngine
    from anima.generation.sampling import sampling_from_config

    if not prompts:
        return []
    engine = ChatEngine(model_dir, backend=backend)
    params = sampling_from_config(sampling, seed=seed)
    replies = []
    for p in prompts:
        messages = ([{"role": "system", "content": p["system"]}] if p.get("system") else [])
        messages.append({"role": "user", "content": p["prompt"]})
        replies.append(engine.chat(messages, params).text.strip())
    return replies


def evaluate_candidate(cand: Candidate, sets: Mapping[str, EvalSet], opts: EvalOptions, sampling: SamplingConfig,
                       tracking: TrackingConfig, seed: int, judge_cache: Path | None = None) -> EvalReport:
    """Perplexity on every set, measured per example (and cached as ppl.<fp> tags for rankings), and the suite's
    generation metrics (plus the judge's scores when eval.judge.enabled, cached under ``judge_cache``); each
    metric also as a statistic of example indices, for its bootstrap interval."""
    from anima.evaluation.candidates import store_score
    from anima.evaluation.example_stats import generation_stats, perplexity_stat
    from anima.evaluation.generation_metrics import compute_generation_metrics, score_each
    from anima.evaluation.perplexity import measure_model_dir

    report = EvalReport(cand.uri, {})
    for s, ppl in measure_model_dir(cand.local_path(tracking), sets, opts.batch_size).items():
        cand.scores[s], cand.cached[s] = ppl.ppl, False
        if cand.version and cand.name:
            store_score(cand, sets[s].tag, ppl.ppl)
        report.metrics[f"{s}_ppl"] = ppl.ppl
        report.stats[f"{s}_ppl"] = perplexity_stat([e[0] for e in ppl.per_example], [e[1] for e in ppl.per_example])
        report.n[f"{s}_ppl"] = len(ppl.per_example)
    prompts = suite_prompts(opts)
    judge = None
    if prompts and opts.judge.enabled:
        from anima.evaluation.judge import make_judge

        judge = make_judge(opts.judge)  # before generating: a config mistake fails fast
    if prompts:
        replies = generate_replies(cand.local_path(tracking), prompts, sampling, seed, opts.backend)
        refs = [p["reference"] for p in prompts]
        keywords = list(opts.persona_keywords or [])
        report.metrics.update(compute_generation_metrics(replies, refs, keywords))
        report.stats.update(generation_stats(replies, refs, keywords))
        report.n.update({k: len(replies) for k in report.stats if not k.endswith("_ppl")})
        for p, reply, scores in zip(prompts, replies, score_each(replies, refs, keywords)):
            report.rows.append({"prompt": p["prompt"], "reference": p["reference"], "reply": reply,
                                **{k: round(v, 4) for k, v in scores.items()}})
        if judge is not None:
            _add_judge(report, judge, prompts, replies, opts, f"{cand.uri}|{cand.run_id or ''}", judge_cache)
    return report


def _add_judge(report: EvalReport, judge: Any, prompts: Sequence[dict], replies: Sequence[str], opts: EvalOptions,
               model_id: str, cache: Path | None) -> None:
    """judge_<criterion> (mean 1-5 over the scored replies, with its bootstrap statistic), judge_skipped, and
    each reply's scores in its table row."""
    from anima.evaluation.example_stats import masked_mean
    from anima.evaluation.judge import judge_replies

    res = judge_replies(judge, prompts, replies, opts.judge, model_id, cache)
    report.metrics["judge_skipped"] = float(res.skipped)
    for crit, col in res.scores.items():
        for row, score in zip(report.rows, col):
            row[f"judge_{crit}"] = score
        if res.error is None and any(s is not None for s in col):
            report.metrics[f"judge_{crit}"] = sum(s for s in col if s is not None) / sum(s is not None for s in col)
            report.stats[f"judge_{crit}"] = masked_mean(col)
            report.n[f"judge_{crit}"] = len(col)


# higher is better for these; lower for perplexities, repetition
HIGHER_IS_BETTER = {"rouge_l", "chrf", "distinct_1", "distinct_2", "persona_keyword_rate", "judge_persona",
                    "judge_helpfulness"}


def better(metric: str, a: float, b: float) -> bool | None:
    """Is value a better than b on this metric? None when the metric has no direction (reply length)."""
    if metric in ("reply_length", "judge_skipped") or a == b:
        return None
    if metric in HIGHER_IS_BETTER:
        return a > b
    return a < b
