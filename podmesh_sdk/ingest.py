"""The resending windowed ingestion client of the README's "Ingestion protocol".

It keeps up to `in_flight` batches unacknowledged on one StreamListenerEvents stream.
After a disconnect (the server, the gateway or the network went away, or the key's
rate limit was hit) it opens a new stream and resends every batch not acknowledged
yet, with the same record ids: the server counts a resent record as a duplicate, so
nothing is lost and nothing is counted twice. Batches are drawn from the source only
as the window allows, so a source of millions of records is held a window at a time.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import grpc
from podmesh.analytics.v1 import analytics_pb2 as pb
from podmesh.analytics.v1 import analytics_pb2_grpc

from podmesh_sdk.errors import PodmeshError

# Worth a new stream and a resend. Through Envoy, a server that dies mid-stream
# reaches the client as INTERNAL (RST_STREAM).
RESEND_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL}
)
RESEND_REASONS = frozenset({"RATE_LIMITED"})

Batch = Sequence[pb.ListenerRequest]


@dataclass
class IngestTotals:
    """What the server made of everything sent so far."""

    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    reconnects: int = 0
    batches: int = 0
    rejected_by_reason: Counter[str] = field(default_factory=Counter)
    filtered_by_reason: Counter[str] = field(default_factory=Counter)
    late: int = 0
    countable: int = 0
    # (record id, reason) of each rejected record, in order.
    rejections: list[tuple[str, str]] = field(default_factory=list)

    def add(self, batch: Batch, ack: pb.StreamListenerEventsResponse) -> None:
        self.batches += 1
        self.accepted += ack.accepted_count
        self.duplicates += ack.duplicate_count
        self.rejected += len(ack.rejections)
        self.late += ack.late_count
        self.countable += ack.countable_count
        for rejection in ack.rejections:
            reason = pb.RejectionReason.Name(rejection.reason).removeprefix("REJECTION_REASON_")
            self.rejected_by_reason[reason] += 1
            self.rejections.append((batch[rejection.index].id, reason))
        for filtered in ack.filtered_counts:
            name = pb.FilterReason.Name(filtered.reason).removeprefix("FILTER_REASON_")
            self.filtered_by_reason[name] += filtered.count


def _resendable(error: grpc.aio.AioRpcError) -> bool:
    if error.code() in RESEND_CODES:
        return True
    return PodmeshError.from_rpc(error).reason in RESEND_REASONS


class IngestClient:
    """Streams batches of ListenerRequest until each is acknowledged.

    `stub` is an analytics stub whose channel adds the credential (as `Client`'s
    does), or give `metadata` for a bare channel's stub.
    """

    def __init__(
        self,
        stub: analytics_pb2_grpc.AnalyticsServiceAsyncStub,
        *,
        metadata: Sequence[tuple[str, str]] = (),
        in_flight: int = 4,
        max_reconnects: int = 100,
        backoff_cap_s: float = 5.0,
        on_ack: Callable[[IngestTotals, Batch], None] | None = None,
    ) -> None:
        if not 1 <= in_flight <= 8:
            raise ValueError("in_flight must be 1 to 8 (the server reads 8 batches ahead)")
        self._stub = stub
        self._metadata = tuple(metadata)
        self._in_flight = in_flight
        self._max_reconnects = max_reconnects
        self._backoff_cap_s = backoff_cap_s
        self.on_ack = on_ack
        self.totals = IngestTotals()

    async def send(self, source: Iterable[Batch]) -> IngestTotals:
        """Sends every batch of `source`; returns once all are acknowledged.

        Raises grpc.aio.AioRpcError for what a resend cannot fix (bad credentials,
        a batch over the limits, the monthly quota) or after `max_reconnects`.
        """
        totals = self.totals = IngestTotals()
        new_batches = iter(source)
        unacked: dict[int, Batch] = {}
        numbers = itertools.count()
        while True:
            try:
                await self._stream(new_batches, unacked, numbers, totals)
                if not unacked:
                    return totals
            except grpc.aio.AioRpcError as error:
                if not _resendable(error) or totals.reconnects >= self._max_reconnects:
                    raise
                totals.reconnects += 1
                await asyncio.sleep(min(0.1 * 2 ** min(totals.reconnects, 10), self._backoff_cap_s))

    async def _stream(
        self,
        new_batches: Iterator[Batch],
        unacked: dict[int, Batch],
        numbers: Iterator[int],
        totals: IngestTotals,
    ) -> None:
        window = asyncio.Semaphore(self._in_flight)
        sent: dict[int, int] = {}  # stream sequence -> our batch number
        resend = list(unacked)
        # Written to with call.write(), not from a request iterator.
        call = self._stub.StreamListenerEvents(metadata=self._metadata)  # type: ignore[call-arg]

        async def write() -> None:
            try:
                await write_batches()
            except asyncio.InvalidStateError:
                # The call ended (through an interceptor a write then says so): the
                # reader gets its status and decides about resending.
                return

        async def write_batches() -> None:
            for sequence in itertools.count(1):
                await window.acquire()
                if resend:
                    number = resend.pop(0)
                else:
                    batch = next(new_batches, None)
                    if batch is None:
                        await call.done_writing()
                        return
                    number = next(numbers)
                    unacked[number] = batch
                sent[sequence] = number
                await call.write(
                    pb.StreamListenerEventsRequest(sequence=sequence, requests=unacked[number])
                )

        def writer_done(task: asyncio.Task[None]) -> None:
            # A source that raises would leave the reader waiting for acknowledgements
            # of batches never sent: end the stream so the error surfaces.
            if not task.cancelled() and task.exception() is not None:
                call.cancel()

        writer = asyncio.create_task(write())
        writer.add_done_callback(writer_done)
        try:
            async for ack in call:
                batch = unacked.pop(sent.pop(ack.sequence))
                totals.add(batch, ack)
                window.release()
                if self.on_ack is not None:
                    self.on_ack(totals, batch)
            await writer
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            failure = writer.exception() if writer.done() and not writer.cancelled() else None
            if failure is not None:
                raise failure from None
            raise
        finally:
            writer.cancel()
