"""Restarts what dies in a running stack: services, Envoy, reflection, Redis, PostgreSQL.

Not supervisord or circus: PostgreSQL runs daemonised by pg_ctl (it is not our child,
and its restart must go through pg_ctl), the services are children the Stack must keep
as Popen objects for its tests and its orderly stop, and a restart is only done when
the part answers its own readiness probe again. An external supervisor would own the
processes the Stack needs to own; this one only watches them, in the Stack's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

log = logging.getLogger("devstack.supervise")

# A part that ran this long before dying crashed once, not in a loop.
STABLE_AFTER_S = 30.0
FIRST_DELAY_S = 0.2
MAX_DELAY_S = 30.0
POLL_S = 0.2
# From this many crashes in a row on, the log says the part is backing off.
CRASH_LOOP_AFTER = 3


def describe_exit(code: int | None) -> str:
    """An exit status as an operator reads it: "exit code 3", "killed by SIGKILL"."""
    if code is None:
        return "exit status unknown (not our child)"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


@dataclass
class Watched:
    """One part of the stack, as the supervisor sees it.

    `ended` is None while the part runs, else its exit code (None inside when the
    code is not ours to read); `restart` brings it back or raises.
    """

    name: str
    ended: Callable[[], tuple[int | None] | None]
    restart: Callable[[], Awaitable[None]]
    restarts: int = 0
    crash_streak: int = 0
    started_at: float = field(default_factory=time.monotonic)


def backoff(streak: int) -> float:
    return float(min(FIRST_DELAY_S * 2 ** max(streak - 1, 0), MAX_DELAY_S))


class Supervisor:
    """Watches parts and restarts each one that ends, with exponential backoff."""

    def __init__(self, parts: list[Watched]) -> None:
        self.parts = {part.name: part for part in parts}
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._watch(part)) for part in self.parts.values()]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _watch(self, part: Watched) -> None:
        while True:
            ended = part.ended()
            if ended is None:
                await asyncio.sleep(POLL_S)
                continue
            ran_for = time.monotonic() - part.started_at
            part.crash_streak = 1 if ran_for >= STABLE_AFTER_S else part.crash_streak + 1
            delay = backoff(part.crash_streak)
            log.error(
                "%s died (%s) after %.1fs; restarting in %.1fs",
                part.name, describe_exit(ended[0]), ran_for, delay,
            )  # fmt: skip
            if part.crash_streak >= CRASH_LOOP_AFTER:
                log.error(
                    "%s crashed %d times in a row; backing off (%.1fs, at most %.0fs)",
                    part.name, part.crash_streak, delay, MAX_DELAY_S,
                )  # fmt: skip
            await asyncio.sleep(delay)
            part.started_at = time.monotonic()
            try:
                await part.restart()
            except Exception as error:
                # The next round sees it still down and backs off further.
                log.error("%s did not restart: %s", part.name, error)
                continue
            part.restarts += 1
            log.warning("%s restarted (restart %d)", part.name, part.restarts)
