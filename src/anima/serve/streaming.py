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
class Finished:
    """The end of a streamed reply: its usage, and the engine's stream (token ids, timings) when there is one."""

    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    stream: Any = None


@dataclass(frozen=True)
class StreamFormat:
    """How one API flavour encodes a streamed reply."""

    piece: Callable[[str, list[Any]], bytes]  # one text delta, and the log-probabilities of its tokens
    done: Callable[[Finished], list[bytes]]  # at the end
    error: Callable[[APIError], bytes]  # a failure after the stream started
    head: tuple[bytes, ...] = ()  # before the first piece
    tail: tuple[bytes, ...] = ()  # after the end (or the error)


def finished(value: Any) -> Finished:
    """A stream's "done" event (the engine's stream, or a (prompt, completion, reason) tuple) as Finished."""
    if isinstance(value, (tuple, list)) and len(value) == 3:
        return Finished(int(value[0] or 0), int(value[1] or 0), str(value[2] or "stop"))
    if value is not None and hasattr(value, "prompt_tokens"):
        return Finished(int(value.prompt_tokens or 0), int(value.completion_tokens or 0),
                        str(getattr(value, "finish_reason", None) or "stop"), value)
    return Finished(0, 0, "stop")


async def encode_events(events: AsyncIterator[tuple[str, Any]], fmt: StreamFormat) -> AsyncIterator[bytes]:
    """The response body: ``fmt``'s encoding of every event of a started stream."""
    for chunk in fmt.head:
        yield chunk
    try:
        async for kind, value in events:
            if kind == "piece":
                yield fmt.piece(*value)
            else:
                for chunk in fmt.done(finished(value)):
                    yield chunk
    except BaseException as e:  # noqa: BLE001 - the status line is sent; report in-band
        if isinstance(e, (asyncio.CancelledError, GeneratorExit)):
            raise
        yield fmt.error(engine_error(e))
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()  # `async for` leaves an iterator it stopped early open
    for chunk in fmt.tail:
        yield chunk


class ClosingStreamingResponse(StreamingResponse):
    """A StreamingResponse that closes its body iterator however the response ends: Starlette leaves an iterator
    it stopped early (client gone, task cancelled) to the garbage collector, and closing it is what ends the
    engine's request and frees its place (runner.stream's ``finally``)."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()


async def stream_response(runner: EngineRunner, make_iter: Callable[[], Iterator[str]], fmt: StreamFormat,
                          media_type: str, headers: dict[str, str] | None = None) -> StreamingResponse:
    """Start the generation (failing as a 4xx/5xx before any byte is sent), then stream it in ``fmt``."""
    events = await start_stream(runner, make_iter)
    return ClosingStreamingResponse(encode_events(events, fmt), media_type=media_type, headers=headers)
