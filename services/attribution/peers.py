"""What the attribution service asks other services, with its caller's credential.
The peers apply their own permissions and row-level security."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

import grpc
from grpc import aio
from podmesh.analytics.v1 import analytics_pb2, analytics_pb2_grpc

from services.shared.client_ip import ID_BYTES
from services.shared.peers import Metadata, forwarded, peer_error

# Streaming a large campaign's households takes a few seconds of the peer's time.
HOUSEHOLDS_TIMEOUT_S = 60.0


class Analytics:
    def __init__(self, channel: aio.Channel) -> None:
        self._stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)

    async def podcast_households(
        self,
        podcast_ids: Sequence[uuid.UUID],
        start: datetime,
        end: datetime,
        credentials: Metadata,
    ) -> AsyncIterator[list[bytes]]:
        """The distinct households with a counted download of the podcasts' episodes
        in [start, end), a chunk at a time (ListPodcastHouseholds)."""
        request = analytics_pb2.ListPodcastHouseholdsRequest(
            podcast_ids=[str(p) for p in podcast_ids]
        )
        request.start_time.FromDatetime(start.astimezone(UTC))
        request.end_time.FromDatetime(end.astimezone(UTC))
        call = self._stub.ListPodcastHouseholds(
            request, metadata=forwarded(credentials), timeout=HOUSEHOLDS_TIMEOUT_S
        )
        try:
            async for response in call:
                packed = response.household_ids
                yield [packed[i : i + ID_BYTES] for i in range(0, len(packed), ID_BYTES)]
        except grpc.aio.AioRpcError as error:
            raise peer_error(error, "analytics") from None
