"""OpenAI-compatible and Ollama-style HTTP API around one ChatEngine: the assembly.

Endpoints: ``POST /v1/chat/completions`` (SSE stream or one JSON), ``POST /v1/completions``, ``GET /v1/models``
(openai_api.py), ``POST /api/chat`` (Ollama ndjson stream), ``GET /api/tags`` (ollama_api.py), ``GET /health``.
Requests are parsed in protocol.py, run one at a time by runner.py, and streamed by streaming.py. Every error,
whatever raised it, is the same OpenAI-style object ``{"error": {"message", "type", "param", "code"}}``.
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
from anima.serve.errors import APIError, error_body
from anima.serve.limits import ServeLimits
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
) -> FastAPI:
    """The FastAPI app serving ``engine``.

    ``api_key``: when set, every endpoint but ``/health`` needs ``Authorization: Bearer <key>`` (401 otherwise).
    ``defaults``: sampling settings used for any field a request leaves out (e.g. from the sampling config).
    ``model_name``: the id reported by ``/v1/models`` (default ``engine.name``); requests may name any model,
    this server has exactly one.
    """
    served = ServedModel(runner=EngineRunner(engine, workers=workers), limits=limits or ServeLimits(),
                         defaults=replace(defaults or SamplingParams()).validate(),
                         name=model_name or str(getattr(engine, "name", "anima")), created=int(time.time()))

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
    _require_api_key(app, f"Bearer {api_key}".encode() if api_key else None)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": served.name, "backend": engine.backend_name}

    app.include_router(openai_routes(served))
    app.include_router(ollama_routes(served))
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every error as an OpenAI-style error object: the API's own, HTTP routing errors, and crashes (500)."""

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


def _require_api_key(app: FastAPI, expected_auth: bytes | None) -> None:
    """When a key is set: 401 for any request but ``/health`` without ``Authorization: Bearer <key>``
    (compared in constant time)."""

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
