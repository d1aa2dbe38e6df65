"""OpenAI-compatible routes: ``POST /v1/chat/completions``, ``POST /v1/completions`` (SSE stream or one JSON),
``GET /v1/models``, ``GET /v1/models/{id}``.

A request naming another model is a 404; a field this server does not act on is a 400 naming it (params.py).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from fastapi import APIRouter, Request

from anima.generation.sampling import SamplingParams
from anima.serve.errors import APIError, error_body
from anima.serve.limits import ServeLimits
from anima.serve.logprobs import CompletionLogprobs, chat_logprobs
from anima.serve.params import CHAT_FIELDS, COMPLETION_FIELDS, check_fields, completion_logprobs
from anima.serve.params import chat_logprobs as parse_chat_logprobs
from anima.serve.protocol import (
    finish_reason,
    openai_sampling,
    parse_messages,
    parse_prompt,
    read_json_body,
    stream_flag,
    usage,
)
from anima.serve.runner import ServedModel
from anima.serve.streaming import Finished, StreamFormat, stream_response

DONE = b"data: [DONE]\n\n"


def sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n\n"


def sse_error(err: APIError) -> bytes:
    return sse(error_body(err.message, err.type, err.param, err.code))


@dataclass(frozen=True)
class Envelope:
    """The fields every response object of one request repeats: its id, creation time and model."""

    id: str
    created: int
    model: str

    @classmethod
    def new(cls, prefix: str, model: str) -> "Envelope":
        return cls(f"{prefix}-{uuid.uuid4().hex[:24]}", int(time.time()), model)

    def wrap(self, object: str, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {"id": self.id, "object": object, "created": self.created, "model": self.model, "choices": choices,
                **extra}


async def parse_request(request: Request, served: ServedModel, parse_input: Callable[[dict, ServeLimits], Any],
                        fields: frozenset[str], logprobs: Callable[[dict[str, Any]], int | None]
                        ) -> tuple[dict[str, Any], Any, SamplingParams, bool]:
    """(body, its messages or prompt, sampling, stream?), each checked in this order: fields the endpoint does
    not act on (400), the model (404), the input, sampling and log-probabilities."""
    body = await read_json_body(request, served.limits)
    check_fields(body, fields)
    served.check_model(body)
    parsed = parse_input(body, served.limits)
    params = replace(openai_sampling(body, served.defaults, served.limits), logprobs=logprobs(body))
    return body, parsed, params, stream_flag(body, False)


def openai_routes(served: ServedModel) -> APIRouter:
    """The OpenAI flavour's routes around ``served``."""
    router = APIRouter()
    name, engine = served.name, served.engine

    model_object = {"id": name, "object": "model", "created": served.created, "owned_by": "anima"}

    @router.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_object]}

    @router.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        served.check_model({"model": model_id})
        return model_object

    @router.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        body, messages, params, stream = await parse_request(request, served, parse_messages, CHAT_FIELDS,
                                                             parse_chat_logprobs)
        env = Envelope.new("chatcmpl", name)
        if not stream:
            comp = await served.generate(lambda: engine.chat(messages, params))
            return env.wrap("chat.completion", [{"index": 0, "message": {"role": "assistant", "content": comp.text},
                                                 "logprobs": chat_logprobs(comp.logprobs),
                                                 "finish_reason": finish_reason(comp.finish_reason)}],
                            usage=usage(comp.prompt_tokens, comp.completion_tokens))
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        want_logprobs = params.logprobs is not None

        def chunk(delta: dict[str, Any], finish: str | None, logprobs: list[Any] | None = None) -> bytes:
            return sse(env.wrap("chat.completion.chunk", [{"index": 0, "delta": delta, "finish_reason": finish,
                                                           "logprobs": chat_logprobs(logprobs)}]))

        def done(end: Finished) -> list[bytes]:
            out = [chunk({}, finish_reason(end.finish_reason))]
            if include_usage:
                out.append(sse(env.wrap("chat.completion.chunk", [],
                                        usage=usage(end.prompt_tokens, end.completion_tokens))))
            return out

        fmt = StreamFormat(piece=lambda text, lp: chunk({"content": text}, None, lp if want_logprobs else None),
                           done=done, error=sse_error, head=(chunk({"role": "assistant", "content": ""}, None),),
                           tail=(DONE,))
        return await stream_response(served.runner, lambda: engine.stream_chat(messages, params), fmt,
                                     "text/event-stream", {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @router.post("/v1/completions")
    async def completions(request: Request) -> Any:
        _, prompt, params, stream = await parse_request(request, served, parse_prompt, COMPLETION_FIELDS,
                                                        completion_logprobs)
        env = Envelope.new("cmpl", name)
        logprobs = CompletionLogprobs(offset=len(prompt))
        want_logprobs = params.logprobs is not None

        def choice(text: str, finish: str | None, entries: list[Any] | None = None) -> list[dict[str, Any]]:
            return [{"index": 0, "text": text, "logprobs": logprobs(entries), "finish_reason": finish}]

        if not stream:
            comp = await served.generate(lambda: engine.complete(prompt, params))
            return env.wrap("text_completion", choice(comp.text, finish_reason(comp.finish_reason), comp.logprobs),
                            usage=usage(comp.prompt_tokens, comp.completion_tokens))

        def chunk(text: str, finish: str | None, entries: list[Any] | None = None) -> bytes:
            return sse(env.wrap("text_completion", choice(text, finish, entries)))

        fmt = StreamFormat(piece=lambda text, lp: chunk(text, None, lp if want_logprobs else None),
                           done=lambda end: [chunk("", finish_reason(end.finish_reason))],
                           error=sse_error, tail=(DONE,))
        return await stream_response(served.runner, lambda: engine.stream_completion(prompt, params), fmt,
                                     "text/event-stream", {"Cache-Control": "no-cache"})

    return router
