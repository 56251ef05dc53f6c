"""GetPacing: delivered impressions from analytics' ad delivery counts against the line
item's or campaign's goals; answers reused briefly (services.campaign.pacing.PacingCache)."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from services.campaign import repository as repo
from services.campaign.domain import LineItem, Placement
from services.campaign.operations import Operations, campaign_or_fail, line_item_or_fail
from services.campaign.pacing import Pacing, PacingReport, campaign_pacing, line_item_pacing
from services.campaign.peers import SlotRange
from services.shared.peers import Metadata


class PacingOps(Operations):
    async def line_item_pacing(
        self, tenant_id: uuid.UUID, line_item_id: uuid.UUID, credentials: Metadata
    ) -> PacingReport:
        async def make() -> PacingReport:
            async with self._db.tenant_transaction(tenant_id) as conn:
                item = await line_item_or_fail(conn, line_item_id)
                placements = await repo.placements_for_pacing(conn, [item.id])
            paced, _, _ = await self._pace([item], placements, credentials)
            return PacingReport(paced[0][1], [])

        return await self._pacing.get_or_make(tenant_id, line_item_id, make)

    async def campaign_pacing(
        self, tenant_id: uuid.UUID, campaign_id: uuid.UUID, credentials: Metadata
    ) -> PacingReport:
        async def make() -> PacingReport:
            async with self._db.tenant_transaction(tenant_id) as conn:
                campaign = await campaign_or_fail(conn, campaign_id)
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
            return PacingReport(total, [p for _, p in paced])

        return await self._pacing.get_or_make(tenant_id, campaign_id, make)

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
