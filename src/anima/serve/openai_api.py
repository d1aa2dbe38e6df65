"""OpenAI-compatible routes: ``POST /v1/chat/completions``, ``POST /v1/completions`` (SSE stream or one JSON),
``GET /v1/models``."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request

from anima.generation.sampling import SamplingParams
from anima.serve.errors import APIError, error_body
from anima.serve.limits import ServeLimits
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
from anima.serve.streaming import StreamFormat, stream_response

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


async def parse_request(request: Request, served: ServedModel, parse_input: Callable[[dict, ServeLimits], Any]
                        ) -> tuple[dict[str, Any], Any, SamplingParams, bool]:
    """(body, its messages or prompt, sampling, stream?), each checked in this order."""
    body = await read_json_body(request, served.limits)
    parsed = parse_input(body, served.limits)
    params = openai_sampling(body, served.defaults, served.limits)
    return body, parsed, params, stream_flag(body, False)


def openai_routes(served: ServedModel) -> APIRouter:
    """The OpenAI flavour's routes around ``served``."""
    router = APIRouter()
    name, engine = served.name, served.engine

    @router.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": served.created,
                                            "owned_by": "anima"}]}

    @router.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        body, messages, params, stream = await parse_request(request, served, parse_messages)
        env = Envelope.new("chatcmpl", name)
        if not stream:
            comp = await served.generate(lambda: engine.chat(messages, params))
            return env.wrap("chat.completion", [{"index": 0, "message": {"role": "assistant", "content": comp.text},
                                                 "logprobs": None, "finish_reason": finish_reason(comp.finish_reason)}],
                            usage=usage(comp.prompt_tokens, comp.completion_tokens))
        opts = body.get("stream_options") or {}
        include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))

        def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
            return sse(env.wrap("chat.completion.chunk",
                                [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]))

        def done(pt: Any, ct: Any, reason: Any) -> list[bytes]:
            out = [chunk({}, finish_reason(reason))]
            if include_usage:
                out.append(sse(env.wrap("chat.completion.chunk", [], usage=usage(pt, ct))))
            return out

        fmt = StreamFormat(piece=lambda text: chunk({"content": text}, None), done=done, error=sse_error,
                           head=(chunk({"role": "assistant", "content": ""}, None),), tail=(DONE,))
        return await stream_response(served.runner, lambda: engine.stream_chat(messages, params), fmt,
                                     "text/event-stream", {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @router.post("/v1/completions")
    async def completions(request: Request) -> Any:
        _, prompt, params, stream = await parse_request(request, served, parse_prompt)
        env = Envelope.new("cmpl", name)

        def choice(text: str, finish: str | None) -> list[dict[str, Any]]:
            return [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]

        if not stream:
            comp = await served.generate(lambda: engine.complete(prompt, params))
            return env.wrap("text_completion", choice(comp.text, finish_reason(comp.finish_reason)),
                            usage=usage(comp.prompt_tokens, comp.completion_tokens))

        def chunk(text: str, finish: str | None) -> bytes:
            return sse(env.wrap("text_completion", choice(text, finish)))

        fmt = StreamFormat(piece=lambda text: chunk(text, None),
                           done=lambda pt, ct, reason: [chunk("", finish_reason(reason))],
                           error=sse_error, tail=(DONE,))
        return await stream_response(served.runner, lambda: engine.stream_completion(prompt, params), fmt,
                                     "text/event-stream", {"Cache-Control": "no-cache"})

    return router
