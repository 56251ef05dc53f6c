"""What the attribution service asks other services, with its caller's credential. The
peers apply their own permissions and row-level security: another tenant's campaign is
NOT_FOUND there, and so here."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc
from grpc import aio
from podmesh.campaign.v1 import campaign_pb2, campaign_pb2_grpc

from services.shared.peers import Metadata, forwarded, peer_error

PEER_TIMEOUT_S = 5.0
# Pacing counts a campaign's deliveries in analytics first.
PACING_TIMEOUT_S = 20.0
_PAGE = 200
_MAX_PAGES = 50


@dataclass(frozen=True)
class CampaignFacts:
    id: uuid.UUID
    sponsor_id: uuid.UUID
    currency: str
    flight_start: datetime
    flight_end: datetime
    window_days: int
    model: int


@dataclass(frozen=True)
class LineItemFacts:
    id: uuid.UUID
    name: str
    pricing_model: int
    rate_minor: int
    promo_code: str


@dataclass(frozen=True)
class Spend:
    """Pacing's spend to date (None where pacing gives none, e.g. CPA line items)."""

    total_minor: int | None
    by_line_item: dict[uuid.UUID, int | None]


def _instant(ts: object) -> datetime:
    assert hasattr(ts, "ToDatetime")
    value: datetime = ts.ToDatetime(tzinfo=UTC)
    return value


class Campaigns:
    def __init__(self, channel: aio.Channel) -> None:
        self._stub = campaign_pb2_grpc.CampaignServiceStub(channel)

    async def campaign(self, campaign_id: uuid.UUID, credentials: Metadata) -> CampaignFacts:
        try:
            c = (
                await self._stub.GetCampaign(
                    campaign_pb2.GetCampaignRequest(campaign_id=str(campaign_id)),
                    metadata=forwarded(credentials),
                    timeout=PEER_TIMEOUT_S,
                )
            ).campaign
        except grpc.aio.AioRpcError as error:
            raise peer_error(error, "campaign", not_found=("campaign", str(campaign_id))) from None
        return CampaignFacts(
            id=uuid.UUID(c.id),
            sponsor_id=uuid.UUID(c.sponsor_id),
            currency=c.budget.currency_code,
            flight_start=_instant(c.flight_start_time),
            flight_end=_instant(c.flight_end_time),
            window_days=c.attribution_window_days,
            model=c.attribution_model,
        )

    async def line_items(
        self, campaign_id: uuid.UUID, credentials: Metadata
    ) -> list[LineItemFacts]:
        out: list[LineItemFacts] = []
        token = ""
        for _ in range(_MAX_PAGES):
            try:
                response = await self._stub.ListLineItems(
                    campaign_pb2.ListLineItemsRequest(
                        campaign_id=str(campaign_id), page_size=_PAGE, page_token=token
                    ),
                    metadata=forwarded(credentials),
                    timeout=PEER_TIMEOUT_S,
                )
            except grpc.aio.AioRpcError as error:
                raise peer_error(error, "campaign") from None
            out.extend(
                LineItemFacts(
                    id=uuid.UUID(li.id),
                    name=li.display_name,
                    pricing_model=li.pricing_model,
                    rate_minor=li.rate.minor_units,
                    promo_code=li.promo_code,
                )
                for li in response.line_items
            )
            token = response.next_page_token
            if not token:
                break
        return out

    async def spend(self, campaign_id: uuid.UUID, credentials: Metadata) -> Spend:
        try:
            response = await self._stub.GetPacing(
                campaign_pb2.GetPacingRequest(campaign_id=str(campaign_id)),
                metadata=forwarded(credentials),
                timeout=PACING_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as error:
            raise peer_error(error, "campaign", not_found=("campaign", str(campaign_id))) from None
        return Spend(
            total_minor=(
                response.pacing.spend.minor_units if response.pacing.HasField("spend") else None
            ),
            by_line_item={
                uuid.UUID(p.line_item_id): (p.spend.minor_units if p.HasField("spend") else None)
                for p in response.line_item_pacings
            },
        )

    async def sponsor_campaign_ids(
        self, sponsor_id: uuid.UUID, credentials: Metadata
    ) -> list[uuid.UUID]:
        out: list[uuid.UUID] = []
        token = ""
        for _ in range(_MAX_PAGES):
            try:
                response = await self._stub.ListCampaigns(
                    campaign_pb2.ListCampaignsRequest(
                        sponsor_id=str(sponsor_id), page_size=_PAGE, page_token=token
                    ),
                    metadata=forwarded(credentials),
                    timeout=PEER_TIMEOUT_S,
                )
            except grpc.aio.AioRpcError as error:
                raise peer_error(error, "campaign") from None
            out.extend(uuid.UUID(c.id) for c in response.campaigns)
            token = response.next_page_token
            if not token:
                break
        return out
