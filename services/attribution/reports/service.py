"""Campaign reports and model comparisons: the campaign from the campaign service, the
numbers from the cache or the repository, spend from pacing."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from services.attribution.lift.control import ExposedHouseholds, campaign_lift
from services.attribution.lift.messages import lift_to_pb
from services.attribution.models import DEFAULT_HALF_LIFE_S, Model
from services.attribution.peers import Analytics, CampaignFacts, Campaigns, LineItemFacts
from services.attribution.reports.cache import ReportCache, period_key
from services.attribution.reports.domain import Breakdown, credit_models
from services.attribution.reports.report import (
    CampaignReport,
    Core,
    LiftResult,
    assemble,
    line_item_spend,
)
from services.attribution.reports.repository import LiftGroups, Scope, read_inputs
from services.attribution.reports.versions import current_version
from services.shared.db import Database
from services.shared.errors import DomainError, InvalidArgument
from services.shared.peers import Metadata
from services.shared.single_flight import SingleFlight

log = logging.getLogger("podmesh.attribution.reports")

DEFAULT_WINDOW_DAYS = 30
MAX_WINDOW_DAYS = 90
# A report reads every exposure of its period: at most this long.
MAX_PERIOD = timedelta(days=400)
ALL_MODELS = tuple(Model)
_NO_CONTROL = "the control group cannot be read from analytics now"


@dataclass(frozen=True)
class ReportRequest:
    campaign_id: uuid.UUID
    # None: the campaign's own model.
    models: tuple[Model | None, ...]
    window_days: int | None
    breakdown: Breakdown
    start: datetime | None
    end: datetime | None
    half_life_s: float | None


@dataclass(frozen=True)
class Period:
    """A request made concrete with the campaign's defaults."""

    campaign: CampaignFacts
    models: tuple[Model, ...]
    window_days: int
    start: datetime
    end: datetime
    half_life_s: float


def campaign_model(campaign: CampaignFacts) -> Model:
    return Model(campaign.model) if campaign.model else Model.LAST_TOUCH


def resolve(
    campaign: CampaignFacts,
    models: Sequence[Model | None],
    window_days: int | None,
    start: datetime | None,
    end: datetime | None,
    half_life_s: float | None,
) -> Period:
    window = window_days or campaign.window_days or DEFAULT_WINDOW_DAYS
    first = start or campaign.flight_start
    last = end or campaign.flight_end
    if first >= last:
        raise InvalidArgument.field(
            "start_time" if start else "end_time",
            f"the period must end after it starts ({first.isoformat()} to {last.isoformat()})",
        )
    if last - first > MAX_PERIOD:
        raise InvalidArgument.field("end_time", f"the period is longer than {MAX_PERIOD.days} days")
    return Period(
        campaign=campaign,
        models=tuple(m or campaign_model(campaign) for m in models),
        window_days=window,
        start=first,
        end=last,
        half_life_s=half_life_s or DEFAULT_HALF_LIFE_S,
    )


class Reports:
    def __init__(
        self, db: Database, campaigns: Campaigns, analytics: Analytics, cache: ReportCache
    ) -> None:
        self._db = db
        self._campaigns = campaigns
        self._analytics = analytics
        self._cache = cache
        self._flights: SingleFlight[Core] = SingleFlight()

    async def campaign(
        self, campaign_id: uuid.UUID, credentials: Metadata
    ) -> tuple[CampaignFacts, list[LineItemFacts]]:
        campaign, line_items = await asyncio.gather(
            self._campaigns.campaign(campaign_id, credentials),
            self._campaigns.campaign_line_items(campaign_id, credentials),
        )
        return campaign, line_items

    async def reports(
        self, tenant_id: uuid.UUID, request: ReportRequest, credentials: Metadata
    ) -> list[CampaignReport]:
        (campaign, line_items), spend = await asyncio.gather(
            self.campaign(request.campaign_id, credentials),
            self._campaigns.spend(request.campaign_id, credentials),
        )
        period = resolve(
            campaign,
            request.models,
            request.window_days,
            request.start,
            request.end,
            request.half_life_s,
        )
        own_model = campaign_model(campaign)
        needed = list(dict.fromkeys(period.models))
        # CPA spend is the purchases credited under the campaign's model.
        if own_model not in needed and any(
            li.pricing_model == 3 and spend.by_line_item.get(li.id) is None for li in line_items
        ):
            needed.append(own_model)
        core = await self._core(tenant_id, period, needed, credentials)
        by_line_item = line_item_spend(core, line_items, spend.by_line_item, own_model)
        return [
            assemble(
                core,
                model,
                campaign_id=campaign.id,
                window_days=period.window_days,
                start=period.start,
                end=period.end,
                currency=campaign.currency,
                breakdown=request.breakdown,
                line_items=line_items,
                spend=by_line_item,
            )
            for model in period.models
        ]

    async def _core(
        self, tenant_id: uuid.UUID, period: Period, models: list[Model], credentials: Metadata
    ) -> Core:
        campaign = period.campaign
        key = period_key(
            tenant_id,
            (
                campaign.id,
                campaign.sponsor_id,
                campaign.currency,
                period.start.isoformat(),
                period.end.isoformat(),
                period.window_days,
                period.half_life_s,
            ),
        )
        version = await current_version(self._db, tenant_id)
        cached = await self._cache.get(key, version, models)
        if cached is not None:
            return ReportCache.core(*cached)
        # Concurrent askers of one report (a dashboard's viewers) wait for one computation.
        flight = (key, version, tuple(models))
        if self._flights.running(flight):
            return await self._flights.run(
                flight, lambda: self._compute(tenant_id, period, models, credentials)
            )
        core = await self._flights.run(
            flight, lambda: self._compute(tenant_id, period, models, credentials)
        )
        if core.lift.message is not None or not core.lift.unavailable_reason.startswith(
            _NO_CONTROL
        ):
            await self._cache.put(key, version, core)
        return core

    async def _compute(
        self, tenant_id: uuid.UUID, period: Period, models: list[Model], credentials: Metadata
    ) -> Core:
        campaign = period.campaign
        sponsor_campaigns = await self._campaigns.sponsor_campaign_ids(
            campaign.sponsor_id, credentials
        )
        scope = Scope(
            tenant_id=tenant_id,
            campaign_id=campaign.id,
            sponsor_id=campaign.sponsor_id,
            currency=campaign.currency,
            start=period.start,
            end=period.end,
            window=timedelta(days=period.window_days),
            sponsor_campaigns=tuple({*sponsor_campaigns, campaign.id}),
        )
        began = time.perf_counter()
        async with self._db.tenant_transaction(tenant_id) as conn:
            groups, inputs = await read_inputs(conn, scope)
        read_s = time.perf_counter() - began
        lift = await self._lift(scope, inputs.podcasts, groups, credentials)
        del groups
        # Seconds of arithmetic for a large campaign: off the event loop, so the
        # service keeps answering health checks and other calls meanwhile.
        credited = await asyncio.to_thread(
            credit_models, models, inputs, half_life_s=period.half_life_s
        )
        log.info(
            "report computed",
            extra={
                "fields": {
                    "campaign_id": str(campaign.id),
                    "events": len(inputs.events),
                    "read_s": round(read_s, 3),
                    "credit_s": round(time.perf_counter() - began - read_s, 3),
                }
            },
        )
        return Core(
            line_items=inputs.line_items,
            podcasts=inputs.podcasts,
            total=inputs.total,
            by_line_item=inputs.by_line_item,
            by_podcast=inputs.by_podcast,
            impressions_by_pair=inputs.impressions_by_pair,
            promo_purchases=inputs.promo_purchases,
            unattributed=inputs.unattributed,
            data_end=inputs.data_end,
            lift=lift,
            credited=credited,
        )

    async def _lift(
        self,
        scope: Scope,
        podcasts: list[uuid.UUID],
        groups: LiftGroups,
        credentials: Metadata,
    ) -> LiftResult:
        try:
            result = await campaign_lift(
                self._analytics,
                credentials,
                podcasts,
                scope.start,
                scope.end,
                ExposedHouseholds(
                    groups.exposed, groups.exposed_visitors, groups.exposed_purchasers
                ),
                groups.site_visitors,
                groups.site_purchasers,
            )
        except DomainError as error:
            # The report stands without its lift; the next call asks analytics again.
            return LiftResult(None, f"{_NO_CONTROL}: {error.message}")
        message, reason = lift_to_pb(result)
        return LiftResult(message.SerializeToString() if message is not None else None, reason)
