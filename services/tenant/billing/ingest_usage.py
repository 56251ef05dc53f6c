"""The events analytics accepted for a tenant in a month: asked of the analytics
service (GetIngestUsage), which owns the count, with the platform administrator's
token, since the usage reporter meters every tenant and acts for no user."""

from __future__ import annotations

import uuid
from datetime import date

import grpc
from grpc import aio
from podmesh.analytics.v1 import analytics_pb2, analytics_pb2_grpc

from services.shared.errors import Unavailable
from services.shared.peers import forwarded

TIMEOUT_S = 5.0


class IngestUsage:
    def __init__(self, channel: aio.Channel, admin_token: str) -> None:
        self._stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
        self._credentials = (("authorization", f"Bearer {admin_token}"),)

    async def accepted_events(self, tenant_id: uuid.UUID, month: date) -> int:
        """Raises Unavailable when analytics cannot answer: the count is never guessed,
        since it is billed."""
        try:
            response = await self._stub.GetIngestUsage(
                analytics_pb2.GetIngestUsageRequest(
                    tenant_id=str(tenant_id), year=month.year, month=month.month
                ),
                metadata=forwarded(self._credentials),
                timeout=TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as error:
            # Every failure is ours, not the caller's: the credential is the platform's.
            raise Unavailable(
                f"the analytics service cannot give the usage now ({error.code().name}); "
                "send again later"
            ) from None
        return int(response.accepted_events)
