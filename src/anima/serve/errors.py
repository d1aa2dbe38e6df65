"""The one error shape of the API: an OpenAI-style ``{"error": {"message", "type", "param", "code"}}`` object."""

from __future__ import annotations

import logging
from typing import Any

from fastapi.responses import JSONResponse

from anima.errors import AnimaError
from anima.generation.sequence import Busy

log = logging.getLogger("anima.serve")


class APIError(Exception):
    """A request the client must fix (or a server failure); rendered as an OpenAI-style error object."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers  # e.g. Retry-After on a 503

    def response(self) -> JSONResponse:
        return JSONResponse(status_code=self.status, content=error_body(self.message, self.type, self.param, self.code),
                            headers=self.headers)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def engine_error(e: BaseException) -> APIError:
    """Map a failure inside the engine to an HTTP error (client's fault -> 400, else 500)."""
    if isinstance(e, APIError):
        return e
    if isinstance(e, Busy):
        return overloaded(str(e), e.retry_after)
    if isinstance(e, (AnimaError, ValueError)):
        return APIError(400, str(e).splitlines()[0] if str(e) else type(e).__name__, code="invalid_request")
    log.exception("generation failed", exc_info=e)
    return APIError(500, f"generation failed: {type(e).__name__}", type="server_error", code="internal_error")


def overloaded(message: str, retry_after: int = 1) -> APIError:
    """503 with ``Retry-After``: the server is at its request limit (serve.limits.max_batch + max_queue)."""
    return APIError(503, message, type="server_error", code="overloaded", headers={"Retry-After": str(retry_after)})
