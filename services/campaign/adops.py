"""The campaign service's operations: each write one tenant transaction with its
audit record (the outbox relayed to the tenant service's audit log)."""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import asyncpg
import redis.asyncio as aioredis

from services.campaign import repository as repo
from services.campaign.domain import (
    CAMPAIGN_TRANSITIONS,
    CAMPAIGN_UPDATABLE,
    DEAL_TRANSITIONS,
    DEAL_UPDATABLE,
    DELETABLE_DEAL_STAGES,
    LINE_ITEM_TRANSITIONS,
    LINE_ITEM_UPDATABLE,
    PLACEMENT_UPDATABLE,
    SPONSOR_UPDATABLE,
    AdPosition,
    AdType,
    Campaign,
    CampaignState,
    Deal,
    DealEvent,
    DealStage,
    EpisodeFacts,
    LineItem,
    Money,
    Placement,
    PlacementState,
    Slot,
    Sponsor,
    check_note,
    check_placement_goal,
    check_transition,
    committed_cost,
    competitive_key,
    state_name,
    targeting_refusal,
    validate_campaign,
    validate_deal,
    validate_line_item,
    validate_sponsor,
)
from services.campaign.matching import Ask, Match, PodcastFacts, rank, score
from services.campaign.pacing import (
    Pacing,
    PacingCache,
    PacingReport,
    campaign_pacing,
    line_item_pacing,
)
from services.campaign.peers import Analytics, Catalog, PodcastSummary, SlotRange
from services.shared import audit_outbox
from services.shared.auth import Principal
from services.shared.context import current_principal
from services.shared.db import Database
from services.shared.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from services.shared.pagination import Keyset, PageTokens, split_page
from services.shared.peers import Metadata
from services.shared.validation import mask_paths

log = logging.getLogger("podmesh.campaign")
Conn = "asyncpg.Connection[asyncpg.Record]"
DEAL_EVENTS_STREAM = "podmesh:campaign:deal_events"
_CLOSED = (CampaignState.COMPLETED, CampaignState.CANCELLED)
MAX_REQUEST_ID = 200
# Days of downloads behind audience size and growth.
HISTORY_DAYS = 90


def _actor(principal: Principal) -> tuple[str, str]:
    return principal.type.value, principal.subject_id


@dataclass(frozen=True)
class BookingRequest:
    line_item_id: uuid.UUID
    episode_id: uuid.UUID | None
    ad_slot_id: uuid.UUID | None
    position: AdPosition
    impression_goal: int
    placement_id: uuid.UUID | None
    request_id: str
    makegood_for_line_item_id: uuid.UUID | None


@dataclass(frozen=True)
class MatchResult:
    matches: list[Match]
    next_page_token: str
    # What every matching podcast together could deliver over the flight.
    available_impressions: int
    goal_warning: str


class AdOps:
    def __init__(
        self,
        db: Database,
        page_tokens: PageTokens,
        catalog: Catalog,
        analytics: Analytics,
        redis: aioredis.Redis | None = None,
        pacing_cache_ttl_s: float = 0.0,
    ) -> None:
        self._db = db
        self._tokens = page_tokens
        self._catalog = catalog
        self._analytics = analytics
        self._redis = redis
        self._pacing = PacingCache(pacing_cache_ttl_s)

    async def _audit(
        self, conn: Any, tenant_id: uuid.UUID, resource: tuple[str, str], details: dict[str, Any]
    ) -> None:
        """Records a change in the audit outbox, in the change's transaction; every write
        goes through here, so it is also where this replica's pacing answers of the
        tenant are dropped."""
        self._pacing.forget(tenant_id)
        await audit_outbox.record(conn, repo.AUDIT, tenant_id, resource, details)

    # Sponsors

    async def create_sponsor(self, tenant_id: uuid.UUID, sponsor: Sponsor) -> Sponsor:
        sponsor = validate_sponsor(replace(sponsor, id=uuid.uuid4()))
        async with self._db.tenant_transaction(tenant_id) as conn:
            created = await repo.insert_sponsor(conn, tenant_id, sponsor)
            await self._audit(
                conn,
                tenant_id,
                ("sponsor", str(created.id)),
                {"display_name": created.display_name},
            )
            return created

    async def get_sponsor(self, tenant_id: uuid.UUID, sponsor_id: uuid.UUID) -> Sponsor:
        async with self._db.tenant_transaction(tenant_id) as conn:
            return await _sponsor_or_fail(conn, sponsor_id)

    async def list_sponsors(
        self, tenant_id: uuid.UUID, category: str, page_size: int, page_token: str
    ) -> tuple[list[Sponsor], str]:
        key = competitive_key(category)
        query = {"list": "sponsors", "competitive_category": key}
        cursor = self._tokens.decode(page_token, query)
        after = (cursor["t"], uuid.UUID(cursor["id"])) if cursor else None
        async with self._db.tenant_transaction(tenant_id) as conn:
            rows = await repo.list_sponsors(conn, key, after, page_size + 1)
        page, more = split_page(rows, page_size)
        token = ""
        if more:
            last = page[-1]
            token = self._tokens.encode({"t": last.display_name.lower(), "id": str(last.id)}, query)
        return list(page), token

    async def update_sponsor(
        self, tenant_id: uuid.UUID, patch: Sponsor, paths: Sequence[str]
    ) -> Sponsor:
        requested = mask_paths(paths, SPONSOR_UPDATABLE)
        async with self._db.tenant_transaction(tenant_id) as conn:
            current = await repo.get_sponsor(conn, patch.id, for_update=True)
            if current is None:
                raise NotFound("sponsor", str(patch.id))
            changes = {name: getattr(patch, name) for name in requested}
            updated = validate_sponsor(replace(current, **changes))
            saved = await repo.update_sponsor(conn, updated)
            await self._audit(
                conn, tenant_id, ("sponsor", str(patch.id)), {"fields": sorted(requested)}
            )
            return saved

    async def delete_sponsor(self, tenant_id: uuid.UUID, sponsor_id: uuid.UUID) -> None:
        async with self._db.tenant_transaction(tenant_id) as conn:
            if await repo.get_sponsor(conn, sponsor_id, for_update=True) is None:
                raise NotFound("sponsor", str(sponsor_id))
            campaigns, deals = await repo.sponsor_usage(conn, sponsor_id)
            if campaigns or deals:
                raise FailedPrecondition(
                    f"the sponsor has {campaigns} campaigns and {deals} deals: delete those first",
                    reason="SPONSOR_IN_USE",
                    metadata={"campaign_count": str(campaigns), "deal_count": str(deals)},
                )
            await repo.delete_sponsor(conn, sponsor_id)
            await self._audit(conn, tenant_id, ("sponsor", str(sponsor_id)), {})

    # Campaigns

    async def create_campaign(self, tenant_id: uuid.UUID, campaign: Campaign) -> Campaign:
        campaign = validate_campaign(replace(campaign, id=uuid.uuid4(), state=CampaignState.DRAFT))
        async with self._db.tenant_transaction(tenant_id) as conn:
            await _sponsor_or_fail(conn, campaign.sponsor_id, for_update=True)
            created = await repo.insert_campaign(conn, tenant_id, campaign)
            await self._audit(
                conn,
                tenant_id,
                ("campaign", str(created.id)),
                {"sponsor_id": str(created.sponsor_id), "budget": _money(created.budget)},
            )
            return created

    async def get_campaign(self, tenant_id: uuid.UUID, campaign_id: uuid.UUID) -> Campaign:
        async with self._db.tenant_transaction(tenant_id) as conn:
            return await _campaign_or_fail(conn, campaign_id)

    async def list_campaigns(
        self,
        tenant_id: uuid.UUID,
        sponsor_id: uuid.UUID | None,
        states: Sequence[CampaignState],
        active_at: datetime | None,
        page_size: int,
        page_token: str,
    ) -> tuple[list[Campaign], str]:
        keyset = Keyset(
            self._tokens,
            {
                "list": "campaigns",
                "sponsor_id": str(sponsor_id or ""),
                "states": sorted(int(s) for s in states),
                "active_at": active_at.isoformat() if active_at else "",
            },
        )
        async with self._db.tenant_transaction(tenant_id) as conn:
            rows = await repo.list_campaigns(
                conn, sponsor_id, states, active_at, keyset.after(page_token), page_size + 1
            )
        page, more = split_page(rows, page_size)
        last = page[-1] if more else None
        token = keyset.next_token(
            (last.flight_start, last.id) if last and last.flight_start else None
        )
        return list(page), token

    async def update_campaign(
        self, tenant_id: uuid.UUID, patch: Campaign, paths: Sequence[str]
    ) -> Campaign:
        requested = mask_paths(paths, CAMPAIGN_UPDATABLE)
        async with self._db.tenant_transaction(tenant_id) as conn:
            current = await repo.get_campaign(conn, patch.id, for_update=True)
            if current is None:
                raise NotFound("campaign", str(patch.id))
            if "state" in requested and patch.state != current.state:
                check_transition("campaign", current.state, patch.state, CAMPAIGN_TRANSITIONS)
            elif current.state in _CLOSED and requested - {"state", "notes"}:
                raise FailedPrecondition(
                    f"a {state_name(current.state)} campaign cannot change",
                    reason="CAMPAIGN_CLOSED",
                    metadata={"current_state": state_name(current.state)},
                )
            changes: dict[str, Any] = {}
            for name in requested:
                attr = {"flight_start_time": "flight_start", "flight_end_time": "flight_end"}.get(
                    name, name
                )
                changes[attr] = getattr(patch, attr)
            updated = validate_campaign(replace(current, **changes))
            await _check_campaign_change(conn, current, updated)
            saved = await repo.update_campaign(conn, updated)
            details: dict[str, Any] = {"fields": sorted(requested)}
            if saved.state != current.state:
                details.update(
                    from_state=state_name(current.state), to_state=state_name(saved.state)
                )
            if (
                saved.state is CampaignState.CANCELLED
                and current.state is not CampaignState.CANCELLED
            ):
                details["cancelled_line_items"] = [
                    str(i)
                    for i in await repo.set_line_item_states(
                        conn,
                        saved.id,
                        [CampaignState.DRAFT, CampaignState.ACTIVE, CampaignState.PAUSED],
                        CampaignState.CANCELLED,
                    )
                ]
                details["released_placements"] = [
                    str(i) for i in await repo.release_placements(conn, campaign_id=saved.id)
                ]
            await self._audit(conn, tenant_id, ("campaign", str(saved.id)), details)
            return saved

    async def delete_campaign(self, tenant_id: uuid.UUID, campaign_id: uuid.UUID) -> None:
        async with self._db.tenant_transaction(tenant_id) as conn:
            current = await repo.get_campaign(conn, campaign_id, for_update=True)
            if current is None:
                raise NotFound("campaign", str(campaign_id))
            if current.state is not CampaignState.DRAFT:
                raise FailedPrecondition(
                    f"only a draft campaign can be deleted; this one is "
                    f"{state_name(current.state)}: cancel it instead",
                    reason="CAMPAIGN_NOT_DRAFT",
                    metadata={"current_state": state_name(current.state)},
                )
            await repo.delete_campaign(conn, campaign_id)
            await self._audit(conn, tenant_id, ("campaign", str(campaign_id)), {})

    # Line items

    async def create_line_item(self, tenant_id: uuid.UUID, item: LineItem) -> LineItem:
        async with self._db.tenant_transaction(tenant_id) as conn:
            campaign = await _campaign_or_fail(conn, item.campaign_id, for_update=True)
            _check_open(campaign)
            item = validate_line_item(
                replace(item, id=uuid.uuid4(), state=CampaignState.DRAFT), campaign
            )
            await repo.insert_line_item(conn, tenant_id, item)
            await self._audit(
                conn,
                tenant_id,
                ("line_item", str(item.id)),
                {"campaign_id": str(campaign.id), "rate": _money(item.rate)},
            )
            return await _line_item_or_fail(conn, item.id)

    async def get_line_item(self, tenant_id: uuid.UUID, line_item_id: uuid.UUID) -> LineItem:
        async with self._db.tenant_transaction(tenant_id) as conn:
            return await _line_item_or_fail(conn, line_item_id)

    async def list_line_items(
        self,
        tenant_id: uuid.UUID,
        campaign_id: uuid.UUID | None,
        states: Sequence[CampaignState],
        ad_type: AdType | None,
        podcast_id: uuid.UUID | None,
        page_size: int,
        page_token: str,
    ) -> tuple[list[LineItem], str]:
        query = {
            "list": "line_items",
            "campaign_id": str(campaign_id or ""),
            "states": sorted(int(s) for s in states),
            "ad_type": int(ad_type or 0),
            "podcast_id": str(podcast_id or ""),
        }
        cursor = self._tokens.decode(page_token, query)
        after = (
            (int(cursor["p"]), datetime.fromisoformat(cursor["t"]), uuid.UUID(cursor["id"]))
            if cursor
            else None
        )
        async with self._db.tenant_transaction(tenant_id) as conn:
            rows = await repo.list_line_items(
                conn, campaign_id, states, ad_type, podcast_id, after, page_size + 1
            )
        page, more = split_page(rows, page_size)
        token = ""
        if more:
            last = page[-1]
            assert last.flight_start is not None
            token = self._tokens.encode(
                {"p": last.priority, "t": last.flight_start.isoformat(), "id": str(last.id)}, query
            )
        return list(page), token

    async def update_line_item(
        self, tenant_id: uuid.UUID, patch: LineItem, paths: Sequence[str]
    ) -> LineItem:
        requested = mask_paths(paths, LINE_ITEM_UPDATABLE)
        async with self._db.tenant_transaction(tenant_id) as conn:
            current = await repo.get_line_item(conn, patch.id, for_update=True)
            if current is None:
                raise NotFound("line item", str(patch.id))
            campaign = await _campaign_or_fail(conn, current.campaign_id)
            if "state" in requested and patch.state != current.state:
                check_transition("line item", current.state, patch.state, LINE_ITEM_TRANSITIONS)
            elif current.state in _CLOSED:
                raise FailedPrecondition(
                    f"a {state_name(current.state)} line item cannot change",
                    reason="LINE_ITEM_CLOSED",
                    metadata={"current_state": state_name(current.state)},
                )
            if patch.state is CampaignState.ACTIVE and "state" in requested:
                _check_open(campaign)
            updated = _apply_line_item(current, patch, requested)
            updated = validate_line_item(updated, campaign)
            flight_changed = (updated.flight_start, updated.flight_end) != (
                current.flight_start,
                current.flight_end,
            )
            if flight_changed and await _has_bookings(conn, current.id):
                raise FailedPrecondition(
                    "the line item has booked placements, whose slots are reserved for its "
                    "current flight: release them before changing the flight",
                    reason="LINE_ITEM_HAS_BOOKINGS",
                )
            await repo.update_line_item(conn, updated)
            details: dict[str, Any] = {"fields": sorted(requested)}
            if updated.state != current.state:
                details.update(
                    from_state=state_name(current.state), to_state=state_name(updated.state)
                )
            if (
                updated.state is CampaignState.CANCELLED
                and current.state is not CampaignState.CANCELLED
            ):
                details["released_placements"] = [
                    str(i) for i in await repo.release_placements(conn, line_item_id=current.id)
                ]
            await self._audit(conn, tenant_id, ("line_item", str(current.id)), details)
            return await _line_item_or_fail(conn, current.id)

    async def delete_line_item(self, tenant_id: uuid.UUID, line_item_id: uuid.UUID) -> None:
        async with self._db.tenant_transaction(tenant_id) as conn:
            current = await repo.get_line_item(conn, line_item_id, for_update=True)
            if current is None:
                raise NotFound("line item", str(line_item_id))
            if current.state is not CampaignState.DRAFT:
                raise FailedPrecondition(
                    f"only a draft line item can be deleted; this one is "
                    f"{state_name(current.state)}: cancel it instead",
                    reason="LINE_ITEM_NOT_DRAFT",
                    metadata={"current_state": state_name(current.state)},
                )
            if await _has_bookings(conn, line_item_id):
                raise FailedPrecondition(
                    "the line item has booked placements: delete them first",
                    reason="LINE_ITEM_HAS_BOOKINGS",
                )
            await repo.delete_line_item(conn, line_item_id)
            await self._audit(conn, tenant_id, ("line_item", str(line_item_id)), {})

    # Placements

    async def create_placement(
        self, tenant_id: uuid.UUID, placement: Placement, credentials: Metadata
    ) -> Placement:
        check_placement_goal(placement.impression_goal, "placement.impression_goal")
        if placement.ad_slot_id is None and placement.position is AdPosition.UNSPECIFIED:
            raise InvalidArgument.field("placement.ad_slot_id", "give ad_slot_id or position")
        async with self._db.tenant_transaction(tenant_id) as conn:
            item = await _line_item_or_fail(conn, placement.line_item_id)
        episode = await self._catalog.episode(
            placement.episode_id, credentials, with_podcast=_needs_podcast(item)
        )
        slot = _slot_in(episode, placement.ad_slot_id, placement.position, "placement")
        _check_episode(item, episode, slot.position if slot else placement.position)
        async with self._db.tenant_transaction(tenant_id) as conn:
            item = await _line_item_or_fail(conn, placement.line_item_id, for_update=True)
            campaign = await _campaign_or_fail(conn, item.campaign_id)
            sponsor = await _sponsor_or_fail(conn, campaign.sponsor_id)
            _check_open(campaign)
            _check_item_open(item)
            created = await repo.insert_placement(
                conn,
                tenant_id,
                replace(
                    placement,
                    id=uuid.uuid4(),
                    campaign_id=campaign.id,
                    podcast_id=episode.podcast_id,
                    episode_publish_at=episode.publish_at,
                    ad_slot_id=slot.id if slot else None,
                    position=slot.position if slot else placement.position,
                    state=PlacementState.PROPOSED,
                ),
                sponsor,
                "",
            )
            await self._audit(
                conn,
                tenant_id,
                ("placement", str(created.id)),
                {"line_item_id": str(item.id), "episode_id": str(episode.id)},
            )
            return created

    async def get_placement(self, tenant_id: uuid.UUID, placement_id: uuid.UUID) -> Placement:
        async with self._db.tenant_transaction(tenant_id) as conn:
            return await _placement_or_fail(conn, placement_id)

    async def list_placements(
        self,
        tenant_id: uuid.UUID,
        where: dict[str, uuid.UUID | None],
        states: Sequence[PlacementState],
        page_size: int,
        page_token: str,
    ) -> tuple[list[Placement], str]:
        query = {
            "list": "placements",
            **{k: str(v or "") for k, v in sorted(where.items())},
            "states": sorted(int(s) for s in states),
        }
        cursor = self._tokens.decode(page_token, query)
        after = (
            (datetime.fromisoformat(cursor["t"]), int(cursor["p"]), uuid.UUID(cursor["id"]))
            if cursor
            else None
        )
        async with self._db.tenant_transaction(tenant_id) as conn:
            rows = await repo.list_placements(conn, where, states, after, page_size + 1)
        page, more = split_page(rows, page_size)
        token = ""
        if more:
            last = page[-1]
            assert last.episode_publish_at is not None
            token = self._tokens.encode(
                {
                    "t": last.episode_publish_at.isoformat(),
                    "p": int(last.position),
                    "id": str(last.id),
                },
                query,
            )
        return list(page), token

    async def update_placement(
        self, tenant_id: uuid.UUID, patch: Placement, paths: Sequence[str], credentials: Metadata
    ) -> Placement:
        requested = mask_paths(paths, PLACEMENT_UPDATABLE)
        check_placement_goal(patch.impression_goal, "placement.impression_goal")
        async with self._db.tenant_transaction(tenant_id) as conn:
            current = await _placement_or_fail(conn, patch.id)
        slot: Slot | None = None
        if requested & {"ad_slot_id", "position"}:
            if current.state is not PlacementState.PROPOSED:
                raise FailedPrecondition(
                    f"the slot of a {state_name(current.state)} placement cannot change",
                    reason="PLACEMENT_NOT_PROPOSED",
                    metadata={"current_state": state_name(current.state)},
                )
            episode = await self._catalog.episode(
                current.episode_id, credentials, with_podcast=False
            )
            slot_id = patch.ad_slot_id if "ad_slot_id" in requested else current.ad_slot_id
            position = patch.position if "position" in requested else current.position
            slot = _slot_in(episode, slot_id, position, "placement")
        async with self._db.tenant_transaction(tenant_id) as conn:
            locked = await repo.get_placement(conn, patch.id, for_update=True)
            if locked is None:
                raise NotFound("placement", str(patch.id))
            if slot is not None and locked.state is not PlacementState.PROPOSED:
                raise FailedPrecondition(
                    "the placement was booked meanwhile", reason="PLACEMENT_NOT_PROPOSED"
                )
            updated = locked
            if "impression_goal" in requested:
                updated = replace(updated, impression_goal=patch.impression_goal)
            if slot is not None:
                updated = replace(updated, ad_slot_id=slot.id, position=slot.position)
            elif "position" in requested:
                updated = replace(updated, ad_slot_id=None, position=patch.position)
            saved = await repo.update_placement(conn, updated)
            await self._audit(
                conn, tenant_id, ("placement", str(saved.id)), {"fields": sorted(requested)}
            )
            return saved

    async def delete_placement(self, tenant_id: uuid.UUID, placement_id: uuid.UUID) -> None:
        async with self._db.tenant_transaction(tenant_id) as conn:
            current = await repo.get_placement(conn, placement_id, for_update=True)
            if current is None:
                raise NotFound("placement", str(placement_id))
            if current.state not in (PlacementState.PROPOSED, PlacementState.BOOKED):
                raise FailedPrecondition(
                    f"a {state_name(current.state)} placement has delivered or stopped and is "
                    "kept for reporting; cancel its line item instead",
                    reason="PLACEMENT_NOT_DELETABLE",
                    metadata={"current_state": state_name(current.state)},
                )
            await repo.delete_placement(conn, placement_id)
            await self._audit(
                conn,
                tenant_id,
                ("placement", str(placement_id)),
                {"released_slot": str(current.ad_slot_id or "")},
            )

    async def book_placement(
        self, tenant_id: uuid.UUID, request: BookingRequest, credentials: Metadata
    ) -> Placement:
        check_placement_goal(request.impression_goal, "impression_goal")
        if len(request.request_id) > MAX_REQUEST_ID:
            raise InvalidArgument.field("request_id", f"at most {MAX_REQUEST_ID} characters")
        if request.request_id:
            async with self._db.tenant_transaction(tenant_id) as conn:
                earlier = await repo.placement_by_request_id(conn, request.request_id)
            if earlier is not None:
                return _same_booking(earlier, request)
        async with self._db.tenant_transaction(tenant_id) as conn:
            item = await _line_item_or_fail(conn, request.line_item_id)
            proposed = None
            if request.placement_id is not None:
                proposed = await _placement_or_fail(conn, request.placement_id)
                if proposed.line_item_id != item.id:
                    raise InvalidArgument.field(
                        "placement_id", "is a placement of another line item"
                    )
                if proposed.state is not PlacementState.PROPOSED:
                    raise FailedPrecondition(
                        f"the placement is {state_name(proposed.state)}, not proposed",
                        reason="PLACEMENT_NOT_PROPOSED",
                        metadata={"current_state": state_name(proposed.state)},
                    )
        episode_id = proposed.episode_id if proposed else request.episode_id
        if episode_id is None:
            raise InvalidArgument.field("episode_id", "is required unless placement_id is given")
        episode = await self._catalog.episode(
            episode_id, credentials, with_podcast=_needs_podcast(item)
        )
        slot_id = request.ad_slot_id or (proposed.ad_slot_id if proposed else None)
        position = request.position or (proposed.position if proposed else AdPosition.UNSPECIFIED)
        if slot_id is None and position is AdPosition.UNSPECIFIED:
            raise InvalidArgument.field("ad_slot_id", "give ad_slot_id or position")
        candidates = _candidate_slots(episode, slot_id, position)
        _check_episode(item, episode, candidates[0].position)
        goal = request.impression_goal or (proposed.impression_goal if proposed else 0)
        try:
            async with self._db.tenant_transaction(tenant_id) as conn:
                booked = await self._book(
                    conn, tenant_id, request, episode, candidates, goal, proposed
                )
        except asyncpg.ExclusionViolationError as error:
            raise _exclusion_refusal(error) from None
        except asyncpg.UniqueViolationError:
            # A concurrent send of the same request_id won.
            async with self._db.tenant_transaction(tenant_id) as conn:
                earlier = await repo.placement_by_request_id(conn, request.request_id)
            if earlier is None:
                raise
            return _same_booking(earlier, request)
        return booked

    async def _book(
        self,
        conn: Any,
        tenant_id: uuid.UUID,
        request: BookingRequest,
        episode: EpisodeFacts,
        candidates: Sequence[Slot],
        goal: int,
        proposed: Placement | None,
    ) -> Placement:
        item = await _line_item_or_fail(conn, request.line_item_id)
        # One booking per campaign at a time: the budget check sees every commitment.
        campaign = await _campaign_or_fail(conn, item.campaign_id, for_update=True)
        item = await _line_item_or_fail(conn, request.line_item_id, for_update=True)
        if request.request_id:
            # A concurrent send of this request may have booked while we waited.
            earlier = await repo.placement_by_request_id(conn, request.request_id)
            if earlier is not None:
                return _same_booking(earlier, request)
        sponsor = await _sponsor_or_fail(conn, campaign.sponsor_id)
        _check_open(campaign)
        _check_item_open(item)
        assert item.flight_start
        assert item.flight_end
        assert campaign.flight_start
        assert campaign.flight_end
        if item.flight_start < campaign.flight_start or item.flight_end > campaign.flight_end:
            raise FailedPrecondition(
                "the line item's flight lies outside the campaign's flight",
                reason="FLIGHT_OUTSIDE_CAMPAIGN",
                metadata={
                    "campaign_flight_start": campaign.flight_start.isoformat(),
                    "campaign_flight_end": campaign.flight_end.isoformat(),
                },
            )
        now = datetime.now(UTC)
        if item.flight_end <= now:
            raise FailedPrecondition(
                "the line item's flight has ended",
                reason="FLIGHT_ENDED",
                metadata={"flight_end": item.flight_end.isoformat()},
            )
        if request.makegood_for_line_item_id is not None:
            await _check_makegood(conn, item, request.makegood_for_line_item_id, now)
        start, end = item.flight_start, item.flight_end
        slot = None
        for candidate in candidates:
            holder = await repo.slot_holder(conn, candidate.id, start, end)
            if holder is None:
                slot = candidate
                break
        if slot is None:
            raise FailedPrecondition(
                "the ad slot is already booked for an overlapping flight"
                if len(candidates) == 1
                else f"every {candidates[0].position.name.lower()} slot of the episode is "
                "booked for an overlapping flight",
                reason="SLOT_UNAVAILABLE",
                metadata={"ad_slot_id": str(candidates[0].id) if len(candidates) == 1 else ""},
            )
        rival = await repo.competitor_in_episode(conn, episode.id, sponsor, start, end)
        if rival is not None:
            raise _competitive_conflict(sponsor.competitive_category)
        await _check_budget(conn, campaign, item, goal)
        placement = Placement(
            id=proposed.id if proposed else uuid.uuid4(),
            line_item_id=item.id,
            campaign_id=campaign.id,
            episode_id=episode.id,
            podcast_id=episode.podcast_id,
            ad_slot_id=slot.id,
            position=slot.position,
            start_byte=slot.start_byte,
            end_byte=slot.end_byte,
            state=PlacementState.BOOKED,
            impression_goal=goal,
            flight_start=start,
            flight_end=end,
            makegood_for_line_item_id=request.makegood_for_line_item_id,
            episode_publish_at=episode.publish_at,
        )
        if proposed is not None:
            booked = await repo.book_placement(conn, placement, sponsor, request.request_id)
        else:
            booked = await repo.insert_placement(
                conn, tenant_id, placement, sponsor, request.request_id
            )
        await self._audit(
            conn,
            tenant_id,
            ("placement", str(booked.id)),
            {
                "line_item_id": str(item.id),
                "episode_id": str(episode.id),
                "ad_slot_id": str(slot.id),
                "from_state": "proposed" if proposed else "",
                "to_state": "booked",
            },
        )
        return booked

    # Pacing

    async def line_item_pacing(
        self, tenant_id: uuid.UUID, line_item_id: uuid.UUID, credentials: Metadata
    ) -> PacingReport:
        cached = self._pacing.get(tenant_id, line_item_id)
        if cached is not None:
            return cached
        generation = self._pacing.generation(tenant_id)
        async with self._db.tenant_transaction(tenant_id) as conn:
            item = await _line_item_or_fail(conn, line_item_id)
            placements = await repo.placements_for_pacing(conn, [item.id])
        paced, _, _ = await self._pace([item], placements, credentials)
        report = PacingReport(paced[0][1], [])
        self._pacing.put(tenant_id, line_item_id, generation, report)
        return report

    async def campaign_pacing(
        self, tenant_id: uuid.UUID, campaign_id: uuid.UUID, credentials: Metadata
    ) -> PacingReport:
        cached = self._pacing.get(tenant_id, campaign_id)
        if cached is not None:
            return cached
        generation = self._pacing.generation(tenant_id)
        async with self._db.tenant_transaction(tenant_id) as conn:
            campaign = await _campaign_or_fail(conn, campaign_id)
            items = await repo.line_items_of(conn, campaign_id)
            placements = await repo.placements_for_pacing(conn, [i.id for i in items])
        paced, as_of, zone = await self._pace(items, placements, credentials)
        assert campaign.flight_start
        assert campaign.flight_end
        total = campaign_pacing(
            campaign.id,
            campaign.flight_start,
            campaign.flight_end,
            campaign.currency,
            paced,
            as_of,
            zone,
        )
        report = PacingReport(total, [p for _, p in paced])
        self._pacing.put(tenant_id, campaign_id, generation, report)
        return report

    async def _pace(
        self, items: Sequence[LineItem], placements: Sequence[Placement], credentials: Metadata
    ) -> tuple[list[tuple[LineItem, Pacing]], datetime, ZoneInfo]:
        # Analytics sums the placements per line item (and makegood original) and day.
        groups: dict[str, tuple[uuid.UUID, uuid.UUID | None]] = {}
        ranges = []
        for p in placements:
            if p.ad_slot_id and p.flight_start and p.flight_end:
                key = f"{p.line_item_id}/{p.makegood_for_line_item_id or ''}"
                groups[key] = (p.line_item_id, p.makegood_for_line_item_id)
                ranges.append(
                    SlotRange(p.ad_slot_id, p.episode_id, p.flight_start, p.flight_end, key)
                )
        counted = await self._analytics.ad_deliveries(ranges, credentials)
        try:
            zone = ZoneInfo(counted.time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            zone = ZoneInfo("UTC")
        as_of = counted.complete_until
        own: dict[uuid.UUID, dict[datetime, int]] = defaultdict(lambda: defaultdict(int))
        makegood: dict[uuid.UUID, int] = defaultdict(int)
        for key, days in counted.days.items():
            line_item_id, original = groups[key]
            for day, n in days:
                own[line_item_id][day] += n
            if original is not None:
                makegood[original] += sum(n for _, n in days)
        paced = [
            (item, line_item_pacing(item, own[item.id], makegood[item.id], as_of, zone))
            for item in items
        ]
        return paced, as_of, zone

    # Matchmaking

    async def match_podcasts(
        self,
        tenant_id: uuid.UUID,
        campaign_id: uuid.UUID,
        line_item_id: uuid.UUID | None,
        min_score: float,
        page_size: int,
        page_token: str,
        credentials: Metadata,
    ) -> MatchResult:
        query = {
            "list": "matches",
            "campaign_id": str(campaign_id),
            "line_item_id": str(line_item_id or ""),
            "min_score": min_score,
        }
        cursor = self._tokens.decode(page_token, query)
        async with self._db.tenant_transaction(tenant_id) as conn:
            campaign = await _campaign_or_fail(conn, campaign_id)
            sponsor = await _sponsor_or_fail(conn, campaign.sponsor_id)
            items = await repo.line_items_of(conn, campaign_id)
            if line_item_id is not None:
                items = [i for i in items if i.id == line_item_id]
                if not items:
                    raise NotFound("line item", str(line_item_id))
            assert campaign.budget is not None
            remaining = max(campaign.budget.minor_units - await _committed(conn, campaign), 0)
        ask = Ask(sponsor, items, campaign.currency, remaining)
        now = datetime.now(UTC)
        assert campaign.flight_start
        assert campaign.flight_end
        starts = [i.flight_start for i in items if i.flight_start] or [campaign.flight_start]
        ends = [i.flight_end for i in items if i.flight_end] or [campaign.flight_end]
        start, end = max(min(starts), now), max(ends)
        positions = {p for i in items for p in i.targeting.positions}
        facts = []
        for podcast in await self._catalog.podcasts(credentials):
            if items and all(_excluded(i, podcast.id) for i in items):
                continue
            facts.append(
                await self._podcast_facts(
                    tenant_id, podcast, sponsor, positions, start, end, now, credentials
                )
            )
        largest = max(
            (sum(f.daily_downloads[-30:]) / max(f.episode_count, 1) for f in facts), default=0.0
        )
        scored = [score(f, ask, largest) for f in facts]
        ranked = rank([m for m in scored if m.score >= min_score])
        if cursor is not None:
            after = (-float(cursor["s"]), str(cursor["id"]))
            ranked = [m for m in ranked if (-m.score, str(m.podcast_id)) > after]
        avails = sum(m.estimated_impressions for m in scored)
        goal = sum(i.impression_goal for i in items)
        warning = ""
        if goal > avails:
            warning = (
                f"the impression goals ({goal}) exceed what the tenant's podcasts can deliver "
                f"over the flight ({avails} impressions in free slots): expect to miss the goal "
                "or add inventory"
            )
        page, more = split_page(ranked, page_size)
        token = ""
        if more:
            last = page[-1]
            token = self._tokens.encode({"s": last.score, "id": str(last.podcast_id)}, query)
        return MatchResult(list(page), token, avails, warning)

    async def _podcast_facts(
        self,
        tenant_id: uuid.UUID,
        podcast: PodcastSummary,
        sponsor: Sponsor,
        positions: set[AdPosition],
        start: datetime,
        end: datetime,
        now: datetime,
        credentials: Metadata,
    ) -> PodcastFacts:
        today = now.replace(hour=0, minute=0, second=0, microsecond=0)
        daily = await self._analytics.daily_downloads(
            podcast.id, today - timedelta(days=HISTORY_DAYS), today, credentials
        )
        countries = await self._analytics.country_shares(
            podcast.id, today - timedelta(days=30), today, credentials
        )
        horizon = min(max((end - start).days, 1), 90) if end > start else 0
        forecast = (
            await self._analytics.forecast_downloads(podcast.id, horizon, credentials)
            if horizon
            else 0.0
        )
        basis = "forecast"
        if forecast is None:
            # Too little history to forecast: the last 30 days' daily average carried on.
            forecast = sum(daily[-30:]) / 30 * horizon
            basis = "the last 30 days' pace"
        episodes = [
            e
            for e in await self._catalog.episodes(podcast.id, credentials)
            if e.publish_at is not None
        ]
        slots = [s for e in episodes for s in e.slots if not positions or s.position in positions]
        async with self._db.tenant_transaction(tenant_id) as conn:
            held = (
                await repo.held_slots(conn, [s.id for s in slots], start, end) if slots else set()
            )
            competitor = await repo.competitor_in_podcast(conn, podcast.id, sponsor, start, end)
        return PodcastFacts(
            podcast_id=podcast.id,
            title=podcast.title,
            categories=podcast.categories,
            keywords=podcast.keywords,
            explicit=podcast.explicit or any(e.explicit for e in episodes),
            daily_downloads=tuple(daily),
            episode_count=podcast.episode_count,
            country_downloads=countries,
            forecast_downloads=forecast,
            forecast_basis=basis,
            slot_count=len(slots),
            free_slot_count=len([s for s in slots if s.id not in held]),
            episodes_considered=len(episodes),
            competitor_booked=competitor,
        )

    # Deals

    async def create_deal(self, tenant_id: uuid.UUID, deal: Deal) -> Deal:
        deal = validate_deal(replace(deal, id=uuid.uuid4(), stage=DealStage.PROSPECT))
        async with self._db.tenant_transaction(tenant_id) as conn:
            await _sponsor_or_fail(conn, deal.sponsor_id, for_update=True)
            if deal.campaign_id is not None:
                await _check_deal_campaign(conn, deal)
            created = await repo.insert_deal(conn, tenant_id, deal)
            await self._audit(conn, tenant_id, ("deal", str(created.id)), {"stage": "prospect"})
            return created

    async def get_deal(self, tenant_id: uuid.UUID, deal_id: uuid.UUID) -> Deal:
        async with self._db.tenant_transaction(tenant_id) as conn:
            return await _deal_or_fail(conn, deal_id)

    async def list_deals(
        self,
        tenant_id: uuid.UUID,
        sponsor_id: uuid.UUID | None,
        stages: Sequence[DealStage],
        owner_user_id: str,
        page_size: int,
        page_token: str,
    ) -> tuple[list[Deal], str]:
        keyset = Keyset(
            self._tokens,
            {
                "list": "deals",
                "sponsor_id": str(sponsor_id or ""),
                "stages": sorted(int(s) for s in stages),
                "owner_user_id": owner_user_id,
            },
        )
        async with self._db.tenant_transaction(tenant_id) as conn:
            rows = await repo.list_deals(
                conn, sponsor_id, stages, owner_user_id, keyset.after(page_token), page_size + 1
            )
        page, more = split_page(rows, page_size)
        last = page[-1] if more else None
        token = keyset.next_token((last.updated_at, last.id) if last and last.updated_at else None)
        return list(page), token

    async def update_deal(self, tenant_id: uuid.UUID, patch: Deal, paths: Sequence[str]) -> Deal:
        requested = mask_paths(paths, DEAL_UPDATABLE)
        async with self._db.tenant_transaction(tenant_id) as conn:
            current = await repo.get_deal(conn, patch.id, for_update=True)
            if current is None:
                raise NotFound("deal", str(patch.id))
            changes: dict[str, Any] = {}
            for name in requested:
                attr = {"expected_close_time": "expected_close_at", "amount": "amount"}.get(
                    name, name
                )
                changes[attr] = getattr(patch, attr)
            updated = validate_deal(replace(current, **changes))
            if "campaign_id" in requested:
                if updated.campaign_id is not None:
                    await _check_deal_campaign(conn, updated)
                elif current.stage not in (
                    DealStage.PROSPECT,
                    DealStage.PROPOSAL,
                    DealStage.HOLD,
                    DealStage.LOST,
                ):
                    raise FailedPrecondition(
                        f"a {state_name(current.stage)} deal needs its campaign",
                        reason="DEAL_CAMPAIGN_REQUIRED",
                    )
            saved = await repo.update_deal(conn, updated)
            await self._audit(
                conn, tenant_id, ("deal", str(saved.id)), {"fields": sorted(requested)}
            )
            return saved

    async def delete_deal(self, tenant_id: uuid.UUID, deal_id: uuid.UUID) -> None:
        async with self._db.tenant_transaction(tenant_id) as conn:
            current = await repo.get_deal(conn, deal_id, for_update=True)
            if current is None:
                raise NotFound("deal", str(deal_id))
            if current.stage not in DELETABLE_DEAL_STAGES:
                raise FailedPrecondition(
                    f"a deal at the {state_name(current.stage)} stage is kept; only prospect, "
                    "proposal and lost deals can be deleted",
                    reason="DEAL_NOT_DELETABLE",
                    metadata={"current_stage": state_name(current.stage)},
                )
            await repo.delete_deal(conn, deal_id)
            await self._audit(conn, tenant_id, ("deal", str(deal_id)), {})

    async def transition_deal(
        self,
        tenant_id: uuid.UUID,
        deal_id: uuid.UUID,
        stage: DealStage,
        expected: DealStage | None,
        note: str,
    ) -> tuple[Deal, DealEvent]:
        check_note(note)
        principal = current_principal()
        async with self._db.tenant_transaction(tenant_id) as conn:
            current = await repo.get_deal(conn, deal_id, for_update=True)
            if current is None:
                raise NotFound("deal", str(deal_id))
            if expected is not None and current.stage is not expected:
                raise Aborted(
                    f"the deal is at the {state_name(current.stage)} stage now, not "
                    f"{state_name(expected)}: read it again",
                    reason="DEAL_STAGE_CHANGED",
                    metadata={
                        "current_stage": state_name(current.stage),
                        "expected_stage": state_name(expected),
                    },
                )
            check_transition("deal", current.stage, stage, DEAL_TRANSITIONS, "stage")
            if stage is DealStage.BOOKED and current.campaign_id is None:
                raise FailedPrecondition(
                    "a deal needs its campaign before it is booked: set campaign_id first",
                    reason="DEAL_CAMPAIGN_REQUIRED",
                )
            saved = await repo.update_deal(conn, replace(current, stage=stage), stage_changed=True)
            event = await repo.insert_deal_event(
                conn, tenant_id, deal_id, current.stage, stage, _actor(principal), note
            )
            await self._audit(
                conn,
                tenant_id,
                ("deal", str(deal_id)),
                {
                    "from_stage": state_name(current.stage),
                    "to_stage": state_name(stage),
                    "deal_event_id": str(event.id),
                    "note": note,
                },
            )
        await self._publish(tenant_id, event)
        return saved, event

    async def _publish(self, tenant_id: uuid.UUID, event: DealEvent) -> None:
        """Best effort: the deal event and its audit record are already durable."""
        if self._redis is None:
            return
        try:
            await self._redis.xadd(
                DEAL_EVENTS_STREAM,
                {
                    "tenant_id": str(tenant_id),
                    "deal_id": str(event.deal_id),
                    "deal_event_id": str(event.id),
                    "from_stage": state_name(event.from_stage),
                    "to_stage": state_name(event.to_stage),
                    "event_time": event.event_time.isoformat(),
                },
                maxlen=100_000,
                approximate=True,
            )
        except (aioredis.RedisError, OSError):
            log.warning("deal event not published: Redis unavailable")

    async def list_deal_events(
        self, tenant_id: uuid.UUID, deal_id: uuid.UUID, page_size: int, page_token: str
    ) -> tuple[list[DealEvent], str]:
        query = {"list": "deal_events", "deal_id": str(deal_id)}
        cursor = self._tokens.decode(page_token, query)
        after = (datetime.fromisoformat(cursor["t"]), uuid.UUID(cursor["id"])) if cursor else None
        async with self._db.tenant_transaction(tenant_id) as conn:
            await _deal_or_fail(conn, deal_id)
            rows = await repo.list_deal_events(conn, deal_id, after, page_size + 1)
        page, more = split_page(rows, page_size)
        token = ""
        if more:
            last = page[-1]
            token = self._tokens.encode(
                {"t": last.event_time.isoformat(), "id": str(last.id)}, query
            )
        return list(page), token


# Helpers


def _excluded(item: LineItem, podcast_id: uuid.UUID) -> bool:
    t = item.targeting
    return podcast_id in t.excluded_podcast_ids or bool(
        t.podcast_ids and podcast_id not in t.podcast_ids
    )


def _money(value: Money | None) -> dict[str, Any]:
    return {"currency_code": value.currency_code, "minor_units": value.minor_units} if value else {}


async def _sponsor_or_fail(
    conn: Any, sponsor_id: uuid.UUID, *, for_update: bool = False
) -> Sponsor:
    sponsor = await repo.get_sponsor(conn, sponsor_id, for_update=for_update)
    if sponsor is None:
        raise NotFound("sponsor", str(sponsor_id))
    return sponsor


async def _campaign_or_fail(
    conn: Any, campaign_id: uuid.UUID, *, for_update: bool = False
) -> Campaign:
    campaign = await repo.get_campaign(conn, campaign_id, for_update=for_update)
    if campaign is None:
        raise NotFound("campaign", str(campaign_id))
    return campaign


async def _line_item_or_fail(
    conn: Any, line_item_id: uuid.UUID, *, for_update: bool = False
) -> LineItem:
    item = await repo.get_line_item(conn, line_item_id, for_update=for_update)
    if item is None:
        raise NotFound("line item", str(line_item_id))
    return item


async def _placement_or_fail(conn: Any, placement_id: uuid.UUID) -> Placement:
    placement = await repo.get_placement(conn, placement_id)
    if placement is None:
        raise NotFound("placement", str(placement_id))
    return placement


async def _deal_or_fail(conn: Any, deal_id: uuid.UUID) -> Deal:
    deal = await repo.get_deal(conn, deal_id)
    if deal is None:
        raise NotFound("deal", str(deal_id))
    return deal


def _check_open(campaign: Campaign) -> None:
    if campaign.state in _CLOSED:
        raise FailedPrecondition(
            f"the campaign is {state_name(campaign.state)}",
            reason="CAMPAIGN_CLOSED",
            metadata={"current_state": state_name(campaign.state)},
        )


def _check_item_open(item: LineItem) -> None:
    if item.state in _CLOSED:
        raise FailedPrecondition(
            f"the line item is {state_name(item.state)}",
            reason="LINE_ITEM_CLOSED",
            metadata={"current_state": state_name(item.state)},
        )


async def _has_bookings(conn: Any, line_item_id: uuid.UUID) -> bool:
    rows = await repo.list_placements(
        conn, {"line_item_id": line_item_id}, [PlacementState.BOOKED, PlacementState.LIVE], None, 1
    )
    return bool(rows)


async def _check_campaign_change(conn: Any, current: Campaign, updated: Campaign) -> None:
    assert current.budget
    assert updated.budget
    if updated.budget.currency_code != current.budget.currency_code and (
        await repo.count_line_items(conn, current.id)
    ):
        raise FailedPrecondition(
            "the campaign's currency cannot change once it has line items",
            reason="CAMPAIGN_CURRENCY_FIXED",
            metadata={"currency_code": current.budget.currency_code},
        )
    if (updated.flight_start, updated.flight_end) != (current.flight_start, current.flight_end):
        assert updated.flight_start
        assert updated.flight_end
        for start, end in await repo.line_item_flights(conn, current.id):
            if start < updated.flight_start or end > updated.flight_end:
                raise FailedPrecondition(
                    "a line item's flight would lie outside the campaign's new flight",
                    reason="FLIGHT_OUTSIDE_CAMPAIGN",
                    metadata={
                        "line_item_flight_start": start.isoformat(),
                        "line_item_flight_end": end.isoformat(),
                    },
                )
    if updated.budget.minor_units < current.budget.minor_units:
        committed = await _committed(conn, current)
        if updated.budget.minor_units < committed:
            raise FailedPrecondition(
                f"the budget cannot go below what bookings already commit ({committed} "
                f"{current.budget.currency_code} minor units)",
                reason="BUDGET_BELOW_COMMITTED",
                metadata={"committed_minor_units": str(committed)},
            )


async def _committed(
    conn: Any, campaign: Campaign, extra: tuple[uuid.UUID, int] | None = None
) -> int:
    return (await _commitments(conn, campaign, extra))[-1]


async def _commitments(
    conn: Any, campaign: Campaign, extra: tuple[uuid.UUID, int] | None = None
) -> tuple[int, int]:
    """What the campaign's bookings commit of its budget, without and with `extra`
    (a line item and the impressions a new booking adds to it)."""
    goals = await repo.committed_by_line_item(conn, campaign.id)
    with_extra = dict(goals)
    if extra is not None:
        with_extra[extra[0]] = with_extra.get(extra[0], 0) + extra[1]
    if not with_extra:
        return 0, 0
    items = {i.id: i for i in await repo.line_items_of(conn, campaign.id)}

    def cost(by_item: dict[uuid.UUID, int]) -> int:
        total = 0
        for line_item_id, goal in by_item.items():
            item = items[line_item_id]
            assert item.pricing_model
            assert item.rate
            total += committed_cost(item.pricing_model, item.rate.minor_units, goal)
        return total

    return cost(goals), cost(with_extra)


async def _check_budget(conn: Any, campaign: Campaign, item: LineItem, goal: int) -> None:
    """Refuses a booking that would commit more than the budget, saying what is left."""
    assert campaign.budget is not None
    before, after = await _commitments(conn, campaign, (item.id, goal))
    budget = campaign.budget.minor_units
    if after > budget:
        remaining = max(budget - before, 0)
        raise FailedPrecondition(
            f"the booking would commit {after - before} {campaign.currency} minor units but "
            f"only {remaining} of the budget of {budget} remain",
            reason="OVER_BUDGET",
            metadata={
                "remaining_minor_units": str(remaining),
                "booking_minor_units": str(after - before),
                "currency_code": campaign.currency,
            },
        )


async def _check_makegood(conn: Any, item: LineItem, original_id: uuid.UUID, now: datetime) -> None:
    original = await repo.get_line_item(conn, original_id)
    if original is None:
        raise NotFound("line item", str(original_id))
    if original.campaign_id != item.campaign_id or original.id == item.id:
        raise InvalidArgument.field(
            "makegood_for_line_item_id", "must be another line item of the same campaign"
        )
    assert original.flight_end is not None
    if original.flight_end > now:
        raise FailedPrecondition(
            "a makegood is for a line item whose flight has ended; this one runs until "
            f"{original.flight_end.isoformat()}",
            reason="MAKEGOOD_NOT_DUE",
        )


async def _check_deal_campaign(conn: Any, deal: Deal) -> None:
    assert deal.campaign_id is not None
    campaign = await _campaign_or_fail(conn, deal.campaign_id)
    if campaign.sponsor_id != deal.sponsor_id:
        raise FailedPrecondition(
            "the campaign belongs to another sponsor than the deal",
            reason="DEAL_SPONSOR_MISMATCH",
        )


def _apply_line_item(current: LineItem, patch: LineItem, requested: set[str]) -> LineItem:
    changes: dict[str, Any] = {}
    targeting = current.targeting
    for name in requested:
        if name == "targeting":
            targeting = patch.targeting
        elif name.startswith("targeting."):
            part = name.split(".", 1)[1]
            targeting = replace(targeting, **{part: getattr(patch.targeting, part)})
        elif name == "frequency_cap":
            changes["frequency_cap_max"] = patch.frequency_cap_max
            changes["frequency_cap_days"] = patch.frequency_cap_days
        elif name == "flight_start_time":
            changes["flight_start"] = patch.flight_start
        elif name == "flight_end_time":
            changes["flight_end"] = patch.flight_end
        else:
            changes[name] = getattr(patch, name)
    return replace(current, targeting=targeting, **changes)


def _slot_in(
    episode: EpisodeFacts, slot_id: uuid.UUID | None, position: AdPosition, prefix: str
) -> Slot | None:
    if slot_id is None:
        return None
    for slot in episode.slots:
        if slot.id == slot_id:
            if position not in (AdPosition.UNSPECIFIED, slot.position):
                raise InvalidArgument.field(
                    f"{prefix}.position", f"the slot is a {slot.position.name.lower()} slot"
                )
            return slot
    raise NotFound("ad slot", str(slot_id))


def _candidate_slots(
    episode: EpisodeFacts, slot_id: uuid.UUID | None, position: AdPosition
) -> list[Slot]:
    if slot_id is not None:
        slot = _slot_in(episode, slot_id, position, "")
        assert slot is not None
        return [slot]
    slots = [s for s in episode.slots if s.position is position]
    if not slots:
        raise FailedPrecondition(
            f"the episode has no {position.name.lower()} ad slot",
            reason="SLOT_UNAVAILABLE",
            metadata={"position": position.name.lower()},
        )
    return slots


def _needs_podcast(item: LineItem) -> bool:
    """Whether the item's targeting looks at the podcast's categories or explicit flag."""
    return bool(item.targeting.categories) or item.targeting.exclude_explicit


def _check_episode(item: LineItem, episode: EpisodeFacts, position: AdPosition) -> None:
    if episode.publish_at is None:
        raise FailedPrecondition(
            "the episode has no publish time: only published or scheduled episodes are booked",
            reason="EPISODE_NOT_PUBLISHED",
        )
    refusal = targeting_refusal(item, episode)
    if refusal is None and item.targeting.positions and position not in item.targeting.positions:
        refusal = f"the line item does not target {position.name.lower()} slots"
    if refusal is not None:
        raise FailedPrecondition(refusal, reason="TARGETING_MISMATCH")


def _same_booking(earlier: Placement, request: BookingRequest) -> Placement:
    if earlier.line_item_id != request.line_item_id:
        raise AlreadyExists(
            "this request_id was used for a booking of another line item",
            reason="REQUEST_ID_REUSED",
            metadata={"field": "request_id"},
        )
    return earlier


def _competitive_conflict(category: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"a sponsor of the competitive category {category!r} already has an ad in this "
        "episode over an overlapping flight",
        reason="COMPETITIVE_CONFLICT",
        metadata={"competitive_category": category},
    )


def _exclusion_refusal(error: asyncpg.ExclusionViolationError) -> FailedPrecondition:
    """The database's verdict on a race the checks above could not see."""
    if error.constraint_name == "placements_competitive_conflict":
        return _competitive_conflict("")
    return FailedPrecondition(
        "the ad slot was booked for an overlapping flight by a concurrent booking",
        reason="SLOT_UNAVAILABLE",
    )
