"""Placements and booking: proposals on an episode, and BookPlacement, which reserves a
catalog ad slot for the line item's flight (the database's exclusion constraints decide
the races: a slot taken, a competitor in the episode)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import asyncpg

from services.campaign import repository as repo
from services.campaign.domain import (
    PLACEMENT_UPDATABLE,
    AdPosition,
    Campaign,
    EpisodeFacts,
    LineItem,
    Placement,
    PlacementState,
    Slot,
    check_placement_goal,
    state_name,
    targeting_refusal,
)
from services.campaign.operations import (
    CLOSED,
    Operations,
    campaign_or_fail,
    check_open,
    commitments_of,
    line_item_or_fail,
    sponsor_or_fail,
)
from services.shared.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.shared.pagination import split_page
from services.shared.peers import Metadata
from services.shared.validation import mask_paths

MAX_REQUEST_ID = 200


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


class PlacementOps(Operations):
    async def create_placement(
        self, tenant_id: uuid.UUID, placement: Placement, credentials: Metadata
    ) -> Placement:
        check_placement_goal(placement.impression_goal, "placement.impression_goal")
        if placement.ad_slot_id is None and placement.position is AdPosition.UNSPECIFIED:
            raise InvalidArgument.field("placement.ad_slot_id", "give ad_slot_id or position")
        async with self._db.tenant_transaction(tenant_id) as conn:
            item = await line_item_or_fail(conn, placement.line_item_id)
        episode = await self._catalog.episode(
            placement.episode_id, credentials, with_podcast=_needs_podcast(item)
        )
        slot = _slot_in(episode, placement.ad_slot_id, placement.position, "placement")
        _check_episode(item, episode, slot.position if slot else placement.position)
        async with self._db.tenant_transaction(tenant_id) as conn:
            item = await line_item_or_fail(conn, placement.line_item_id, for_update=True)
            campaign = await campaign_or_fail(conn, item.campaign_id)
            sponsor = await sponsor_or_fail(conn, campaign.sponsor_id)
            check_open(campaign)
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

    async def slot_placements(
        self, tenant_id: uuid.UUID, ad_slot_ids: Sequence[uuid.UUID]
    ) -> list[Placement]:
        async with self._db.tenant_transaction(tenant_id) as conn:
            return await repo.slot_placements(conn, ad_slot_ids)

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
        try:
            # One transaction from the lookup to the booking. Its statements have one
            # best plan whatever the ids (index probes under the campaign's lock), which
            # PostgreSQL would otherwise make anew for the checks of every booking.
            async with self._db.tenant_transaction(tenant_id, generic_plans=True) as conn:
                return await self._look_up_and_book(conn, tenant_id, request, credentials)
        except asyncpg.ExclusionViolationError as error:
            raise _exclusion_refusal(error) from None
        except asyncpg.UniqueViolationError:
            # A concurrent send of the same request_id won.
            async with self._db.tenant_transaction(tenant_id) as conn:
                earlier = await repo.placement_by_request_id(conn, request.request_id)
            if earlier is None:
                raise
            return _same_booking(earlier, request)

    async def _look_up_and_book(
        self, conn: Any, tenant_id: uuid.UUID, request: BookingRequest, credentials: Metadata
    ) -> Placement:
        if request.placement_id is None and request.episode_id is not None:
            # The episode does not depend on what the campaign database holds: the catalog
            # is asked while the line item is read, not after.
            found, fetched = await asyncio.gather(
                _booking_lookup(conn, request),
                self._catalog.episode(request.episode_id, credentials, with_podcast=False),
                return_exceptions=True,
            )
            if isinstance(found, BaseException):
                raise found
            earlier, item, proposed = found
            if earlier is not None:
                return _same_booking(earlier, request)
            assert item is not None
            if isinstance(fetched, BaseException):
                raise fetched
            episode = fetched
            if _needs_podcast(item):
                episode = await self._catalog.with_podcast(episode, credentials)
        else:
            earlier, item, proposed = await _booking_lookup(conn, request)
            if earlier is not None:
                return _same_booking(earlier, request)
            assert item is not None
            episode_id = proposed.episode_id if proposed else request.episode_id
            if episode_id is None:
                raise InvalidArgument.field(
                    "episode_id", "is required unless placement_id is given"
                )
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
        return await self._book(
            conn, tenant_id, request, item.campaign_id, episode, candidates, goal, proposed
        )

    async def _book(
        self,
        conn: Any,
        tenant_id: uuid.UUID,
        request: BookingRequest,
        campaign_id: uuid.UUID,
        episode: EpisodeFacts,
        candidates: Sequence[Slot],
        goal: int,
        proposed: Placement | None,
    ) -> Placement:
        # One booking per campaign at a time: the budget check sees every commitment.
        # Bookings of different campaigns do not wait for each other; two of one slot
        # are decided by the exclusion constraint. (A line item never changes campaign.)
        locked = await repo.lock_for_booking(conn, campaign_id, request.line_item_id)
        if locked is None:
            # Deleted since the lookup (deleting a campaign deletes its line items).
            raise NotFound("line item", str(request.line_item_id))
        campaign, item, sponsor = locked.campaign, locked.item, locked.sponsor
        check_open(campaign)
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
        # Read after the locks were granted: a booking of this campaign that committed
        # while this one waited is seen, as are its request_id and its slot.
        checks = await repo.booking_checks(
            conn,
            campaign_id=campaign.id,
            request_id=request.request_id,
            slots=[c.id for c in candidates],
            episode_id=episode.id,
            sponsor=sponsor,
            start=start,
            end=end,
        )
        if checks.earlier is not None:
            # A concurrent send of this request booked while we waited.
            return _same_booking(checks.earlier, request)
        slot = next((c for c in candidates if c.id == checks.free_slot), None)
        if slot is None:
            raise FailedPrecondition(
                "the ad slot is already booked for an overlapping flight"
                if len(candidates) == 1
                else f"every {candidates[0].position.name.lower()} slot of the episode is "
                "booked for an overlapping flight",
                reason="SLOT_UNAVAILABLE",
                metadata={"ad_slot_id": str(candidates[0].id) if len(candidates) == 1 else ""},
            )
        # A sponsor without a competitive category (blank after trimming spaces, as the
        # table's competitive_key is) conflicts with no one.
        if checks.competitor:
            raise _competitive_conflict(sponsor.competitive_category)
        _check_budget(campaign, checks.terms, item, goal)
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


async def _booking_lookup(
    conn: Any, request: BookingRequest
) -> tuple[Placement | None, LineItem | None, Placement | None]:
    """The placement an earlier send of this request booked, or else the line item and
    the proposal to book."""
    found = await repo.booking_lookup(conn, request.line_item_id, request.request_id)
    if found.earlier is not None:
        return found.earlier, None, None
    if found.item is None:
        raise NotFound("line item", str(request.line_item_id))
    item = found.item
    if request.placement_id is None:
        return None, item, None
    proposed = await _placement_or_fail(conn, request.placement_id)
    if proposed.line_item_id != item.id:
        raise InvalidArgument.field("placement_id", "is a placement of another line item")
    if proposed.state is not PlacementState.PROPOSED:
        raise FailedPrecondition(
            f"the placement is {state_name(proposed.state)}, not proposed",
            reason="PLACEMENT_NOT_PROPOSED",
            metadata={"current_state": state_name(proposed.state)},
        )
    return None, item, proposed


async def _placement_or_fail(conn: Any, placement_id: uuid.UUID) -> Placement:
    placement = await repo.get_placement(conn, placement_id)
    if placement is None:
        raise NotFound("placement", str(placement_id))
    return placement


def _check_item_open(item: LineItem) -> None:
    if item.state in CLOSED:
        raise FailedPrecondition(
            f"the line item is {state_name(item.state)}",
            reason="LINE_ITEM_CLOSED",
            metadata={"current_state": state_name(item.state)},
        )


def _check_budget(
    campaign: Campaign, terms: dict[uuid.UUID, repo.CommitmentTerms], item: LineItem, goal: int
) -> None:
    """Refuses a booking that would commit more than the budget, saying what is left."""
    assert campaign.budget is not None
    before, after = commitments_of(terms, (item.id, goal))
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
