"""What keeps one tenant's feed imports from slowing everyone else's calls.

An import is admitted only while its tenant, and the process, have fewer than
their limits running: past them it is refused with RESOURCE_EXHAUSTED rather
than queued, since a queued import would hold its caller (and a database
connection once it started) for as long as the imports before it.

Its CPU work (feedparser takes about 1.5 ms per item, and planning and term
counting another 0.1 ms) runs off the event loop. A thread is not enough:
it holds the GIL for up to the switch interval at a time, and every RPC the
loop serves meanwhile waits for it at each step. A worker process does not,
and runs at a lower priority than the process serving calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import multiprocessing
import os
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Literal, ParamSpec, TypeVar

from services.shared.errors import (
    FieldViolation,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)

P = ParamSpec("P")
R = TypeVar("R")
Offload = Literal["process", "thread"]
_WORKER_NICENESS = 10


class ImportGate:
    """Admits at most `per_tenant` imports of one tenant and `total` in all at once."""

    def __init__(self, *, per_tenant: int, total: int) -> None:
        self._per_tenant = per_tenant
        self._total = total
        self._running: Counter[uuid.UUID] = Counter()

    @contextlib.contextmanager
    def admit(self, tenant_id: uuid.UUID) -> Iterator[None]:
        """Holds a slot for the block, or raises ResourceExhausted at once."""
        if self._running[tenant_id] >= self._per_tenant:
            raise ResourceExhausted(
                "an import of this tenant is already running: retry when it has finished",
                reason="IMPORT_IN_PROGRESS",
                metadata={"limit": str(self._per_tenant)},
            )
        if self._running.total() >= self._total:
            raise ResourceExhausted(
                "the catalog is running as many imports as it takes: retry shortly",
                reason="IMPORTS_BUSY",
                metadata={"limit": str(self._total)},
            )
        self._running[tenant_id] += 1
        try:
            yield
        finally:
            self._running[tenant_id] -= 1
            if not self._running[tenant_id]:
                del self._running[tenant_id]


@dataclass(frozen=True)
class _Refused:
    """InvalidArgument, carried back from a worker process: exceptions cross by
    pickle as cls(*args), which InvalidArgument's signature does not survive."""

    violations: list[FieldViolation]
    message: str
    reason: str


def _refusing(function: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R | _Refused:
    try:
        return function(*args, **kwargs)
    except InvalidArgument as error:
        return _Refused(error.violations, error.message, error.reason)


class Offloader:
    """Runs pure CPU-bound functions off the event loop, in worker processes or threads."""

    def __init__(self, mode: Offload, workers: int) -> None:
        self._mode = mode
        self._workers = workers
        self._pool: ProcessPoolExecutor | None = None

    async def run(self, function: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        if self._mode == "thread":
            return await asyncio.to_thread(function, *args, **kwargs)
        pool = self._process_pool()
        # A partial of module-level functions pickles; a closure would not.
        call = functools.partial(_refusing, function, *args, **kwargs)
        try:
            outcome = await asyncio.get_running_loop().run_in_executor(pool, call)
        except BrokenProcessPool:
            # A worker died (killed, out of memory): the next call gets a new pool.
            self._pool = None
            pool.shutdown(wait=False, cancel_futures=True)
            raise Unavailable(
                "the feed worker stopped: retry", reason="FEED_WORKER_RESTARTED"
            ) from None
        if isinstance(outcome, _Refused):
            raise InvalidArgument(outcome.violations, outcome.message, reason=outcome.reason)
        return outcome

    def _process_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # Spawned, never forked: a fork of a process running gRPC's threads
            # may inherit their locks held. Niced, so that on a busy machine the
            # CPU goes first to the calls being served, imports taking the rest.
            self._pool = ProcessPoolExecutor(
                max_workers=self._workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=os.nice,
                initargs=(_WORKER_NICENESS,),
            )
        return self._pool
