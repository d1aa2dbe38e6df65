"""Hand events from the engine's scheduler thread to an asyncio loop with one wake-up per burst, not per event.

Why: every decode step hands a token to each active streaming request. ``loop.call_soon_threadsafe`` per token
wakes the loop thread once per request per step; each wake-up lets that thread take the GIL while the
scheduler, the critical path, waits to get it back. Coalesced, a step with many streaming requests costs the
scheduler one wake-up, and the loop handles the step's pieces in one go.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import weakref
from typing import Any, Callable

_inboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, "LoopInbox"] = weakref.WeakKeyDictionary()
_inboxes_lock = threading.Lock()


class LoopInbox:
    """A FIFO of ``(callback, item)`` that the loop drains in a single callback scheduled by the first post
    after the last drain. Order is kept across every poster, so one request's pieces arrive in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: collections.deque[tuple[Callable[[Any], None], Any]] = collections.deque()
        self._lock = threading.Lock()
        self._scheduled = False

    def post(self, callback: Callable[[Any], None], item: Any) -> None:
        """``callback(item)`` on the loop's thread, soon. Raises RuntimeError when the loop is closed."""
        with self._lock:
            self._items.append((callback, item))
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._drain)
        except RuntimeError:
            with self._lock:
                self._scheduled = False
            raise

    def _drain(self) -> None:
        with self._lock:
            items, self._items = self._items, collections.deque()
            self._scheduled = False
        for callback, item in items:
            callback(item)


def inbox_for(loop: asyncio.AbstractEventLoop) -> LoopInbox:
    """The loop's inbox (one per loop, shared by every request it serves)."""
    with _inboxes_lock:
        inbox = _inboxes.get(loop)
        if inbox is None:
            inbox = _inboxes[loop] = LoopInbox(loop)
        return inbox
