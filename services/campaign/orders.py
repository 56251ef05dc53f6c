"""Campaigns (insertion orders) and their line items: the standard methods, state changes
checked against the state machines, budgets against what bookings already commit."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from services.campaign import repository as repo
from services.campaign.domain import (
    CAMPAIGN_TRANSITIONS,
    CAMPAIGN_UPDATABLE,
    LINE_ITEM_TRANSITIONS,
    LINE_ITEM_UPDATABLE,
    AdType,
    Campaign,
    CampaignState,
    LineItem,
    Money,
    PlacementState,
    check_transition,
    state_name,
    validate_campaign,
    validate_line_item,
)
from services.campaign.operations import (
    CLOSED,
    Operations,
    campaign_or_fail,
    check_open,
    committed_spend,
    line_item_or_fail,
    sponsor_or_fail,
)
from services.shared.errors import FailedPrecondition, NotFound
from services.shared.pagination import Keyset, split_page
from services.shared.validation import mask_paths


class OrderOps(Operations):
    async def create_campaign(self, tenant_id: uuid.UUID, campaign: Campaign) -> Campaign:
        campaign = validate_campaign(replace(campaign, id=uuid.uuid4(), state=CampaignState.DRAFT))
        async with self._db.tenant_transaction(tenant_id) as conn:
            await sponsor_or_fail(conn, campaign.sponsor_id, for_update=True)
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
            return await campaign_or_fail(conn, campaign_id)

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
            elif current.state in CLOSED and requested - {"state", "notes"}:
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
            campaign = await campaign_or_fail(conn, item.campaign_id, for_update=True)
            check_open(campaign)
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
            return await line_item_or_fail(conn, item.id)

    async def get_line_item(self, tenant_id: uuid.UUID, line_item_id: uuid.UUID) -> LineItem:
        async with self._db.tenant_transaction(tenant_id) as conn:
            return await line_item_or_fail(conn, line_item_id)

    async def line_items_by_id(
        self, tenant_id: uuid.UUID, line_item_ids: Sequence[uuid.UUID]
    ) -> list[LineItem]:
        async with self._db.tenant_transaction(tenant_id) as conn:
            return await repo.line_items_by_id(conn, line_item_ids)

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
            campaign = await campaign_or_fail(conn, current.campaign_id)
            if "state" in requested and patch.state != current.state:
                check_transition("line item", current.state, patch.state, LINE_ITEM_TRANSITIONS)
            elif current.state in CLOSED:
                raise FailedPrecondition(
                    f"a {state_name(current.state)} line item cannot change",
                    reason="LINE_ITEM_CLOSED",
                    metadata={"current_state": state_name(current.state)},
                )
            if patch.state is CampaignState.ACTIVE and "state" in requested:
                check_open(campaign)
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
            return await line_item_or_fail(conn, current.id)

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


def _money(value: Money | None) -> dict[str, Any]:
    return {"currency_code": value.currency_code, "minor_units": value.minor_units} if value else {}


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
        committed = await committed_spend(conn, current)
        if updated.budget.minor_units < committed:
            raise FailedPrecondition(
                f"the budget cannot go below what bookings already commit ({committed} "
                f"{current.budget.currency_code} minor units)",
                reason="BUDGET_BELOW_COMMITTED",
                metadata={"committed_minor_units": str(committed)},
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
