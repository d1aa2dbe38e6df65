"""The runner's hand-over of engine events to the event loop: a decode step's burst of pieces (one per sequence in
the batch) wakes the loop once, and every queue still gets its events in order."""

from __future__ import annotations

import asyncio
import threading

import pytest

from anima.serve.runner import _Mailbox


def test_a_burst_of_events_wakes_the_loop_once_and_keeps_order():
    async def main() -> tuple[int, int, list[list[int]]]:
        loop = asyncio.get_running_loop()
        box = _Mailbox(loop)
        queues: list[asyncio.Queue] = [asyncio.Queue() for _ in range(3)]
        wakeups = []
        call = loop.call_soon_threadsafe

        def counted(callback, *args):
            wakeups.append(callback)
            return call(callback, *args)

        loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
        producer = threading.Thread(target=lambda: [box.post(queues[i % 3], i) for i in range(30)])
        producer.start()
        producer.join()  # the loop is blocked meanwhile: one burst
        await asyncio.sleep(0)
        first = len(wakeups)
        box.post(queues[0], 30)  # the next burst wakes it again
        await asyncio.sleep(0)
        return first, len(wakeups), [[q.get_nowait() for _ in range(q.qsize())] for q in queues]

    first, total, got = asyncio.run(main())
    assert (first, total) == (1, 2)
    assert got == [list(range(0, 30, 3)) + [30], list(range(1, 30, 3)), list(range(2, 30, 3))]


def test_posting_to_a_closed_loop_raises():
    loop = asyncio.new_event_loop()
    box = _Mailbox(loop)
    loop.close()
    with pytest.raises(RuntimeError):
        box.post(asyncio.Queue(), 1)
    with pytest.raises(RuntimeError):  # not stuck thinking a wake-up is pending
        box.post(asyncio.Queue(), 2)
