"""Which request fields the server acts on. Anything else is a 400 naming the field, never silently ignored: a
client that asks for tools, JSON output, n>1 or an echo of its prompt must learn that it did not get them.

Fields that only label a request for the caller's own bookkeeping (``user``, ``metadata``, ...) change nothing
in a reply and are accepted. Fields this server implements are parsed in protocol.py; here are the checks of
the fields it accepts only in their neutral form, and of the log-probability options.
"""

from __future__ import annotations

from typing import Any

from anima.generation.sampling import MAX_TOP_LOGPROBS
from anima.serve.errors import APIError

#: Accepted and without effect on a reply.
INERT = frozenset({"model", "user", "metadata", "safety_identifier", "prompt_cache_key", "service_tier",
                   "stream", "stream_options"})
SAMPLING = frozenset({"max_tokens", "temperature", "top_p", "seed", "stop", "presence_penalty", "frequency_penalty",
                      "top_k", "repetition_penalty", "n", "logit_bias"})
CHAT_FIELDS = INERT | SAMPLING | {"messages", "max_completion_tokens", "logprobs", "top_logprobs", "response_format",
                                  "tools", "tool_choice", "parallel_tool_calls", "modalities", "store"}
COMPLETION_FIELDS = INERT | SAMPLING | {"prompt", "logprobs", "best_of", "echo", "suffix"}
#: The most alternatives the legacy /v1/completions ``logprobs`` may ask for (OpenAI's limit).
MAX_COMPLETION_LOGPROBS = 5


def _refuse(param: str, what: str) -> APIError:
    return APIError(400, f"'{param}': {what} is not supported by this server", param=param,
                    code="unsupported_parameter")


def _neutral(body: dict[str, Any], key: str, ok: Any, what: str, prefix: str = "") -> None:
    """400 unless ``body[key]`` is absent or one of its neutral values (``ok`` is a predicate)."""
    value = body.get(key)
    if value is not None and not ok(value):
        raise _refuse(prefix + key, what)


def check_fields(body: dict[str, Any], known: frozenset[str]) -> None:
    """400 for the first field this endpoint does not know, or a known one asking for what is not implemented."""
    for key in body:
        if key not in known:
            raise _refuse(key, "this parameter")
    _neutral(body, "tools", lambda v: v == [], "tool calling")
    _neutral(body, "tool_choice", lambda v: v == "none", "tool calling")
    _neutral(body, "parallel_tool_calls", lambda v: isinstance(v, bool), "tool calling")
    _neutral(body, "response_format", lambda v: isinstance(v, dict) and v.get("type") == "text" and len(v) == 1,
             "a response_format other than {\"type\": \"text\"}")
    _neutral(body, "logit_bias", lambda v: v == {}, "logit_bias")
    _neutral(body, "modalities", lambda v: v == ["text"], "an output modality other than text")
    _neutral(body, "store", lambda v: v is False, "storing completions")
    _neutral(body, "best_of", lambda v: v == 1 and not isinstance(v, bool), "best_of other than 1")
    _neutral(body, "echo", lambda v: v is False, "echo")
    _neutral(body, "suffix", lambda v: v == "", "suffix (insertion)")
    opts = body.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise APIError(400, "'stream_options' must be an object", param="stream_options", code="invalid_value")


def _int_in(value: Any, param: str, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= hi:
        raise APIError(400, f"'{param}' must be an integer in 0..{hi}, got {value!r}", param=param,
                       code="invalid_value")
    return value


def chat_logprobs(body: dict[str, Any]) -> int | None:
    """Chat's ``logprobs`` (bool) and ``top_logprobs`` (0..20, needs logprobs) as SamplingParams.logprobs."""
    on = body.get("logprobs")
    if on is not None and not isinstance(on, bool):
        raise APIError(400, f"'logprobs' must be true or false, got {on!r}", param="logprobs", code="invalid_value")
    top = body.get("top_logprobs")
    if top is None:
        return 0 if on else None
    top = _int_in(top, "top_logprobs", MAX_TOP_LOGPROBS)
    if not on:
        raise APIError(400, "'top_logprobs' needs 'logprobs': true", param="top_logprobs", code="invalid_value")
    return top


def completion_logprobs(body: dict[str, Any]) -> int | None:
    """The legacy completions ``logprobs`` (0..5 alternatives per token; null = off)."""
    value = body.get("logprobs")
    return None if value is None else _int_in(value, "logprobs", MAX_COMPLETION_LOGPROBS)


def check_ollama_fields(body: dict[str, Any]) -> None:
    """Ollama's fields asking for what this server does not do (unknown fields are ignored, as Ollama does)."""
    _neutral(body, "tools", lambda v: v == [], "tool calling")
    _neutral(body, "format", lambda v: v == "", "a response format (JSON mode, schemas)")
    _neutral(body, "images", lambda v: v == [], "images")
    _neutral(body, "think", lambda v: v is False, "thinking")
    _neutral(body, "suffix", lambda v: v == "", "suffix (insertion)")
    _neutral(body, "template", lambda v: v == "", "a template override")
    messages = body.get("messages")
    for i, m in enumerate(messages if isinstance(messages, list) else []):
        if isinstance(m, dict):
            _neutral(m, "images", lambda v: v == [], "images", f"messages[{i}].")
            _neutral(m, "tool_calls", lambda v: v == [], "tool calling", f"messages[{i}].")
