"""Maps CampaignService protobuf messages to campaign operations and back; nothing else."""

from __future__ import annotations

import enum
import uuid
import weakref
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

from podmesh.campaign.v1 import campaign_pb2 as pb
from podmesh.campaign.v1 import campaign_pb2_grpc
from podmesh.type.v1 import money_pb2

from services.campaign.adops import AdOps
from services.campaign.domain import (
    AdPosition,
    AdType,
    Campaign,
    CampaignState,
    Deal,
    DealEvent,
    DealStage,
    LineItem,
    Money,
    PacingStrategy,
    Placement,
    PlacementState,
    PricingModel,
    Sponsor,
    Targeting,
)
from services.campaign.matching import Match
from services.campaign.pacing import Pacing, PacingReport
from services.campaign.placements import BookingRequest
from services.shared.context import current_tenant_id
from services.shared.errors import InvalidArgument
from services.shared.peers import credentials
from services.shared.protobuf import from_timestamp, timestamp
from services.shared.validation import Violations, page_size, parse_uuid

E = TypeVar("E", bound=enum.IntEnum)
_NIL = uuid.UUID(int=0)


# What one lookup by platform services may ask for (ListSlotPlacements,
# BatchGetLineItems): one batch of the asking service's input.
MAX_SLOTS_PER_LOOKUP = 500
MAX_LINE_ITEMS_PER_LOOKUP = 1_000


def _enum(kind: type[E], value: int, field: str, v: Violations) -> E | None:
    if value == 0:
        return None
    try:
        return kind(value)
    except ValueError:
        v.add(field, f"has no value {value}")
        return None


def _enums(kind: type[E], values: Iterable[int], field: str) -> list[E]:
    v = Violations()
    out = [e for i, x in enumerate(values) if (e := _enum(kind, x, f"{field}[{i}]", v))]
    v.raise_if_any()
    return out


def _uuid(value: str, field: str, v: Violations) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        v.add(field, "must be a UUID")
        return None


def _optional_uuid(value: str, field: str, v: Violations | None = None) -> uuid.UUID | None:
    if not value:
        return None
    if v is None:
        return parse_uuid(value, field)
    return _uuid(value, field, v)


def _uuids(values: Iterable[str], field: str, v: Violations) -> tuple[uuid.UUID, ...]:
    out = [_uuid(x, f"{field}[{i}]", v) for i, x in enumerate(values)]
    return tuple(x for x in out if x is not None)


def _tenant_lookup(
    tenant_text: str, id_texts: Sequence[str], field: str, limit: int
) -> tuple[uuid.UUID, tuple[uuid.UUID, ...]]:
    """The tenant and ids of a platform-only lookup (another service asking for a tenant)."""
    v = Violations()
    tenant_id = _uuid(tenant_text, "tenant_id", v)
    v.check(1 <= len(id_texts) <= limit, field, f"give 1 to {limit}")
    ids = _uuids(id_texts, field, v)
    v.raise_if_any()
    assert tenant_id is not None
    return tenant_id, ids


def _money_to_pb(value: Money | None) -> money_pb2.Money | None:
    if value is None:
        return None
    return money_pb2.Money(currency_code=value.currency_code, minor_units=value.minor_units)


def _money(message: Any, field: str) -> Money | None:
    if not message.HasField(field):
        return None
    value: money_pb2.Money = getattr(message, field)
    return Money(value.currency_code.strip(), value.minor_units)


def _time(message: Any, field: str) -> Any:
    return from_timestamp(getattr(message, field)) if message.HasField(field) else None


# Sponsors


def sponsor_to_pb(s: Sponsor) -> pb.Sponsor:
    return pb.Sponsor(
        id=str(s.id),
        display_name=s.display_name,
        domain=s.domain,
        iab_categories=s.iab_categories,
        competitive_category=s.competitive_category,
        contact_name=s.contact_name,
        contact_email=s.contact_email,
        create_time=timestamp(s.created_at),
        update_time=timestamp(s.updated_at),
    )


def sponsor_from_pb(m: pb.Sponsor, id_field: str | None = None) -> Sponsor:
    sponsor_id = parse_uuid(m.id, id_field) if id_field else _NIL
    return Sponsor(
        id=sponsor_id,
        display_name=m.display_name,
        domain=m.domain,
        iab_categories=tuple(m.iab_categories),
        competitive_category=m.competitive_category,
        contact_name=m.contact_name,
        contact_email=m.contact_email,
    )


# Campaigns


def campaign_to_pb(c: Campaign) -> pb.Campaign:
    return pb.Campaign(
        id=str(c.id),
        sponsor_id=str(c.sponsor_id),
        display_name=c.display_name,
        state=int(c.state),  # type: ignore[arg-type]
        budget=_money_to_pb(c.budget),
        flight_start_time=timestamp(c.flight_start),
        flight_end_time=timestamp(c.flight_end),
        attribution_window_days=c.attribution_window_days,
        attribution_model=c.attribution_model,  # type: ignore[arg-type]
        external_order_number=c.external_order_number,
        notes=c.notes,
        create_time=timestamp(c.created_at),
        update_time=timestamp(c.updated_at),
    )


def campaign_from_pb(m: pb.Campaign, id_field: str | None = None) -> Campaign:
    v = Violations()
    campaign_id = _uuid(m.id, id_field, v) if id_field else _NIL
    sponsor_id = _NIL if id_field else _uuid(m.sponsor_id, "campaign.sponsor_id", v)
    state = _enum(CampaignState, m.state, "campaign.state", v)
    v.raise_if_any()
    return Campaign(
        id=campaign_id or _NIL,
        sponsor_id=sponsor_id or _NIL,
        display_name=m.display_name,
        state=state or CampaignState.DRAFT,
        budget=_money(m, "budget"),
        flight_start=_time(m, "flight_start_time"),
        flight_end=_time(m, "flight_end_time"),
        attribution_window_days=m.attribution_window_days,
        attribution_model=m.attribution_model,
        external_order_number=m.external_order_number,
        notes=m.notes,
    )


# Line items


def targeting_to_pb(t: Targeting) -> pb.Targeting:
    return pb.Targeting(
        podcast_ids=[str(i) for i in t.podcast_ids],
        episode_ids=[str(i) for i in t.episode_ids],
        categories=t.categories,
        country_codes=t.country_codes,
        positions=[int(p) for p in t.positions],  # type: ignore[misc]
        excluded_podcast_ids=[str(i) for i in t.excluded_podcast_ids],
        exclude_explicit=t.exclude_explicit,
    )


def _targeting(m: pb.Targeting, field: str, v: Violations) -> Targeting:
    positions = []
    for i, p in enumerate(m.positions):
        try:
            positions.append(AdPosition(p))
        except ValueError:
            v.add(f"{field}.positions[{i}]", f"has no value {p}")
    return Targeting(
        podcast_ids=_uuids(m.podcast_ids, f"{field}.podcast_ids", v),
        episode_ids=_uuids(m.episode_ids, f"{field}.episode_ids", v),
        categories=tuple(m.categories),
        country_codes=tuple(m.country_codes),
        positions=tuple(positions),
        excluded_podcast_ids=_uuids(m.excluded_podcast_ids, f"{field}.excluded_podcast_ids", v),
        exclude_explicit=m.exclude_explicit,
    )


def line_item_to_pb(li: LineItem) -> pb.LineItem:
    return pb.LineItem(
        id=str(li.id),
        campaign_id=str(li.campaign_id),
        display_name=li.display_name,
        state=int(li.state),  # type: ignore[arg-type]
        ad_type=int(li.ad_type or 0),  # type: ignore[arg-type]
        pricing_model=int(li.pricing_model or 0),  # type: ignore[arg-type]
        rate=_money_to_pb(li.rate),
        impression_goal=li.impression_goal,
        impression_cap=li.impression_cap,
        pacing_strategy=int(li.pacing_strategy),  # type: ignore[arg-type]
        priority=li.priority,
        flight_start_time=timestamp(li.flight_start),
        flight_end_time=timestamp(li.flight_end),
        targeting=targeting_to_pb(li.targeting),
        frequency_cap=pb.FrequencyCap(
            max_impressions=li.frequency_cap_max, period_days=li.frequency_cap_days
        ),
        promo_code=li.promo_code,
        vanity_url=li.vanity_url,
        create_time=timestamp(li.created_at),
        update_time=timestamp(li.updated_at),
    )


def line_item_from_pb(m: pb.LineItem, id_field: str | None = None) -> LineItem:
    v = Violations()
    line_item_id = _uuid(m.id, id_field, v) if id_field else _NIL
    campaign_id = _NIL if id_field else _uuid(m.campaign_id, "line_item.campaign_id", v)
    state = _enum(CampaignState, m.state, "line_item.state", v)
    ad_type = _enum(AdType, m.ad_type, "line_item.ad_type", v)
    pricing = _enum(PricingModel, m.pricing_model, "line_item.pricing_model", v)
    pacing = _enum(PacingStrategy, m.pacing_strategy, "line_item.pacing_strategy", v)
    targeting = _targeting(m.targeting, "line_item.targeting", v)
    v.raise_if_any()
    return LineItem(
        id=line_item_id or _NIL,
        campaign_id=campaign_id or _NIL,
        display_name=m.display_name,
        state=state or CampaignState.DRAFT,
        ad_type=ad_type,
        pricing_model=pricing,
        rate=_money(m, "rate"),
        impression_goal=m.impression_goal,
        impression_cap=m.impression_cap,
        pacing_strategy=pacing or PacingStrategy.EVEN,
        priority=m.priority,
        flight_start=_time(m, "flight_start_time"),
        flight_end=_time(m, "flight_end_time"),
        targeting=targeting,
        frequency_cap_max=m.frequency_cap.max_impressions,
        frequency_cap_days=m.frequency_cap.period_days,
        promo_code=m.promo_code,
        vanity_url=m.vanity_url,
    )


# Placements


def placement_to_pb(p: Placement) -> pb.Placement:
    return pb.Placement(
        id=str(p.id),
        line_item_id=str(p.line_item_id),
        campaign_id=str(p.campaign_id),
        episode_id=str(p.episode_id),
        podcast_id=str(p.podcast_id),
        ad_slot_id=str(p.ad_slot_id or ""),
        position=int(p.position),  # type: ignore[arg-type]
        start_byte=p.start_byte,
        end_byte=p.end_byte,
        state=int(p.state),  # type: ignore[arg-type]
        impression_goal=p.impression_goal,
        book_time=timestamp(p.book_time),
        create_time=timestamp(p.created_at),
        update_time=timestamp(p.updated_at),
        makegood_for_line_item_id=str(p.makegood_for_line_item_id or ""),
        flight_start_time=timestamp(p.flight_start),
        flight_end_time=timestamp(p.flight_end),
    )


def _position(value: int, field: str, v: Violations) -> AdPosition:
    try:
        return AdPosition(value)
    except ValueError:
        v.add(field, f"has no value {value}")
        return AdPosition.UNSPECIFIED


def placement_from_pb(m: pb.Placement, id_field: str | None = None) -> Placement:
    v = Violations()
    placement_id = _uuid(m.id, id_field, v) if id_field else _NIL
    line_item_id = _NIL if id_field else _uuid(m.line_item_id, "placement.line_item_id", v)
    episode_id = _NIL if id_field else _uuid(m.episode_id, "placement.episode_id", v)
    slot_id = _optional_uuid(m.ad_slot_id, "placement.ad_slot_id", v)
    position = _position(m.position, "placement.position", v)
    v.raise_if_any()
    return Placement(
        id=placement_id or _NIL,
        line_item_id=line_item_id or _NIL,
        episode_id=episode_id or _NIL,
        ad_slot_id=slot_id,
        position=position,
        impression_goal=m.impression_goal,
    )


# Pacing and matches


def pacing_to_pb(p: Pacing, *, with_days: bool = True) -> pb.Pacing:
    return pb.Pacing(
        line_item_id=str(p.line_item_id or ""),
        campaign_id=str(p.campaign_id),
        flight_start_time=timestamp(p.flight_start),
        flight_end_time=timestamp(p.flight_end),
        as_of_time=timestamp(p.as_of),
        flight_elapsed_fraction=p.elapsed_fraction,
        impression_goal=p.goal,
        delivered_impressions=p.delivered,
        expected_impressions=p.expected,
        pace_ratio=p.pace_ratio,
        status=int(p.status),  # type: ignore[arg-type]
        projected_impressions=p.projected,
        spend=_money_to_pb(p.spend),
        daily_deliveries=[
            pb.DailyDelivery(
                day_start_time=timestamp(d.day_start),
                delivered_impressions=d.delivered,
                expected_cumulative_impressions=d.expected_cumulative,
            )
            for d in (p.daily if with_days else ())
        ],
        shortfall_impressions=p.shortfall,
        makegood_delivered_impressions=p.makegood_delivered,
        spend_note=p.spend_note,
        delivery_note=p.delivery_note,
    )


def match_to_pb(m: Match) -> pb.PodcastMatch:
    return pb.PodcastMatch(
        podcast_id=str(m.podcast_id),
        podcast_title=m.podcast_title,
        score=m.score,
        components=[
            pb.ScoreComponent(
                factor=int(c.factor),  # type: ignore[arg-type]
                value=c.value,
                weight=c.weight,
                contribution=c.contribution,
                explanation=c.explanation,
            )
            for c in m.components
        ],
        estimated_impressions=m.estimated_impressions,
        estimated_cost=_money_to_pb(m.estimated_cost),
        available_slot_count=m.available_slot_count,
    )


# Deals


def deal_to_pb(d: Deal) -> pb.Deal:
    return pb.Deal(
        id=str(d.id),
        display_name=d.display_name,
        sponsor_id=str(d.sponsor_id),
        campaign_id=str(d.campaign_id or ""),
        stage=int(d.stage),  # type: ignore[arg-type]
        amount=_money_to_pb(d.amount),
        owner_user_id=d.owner_user_id,
        expected_close_time=timestamp(d.expected_close_at),
        notes=d.notes,
        stage_change_time=timestamp(d.stage_changed_at),
        create_time=timestamp(d.created_at),
        update_time=timestamp(d.updated_at),
    )


def deal_from_pb(m: pb.Deal, id_field: str | None = None) -> Deal:
    v = Violations()
    deal_id = _uuid(m.id, id_field, v) if id_field else _NIL
    sponsor_id = _NIL if id_field else _uuid(m.sponsor_id, "deal.sponsor_id", v)
    campaign_id = _optional_uuid(m.campaign_id, "deal.campaign_id", v)
    v.raise_if_any()
    return Deal(
        id=deal_id or _NIL,
        display_name=m.display_name,
        sponsor_id=sponsor_id or _NIL,
        campaign_id=campaign_id,
        amount=_money(m, "amount"),
        owner_user_id=m.owner_user_id,
        expected_close_at=_time(m, "expected_close_time"),
        notes=m.notes,
    )


def deal_event_to_pb(e: DealEvent) -> pb.DealEvent:
    return pb.DealEvent(
        id=str(e.id),
        deal_id=str(e.deal_id),
        from_stage=int(e.from_stage),  # type: ignore[arg-type]
        to_stage=int(e.to_stage),  # type: ignore[arg-type]
        event_time=timestamp(e.event_time),
        actor_type=e.actor_type,
        actor_id=e.actor_id,
        note=e.note,
    )


def _state_given(paths: Iterable[str], state: int, field: str) -> None:
    if "state" in paths and not state:
        raise InvalidArgument.field(field, "is required when the mask names it")


class PacingAnswers:
    """GetPacing answers, each kept while the report it was made from lives: the pacing
    cache hands the same report to every caller for a few seconds, and making the
    answer of a campaign's report took more CPU than the rest of such a call. An answer
    goes when its report does (the cache dropped it, or there is no cache)."""

    def __init__(self) -> None:
        self._answers: dict[
            int, tuple[weakref.ReferenceType[PacingReport], pb.GetPacingResponse]
        ] = {}

    def answer(self, report: PacingReport) -> pb.GetPacingResponse:
        key = id(report)
        kept = self._answers.get(key)
        if kept is not None and kept[0]() is report:
            return kept[1]
        answer = pb.GetPacingResponse(
            pacing=pacing_to_pb(report.pacing),
            line_item_pacings=[pacing_to_pb(p, with_days=False) for p in report.line_items],
        )
        self._answers[key] = (weakref.ref(report, lambda _: self._answers.pop(key, None)), answer)
        return answer

    def __len__(self) -> int:
        return len(self._answers)


class CampaignServicer(campaign_pb2_grpc.CampaignServiceServicer):
    def __init__(self, ops: AdOps, background: Sequence[object] = ()) -> None:
        self._ops = ops
        self._pacing_answers = PacingAnswers()
        # The service's background jobs live as long as the servicer the server holds.
        self._background = tuple(background)

    # Sponsors

    async def CreateSponsor(
        self, request: pb.CreateSponsorRequest, context: Any
    ) -> pb.CreateSponsorResponse:
        sponsor = await self._ops.create_sponsor(
            current_tenant_id(), sponsor_from_pb(request.sponsor)
        )
        return pb.CreateSponsorResponse(sponsor=sponsor_to_pb(sponsor))

    async def GetSponsor(
        self, request: pb.GetSponsorRequest, context: Any
    ) -> pb.GetSponsorResponse:
        sponsor = await self._ops.get_sponsor(
            current_tenant_id(), parse_uuid(request.sponsor_id, "sponsor_id")
        )
        return pb.GetSponsorResponse(sponsor=sponsor_to_pb(sponsor))

    async def ListSponsors(
        self, request: pb.ListSponsorsRequest, context: Any
    ) -> pb.ListSponsorsResponse:
        sponsors, token = await self._ops.list_sponsors(
            current_tenant_id(),
            request.competitive_category,
            page_size(request.page_size),
            request.page_token,
        )
        return pb.ListSponsorsResponse(
            sponsors=[sponsor_to_pb(s) for s in sponsors], next_page_token=token
        )

    async def UpdateSponsor(
        self, request: pb.UpdateSponsorRequest, context: Any
    ) -> pb.UpdateSponsorResponse:
        sponsor = await self._ops.update_sponsor(
            current_tenant_id(),
            sponsor_from_pb(request.sponsor, "sponsor.id"),
            list(request.update_mask.paths),
        )
        return pb.UpdateSponsorResponse(sponsor=sponsor_to_pb(sponsor))

    async def DeleteSponsor(
        self, request: pb.DeleteSponsorRequest, context: Any
    ) -> pb.DeleteSponsorResponse:
        await self._ops.delete_sponsor(
            current_tenant_id(), parse_uuid(request.sponsor_id, "sponsor_id")
        )
        return pb.DeleteSponsorResponse()

    # Campaigns

    async def CreateCampaign(
        self, request: pb.CreateCampaignRequest, context: Any
    ) -> pb.CreateCampaignResponse:
        campaign = await self._ops.create_campaign(
            current_tenant_id(), campaign_from_pb(request.campaign)
        )
        return pb.CreateCampaignResponse(campaign=campaign_to_pb(campaign))

    async def GetCampaign(
        self, request: pb.GetCampaignRequest, context: Any
    ) -> pb.GetCampaignResponse:
        campaign = await self._ops.get_campaign(
            current_tenant_id(), parse_uuid(request.campaign_id, "campaign_id")
        )
        return pb.GetCampaignResponse(campaign=campaign_to_pb(campaign))

    async def ListCampaigns(
        self, request: pb.ListCampaignsRequest, context: Any
    ) -> pb.ListCampaignsResponse:
        campaigns, token = await self._ops.list_campaigns(
            current_tenant_id(),
            _optional_uuid(request.sponsor_id, "sponsor_id"),
            _enums(CampaignState, request.states, "states"),
            _time(request, "active_time"),
            page_size(request.page_size),
            request.page_token,
        )
        return pb.ListCampaignsResponse(
            campaigns=[campaign_to_pb(c) for c in campaigns], next_page_token=token
        )

    async def UpdateCampaign(
        self, request: pb.UpdateCampaignRequest, context: Any
    ) -> pb.UpdateCampaignResponse:
        _state_given(request.update_mask.paths, request.campaign.state, "campaign.state")
        campaign = await self._ops.update_campaign(
            current_tenant_id(),
            campaign_from_pb(request.campaign, "campaign.id"),
            list(request.update_mask.paths),
        )
        return pb.UpdateCampaignResponse(campaign=campaign_to_pb(campaign))

    async def DeleteCampaign(
        self, request: pb.DeleteCampaignRequest, context: Any
    ) -> pb.DeleteCampaignResponse:
        await self._ops.delete_campaign(
            current_tenant_id(), parse_uuid(request.campaign_id, "campaign_id")
        )
        return pb.DeleteCampaignResponse()

    # Line items

    async def CreateLineItem(
        self, request: pb.CreateLineItemRequest, context: Any
    ) -> pb.CreateLineItemResponse:
        item = await self._ops.create_line_item(
            current_tenant_id(), line_item_from_pb(request.line_item)
        )
        return pb.CreateLineItemResponse(line_item=line_item_to_pb(item))

    async def GetLineItem(
        self, request: pb.GetLineItemRequest, context: Any
    ) -> pb.GetLineItemResponse:
        item = await self._ops.get_line_item(
            current_tenant_id(), parse_uuid(request.line_item_id, "line_item_id")
        )
        return pb.GetLineItemResponse(line_item=line_item_to_pb(item))

    async def ListLineItems(
        self, request: pb.ListLineItemsRequest, context: Any
    ) -> pb.ListLineItemsResponse:
        v = Violations()
        ad_type = _enum(AdType, request.ad_type, "ad_type", v)
        v.raise_if_any()
        items, token = await self._ops.list_line_items(
            current_tenant_id(),
            _optional_uuid(request.campaign_id, "campaign_id"),
            _enums(CampaignState, request.states, "states"),
            ad_type,
            _optional_uuid(request.podcast_id, "podcast_id"),
            page_size(request.page_size),
            request.page_token,
        )
        return pb.ListLineItemsResponse(
            line_items=[line_item_to_pb(i) for i in items], next_page_token=token
        )

    async def UpdateLineItem(
        self, request: pb.UpdateLineItemRequest, context: Any
    ) -> pb.UpdateLineItemResponse:
        _state_given(request.update_mask.paths, request.line_item.state, "line_item.state")
        item = await self._ops.update_line_item(
            current_tenant_id(),
            line_item_from_pb(request.line_item, "line_item.id"),
            list(request.update_mask.paths),
        )
        return pb.UpdateLineItemResponse(line_item=line_item_to_pb(item))

    async def DeleteLineItem(
        self, request: pb.DeleteLineItemRequest, context: Any
    ) -> pb.DeleteLineItemResponse:
        await self._ops.delete_line_item(
            current_tenant_id(), parse_uuid(request.line_item_id, "line_item_id")
        )
        return pb.DeleteLineItemResponse()

    # Placements

    async def CreatePlacement(
        self, request: pb.CreatePlacementRequest, context: Any
    ) -> pb.CreatePlacementResponse:
        placement = await self._ops.create_placement(
            current_tenant_id(), placement_from_pb(request.placement), credentials(context)
        )
        return pb.CreatePlacementResponse(placement=placement_to_pb(placement))

    async def GetPlacement(
        self, request: pb.GetPlacementRequest, context: Any
    ) -> pb.GetPlacementResponse:
        placement = await self._ops.get_placement(
            current_tenant_id(), parse_uuid(request.placement_id, "placement_id")
        )
        return pb.GetPlacementResponse(placement=placement_to_pb(placement))

    async def ListPlacements(
        self, request: pb.ListPlacementsRequest, context: Any
    ) -> pb.ListPlacementsResponse:
        v = Violations()
        where = {
            name: _optional_uuid(getattr(request, name), name, v)
            for name in ("campaign_id", "line_item_id", "podcast_id", "episode_id")
        }
        v.raise_if_any()
        placements, token = await self._ops.list_placements(
            current_tenant_id(),
            where,
            _enums(PlacementState, request.states, "states"),
            page_size(request.page_size),
            request.page_token,
        )
        return pb.ListPlacementsResponse(
            placements=[placement_to_pb(p) for p in placements], next_page_token=token
        )

    async def ListSlotPlacements(
        self, request: pb.ListSlotPlacementsRequest, context: Any
    ) -> pb.ListSlotPlacementsResponse:
        tenant_id, slots = _tenant_lookup(
            request.tenant_id, request.ad_slot_ids, "ad_slot_ids", MAX_SLOTS_PER_LOOKUP
        )
        placements = await self._ops.slot_placements(tenant_id, slots)
        return pb.ListSlotPlacementsResponse(placements=[placement_to_pb(p) for p in placements])

    async def BatchGetLineItems(
        self, request: pb.BatchGetLineItemsRequest, context: Any
    ) -> pb.BatchGetLineItemsResponse:
        tenant_id, ids = _tenant_lookup(
            request.tenant_id, request.line_item_ids, "line_item_ids", MAX_LINE_ITEMS_PER_LOOKUP
        )
        items = await self._ops.line_items_by_id(tenant_id, ids)
        return pb.BatchGetLineItemsResponse(line_items=[line_item_to_pb(i) for i in items])

    async def UpdatePlacement(
        self, request: pb.UpdatePlacementRequest, context: Any
    ) -> pb.UpdatePlacementResponse:
        placement = await self._ops.update_placement(
            current_tenant_id(),
            placement_from_pb(request.placement, "placement.id"),
            list(request.update_mask.paths),
            credentials(context),
        )
        return pb.UpdatePlacementResponse(placement=placement_to_pb(placement))

    async def DeletePlacement(
        self, request: pb.DeletePlacementRequest, context: Any
    ) -> pb.DeletePlacementResponse:
        await self._ops.delete_placement(
            current_tenant_id(), parse_uuid(request.placement_id, "placement_id")
        )
        return pb.DeletePlacementResponse()

    async def BookPlacement(
        self, request: pb.BookPlacementRequest, context: Any
    ) -> pb.BookPlacementResponse:
        v = Violations()
        line_item_id = _uuid(request.line_item_id, "line_item_id", v)
        booking = BookingRequest(
            line_item_id=line_item_id or _NIL,
            episode_id=_optional_uuid(request.episode_id, "episode_id", v),
            ad_slot_id=_optional_uuid(request.ad_slot_id, "ad_slot_id", v),
            position=_position(request.position, "position", v),
            impression_goal=request.impression_goal,
            placement_id=_optional_uuid(request.placement_id, "placement_id", v),
            request_id=request.request_id.strip(),
            makegood_for_line_item_id=_optional_uuid(
                request.makegood_for_line_item_id, "makegood_for_line_item_id", v
            ),
        )
        v.raise_if_any()
        placement = await self._ops.book_placement(
            current_tenant_id(), booking, credentials(context)
        )
        return pb.BookPlacementResponse(placement=placement_to_pb(placement))

    # Pacing and matchmaking

    async def GetPacing(self, request: pb.GetPacingRequest, context: Any) -> pb.GetPacingResponse:
        if bool(request.line_item_id) == bool(request.campaign_id):
            raise InvalidArgument.field(
                "line_item_id", "give exactly one of line_item_id and campaign_id"
            )
        if request.line_item_id:
            report = await self._ops.line_item_pacing(
                current_tenant_id(),
                parse_uuid(request.line_item_id, "line_item_id"),
                credentials(context),
            )
        else:
            report = await self._ops.campaign_pacing(
                current_tenant_id(),
                parse_uuid(request.campaign_id, "campaign_id"),
                credentials(context),
            )
        return self._pacing_answers.answer(report)

    async def MatchPodcasts(
        self, request: pb.MatchPodcastsRequest, context: Any
    ) -> pb.MatchPodcastsResponse:
        v = Violations()
        campaign_id = _uuid(request.campaign_id, "campaign_id", v)
        line_item_id = _optional_uuid(request.line_item_id, "line_item_id", v)
        v.check(0 <= request.min_score <= 1, "min_score", "must be from 0 to 1")
        v.raise_if_any()
        result = await self._ops.match_podcasts(
            current_tenant_id(),
            campaign_id or _NIL,
            line_item_id,
            request.min_score,
            page_size(request.page_size),
            request.page_token,
            credentials(context),
        )
        return pb.MatchPodcastsResponse(
            matches=[match_to_pb(m) for m in result.matches],
            next_page_token=result.next_page_token,
            available_impressions=result.available_impressions,
            goal_warning=result.goal_warning,
        )

    # Deals

    async def CreateDeal(
        self, request: pb.CreateDealRequest, context: Any
    ) -> pb.CreateDealResponse:
        deal = await self._ops.create_deal(current_tenant_id(), deal_from_pb(request.deal))
        return pb.CreateDealResponse(deal=deal_to_pb(deal))

    async def GetDeal(self, request: pb.GetDealRequest, context: Any) -> pb.GetDealResponse:
        deal = await self._ops.get_deal(current_tenant_id(), parse_uuid(request.deal_id, "deal_id"))
        return pb.GetDealResponse(deal=deal_to_pb(deal))

    async def ListDeals(self, request: pb.ListDealsRequest, context: Any) -> pb.ListDealsResponse:
        deals, token = await self._ops.list_deals(
            current_tenant_id(),
            _optional_uuid(request.sponsor_id, "sponsor_id"),
            _enums(DealStage, request.stages, "stages"),
            request.owner_user_id.strip(),
            page_size(request.page_size),
            request.page_token,
        )
        return pb.ListDealsResponse(deals=[deal_to_pb(d) for d in deals], next_page_token=token)

    async def UpdateDeal(
        self, request: pb.UpdateDealRequest, context: Any
    ) -> pb.UpdateDealResponse:
        deal = await self._ops.update_deal(
            current_tenant_id(),
            deal_from_pb(request.deal, "deal.id"),
            list(request.update_mask.paths),
        )
        return pb.UpdateDealResponse(deal=deal_to_pb(deal))

    async def DeleteDeal(
        self, request: pb.DeleteDealRequest, context: Any
    ) -> pb.DeleteDealResponse:
        await self._ops.delete_deal(current_tenant_id(), parse_uuid(request.deal_id, "deal_id"))
        return pb.DeleteDealResponse()

    async def TransitionDeal(
        self, request: pb.TransitionDealRequest, context: Any
    ) -> pb.TransitionDealResponse:
        v = Violations()
        deal_id = _uuid(request.deal_id, "deal_id", v)
        stage = _enum(DealStage, request.stage, "stage", v)
        v.check(request.stage != 0, "stage", "is required")
        expected = _enum(DealStage, request.expected_stage, "expected_stage", v)
        v.raise_if_any()
        assert stage is not None
        deal, event = await self._ops.transition_deal(
            current_tenant_id(), deal_id or _NIL, stage, expected, request.note
        )
        return pb.TransitionDealResponse(deal=deal_to_pb(deal), deal_event=deal_event_to_pb(event))

    async def ListDealEvents(
        self, request: pb.ListDealEventsRequest, context: Any
    ) -> pb.ListDealEventsResponse:
        events, token = await self._ops.list_deal_events(
            current_tenant_id(),
            parse_uuid(request.deal_id, "deal_id"),
            page_size(request.page_size),
            request.page_token,
        )
        return pb.ListDealEventsResponse(
            deal_events=[deal_event_to_pb(e) for e in events], next_page_token=token
        )
