"""The loop inbox: pieces posted from the scheduler's thread arrive in order, a burst costs one wake-up."""

from __future__ import annotations

import asyncio
import threading

import pytest

from anima.serve.inbox import LoopInbox, inbox_for


def test_a_burst_from_another_thread_arrives_in_order_with_one_wake_up():
    async def main() -> tuple[list[int], int]:
        loop = asyncio.get_running_loop()
        inbox = LoopInbox(loop)
        wakeups = 0
        real = loop.call_soon_threadsafe

        def counting(*args):
            nonlocal wakeups
            wakeups += 1
            return real(*args)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
        got: list[int] = []
        done = asyncio.Event()

        def take(i: int) -> None:
            got.append(i)
            if i == 99:
                done.set()

        def producer() -> None:  # the loop is blocked below, so the whole burst queues before it drains
            for i in range(100):
                inbox.post(take, i)

        t = threading.Thread(target=producer)
        t.start()
        t.join()
        await asyncio.wait_for(done.wait(), 5)
        return got, wakeups

    got, wakeups = asyncio.run(main())
    assert got == list(range(100))
    assert wakeups == 1


def test_posts_after_a_drain_wake_the_loop_again():
    async def main() -> list[str]:
        inbox = LoopInbox(asyncio.get_running_loop())
        got: list[str] = []
        for word in ("a", "b"):
            threading.Thread(target=inbox.post, args=(got.append, word)).start()
            for _ in range(100):
                await asyncio.sleep(0.01)
                if word in got:
                    break
        return got

    assert asyncio.run(main()) == ["a", "b"]


def test_a_closed_loop_raises_on_every_post():
    loop = asyncio.new_event_loop()
    inbox = inbox_for(loop)
    assert inbox_for(loop) is inbox
    loop.close()
    for _ in range(2):  # a failed wake-up does not leave the inbox thinking one is on its way
        with pytest.raises(RuntimeError):
            inbox.post(print, "never")


def test_pieces_that_wait_for_the_loop_go_out_as_one_chunk():
    """A listened stream (runner._listened): pieces queued while the loop was busy come out merged, text and
    log-probability entries in order; the end still comes last, on its own."""
    from anima.generation.results import TextStream
    from anima.serve.runner import _listened

    async def main() -> list:
        stream = TextStream(None, [1, 2])
        for text, entries in (("Once", ["a"]), (" upon", []), (" a", ["b", "c"])):
            stream.emit(text, entries)  # before the loop runs: all three wait
        stream.end("stop", [])
        return [event async for event in _listened(stream)]

    events = asyncio.run(main())
    assert [kind for kind, _ in events] == ["piece", "done"]
    assert events[0][1] == ("Once upon a", ["a", "b", "c"])
