"""Typed clients of the services attribution calls: what it needs of each, nothing more.

Asked with the platform administrator's token where no caller stands behind the call
(exposures relayed from analytics) or where the caller may not read campaigns (an
ingest key sending third-party exposures), with the tenant named in the request.
Reports ask with their caller's credential: the peers apply their own permissions and
row-level security, so another tenant's campaign is NOT_FOUND there, and so here.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc
from grpc import aio
from podmesh.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from podmesh.campaign.v1 import campaign_pb2, campaign_pb2_grpc

from services.shared.client_ip import ID_BYTES
from services.shared.errors import Unavailable
from services.shared.peers import Metadata, forwarded, peer_error
from services.shared.protobuf import from_timestamp, instant

PEER_TIMEOUT_S = 5.0
# ListSlotPlacements and BatchGetLineItems take at most this many ids per call.
SLOTS_PER_CALL = 500
LINE_ITEMS_PER_CALL = 1_000


# Pacing counts a campaign's deliveries in analytics first.
# Streaming a large campaign's households takes a few seconds of the peer's time.
HOUSEHOLDS_TIMEOUT_S = 60.0
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


@dataclass(frozen=True)
class SlotBooking:
    """A placement that reserved an ad slot: what turns the slot's deliveries into
    exposures of its line item."""

    placement_id: uuid.UUID
    line_item_id: uuid.UUID
    campaign_id: uuid.UUID
    ad_slot_id: uuid.UUID
    podcast_id: uuid.UUID
    episode_id: uuid.UUID
    flight_start: datetime
    flight_end: datetime
    # Set for a cancelled placement: its deliveries count until then.
    cancel_time: datetime | None
    # Completed or cancelled: nothing about it changes any more.
    final: bool

    def covers(self, moment: datetime) -> bool:
        end = (
            self.flight_end if self.cancel_time is None else min(self.flight_end, self.cancel_time)
        )
        return self.flight_start <= moment < end


@dataclass(frozen=True)
class LineItemFlight:
    line_item_id: uuid.UUID
    campaign_id: uuid.UUID
    flight_start: datetime | None
    flight_end: datetime | None


class Campaigns:
    """The campaign service. Methods that take `credentials` ask with the caller's own;
    the others (exposures, which no caller stands behind) with the platform token."""

    def __init__(self, channel: aio.Channel, admin_token: str) -> None:
        self._stub = campaign_pb2_grpc.CampaignServiceStub(channel)
        self._credentials: Metadata = (("authorization", f"Bearer {admin_token}"),)

    async def slot_bookings(
        self, tenant_id: uuid.UUID, ad_slot_ids: Sequence[uuid.UUID]
    ) -> list[SlotBooking]:
        """Every placement that reserved one of the slots (ListSlotPlacements)."""
        bookings: list[SlotBooking] = []
        for start in range(0, len(ad_slot_ids), SLOTS_PER_CALL):
            chunk = ad_slot_ids[start : start + SLOTS_PER_CALL]
            try:
                response = await self._stub.ListSlotPlacements(
                    campaign_pb2.ListSlotPlacementsRequest(
                        tenant_id=str(tenant_id), ad_slot_ids=[str(s) for s in chunk]
                    ),
                    metadata=forwarded(self._credentials),
                    timeout=PEER_TIMEOUT_S,
                )
            except grpc.aio.AioRpcError as error:
                raise _unavailable(error) from None
            bookings.extend(_booking(p) for p in response.placements)
        return bookings

    async def line_items(
        self, tenant_id: uuid.UUID, line_item_ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, LineItemFlight]:
        """Those of the line items that exist in the tenant (BatchGetLineItems)."""
        found: dict[uuid.UUID, LineItemFlight] = {}
        for start in range(0, len(line_item_ids), LINE_ITEMS_PER_CALL):
            chunk = line_item_ids[start : start + LINE_ITEMS_PER_CALL]
            try:
                response = await self._stub.BatchGetLineItems(
                    campaign_pb2.BatchGetLineItemsRequest(
                        tenant_id=str(tenant_id), line_item_ids=[str(i) for i in chunk]
                    ),
                    metadata=forwarded(self._credentials),
                    timeout=PEER_TIMEOUT_S,
                )
            except grpc.aio.AioRpcError as error:
                raise _unavailable(error) from None
            for item in response.line_items:
                line_item_id = uuid.UUID(item.id)
                found[line_item_id] = LineItemFlight(
                    line_item_id,
                    uuid.UUID(item.campaign_id),
                    instant(item, "flight_start_time"),
                    instant(item, "flight_end_time"),
                )
        return found

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
            flight_start=from_timestamp(c.flight_start_time),
            flight_end=from_timestamp(c.flight_end_time),
            window_days=c.attribution_window_days,
            model=c.attribution_model,
        )

    async def campaign_line_items(
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


def _booking(p: campaign_pb2.Placement) -> SlotBooking:
    cancelled = p.state == campaign_pb2.PLACEMENT_STATE_CANCELLED
    return SlotBooking(
        placement_id=uuid.UUID(p.id),
        line_item_id=uuid.UUID(p.line_item_id),
        campaign_id=uuid.UUID(p.campaign_id),
        ad_slot_id=uuid.UUID(p.ad_slot_id),
        podcast_id=uuid.UUID(p.podcast_id),
        episode_id=uuid.UUID(p.episode_id),
        flight_start=from_timestamp(p.flight_start_time),
        flight_end=from_timestamp(p.flight_end_time),
        cancel_time=from_timestamp(p.update_time) if cancelled else None,
        final=cancelled or p.state == campaign_pb2.PLACEMENT_STATE_COMPLETED,
    )


def _unavailable(error: grpc.aio.AioRpcError) -> Unavailable:
    # The credential is the platform's and the request ours: any failure is the
    # campaign service's state, not the caller's input.
    return Unavailable(
        f"the campaign service cannot answer now ({error.code().name}); send again later"
    )
