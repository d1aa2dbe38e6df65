"""The engine runner: admission control and the bridge between the event loop and the engine's batch.

The engine decodes every admitted request together in its own scheduler thread (continuous batching,
anima.generation.batch). The runner bounds how many requests may be in the engine at once
(``serve.limits.max_batch`` decoding + ``max_queue`` waiting; beyond: 503 with Retry-After), hands the engine a
cancel event per request (a client that goes away frees its slot at the next step), and delivers a stream's
pieces straight from the scheduler's thread into the event loop (no thread per streamed reply).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from anima.generation.sampling import SamplingParams
from anima.generation.sequence import CANCEL
from anima.serve.errors import engine_error, overloaded
from anima.serve.inbox import inbox_for
from anima.serve.limits import ServeLimits
from anima.serve.models import ModelCard, check_model


class EngineRunner:
    """Admits requests up to the limits and runs them on the engine, off the event loop."""

    def __init__(self, engine: Any, workers: int = 8, limits: ServeLimits | None = None) -> None:
        self.engine = engine
        self.limits = limits or ServeLimits()
        configure = getattr(engine, "configure_batching", None)
        batch = self.limits.max_batch
        if configure is not None:
            batch = configure(max_batch=self.limits.max_batch, request_timeout_s=self.limits.request_timeout_s)
        self.capacity = max(1, batch) + self.limits.max_queue
        self._in_flight = 0
        self._count_lock = threading.Lock()
        # whole replies wait in a pool thread each (the engine does the work in its own thread)
        self.pool = ThreadPoolExecutor(max_workers=max(1, workers, self.capacity), thread_name_prefix="anima-gen")

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def _admit(self) -> None:
        with self._count_lock:
            if self._in_flight >= self.capacity:
                raise overloaded(f"server busy: {self._in_flight} requests in progress (serve.limits.max_batch + "
                                 f"max_queue = {self.capacity}); retry later")
            self._in_flight += 1

    def _release(self) -> None:
        with self._count_lock:
            self._in_flight -= 1

    async def call(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` (a whole generation) in the pool; if the awaiting request is cancelled (its client went
        away), the engine drops the generation at its next step."""
        self._admit()
        cancel = threading.Event()

        def run() -> Any:
            token = CANCEL.set(cancel)
            try:
                return fn()
            finally:
                CANCEL.reset(token)

        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, run)
        except asyncio.CancelledError:
            cancel.set()
            raise
        finally:
            self._release()

    async def stream(self, make_iter: Callable[[], Iterator[str]]) -> AsyncIterator[tuple[str, Any]]:
        """Yield ``("piece", (text, logprobs))`` per streamed piece, then ``("done", stream)``.

        ``logprobs``: the log-probability entries of the tokens behind this piece (empty unless the request asked
        for them). ``stream`` is the engine's TextStream (usage, token ids, timings), or ``engine.last_usage``
        for an iterator that carries no usage of its own.

        Errors are raised from the generator. If the consumer stops early (client disconnected), the stream is
        closed and the engine drops the request at its next step.
        """
        self._admit()
        try:
            it = make_iter()  # tokenizes and queues the request: quick, and its errors become a 4xx at once
        except BaseException:
            self._release()
            raise
        try:
            if hasattr(it, "listen"):
                async for event in _listened(it):
                    yield event
            else:
                async for event in self._threaded(it):
                    yield event
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()
            self._release()

    async def _threaded(self, it: Iterator[str]) -> AsyncIterator[tuple[str, Any]]:
        """A plain iterator (no ``listen``): drained by a pool thread."""
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
                entries, sent = getattr(it, "logprobs", None), 0
                for piece in it:
                    if cancelled.is_set():
                        break
                    if piece:
                        upto = len(entries) if entries is not None else 0
                        put(("piece", (piece, entries[sent:upto] if entries is not None else [])))
                        sent = upto
                usage = it if hasattr(it, "finish_reason") else getattr(self.engine, "last_usage", None)
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


async def _listened(stream: Any) -> AsyncIterator[tuple[str, Any]]:
    """The engine's TextStream, its events pushed from the scheduler's thread into this loop."""
    inbox = inbox_for(asyncio.get_running_loop())  # one wake-up of this loop per burst of pieces (inbox.py)
    queue: asyncio.Queue[tuple[str, Any, list]] = asyncio.Queue()

    def on_event(kind: str, value: Any, entries: list) -> None:
        try:
            inbox.post(queue.put_nowait, (kind, value, entries))
        except RuntimeError:  # loop closed (server shutting down)
            stream.cancel.set()

    stream.listen(on_event)
    held = None
    while True:
        kind, value, entries = held or await queue.get()
        held = None
        if kind == "piece":
            # pieces that arrived while this loop was busy go out as one chunk: each chunk costs the loop a pass
            # through the ASGI stack and a socket write, and under load the pieces of several steps wait here
            while not queue.empty():
                held = queue.get_nowait()
                if held[0] != "piece":
                    break
                value, entries, held = value + held[1], entries + held[2] if held[2] else entries, None
            if value:
                yield "piece", (value, entries)
        elif kind == "error":
            raise value
        else:
            yield "done", stream
            return


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
    card: ModelCard  # what Ollama's /api/tags, /api/show report

    @property
    def engine(self) -> Any:
        return self.runner.engine

    def check_model(self, body: dict[str, Any]) -> None:
        """404 when the request names a model other than this one."""
        check_model(body.get("model"), self.name)

    async def generate(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` (a whole, non-streamed generation) on the runner; a failure becomes an APIError."""
        try:
            return await self.runner.call(fn)
        except BaseException as e:  # noqa: BLE001
            raise engine_error(e) from None
