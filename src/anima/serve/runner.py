"""The engine runner: one model, one lock, generations off the event loop.

A decode is a sequence of small CPU ops on shared weights and a shared KV cache, so requests are serialized on
a lock, and every decode runs in a thread pool so the event loop keeps accepting, validating and rejecting
requests while a reply is being generated.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from anima.generation.sampling import SamplingParams
from anima.serve.errors import engine_error
from anima.serve.limits import ServeLimits


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


async def start_stream(runner: EngineRunner, make_iter: Callable[[], Iterator[str]]) -> AsyncIterator[tuple[str, Any]]:
    """Start a streamed generation and wait for its first event, so that errors raised before the first
    piece (e.g. a prompt the engine rejects) become a proper 4xx/5xx instead of a broken 200 stream."""
    events = runner.stream(make_iter)
    try:
        first = await events.__anext__()
    except StopAsyncIteration:
        first = None
    except BaseException as e:  # noqa: BLE001
        await events.aclose()
        raise engine_error(e) from None

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


@dataclass(frozen=True)
class ServedModel:
    """What every route needs: the runner (and its engine), the request limits, the default sampling, the id."""

    runner: EngineRunner
    limits: ServeLimits
    defaults: SamplingParams
    name: str
    created: int  # reported by /v1/models

    @property
    def engine(self) -> Any:
        return self.runner.engine

    async def generate(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` (a whole, non-streamed generation) on the runner; a failure becomes an APIError."""
        try:
            return await self.runner.call(fn)
        except BaseException as e:  # noqa: BLE001
            raise engine_error(e) from None
