"""The one streaming loop both API flavours share: engine events in, encoded chunks out.

A flavour says how to encode a piece, the end of a reply and an error (``StreamFormat``); this module turns a
streamed generation into a StreamingResponse. Errors before the first piece are raised as a 4xx/5xx (see
``start_stream``); once the status line is sent, a failure is reported in-band in the flavour's format.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from fastapi.responses import StreamingResponse

from anima.serve.errors import APIError, engine_error
from anima.serve.runner import EngineRunner, start_stream


@dataclass(frozen=True)
class StreamFormat:
    """How one API flavour encodes a streamed reply."""

    piece: Callable[[str], bytes]  # one text delta
    done: Callable[[Any, Any, Any], list[bytes]]  # (prompt_tokens, completion_tokens, finish reason) at the end
    error: Callable[[APIError], bytes]  # a failure after the stream started
    head: tuple[bytes, ...] = ()  # before the first piece
    tail: tuple[bytes, ...] = ()  # after the end (or the error)


def unpack_usage(value: Any) -> tuple[Any, Any, Any]:
    """(prompt tokens, completion tokens, finish reason) from a stream's "done" event."""
    if isinstance(value, (tuple, list)) and len(value) == 3:
        return value[0], value[1], value[2]
    if value is not None and hasattr(value, "prompt_tokens"):
        return value.prompt_tokens, value.completion_tokens, getattr(value, "finish_reason", "stop")
    return 0, 0, "stop"


async def encode_events(events: AsyncIterator[tuple[str, Any]], fmt: StreamFormat) -> AsyncIterator[bytes]:
    """The response body: ``fmt``'s encoding of every event of a started stream."""
    for chunk in fmt.head:
        yield chunk
    try:
        async for kind, value in events:
            if kind == "piece":
                yield fmt.piece(value)
            else:
                for chunk in fmt.done(*unpack_usage(value)):
                    yield chunk
    except BaseException as e:  # noqa: BLE001 - the status line is sent; report in-band
        if isinstance(e, (asyncio.CancelledError, GeneratorExit)):
            raise
        yield fmt.error(engine_error(e))
    for chunk in fmt.tail:
        yield chunk


async def stream_response(runner: EngineRunner, make_iter: Callable[[], Iterator[str]], fmt: StreamFormat,
                          media_type: str, headers: dict[str, str] | None = None) -> StreamingResponse:
    """Start the generation (failing as a 4xx/5xx before any byte is sent), then stream it in ``fmt``."""
    events = await start_stream(runner, make_iter)
    return StreamingResponse(encode_events(events, fmt), media_type=media_type, headers=headers)
