"""Ollama-style routes: ``POST /api/chat`` (ndjson stream by default, or one JSON), ``GET /api/tags``."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any

from fastapi import APIRouter, Request

from anima.serve.errors import APIError
from anima.serve.protocol import finish_reason, ollama_sampling, parse_messages, read_json_body, stream_flag
from anima.serve.runner import ServedModel
from anima.serve.streaming import StreamFormat, stream_response


def ndjson(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def iso_now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def ollama_routes(served: ServedModel) -> APIRouter:
    """The Ollama flavour's routes around ``served``."""
    router = APIRouter()
    name, engine = served.name, served.engine

    @router.get("/api/tags")
    async def tags() -> dict[str, Any]:
        return {"models": [{"name": name, "model": name, "modified_at": iso_now(),
                            "details": {"format": "safetensors"}}]}

    @router.post("/api/chat")
    async def ollama_chat(request: Request) -> Any:
        body = await read_json_body(request, served.limits)
        messages = parse_messages(body, served.limits)
        params = ollama_sampling(body, served.defaults, served.limits)
        stream = stream_flag(body, True)  # Ollama streams by default
        started = time.perf_counter_ns()

        def final(content: str, pt: Any, ct: Any, reason: Any) -> dict[str, Any]:
            return {"model": name, "created_at": iso_now(),
                    "message": {"role": "assistant", "content": content}, "done": True,
                    "done_reason": finish_reason(reason),
                    "total_duration": time.perf_counter_ns() - started,
                    "prompt_eval_count": int(pt or 0), "eval_count": int(ct or 0)}

        if not stream:
            comp = await served.generate(lambda: engine.chat(messages, params))
            return final(comp.text, comp.prompt_tokens, comp.completion_tokens, comp.finish_reason)

        def piece(text: str) -> bytes:
            return ndjson({"model": name, "created_at": iso_now(),
                           "message": {"role": "assistant", "content": text}, "done": False})

        def error(err: APIError) -> bytes:
            return ndjson({"error": err.message, "done": True})

        fmt = StreamFormat(piece=piece, done=lambda pt, ct, reason: [ndjson(final("", pt, ct, reason))], error=error)
        return await stream_response(served.runner, lambda: engine.stream_chat(messages, params), fmt,
                                     "application/x-ndjson")

    return router
