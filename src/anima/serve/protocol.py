"""Request parsing: JSON bodies, messages, prompts and sampling fields of both API flavours, checked by hand.

Bodies are parsed by hand (not by pydantic models) so every bad request, oversized body or malformed JSON gets
the same OpenAI-style error object with a 4xx status, naming the field at fault, and the server keeps running.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from fastapi import Request

from anima.generation.sampling import SamplingParams
from anima.serve.errors import APIError
from anima.serve.limits import ServeLimits

ROLES = ("system", "user", "assistant")


async def read_json_body(request: Request, limits: ServeLimits) -> dict[str, Any]:
    """The request's JSON object, refusing oversized bodies without reading them whole."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            n = int(declared)
        except ValueError:
            raise APIError(400, "invalid Content-Length header", code="invalid_request") from None
        if n > limits.max_body_bytes:
            raise APIError(413, f"request body is {n} bytes; the limit is {limits.max_body_bytes}",
                           code="request_too_large")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limits.max_body_bytes:
            raise APIError(413, f"request body exceeds the limit of {limits.max_body_bytes} bytes",
                           code="request_too_large")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise APIError(400, "request body is empty; expected a JSON object", code="invalid_json")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise APIError(400, f"request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, f"request body must be a JSON object, got {type(body).__name__}", code="invalid_json")
    return body


def _number(body: dict[str, Any], key: str, default: Any, *, lo: float | None = None, hi: float | None = None,
            integer: bool = False, lo_open: bool = False, param: str | None = None) -> Any:
    value = body.get(key)
    if value is None:
        return default
    name = param or key
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        kind = "an integer" if integer else "a number"
        raise APIError(400, f"'{name}' must be {kind}, got {value!r}", param=name, code="invalid_value")
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise APIError(400, f"'{name}'={value} is below the minimum ({'>' if lo_open else '>='} {lo})",
                       param=name, code="invalid_value")
    if hi is not None and value > hi:
        raise APIError(400, f"'{name}'={value} is above the maximum ({hi})", param=name, code="invalid_value")
    return value


def _max_tokens(value: Any, default: int, limits: ServeLimits, param: str) -> int:
    if value is None:
        return min(default, limits.max_tokens)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise APIError(400, f"'{param}' must be a positive integer, got {value!r}", param=param, code="invalid_value")
    if value > limits.max_tokens:
        raise APIError(400, f"'{param}'={value} exceeds this server's limit of {limits.max_tokens}",
                       param=param, code="max_tokens_exceeded")
    return value


def _stop(value: Any, limits: ServeLimits, param: str = "stop") -> list[str] | None:
    if value is None:
        return None
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise APIError(400, f"'{param}' must be a string or a list of strings", param=param, code="invalid_value")
    if len(stops) > limits.max_stop:
        raise APIError(400, f"'{param}' has {len(stops)} sequences; at most {limits.max_stop} are allowed",
                       param=param, code="invalid_value")
    return [s for s in stops if s]


def _penalties(body: dict[str, Any], defaults: SamplingParams, prefix: str = "") -> dict[str, float]:
    """OpenAI's presence_penalty and frequency_penalty, each in [-2, 2]."""
    return {key: float(_number(body, key, getattr(defaults, key), lo=-2, hi=2, param=prefix + key))
            for key in ("presence_penalty", "frequency_penalty")}


def openai_sampling(body: dict[str, Any], defaults: SamplingParams, limits: ServeLimits) -> SamplingParams:
    """SamplingParams from OpenAI fields (plus the common extras top_k and repetition_penalty); log-probabilities
    are the caller's to set (chat and legacy completions ask for them differently)."""
    n = body.get("n")
    if n is not None and n != 1:
        raise APIError(400, "only n=1 is supported", param="n", code="invalid_value")
    mt_key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    stop = _stop(body.get("stop"), limits)
    params = replace(
        defaults,
        temperature=float(_number(body, "temperature", defaults.temperature, lo=0, hi=2)),
        top_p=float(_number(body, "top_p", defaults.top_p, lo=0, hi=1, lo_open=True)),
        top_k=int(_number(body, "top_k", defaults.top_k, lo=0, integer=True)),
        repetition_penalty=float(_number(body, "repetition_penalty", defaults.repetition_penalty, lo=0, hi=10,
                                         lo_open=True)),
        max_new_tokens=_max_tokens(body.get(mt_key), defaults.max_new_tokens, limits, mt_key),
        seed=_number(body, "seed", defaults.seed, integer=True, lo=-(2**63), hi=2**64 - 1),
        stop=list(defaults.stop) if stop is None else stop,
        **_penalties(body, defaults),
    )
    return params


def ollama_sampling(body: dict[str, Any], defaults: SamplingParams, limits: ServeLimits) -> SamplingParams:
    opts = body.get("options") or {}
    if not isinstance(opts, dict):
        raise APIError(400, "'options' must be an object", param="options", code="invalid_value")
    stop = _stop(opts.get("stop"), limits, "options.stop")
    num_predict = opts.get("num_predict")
    if num_predict is not None and isinstance(num_predict, int) and num_predict < 0:
        num_predict = None  # Ollama's -1 = "until done": the server limit applies
    return replace(
        defaults,
        temperature=float(_number(opts, "temperature", defaults.temperature, lo=0, hi=2, param="options.temperature")),
        top_p=float(_number(opts, "top_p", defaults.top_p, lo=0, hi=1, lo_open=True, param="options.top_p")),
        top_k=int(_number(opts, "top_k", defaults.top_k, lo=0, integer=True, param="options.top_k")),
        repetition_penalty=float(_number(opts, "repeat_penalty", defaults.repetition_penalty, lo=0, hi=10,
                                         lo_open=True, param="options.repeat_penalty")),
        max_new_tokens=_max_tokens(num_predict, defaults.max_new_tokens, limits, "options.num_predict"),
        seed=_number(opts, "seed", defaults.seed, integer=True, lo=-(2**63), hi=2**64 - 1, param="options.seed"),
        stop=list(defaults.stop) if stop is None else stop,
        **_penalties(opts, defaults, "options."),
    )


def _content_text(content: Any, i: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: only text parts are understood
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise APIError(400, f"messages[{i}].content: only text content parts are supported",
                               param=f"messages[{i}].content", code="invalid_value")
            parts.append(part["text"])
        return "".join(parts)
    raise APIError(400, f"messages[{i}].content must be a string", param=f"messages[{i}].content",
                   code="invalid_value")


def parse_messages(body: dict[str, Any], limits: ServeLimits) -> list[dict[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty list", param="messages", code="invalid_value")
    if len(messages) > limits.max_messages:
        raise APIError(400, f"'messages' has {len(messages)} entries; this server allows at most "
                            f"{limits.max_messages}", param="messages", code="too_many_messages")
    out = []
    chars = 0
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise APIError(400, f"messages[{i}] must be an object", param=f"messages[{i}]", code="invalid_value")
        role = m.get("role")
        if role == "developer":  # newer OpenAI clients send system prompts as "developer"
            role = "system"
        if role not in ROLES:
            raise APIError(400, f"messages[{i}].role={role!r} is not one of {list(ROLES)}",
                           param=f"messages[{i}].role", code="invalid_value")
        text = _content_text(m.get("content"), i)
        chars += len(text)
        out.append({"role": role, "content": text})
    if chars > limits.max_prompt_chars:
        raise APIError(400, f"messages total {chars} characters; the limit is {limits.max_prompt_chars}",
                       param="messages", code="context_length_exceeded")
    if out[-1]["role"] == "assistant":
        raise APIError(400, "the last message must be from the user or system, not the assistant",
                       param="messages", code="invalid_value")
    return out


def parse_prompt(body: dict[str, Any], limits: ServeLimits) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise APIError(400, "'prompt' must be a non-empty string", param="prompt", code="invalid_value")
    if len(prompt) > limits.max_prompt_chars:
        raise APIError(400, f"'prompt' has {len(prompt)} characters; the limit is {limits.max_prompt_chars}",
                       param="prompt", code="context_length_exceeded")
    return prompt


def stream_flag(body: dict[str, Any], default: bool) -> bool:
    value = body.get("stream", default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise APIError(400, "'stream' must be true or false", param="stream", code="invalid_value")
    return value


def finish_reason(reason: Any) -> str:
    return "length" if reason == "length" else "stop"


def usage(prompt_tokens: Any, completion_tokens: Any) -> dict[str, int]:
    p, c = int(prompt_tokens or 0), int(completion_tokens or 0)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
