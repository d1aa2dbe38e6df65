"""Schema of `anima serve` (conf/serve.yaml): model, bind address, API key variable, request limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from anima.config.chat import BACKEND_HELP, BACKENDS, COMPILE_HELP, ModelSamplingStageConfig
from anima.config.fields import setting
from anima.config.stage_schemas import register_schema


@dataclass
class ServeLimitsConfig:
    """The server's per-request limits, stated once: `anima.serve.limits.ServeLimits` takes its defaults here."""

    max_body_bytes: int = setting(1_000_000, "Largest request body in bytes (413 above it).", ge=1024)
    max_messages: int = setting(64, "Most messages in one chat request (400 above it).", ge=1)
    max_tokens: int = setting(512, "Largest max_tokens a request may ask for (400 above it).", ge=1)
    max_prompt_chars: int = setting(32_000, "Most characters over all messages of one request.", ge=1)
    max_stop: int = setting(4, "Most stop sequences per request.", ge=0)
    max_batch: int = setting(16, "Requests decoded together (one forward per step over all of them; each holds a "
                                 "KV-cache slot of the model's full context).", ge=1)
    max_queue: int = setting(64, "Requests that may wait for a decode slot; beyond them the server answers 503 "
                                 "with Retry-After.", ge=0)
    request_timeout_s: float = setting(300.0, "Longest time one request may take, waiting included (0 = no limit); "
                                              "a reply still running then ends with finish_reason 'length', one "
                                              "still waiting gets 503.", ge=0)


@dataclass
class ServeOptions:
    host: str = setting("127.0.0.1", "Address to bind; anything but loopback should come with an API key.")
    port: int = setting(8000, "TCP port (0 = any free port).", ge=0, le=65535)
    api_key_env: Optional[str] = setting(None, "Name of the environment variable holding the API key "
                                               "(the key itself is never in the config or the logs).")
    model_name: Optional[str] = setting(None, "Model id reported by /v1/models (default: the registry name).")
    backend: str = setting("auto", BACKEND_HELP, choices=BACKENDS)
    compile: bool = setting(True, COMPILE_HELP)
    log_level: str = setting("info", "uvicorn log level.", choices=["critical", "error", "warning", "info", "debug"])
    workers: int = setting(8, "Threads that wait on whole (non-streamed) replies; at least "
                              "limits.max_batch + limits.max_queue are used.", ge=1)
    feedback: Optional[str] = setting("${paths.data_dir}/feedback.jsonl",
                                      "Feedback file written by the chat page at /chat and POST /v1/feedback (the "
                                      "same file and format as `anima chat`; `anima retrain` reads it); null = "
                                      "the server stores no feedback.")
    limits: ServeLimitsConfig = field(default_factory=ServeLimitsConfig)


@dataclass
class ServeStageConfig(ModelSamplingStageConfig):
    serve: ServeOptions = field(default_factory=ServeOptions)


register_schema("serve", ServeStageConfig)
