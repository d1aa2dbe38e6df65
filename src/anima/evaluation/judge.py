"""An optional LLM judge for the eval suite: any OpenAI-compatible endpoint scores each reply 1-5 for persona
consistency and helpfulness against a fixed rubric (below, fingerprinted).

Why cached: judging costs requests (and money on an API), and a reply of a given model version to a given
example does not change, so each score is stored under paths.cache_dir/judge keyed by (model version, example
and reply, judge model+URL, rubric fingerprint, criterion); a re-run sends no request. Only valid scores are
cached, so a judge that failed once is asked again next time.

Why never a crash: a judge may answer anything. A reply without a 1-5 score (or a failed request) is a counted
skip (eval/judge_skipped); when nothing at all could be scored, one error line says so and the judge metrics
are left out. The API key stays inside the client (synth.teachers.OpenAITeacher): only the *name* of its
environment variable is in the config; the judge's name carries the URL with any password redacted.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from anima.config.eval import JudgeOptions
from anima.errors import ConfigError

log = logging.getLogger(__name__)

RUBRICS: dict[str, str] = {
    "persona": (
        "Persona consistency: does the reply speak as the assistant described by the persona (its identity, "
        "nature, tone and facts about itself), without contradicting it or breaking character?\n"
        "1 = contradicts the persona or claims to be something else; 2 = mostly off-persona; "
        "3 = neutral, neither shows nor breaks the persona; 4 = consistent, with minor slips; "
        "5 = fully in persona and consistent with it."),
    "helpfulness": (
        "Helpfulness: does the reply answer the user's message correctly, relevantly and clearly?\n"
        "1 = irrelevant, wrong or incoherent; 2 = barely addresses the message; 3 = partly helpful; "
        "4 = helpful with small gaps; 5 = fully answers the message, clear and correct."),
}
SYSTEM = ("You are a strict, consistent evaluator of a chat assistant's replies. You rate one reply on one "
          "criterion with an integer from 1 to 5. Answer with the score only: a single digit.")
TEMPLATE = ("Persona the assistant should keep:\n{persona}\n\nUser message:\n{prompt}\n\n"
            "A good reference reply (for orientation, not to copy):\n{reference}\n\n"
            "Assistant reply to rate:\n{reply}\n\nCriterion. {rubric}\n\nScore (1-5):")


def rubric_fingerprint() -> str:
    """Content hash of the rubric, system message and prompt template: any edit invalidates cached scores."""
    from anima.fingerprint import hash_obj

    return hash_obj({"rubrics": RUBRICS, "system": SYSTEM, "template": TEMPLATE})


_SCALE = re.compile(r"(?i)(?:\b1\s*(?:-|–|to)\s*5\b|(?:/|\bout\s+of)\s*5\b)")
_LABELLED = re.compile(r"(?i)\b(?:score|rating)\b\W{0,3}([1-5])(?:\.0+)?(?![\w.]|\.\d)")
_NUMBER = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)(?![\w]|\.\d)")


def parse_score(text: str | None) -> int | None:
    """The 1-5 score in a judge's answer ("4", "Score: 4", "4/5", "I'd say 4 out of 5."), else None.

    A labelled score wins; otherwise the first number, once mentions of the scale itself ("1-5", "/5") are
    removed; a first number outside 1-5 (or fractional) means the answer is not a score."""
    if not text:
        return None
    m = _LABELLED.search(text)
    if m:
        return int(m[1])
    nums = _NUMBER.findall(_SCALE.sub(" ", text))
    if not nums:
        return None
    v = float(nums[0])
    return int(v) if v.is_integer() and 1 <= v <= 5 else None


@dataclass
class JudgeResult:
    scores: dict[str, list[int | None]] = field(default_factory=dict)  # criterion -> score per reply
    skipped: int = 0  # judgements (reply x criterion) without a score
    requests: int = 0  # requests sent (0 when everything came from the cache)
    error: str | None = None  # set when nothing at all could be scored


class JudgeCache:
    """One small JSON file per score under ``root`` (two-level fan-out), written atomically."""

    def __init__(self, root: Path | None) -> None:
        self.root = Path(root) if root is not None else None

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> int | None:
        if self.root is None:
            return None
        try:
            score = json.loads(self._path(key).read_text())["score"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return score if isinstance(score, int) and 1 <= score <= 5 else None

    def put(self, key: str, score: int, meta: dict) -> None:
        if self.root is None:
            return
        from anima.atomic import atomic_write_text

        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"score": score, **meta}, sort_keys=True) + "\n")


def make_judge(opts: JudgeOptions):
    """The judge client (synth's OpenAI-compatible teacher); a missing endpoint or model is a one-line error."""
    from anima.synth.teachers import OpenAITeacher

    if not opts.base_url:
        raise ConfigError("eval.judge.base_url is not set: give the judge's OpenAI-compatible URL "
                          "(e.g. http://127.0.0.1:8000/v1) or set eval.judge.enabled=false")
    if not opts.model:
        raise ConfigError("eval.judge.model is not set: name the model the judge endpoint should use")
    return OpenAITeacher(opts.base_url, opts.model, api_key_env=opts.api_key_env, timeout=opts.timeout,
                         max_retries=opts.max_retries)


def _ask(judge, messages: list[dict], max_tokens: int) -> int | None:
    from anima.generation.sampling import SamplingParams
    from anima.synth.teachers import TeacherError

    try:
        answer = judge.reply(messages, SamplingParams(temperature=0.0, top_p=1.0, max_new_tokens=max_tokens, seed=0))
    except TeacherError as e:
        log.warning("judge request failed (counted as skipped): %s", e)
        return None
    score = parse_score(answer)
    if score is None:
        log.warning("judge answer has no 1-5 score (counted as skipped): %r", (answer or "")[:80])
    return score


def judge_replies(judge, examples: Sequence[dict], replies: Sequence[str], opts: JudgeOptions, model_id: str,
                  cache_root: Path | None) -> JudgeResult:
    """Score every reply on every rubric criterion, from the cache where possible. ``examples`` are the suite
    prompts ({prompt, reference, system}); ``model_id`` identifies the model version that wrote the replies."""
    from anima.fingerprint import hash_obj

    cache, rubric_fp, res = JudgeCache(cache_root if opts.cache else None), rubric_fingerprint(), JudgeResult()
    for crit, rubric in RUBRICS.items():
        col = res.scores.setdefault(crit, [])
        for ex, reply in zip(examples, replies):
            example = {"prompt": ex["prompt"], "reference": ex.get("reference") or "",
                       "system": ex.get("system") or "", "reply": reply}
            key = hash_obj([model_id, example, judge.name, rubric_fp, crit], length=40)
            score = cache.get(key)
            if score is None:
                text = TEMPLATE.format(persona=example["system"] or "(none given)", prompt=ex["prompt"],
                                       reference=example["reference"] or "(none)", reply=reply, rubric=rubric)
                res.requests += 1
                score = _ask(judge, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}],
                             opts.max_tokens)
                if score is not None:
                    cache.put(key, score, {"criterion": crit, "judge": judge.name, "rubric": rubric_fp,
                                           "model": model_id})
            res.skipped += score is None
            col.append(score)
    if replies and all(s is None for col in res.scores.values() for s in col):
        res.error = (f"judge {judge.name}: no reply could be scored ({res.skipped} judgements skipped: no 1-5 "
                     f"score in the answers or the requests failed); judge metrics left out")
        log.error(res.error)
    return res
