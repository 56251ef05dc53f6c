"""Concurrent callers asking for the same thing share one computation (a dashboard's
viewers asking for one report when its cached answer has just expired).

The computation runs as a task of its own, so a caller that goes away (a cancelled RPC)
neither cancels it for the others nor leaves them an error that is not theirs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class SingleFlight(Generic[V]):
    def __init__(self) -> None:
        self._running: dict[Hashable, asyncio.Future[V]] = {}

    def running(self, key: Hashable) -> bool:
        """Whether a computation for `key` is under way (a call now would join it)."""
        return key in self._running

    async def run(self, key: Hashable, compute: Callable[[], Awaitable[V]]) -> V:
        """compute()'s result, shared with every caller asking for `key` meanwhile; its
        error, likewise."""
        running = self._running.get(key)
        if running is not None:
            return await asyncio.shield(running)
        task = asyncio.ensure_future(compute())
        # Retrieved even when every caller went away before it ended.
        task.add_done_callback(lambda done: done.cancelled() or done.exception())
        self._running[key] = task
        try:
            return await asyncio.shield(task)
        finally:
            if self._running.get(key) is task:
                del self._running[key]
