"""Ollama-style routes, with the field names of Ollama's API documentation (docs/api.md):
``POST /api/chat`` and ``POST /api/generate`` (ndjson stream by default, or one JSON with ``"stream": false``),
``GET /api/tags``, ``POST /api/show``, ``GET /api/ps``, ``GET /api/version``.

Durations are nanoseconds: ``load_duration`` is the wait for the (always loaded) model, i.e. the queue;
``prompt_eval_duration`` the prefill; ``eval_duration`` the decode. Fields asking for what this server does not
do (tools, format, images, ...) are a 400; errors are Ollama's ``{"error": "..."}`` (see app.py).
"""

from __future__ import annotations

import asyncio
import json
import time
from importlib import metadata
from typing import Any, Callable

from fastapi import APIRouter, Request

from anima.generation.results import collect
from anima.serve.errors import APIError
from anima.serve.models import iso_time, ollama_name
from anima.serve.params import check_ollama_fields
from anima.serve.protocol import finish_reason, ollama_sampling, parse_messages, read_json_body, stream_flag
from anima.serve.runner import ServedModel
from anima.serve.streaming import Finished, StreamFormat, stream_response

NEVER = "9999-12-31T23:59:59Z"  # /api/ps expires_at: the served model stays loaded


def ndjson(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def anima_version() -> str:
    try:
        return metadata.version("anima")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def stats(result: Any, started_ns: int) -> dict[str, int]:
    """The final object's counts and durations (ns) from a Completion or the engine's stream."""
    t = getattr(result, "timings", None)
    began = getattr(t, "started_ns", 0) or 0
    prefilled = getattr(t, "prefilled_ns", 0) or began
    ended = getattr(t, "finished_ns", 0) or prefilled
    return {"total_duration": time.perf_counter_ns() - started_ns,
            "load_duration": max(0, began - started_ns) if began else 0,
            "prompt_eval_count": int(getattr(result, "prompt_tokens", 0) or 0),
            "prompt_eval_duration": max(0, prefilled - began),
            "eval_count": int(getattr(result, "completion_tokens", 0) or 0),
            "eval_duration": max(0, ended - prefilled)}


def _context(body: dict[str, Any], vocab_size: int) -> list[int]:
    value = body.get("context")
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocab_size
                                              for i in value):
        raise APIError(400, f"'context' must be a list of token ids in 0..{vocab_size - 1}", param="context",
                       code="invalid_value")
    return value


def _text_field(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise APIError(400, f"'{key}' must be a string", param=key, code="invalid_value")
    return value


class _Generate:
    """One /api/generate request, parsed: how to start its stream on the engine."""

    def __init__(self, body: dict[str, Any], served: ServedModel) -> None:
        self.engine = served.engine
        self.prompt = _text_field(body, "prompt")
        self.system = _text_field(body, "system")
        raw = body.get("raw", False)
        if not isinstance(raw, bool):
            raise APIError(400, "'raw' must be true or false", param="raw", code="invalid_value")
        self.raw = raw
        if len(self.prompt) + len(self.system) > served.limits.max_prompt_chars:
            raise APIError(400, f"'prompt' has {len(self.prompt) + len(self.system)} characters (with 'system'); "
                                f"the limit is {served.limits.max_prompt_chars}", param="prompt",
                           code="context_length_exceeded")
        self.context = _context(body, int(getattr(self.engine, "vocab_size", 0) or 2**31))
        self.params = ollama_sampling(body, served.defaults, served.limits)

    def start(self) -> Any:
        """The engine's stream (in the worker: tokenizing may fail, as a 400)."""
        engine = self.engine
        if self.raw:
            ids = engine.completion_prompt_ids(self.prompt)
        else:
            messages = ([{"role": "system", "content": self.system}] if self.system else [])
            ids = engine.chat_prompt_ids(messages + [{"role": "user", "content": self.prompt}],
                                         self.params.max_new_tokens)
        bos = getattr(getattr(engine, "tokenizer", None), "bos_token_id", None)
        if self.context and ids and ids[0] == bos:
            ids = ids[1:]
        return engine.stream_ids(self.context + list(ids), self.params, continuation=self.raw)


def ollama_routes(served: ServedModel) -> APIRouter:
    """The Ollama flavour's routes around ``served``."""
    router = APIRouter()
    engine, card = served.engine, served.card

    @router.get("/api/version")
    async def version() -> dict[str, Any]:
        return {"version": anima_version()}

    @router.get("/api/tags")
    async def tags() -> dict[str, Any]:
        return {"models": [await asyncio.to_thread(card.tag)]}  # the first call hashes the model's files

    @router.get("/api/ps")
    async def ps() -> dict[str, Any]:
        tag = await asyncio.to_thread(card.tag)
        return {"models": [{key: tag[key] for key in ("name", "model", "size", "digest", "details")}
                           | {"expires_at": NEVER, "size_vram": 0,
                              "context_length": int(getattr(engine, "context_length", 0))}]}

    @router.post("/api/show")
    async def show(request: Request) -> dict[str, Any]:
        body = await read_json_body(request, served.limits)
        requested = body.get("model") or body.get("name")  # "name": older clients
        if not requested:
            raise APIError(400, "'model' is required", param="model", code="invalid_value")
        served.check_model({"model": requested})
        return await asyncio.to_thread(card.show)

    @router.post("/api/chat")
    async def ollama_chat(request: Request) -> Any:
        started, body, model = await _read_request(request, served)
        messages = parse_messages(body, served.limits)
        params = ollama_sampling(body, served.defaults, served.limits)

        def reply(content: str, done: bool) -> dict[str, Any]:
            return {"model": model, "created_at": iso_time(), "message": {"role": "assistant", "content": content},
                    "done": done}

        def final(content: str, result: Any) -> dict[str, Any]:
            return {**reply(content, True), "done_reason": finish_reason(result.finish_reason),
                    **stats(result, started)}

        if not stream_flag(body, True):  # Ollama streams by default
            comp = await served.generate(lambda: engine.chat(messages, params))
            return final(comp.text, comp)
        return await _ndjson_stream(served, lambda: engine.stream_chat(messages, params),
                                    lambda text: reply(text, False), lambda end: final("", end))

    @router.post("/api/generate")
    async def generate(request: Request) -> Any:
        started, body, model = await _read_request(request, served)
        job = _Generate(body, served)
        stream = stream_flag(body, True)

        def reply(text: str, done: bool) -> dict[str, Any]:
            return {"model": model, "created_at": iso_time(), "response": text, "done": done}

        if not job.prompt:  # Ollama's "load a model" (or unload, with keep_alive 0): it is always loaded here
            return {**reply("", True), "done_reason": "unload" if body.get("keep_alive") in (0, "0") else "load"}

        def final(text: str, result: Any) -> dict[str, Any]:
            context = list(getattr(result, "prompt_ids", [])) + list(getattr(result, "token_ids", []))
            return {**reply(text, True), "done_reason": finish_reason(result.finish_reason), "context": context,
                    **stats(result, started)}

        if not stream:
            comp = await served.generate(lambda: collect(job.start()))
            return final(comp.text, comp)
        return await _ndjson_stream(served, job.start, lambda text: reply(text, False), lambda end: final("", end))

    return router


async def _read_request(request: Request, served: ServedModel) -> tuple[int, dict[str, Any], str]:
    """(arrival time in ns, body, the model name to echo) of a generation request, its fields and model checked."""
    started = time.perf_counter_ns()
    body = await read_json_body(request, served.limits)
    check_ollama_fields(body)
    served.check_model(body)
    return started, body, body.get("model") or ollama_name(served.name)


async def _ndjson_stream(served: ServedModel, make_iter: Callable[[], Any], piece: Callable[[str], dict],
                         final: Callable[[Any], dict]) -> Any:
    """An Ollama ndjson stream: one object per piece, then the final one (errors in-band as ``{"error"}``)."""

    def error(err: APIError) -> bytes:
        return ndjson({"error": err.message, "done": True})

    def done(end: Finished) -> list[bytes]:  # the engine's stream carries the timings
        return [ndjson(final(end.stream if end.stream is not None else end))]

    fmt = StreamFormat(piece=lambda text, _: ndjson(piece(text)), done=done, error=error)
    return await stream_response(served.runner, make_iter, fmt, "application/x-ndjson")
