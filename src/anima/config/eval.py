"""Schema of `anima eval` (conf/eval.yaml) and the `eval` group that merge and promote share: which data the
perplexities are measured on, and the eval suite (prompts with references + persona keywords, conf/eval/)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from anima.config.chat import BACKENDS, RegistryRef
from anima.config.data import DataConfig
from anima.config.fields import setting
from anima.config.groups import SamplingConfig
from anima.config.stage_schemas import StageConfig, register_schema

EVAL_SETS = ["val", "persona", "test", "train"]


@dataclass
class SuitePrompt:
    prompt: str = setting("", "The user message sent to the model.")
    reference: str = setting("", "A good reply, for ROUGE-L and chrF.")
    system: Optional[str] = setting(None, "Optional system message for this prompt.")


@dataclass
class JudgeOptions:
    enabled: bool = setting(False, "Score every suite reply 1-5 for persona consistency and helpfulness with an "
                                   "LLM judge (off by default: it needs an endpoint, and eval stays offline).")
    base_url: Optional[str] = setting(None, "OpenAI-compatible endpoint of the judge, e.g. http://127.0.0.1:8000/v1 "
                                            "(`anima serve` of a bigger model) or an API's URL.")
    model: Optional[str] = setting(None, "Model name the judge endpoint should use.")
    api_key_env: Optional[str] = setting("OPENAI_API_KEY", "Environment variable that holds the judge's API key "
                                                           "(only its name is recorded; null: send none).")
    timeout: float = setting(60.0, "Seconds per judge request.", gt=0)
    max_retries: int = setting(2, "Retries per judge request on transient HTTP errors.", ge=0)
    max_tokens: int = setting(16, "Tokens the judge may answer with (a score needs a few).", ge=1)
    cache: bool = setting(True, "Reuse scores cached under paths.cache_dir/judge, keyed by model version, example "
                                "and reply, judge model+URL and rubric fingerprint (a re-run sends no request).")


@dataclass
class EvalOptions:
    data: Optional[str] = setting(None, "Eval dataset: a built dataset name, name/fingerprint, or a models:/ URI (the "
                                        "data that model was trained on). null: the `data` config's dataset.")
    sets: List[str] = setting(doc="Perplexity sets: val (the val split), persona (the held-out persona split), "
                                  "test, train.", factory=lambda: ["val", "persona"])
    max_examples: int = setting(200, "Examples scored per set, spread evenly over the split (0 = all).", ge=0)
    max_tokens: int = setting(32768, "kind=text sets: tokens scored per set (0 = all).", ge=0)
    batch_size: int = setting(8, "Sequences per forward pass when scoring perplexity.", ge=1)
    cache: bool = setting(True, "Reuse/store perplexities as registry version tags ppl.<eval data fingerprint>.")
    suite: str = setting("none", "Name of the eval suite (the preset in conf/eval/).")
    prompts: List[SuitePrompt] = setting(doc="Eval suite: prompts with reference replies.", factory=list)
    persona_keywords: List[str] = setting(doc="Words/phrases that show the persona (persona-keyword rate).",
                                          factory=list)
    system_prompt: Optional[str] = setting(None, "System message before every suite prompt (unless it has its own).")
    confidence: float = setting(0.95, "Level of the bootstrap interval logged with every metric (and of the paired "
                                      "difference under compare=...).", gt=0, lt=1)
    resamples: int = setting(1000, "Bootstrap resamples of the examples (seeded by `seed`).", ge=1)
    backend: str = setting("fast", "Decode backend for the suite replies: fast by default, so they do not depend "
                                   "on whether a compiled step happens to be cached.",
                           choices=BACKENDS)
    judge: JudgeOptions = field(default_factory=JudgeOptions)


@dataclass
class EvalStageConfig(StageConfig):
    model: str = setting("models:/${registry.name}@candidate",
                         "Model to evaluate: models:/name@alias, models:/name/N, runs:/<id>/model or a local dir.")
    compare: Optional[str] = setting(None, "Also evaluate this one and print both side by side: an alias of the "
                                           "same registered model (champion) or any model URI.")
    compare_missing: str = setting("error", "When `compare` names an alias nobody holds yet (a fresh registry): "
                                            "error, or skip the comparison with a note (pipelines' first run).",
                                   choices=["error", "skip"])
    registry: RegistryRef = field(default_factory=RegistryRef)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalOptions = field(default_factory=EvalOptions)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    tag_version: bool = setting(True, "Write the results as eval.* tags on the evaluated registry version(s).")


register_schema("eval", EvalStageConfig)
