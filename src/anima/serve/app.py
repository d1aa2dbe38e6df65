"""OpenAI-compatible and Ollama-style HTTP API around one ChatEngine.

Endpoints: ``POST /v1/chat/completions`` (SSE stream or one JSON), ``POST /v1/completions``, ``GET /v1/models``,
``POST /api/chat`` (Ollama ndjson stream), ``GET /api/tags``, ``GET /health``.

Why it is built this way:
- One model, one lock: a decode is a sequence of small CPU ops on shared weights and a shared KV cache, so
  requests are serialized on a lock, and every decode runs in a thread pool so the event loop keeps
  accepting, validating and rejecting requests while a reply is being generated.
- Bodies are parsed by hand (not by pydantic models) so every bad request, oversized body or malformed JSON
  gets the same OpenAI-style error object ``{"error": {"message", "type", "param", "code"}}`` with a 4xx
  status, and the server keeps running.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from anima.errors import AnimaError
from anima.generation.sampling import SamplingParams

log = logging.getLogger("anima.serve")

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class ServeLimits:
    """Per-request limits; anything above them is answered 4xx before any decoding starts."""

    max_body_bytes: int = 1_000_000
    max_messages: int = 64
    max_tokens: int = 512  # upper bound for max_tokens / max_completion_tokens / num_predict
    max_prompt_chars: int = 32_000  # total characters over all messages (or the completion prompt)
    max_stop: int = 4


class APIError(Exception):
    """A request the client must fix (or a server failure); rendered as an OpenAI-style error object."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def response(self) -> JSONResponse:
        return JSONResponse(status_code=self.status, content=error_body(self.message, self.type, self.param, self.code))


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# --------------------------------------------------------------------------------------------- engine runner


class EngineRunner:
    """Runs one engine's generations one at a time, off the event loop."""

    def __init__(self, engine: Any, workers: int = 8) -> None:
        self.engine = engine
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="anima-gen")

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def call(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` under the engine lock, in the pool."""

        def locked() -> Any:
            with self.lock:
                return fn()

        return await asyncio.get_running_loop().run_in_executor(self.pool, locked)

    async def stream(self, make_iter: Callable[[], Iterator[str]]) -> AsyncIterator[tuple[str, Any]]:
        """Yield ``("piece", text)`` per streamed piece, then ``("done", engine.last_usage)``.

        Errors are raised from the generator. If the consumer stops early (client disconnected), the
        worker notices at its next piece, closes the engine's iterator and releases the lock.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        cancelled = threading.Event()

        def put(item: tuple[str, Any]) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # loop closed (server shutting down)
                cancelled.set()

        def work() -> None:
            try:
                with self.lock:
                    it = make_iter()
                    try:
                        for piece in it:
                            if cancelled.is_set():
                                break
                            if piece:
                                put(("piece", piece))
                    finally:
                        close = getattr(it, "close", None)
                        if close is not None:
                            close()
                    if hasattr(it, "completion_tokens") and hasattr(it, "finish_reason"):
                        usage = (getattr(it, "prompt_tokens", 0), it.completion_tokens, it.finish_reason)
                    else:
                        usage = getattr(self.engine, "last_usage", None)
                put(("done", usage))
            except BaseException as e:  # noqa: BLE001 - forwarded to the request
                put(("error", e))

        loop.run_in_executor(self.pool, work)
        try:
            while True:
                kind, value = await queue.get()
                if kind == "error":
                    raise value
                yield kind, value
                if kind == "done":
                    return
        finally:
            cancelled.set()


# --------------------------------------------------------------------------------------------- request parsing


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


def openai_sampling(body: dict[str, Any], defaults: SamplingParams, limits: ServeLimits) -> SamplingParams:
    """SamplingParams from OpenAI fields (plus the common extras top_k and repetition_penalty)."""
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


def _stream_flag(body: dict[str, Any], default: bool) -> bool:
    value = body.get("stream", default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise APIError(400, "'stream' must be true or false", param="stream", code="invalid_value")
    return value


def _finish_reason(reason: Any) -> str:
    return "length" if reason == "length" else "stop"


def _usage(prompt_tokens: Any, completion_tokens: Any) -> dict[str, int]:
    p, c = int(prompt_tokens or 0), int(completion_tokens or 0)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _engine_error(e: BaseException) -> APIError:
    """Map a failure inside the engine to an HTTP error (client's fault -> 400, else 500)."""
    if isinstance(e, APIError):
        return e
    if isinstance(e, (AnimaError, ValueError)):
        return APIError(400, str(e).splitlines()[0] if str(e) else type(e).__name__, code="invalid_request")
    log.exception("generation failed", exc_info=e)
    return APIError(500, f"generation failed: {type(e).__name__}", type="server_error", code="internal_error")


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n\n"


def _ndjson(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


# --------------------------------------------------------------------------------------------- the app


def create_app(
    engine: Any,
    api_key: str | None = None,
    limits: ServeLimits | None = None,
    defaults: SamplingParams | None = None,
    *,
    model_name: str | None = None,
    workers: int = 8,
) -> FastAPI:
    """The FastAPI app serving ``engine``.

    ``api_key``: when set, every endpoint but ``/health`` needs ``Authorization: Bearer <key>`` (401 otherwise).
    ``defaults``: sampling settings used for any field a request leaves out (e.g. from the sampling config).
    ``model_name``: the id reported by ``/v1/models`` (default ``engine.name``); requests may name any model,
    this server has exactly one.
    """
    limits = limits or ServeLimits()
    defaults = replace(defaults or SamplingParams()).validate()
    name = model_name or str(getattr(engine, "name", "anima"))
    created = int(time.time())
    runner = EngineRunner(engine, workers=workers)
    expected_auth = f"Bearer {api_key}".encode() if api_key else None

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            runner.close()

    app = FastAPI(title="anima", version="1", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.runner = runner
    app.state.limits = limits
    app.state.model_name = name

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(status_code=exc.status_code, content=error_body(str(exc.detail), code=kind))

    @app.exception_handler(Exception)
    async def _server_error(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse(status_code=500, content=error_body("internal server error", "server_error",
                                                                code="internal_error"))

    @app.middleware("http")
    async def _auth(request: Request, call_next: Callable[[Request], Any]) -> Any:
        if expected_auth is not None and request.url.path != "/health":
            got = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(got, expected_auth):
                return JSONResponse(
                    status_code=401,
                    content=error_body("missing or incorrect API key (send 'Authorization: Bearer <key>')",
                                       "invalid_request_error", code="invalid_api_key"),
                    headers={"WWW-Authenticate": "Bearer"},
                )
        return await call_next(request)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": name, "backend": engine.backend_name}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": "anima"}]}

    @app.get("/api/tags")
    async def tags() -> dict[str, Any]:
        return {"models": [{"name": name, "model": name, "modified_at": _iso_now(), "details": {"format": "safetensors"}}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        body = await read_json_body(request, limits)
        messages = parse_messages(body, limits)
        params = openai_sampling(body, defaults, limits)
        stream = _stream_flag(body, False)
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        now = int(time.time())
        if not stream:
            try:
                comp = await runner.call(lambda: engine.chat(messages, params))
            except BaseException as e:  # noqa: BLE001
                raise _engine_error(e) from None
            return {
                "id": cid, "object": "chat.completion", "created": now, "model": name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": comp.text},
                             "logprobs": None, "finish_reason": _finish_reason(comp.finish_reason)}],
                "usage": _usage(comp.prompt_tokens, comp.completion_tokens),
            }
        opts = body.get("stream_options") or {}
        include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))

        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            return {"id": cid, "object": "chat.completion.chunk", "created": now, "model": name,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

        events = await _start_stream(runner, lambda: engine.stream_chat(messages, params))

        async def gen() -> AsyncIterator[bytes]:
            yield _sse(chunk({"role": "assistant", "content": ""}, None))
            try:
                async for kind, value in events:
                    if kind == "piece":
                        yield _sse(chunk({"content": value}, None))
                    else:
                        pt, ct, reason = _unpack_usage(value)
                        yield _sse(chunk({}, _finish_reason(reason)))
                        if include_usage:
                            yield _sse({"id": cid, "object": "chat.completion.chunk", "created": now,
                                        "model": name, "choices": [], "usage": _usage(pt, ct)})
            except BaseException as e:  # noqa: BLE001 - the status line is sent; report in-band
                if isinstance(e, (asyncio.CancelledError, GeneratorExit)):
                    raise
                err = _engine_error(e)
                yield _sse(error_body(err.message, err.type, err.param, err.code))
            yield b"data: [DONE]\n\n"

        return StreamingResponse(gen(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        body = await read_json_body(request, limits)
        prompt = parse_prompt(body, limits)
        params = openai_sampling(body, defaults, limits)
        stream = _stream_flag(body, False)
        cid = f"cmpl-{uuid.uuid4().hex[:24]}"
        now = int(time.time())
        if not stream:
            try:
                comp = await runner.call(lambda: engine.complete(prompt, params))
            except BaseException as e:  # noqa: BLE001
                raise _engine_error(e) from None
            return {
                "id": cid, "object": "text_completion", "created": now, "model": name,
                "choices": [{"index": 0, "text": comp.text, "logprobs": None,
                             "finish_reason": _finish_reason(comp.finish_reason)}],
                "usage": _usage(comp.prompt_tokens, comp.completion_tokens),
            }

        def chunk(text: str, finish: str | None) -> dict[str, Any]:
            return {"id": cid, "object": "text_completion", "created": now, "model": name,
                    "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}

        events = await _start_stream(runner, lambda: engine.stream_completion(prompt, params))

        async def gen() -> AsyncIterator[bytes]:
            try:
                async for kind, value in events:
                    if kind == "piece":
                        yield _sse(chunk(value, None))
                    else:
                        yield _sse(chunk("", _finish_reason(_unpack_usage(value)[2])))
            except BaseException as e:  # noqa: BLE001
                if isinstance(e, (asyncio.CancelledError, GeneratorExit)):
                    raise
                err = _engine_error(e)
                yield _sse(error_body(err.message, err.type, err.param, err.code))
            yield b"data: [DONE]\n\n"

        return StreamingResponse(gen(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.post("/api/chat")
    async def ollama_chat(request: Request) -> Any:
        body = await read_json_body(request, limits)
        messages = parse_messages(body, limits)
        params = ollama_sampling(body, defaults, limits)
        stream = _stream_flag(body, True)  # Ollama streams by default
        started = time.perf_counter_ns()
        if not stream:
            try:
                comp = await runner.call(lambda: engine.chat(messages, params))
            except BaseException as e:  # noqa: BLE001
                raise _engine_error(e) from None
            return {"model": name, "created_at": _iso_now(),
                    "message": {"role": "assistant", "content": comp.text}, "done": True,
                    "done_reason": _finish_reason(comp.finish_reason),
                    "total_duration": time.perf_counter_ns() - started,
                    "prompt_eval_count": int(comp.prompt_tokens or 0), "eval_count": int(comp.completion_tokens or 0)}

        events = await _start_stream(runner, lambda: engine.stream_chat(messages, params))

        async def gen() -> AsyncIterator[bytes]:
            try:
                async for kind, value in events:
                    if kind == "piece":
                        yield _ndjson({"model": name, "created_at": _iso_now(),
                                       "message": {"role": "assistant", "content": value}, "done": False})
                    else:
                        pt, ct, reason = _unpack_usage(value)
                        yield _ndjson({"model": name, "created_at": _iso_now(),
                                       "message": {"role": "assistant", "content": ""}, "done": True,
                                       "done_reason": _finish_reason(reason),
                                       "total_duration": time.perf_counter_ns() - started,
                                       "prompt_eval_count": int(pt or 0), "eval_count": int(ct or 0)})
            except BaseException as e:  # noqa: BLE001
                if isinstance(e, (asyncio.CancelledError, GeneratorExit)):
                    raise
                yield _ndjson({"error": _engine_error(e).message, "done": True})

        return StreamingResponse(gen(), media_type="application/x-ndjson")

    return app


async def _start_stream(runner: EngineRunner, make_iter: Callable[[], Iterator[str]]) -> AsyncIterator[tuple[str, Any]]:
    """Start a streamed generation and wait for its first event, so that errors raised before the first
    piece (e.g. a prompt the engine rejects) become a proper 4xx/5xx instead of a broken 200 stream."""
    events = runner.stream(make_iter)
    try:
        first = await events.__anext__()
    except StopAsyncIteration:
        first = None
    except BaseException as e:  # noqa: BLE001
        await events.aclose()
        raise _engine_error(e) from None

    async def chained() -> AsyncIterator[tuple[str, Any]]:
        try:
            if first is not None:
                yield first
                if first[0] == "done":
                    return
            async for item in events:
                yield item
        finally:
            await events.aclose()

    return chained()


def _unpack_usage(value: Any) -> tuple[Any, Any, Any]:
    if isinstance(value, (tuple, list)) and len(value) == 3:
        return value[0], value[1], value[2]
    if value is not None and hasattr(value, "prompt_tokens"):
        return value.prompt_tokens, value.completion_tokens, getattr(value, "finish_reason", "stop")
    return 0, 0, "stop"


def _iso_now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
