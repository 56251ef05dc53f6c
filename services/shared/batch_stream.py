"""The ingestion protocol's stream, once for every service that takes one (listener
events, site events): batches of a client stream are prepared concurrently, up to a
bound, and each is acknowledged in the order it arrived once its work is durable. A batch
that breaks the protocol's limits ends the stream with its error, after the batches
before it have been acknowledged.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol, TypeVar

from services.shared.errors import DomainError, FieldViolation, InvalidArgument

# Every batch of the protocol: at most 4 MiB, whatever its records.
MAX_BATCH_BYTES = 4 * 1024 * 1024


class Batch(Protocol):
    @property
    def sequence(self) -> int: ...

    def ByteSize(self) -> int: ...


M = TypeVar("M", bound=Batch)
R = TypeVar("R")
_InFlight = tuple[int, asyncio.Future[R]] | DomainError | None


def batch_size_problem(records: int, size: int, maximum: int, field: str) -> InvalidArgument | None:
    """Why a batch of `records` records and `size` bytes breaks the limits, if it does;
    `field` names the repeated field that holds the records."""
    if not 1 <= records <= maximum:
        return InvalidArgument(
            [FieldViolation(field, f"a batch holds 1 to {maximum:,} {field}")],
            f"a batch of {records:,} {field}: send 1 to {maximum:,}",
            reason="BATCH_TOO_LARGE" if records else "BATCH_EMPTY",
        )
    if size > MAX_BATCH_BYTES:
        return InvalidArgument(
            [FieldViolation(field, f"a batch is at most {MAX_BATCH_BYTES:,} bytes")],
            f"a batch of {size:,} bytes: send at most {MAX_BATCH_BYTES:,} (4 MiB)",
            reason="BATCH_TOO_LARGE",
        )
    return None


async def acknowledged_in_order(
    messages: AsyncIterator[M],
    check: Callable[[M], DomainError | None],
    start: Callable[[M], Awaitable[R]],
    max_in_flight: int,
) -> AsyncIterator[tuple[int, R]]:
    """Yields (sequence, outcome) per batch, in arrival order, each once `start`'s work
    for it is done; at most `max_in_flight` batches are read ahead of their answer.

    `start` is called in arrival order, so work that must commit in order can chain
    itself there. A batch `check` refuses ends the stream with that error once the
    batches before it are answered; a broken client stream ends it with its error.
    """
    slots = asyncio.Semaphore(max_in_flight)
    in_flight: asyncio.Queue[_InFlight[R]] = asyncio.Queue()

    async def read() -> None:
        iterator = aiter(messages)
        while True:
            await slots.acquire()
            try:
                message = await anext(iterator)
            except StopAsyncIteration:
                await in_flight.put(None)
                return
            problem = check(message)
            if problem is not None:
                await in_flight.put(problem)
                return
            task = asyncio.ensure_future(start(message))
            await in_flight.put((message.sequence, task))

    reader = asyncio.create_task(read())
    try:
        while True:
            item = await _next_or_reader_failure(in_flight, reader)
            if item is None:
                break
            if isinstance(item, DomainError):
                raise item
            sequence, task = item
            yield sequence, await task
            slots.release()
    finally:
        reader.cancel()
        while not in_flight.empty():
            leftover = in_flight.get_nowait()
            if isinstance(leftover, tuple):
                leftover[1].cancel()


async def _next_or_reader_failure(
    queue: asyncio.Queue[_InFlight[R]], reader: asyncio.Task[None]
) -> _InFlight[R]:
    """The next item in flight; if the reader failed (the client's stream broke), that."""
    getter = asyncio.ensure_future(queue.get())
    await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
    if getter.done():
        return getter.result()
    getter.cancel()
    reader.result()
    return await queue.get()
