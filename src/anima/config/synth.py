"""Schema of `anima synth` (conf/synth.yaml): the teacher (OpenAI-compatible endpoint or a local model),
the prompt set, and where the synthesized chat dataset goes.

`teacher` is a plain key here, not a config group: `anima distill teacher=models:/...` needs `teacher=` to stay
a value, so there is no conf/teacher/ directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from anima.config.chat import BACKENDS
from anima.config.fields import setting
from anima.config.groups import SamplingConfig
from anima.config.stage_schemas import StageConfig, register_schema


@dataclass
class TeacherConfig:
    kind: str = setting("openai", "openai: any OpenAI-compatible endpoint; hf: a local model (teacher.path).",
                        choices=["openai", "hf"])
    base_url: str = setting("http://127.0.0.1:8000/v1", "kind=openai: the endpoint's base URL (usually ends in /v1).")
    model: str = setting("anima-tiny", "kind=openai: the model name sent with each request.")
    api_key_env: Optional[str] = setting("OPENAI_API_KEY", "kind=openai: environment variable holding the API key "
                                                           "(never logged); unset = no key.")
    timeout: float = setting(120.0, "kind=openai: seconds per request.", gt=0)
    max_retries: int = setting(2, "kind=openai: client retries per request on connection errors / 5xx.", ge=0)
    path: Optional[str] = setting(None, "kind=hf: model URI (models:/name@alias, models:/name/N, runs:/..., dir).")
    backend: str = setting("auto", "kind=hf: decode backend.", choices=BACKENDS)


@dataclass
class SynthOptions:
    prompts: Optional[str] = setting(None, "Prompt file: .txt (one per line), .jsonl or .json (strings, "
                                           "{prompt}, or {messages}). Required.")
    name: str = setting("synth", "Dataset name; also the output file's stem.")
    out: str = setting("${paths.data_dir}/synth/${synth.name}.jsonl", "Output JSONL (data source kind=synth).")
    system_prompt: Optional[str] = setting(None, "System message prepended to every prompt.")
    max_prompts: int = setting(0, "Use only the first N prompts (0 = all).", ge=0)
    min_success: float = setting(0.5, "Fail the run when fewer than this fraction of prompts got a reply.",
                                 ge=0, le=1)


@dataclass
class SynthStageConfig(StageConfig):
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    synth: SynthOptions = field(default_factory=SynthOptions)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)


register_schema("synth", SynthStageConfig)
