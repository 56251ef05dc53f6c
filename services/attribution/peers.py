"""What attribution asks other services, always with its caller's own credential
(services.shared.peers), so each peer applies its own permissions and row-level
security to exactly the caller. One method per RPC asked."""

from __future__ import annotations

import uuid

import grpc
from grpc import aio
from podmesh.campaign.v1 import campaign_pb2, campaign_pb2_grpc

from services.shared.peers import Metadata, forwarded, peer_error

PEER_TIMEOUT_S = 5.0


class CampaignPeer:
    def __init__(self, channel: aio.Channel) -> None:
        self._stub = campaign_pb2_grpc.CampaignServiceStub(channel)

    async def sponsor(self, sponsor_id: uuid.UUID, credentials: Metadata) -> campaign_pb2.Sponsor:
        """The caller's tenant's sponsor; NotFound when it has none with this id."""
        try:
            response = await self._stub.GetSponsor(
                campaign_pb2.GetSponsorRequest(sponsor_id=str(sponsor_id)),
                metadata=forwarded(credentials),
                timeout=PEER_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as error:
            raise peer_error(error, "campaign", not_found=("sponsor", str(sponsor_id))) from None
        return response.sponsor
