"""OpenAI-compatible and Ollama-style HTTP API around one ChatEngine: the assembly.

Endpoints: ``POST /v1/chat/completions`` (SSE stream or one JSON), ``POST /v1/completions``, ``GET /v1/models``,
``GET /v1/models/{id}`` (openai_api.py); ``POST /api/chat``, ``POST /api/generate`` (Ollama ndjson streams),
``GET /api/tags``, ``POST /api/show``, ``GET /api/ps``, ``GET /api/version`` (ollama_api.py); ``POST /v1/feedback``
(feedback_api.py); the browser chat page ``GET /chat`` (chat_page.py); ``GET /health``.
Requests are parsed in protocol.py (params.py: which fields are understood), admitted by runner.py (bounded:
503 + Retry-After beyond serve.limits) and decoded together by the engine's batch scheduler, and streamed by streaming.py. Every error, whatever raised it, is one object in the shape of the flavour the
path belongs to: OpenAI's ``{"error": {"message", "type", "param", "code"}}``, or Ollama's ``{"error": "..."}``
under ``/api/``.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from anima.generation.sampling import SamplingParams
from anima.serve.chat_page import PUBLIC_PATHS, chat_page_routes
from anima.serve.disconnect import CancelOnDisconnect
from anima.serve.errors import APIError, error_body
from anima.serve.feedback_api import FeedbackSink, feedback_routes
from anima.serve.limits import ServeLimits
from anima.serve.models import ModelCard
from anima.serve.ollama_api import ollama_routes
from anima.serve.openai_api import openai_routes
from anima.serve.runner import EngineRunner, ServedModel

__all__ = ["APIError", "ServeLimits", "create_app"]

log = logging.getLogger("anima.serve")


def create_app(
    engine: Any,
    api_key: str | None = None,
    limits: ServeLimits | None = None,
    defaults: SamplingParams | None = None,
    *,
    model_name: str | None = None,
    workers: int = 8,
    feedback: FeedbackSink | None = None,
) -> FastAPI:
    """The FastAPI app serving ``engine``.

    ``api_key``: when set, every endpoint but ``/health`` needs ``Authorization: Bearer <key>`` (401 otherwise).
    ``defaults``: sampling settings used for any field a request leaves out (e.g. from the sampling config).
    ``model_name``: the id reported by ``/v1/models`` (default ``engine.name``); a request naming another
    model is a 404 (one naming none gets this one).
    ``feedback``: where ``POST /v1/feedback`` and the chat page at ``/chat`` write ratings (default: nowhere).
    """
    name = model_name or str(getattr(engine, "name", "anima"))
    checked = replace(defaults or SamplingParams()).validate()
    limits = limits or ServeLimits()
    served = ServedModel(runner=EngineRunner(engine, workers=workers, limits=limits), limits=limits,
                         defaults=checked, name=name, created=int(time.time()),
                         card=ModelCard(engine, name, checked))

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            served.runner.close()

    app = FastAPI(title="anima", version="1", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.runner = served.runner
    app.state.limits = served.limits
    app.state.model_name = served.name
    _add_error_handlers(app)
    if api_key:
        app.add_middleware(RequireApiKey, expected_auth=f"Bearer {api_key}".encode())
    app.add_middleware(CancelOnDisconnect)  # a client that goes away frees its decode slot

    @app.get("/health")
    async def health() -> dict[str, Any]:
        status = getattr(engine, "backend_status", None)
        return {"status": "ok", "model": served.name, "backend": engine.backend_name,
                "backend_status": status() if status else engine.backend_name}

    app.include_router(openai_routes(served))
    app.include_router(ollama_routes(served))
    app.include_router(feedback_routes(served, feedback or FeedbackSink(None)))
    app.include_router(chat_page_routes())
    return app


def _error(request: Request, exc: APIError, headers: dict[str, str] | None = None) -> JSONResponse:
    """``exc`` in the shape of the API flavour the path belongs to (Ollama's under /api/, else OpenAI's)."""
    if request.url.path.startswith("/api/"):
        return JSONResponse(status_code=exc.status, content={"error": exc.message}, headers=headers)
    return JSONResponse(status_code=exc.status, content=error_body(exc.message, exc.type, exc.param, exc.code),
                        headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    """Every error as one error object: the API's own, HTTP routing errors, and crashes (500)."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return _error(request, exc, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(request, APIError(exc.status_code, str(exc.detail), code=kind))

    @app.exception_handler(Exception)
    async def _server_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return _error(request, APIError(500, "internal server error", type="server_error", code="internal_error"))


class RequireApiKey:
    """401 for any request but ``/health`` and the chat page (chat_page.PUBLIC_PATHS) without ``Authorization:
    Bearer <key>`` (compared in constant time). A pure ASGI middleware: Starlette's ``@app.middleware("http")``
    passes every streamed chunk through a memory stream and a second task."""

    def __init__(self, app: Any, expected_auth: bytes) -> None:
        self.app, self.expected_auth = app, expected_auth

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and scope["path"] not in PUBLIC_PATHS:
            got = next((value for name, value in scope["headers"] if name == b"authorization"), b"")
            if not hmac.compare_digest(got, self.expected_auth):
                response = _error(Request(scope), APIError(401, "missing or incorrect API key (send 'Authorization: "
                                                                "Bearer <key>')", code="invalid_api_key"),
                                  headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
