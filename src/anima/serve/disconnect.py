"""Cancel a request's handler when its client goes away, so the engine can drop the generation at its next step.

Why: for a non-streamed reply nothing reads the connection after the body, so without this a client that gave
up would keep its decode slot until the whole reply is generated. A pure ASGI middleware: once the request body
is read it alone listens for ``http.disconnect`` (a handler that asks for more messages, e.g. a streaming
response watching for the disconnect, waits on the same event), and on a disconnect before the response is
complete it cancels the handler (the runner then sets the request's cancel event).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Awaitable, Callable

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class CancelOnDisconnect:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        body_read = asyncio.Event()
        gone: asyncio.Future[Message] = loop.create_future()
        complete = False

        async def wrapped_receive() -> Message:
            if body_read.is_set():
                return await asyncio.shield(gone)
            msg = await receive()
            if msg["type"] == "http.disconnect":
                if not gone.done():
                    gone.set_result(msg)
            elif not msg.get("more_body"):
                body_read.set()
            return msg

        async def wrapped_send(msg: Message) -> None:
            nonlocal complete
            if msg["type"] == "http.response.body" and not msg.get("more_body"):
                complete = True
            await send(msg)

        handler = asyncio.ensure_future(self.app(scope, wrapped_receive, wrapped_send))
        cancelled_by_us = False

        async def watch() -> None:
            nonlocal cancelled_by_us
            await body_read.wait()
            msg = await receive()
            if not gone.done():
                gone.set_result(msg)
            if msg["type"] == "http.disconnect" and not complete and not handler.done():
                cancelled_by_us = True
                handler.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            await handler
        except asyncio.CancelledError:
            if not cancelled_by_us:
                raise
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
