"""The eval suite: prompts with references (conf/eval/<suite>.yaml) answered by a model and scored with the
local generation metrics; plus one model's whole evaluation (perplexities + suite) as a report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from anima.evaluation.candidates import Candidate
from anima.evaluation.evalsets import EvalSet


@dataclass
class EvalReport:
    model: str
    metrics: dict[str, float]  # val_ppl, persona_ppl, rouge_l, chrf, distinct_1, ...
    rows: list[dict] = field(default_factory=list)  # prompt, reference, reply, per-reply scores
    cached: dict[str, bool] = field(default_factory=dict)


def suite_prompts(eval_cfg: Any) -> list[dict]:
    out = []
    for i, p in enumerate(eval_cfg.get("prompts") or []):
        prompt = str(p.get("prompt") or "").strip()
        if not prompt:
            from anima.errors import ConfigError

            raise ConfigError(f"eval.prompts[{i}].prompt is empty (suite {eval_cfg.get('suite')})")
        out.append({"prompt": prompt, "reference": str(p.get("reference") or ""),
                    "system": p.get("system") or eval_cfg.get("system_prompt")})
    return out


def generate_replies(model_dir, prompts: Sequence[dict], sampling: Any, seed: int, backend: str = "auto"
                     ) -> list[str]:
    """One reply per prompt, in the model's own chat template (greedy when sampling.temperature=0)."""
    from transformers.utils import logging as hf_logging

    from anima.generation.engine import ChatEngine
    from anima.generation.sampling import sampling_from_config

    if not prompts:
        return []
    hf_logging.disable_progress_bar()
    engine = ChatEngine(model_dir, backend=backend)
    params = sampling_from_config(sampling, seed=seed)
    replies = []
    for p in prompts:
        messages = ([{"role": "system", "content": p["system"]}] if p.get("system") else [])
        messages.append({"role": "user", "content": p["prompt"]})
        replies.append(engine.chat(messages, params).text.strip())
    return replies


def evaluate_candidate(cand: Candidate, sets: Mapping[str, EvalSet], cfg: Any) -> EvalReport:
    """Perplexity on every set (cached tags reused) and the suite's generation metrics."""
    from anima.evaluation.candidates import score_candidates
    from anima.evaluation.generation_metrics import compute_generation_metrics, score_each

    score_candidates([cand], sets, cfg.tracking, batch_size=int(cfg.eval.batch_size), cache=bool(cfg.eval.cache))
    metrics = {f"{s}_ppl": v for s, v in cand.scores.items() if s in sets}
    prompts = suite_prompts(cfg.eval)
    rows: list[dict] = []
    if prompts:
        replies = generate_replies(cand.local_path(cfg.tracking), prompts, cfg.sampling, int(cfg.seed),
                                   str(cfg.eval.backend))
        refs = [p["reference"] for p in prompts]
        keywords = list(cfg.eval.persona_keywords or [])
        metrics.update(compute_generation_metrics(replies, refs, keywords))
        for p, reply, scores in zip(prompts, replies, score_each(replies, refs, keywords)):
            rows.append({"model": cand.uri, "prompt": p["prompt"], "reference": p["reference"], "reply": reply,
                         **{k: round(v, 4) for k, v in scores.items()}})
    return EvalReport(cand.uri, metrics, rows, {f"{s}_ppl": c for s, c in cand.cached.items()})


# higher is better for these; lower for perplexities, repetition
HIGHER_IS_BETTER = {"rouge_l", "chrf", "distinct_1", "distinct_2", "persona_keyword_rate"}


def better(metric: str, a: float, b: float) -> bool | None:
    """Is value a better than b on this metric? None when the metric has no direction (reply length)."""
    if metric == "reply_length" or a == b:
        return None
    if metric in HIGHER_IS_BETTER:
        return a > b
    return a < b
