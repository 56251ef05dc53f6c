"""GetCampaignReport, CompareModels and ListConversions: protobuf to report requests and back."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from podmesh.attribution.v1 import attribution_pb2 as pb
from podmesh.type.v1 import money_pb2

from services.attribution.models import Model
from services.attribution.reports.conversions import ConversionQuery, Conversions
from services.attribution.reports.domain import Breakdown
from services.attribution.reports.report import CampaignReport, Metrics
from services.attribution.reports.service import (
    ALL_MODELS,
    MAX_WINDOW_DAYS,
    ReportRequest,
    Reports,
)
from services.shared.context import current_tenant_id
from services.shared.peers import credentials
from services.shared.protobuf import from_timestamp, timestamp
from services.shared.validation import Violations, page_size

# Longer half-lives make time decay indistinguishable from linear.
MAX_HALF_LIFE_S = 365 * 86_400


def _campaign_id(value: str, v: Violations) -> uuid.UUID:
    if not value:
        v.add("campaign_id", "is required")
        return uuid.UUID(int=0)
    try:
        return uuid.UUID(value)
    except ValueError:
        v.add("campaign_id", "must be a UUID")
        return uuid.UUID(int=0)


def _model(value: int, field: str, v: Violations, *, required: bool = False) -> Model | None:
    if value == 0 and not required:
        return None
    try:
        return Model(value)
    except ValueError:
        v.add(field, f"is not an attribution model ({value})")
        return None


def _window(value: int, field: str, v: Violations) -> int | None:
    if value == 0:
        return None
    v.check(1 <= value <= MAX_WINDOW_DAYS, field, f"must be from 1 to {MAX_WINDOW_DAYS} days")
    return value


def _breakdown(value: int, v: Violations) -> Breakdown:
    try:
        return Breakdown(value)
    except ValueError:
        v.add("breakdown", f"is not a breakdown ({value})")
        return Breakdown.NONE


def _half_life(message: Any, v: Violations) -> float | None:
    if not message.HasField("time_decay_half_life"):
        return None
    d: Duration = message.time_decay_half_life
    seconds = d.seconds + d.nanos / 1e9
    v.check(
        0 < seconds <= MAX_HALF_LIFE_S and d.nanos >= 0,
        "time_decay_half_life",
        "must be positive and at most 365 days",
    )
    return seconds


def _instant(message: Any, field: str, v: Violations) -> Any:
    if not message.HasField(field):
        return None
    ts: Timestamp = getattr(message, field)
    try:
        return from_timestamp(ts)
    except (ValueError, OverflowError):
        v.add(field, "is not a valid timestamp")
        return None


def _request(message: Any, models: Iterable[Model | None], v: Violations) -> ReportRequest:
    campaign_id = _campaign_id(message.campaign_id, v)
    window = _window(message.window_days, "window_days", v)
    breakdown = _breakdown(message.breakdown, v)
    half_life = _half_life(message, v)
    start = _instant(message, "start_time", v)
    end = _instant(message, "end_time", v)
    if start is not None and end is not None:
        v.check(start < end, "end_time", "must be after start_time")
    v.raise_if_any()
    return ReportRequest(
        campaign_id=campaign_id,
        models=tuple(models),
        window_days=window,
        breakdown=breakdown,
        start=start,
        end=end,
        half_life_s=half_life,
    )


def _money(currency: str, minor: int) -> money_pb2.Money:
    return money_pb2.Money(currency_code=currency, minor_units=minor)


def metrics_to_pb(m: Metrics, currency: str) -> pb.ReportMetrics:
    out = pb.ReportMetrics(
        impressions=m.impressions,
        households_reached=m.households,
        frequency=m.frequency,
        visitors=m.visitors,
        visit_rate=m.visit_rate,
        leads=m.leads,
        purchases=m.purchases,
        revenue=_money(currency, m.revenue_minor),
        spend=_money(currency, m.spend_minor),
        return_on_ad_spend=m.return_on_ad_spend,
        response_windows=[
            pb.ResponseWindow(
                days=w.days,
                visitors=w.visitors,
                leads=w.leads,
                purchases=w.purchases,
                revenue=_money(currency, w.revenue_minor),
            )
            for w in m.windows
        ],
        promo_code_purchases=m.promo_code_purchases,
    )
    if m.cost_per_visitor_minor is not None:
        out.cost_per_visitor.CopyFrom(_money(currency, m.cost_per_visitor_minor))
    if m.cost_per_acquisition_minor is not None:
        out.cost_per_acquisition.CopyFrom(_money(currency, m.cost_per_acquisition_minor))
    return out


def report_to_pb(r: CampaignReport) -> pb.CampaignReport:
    out = pb.CampaignReport(
        campaign_id=str(r.campaign_id),
        model=int(r.model),  # type: ignore[arg-type]
        window_days=r.window_days,
        start_time=timestamp(r.start),
        end_time=timestamp(r.end),
        totals=metrics_to_pb(r.totals, r.currency),
        breakdown=int(r.breakdown),  # type: ignore[arg-type]
        rows=[
            pb.ReportRow(
                dimension_value=row.dimension_value,
                display_name=row.display_name,
                metrics=metrics_to_pb(row.metrics, r.currency),
            )
            for row in r.rows
        ],
        unattributed=pb.UnattributedConversions(
            visitors=r.unattributed.visitors,
            leads=r.unattributed.leads,
            purchases=r.unattributed.purchases,
            revenue=_money(r.currency, r.unattributed.revenue_minor),
        ),
        data_end_time=timestamp(r.data_end),
    )
    if r.lift.message is not None:
        out.lift.CopyFrom(pb.Lift.FromString(r.lift.message))
    else:
        out.lift_unavailable_reason = r.lift.unavailable_reason
    return out


class ReportRpcs:
    """The report RPCs of AttributionService."""

    _reports: Reports
    _conversions: Conversions

    async def GetCampaignReport(
        self, request: pb.GetCampaignReportRequest, context: Any
    ) -> pb.GetCampaignReportResponse:
        v = Violations()
        model = _model(request.model, "model", v)
        query = _request(request, (model,), v)
        (report,) = await self._reports.reports(current_tenant_id(), query, credentials(context))
        return pb.GetCampaignReportResponse(campaign_report=report_to_pb(report))

    async def CompareModels(
        self, request: pb.CompareModelsRequest, context: Any
    ) -> pb.CompareModelsResponse:
        v = Violations()
        models = [_model(m, f"models[{i}]", v, required=True) for i, m in enumerate(request.models)]
        seen: set[Model] = set()
        for i, m in enumerate(models):
            if m is not None:
                v.check(m not in seen, f"models[{i}]", f"repeats {m.name}")
                seen.add(m)
        query = _request(request, [m for m in models if m is not None] or ALL_MODELS, v)
        reports = await self._reports.reports(current_tenant_id(), query, credentials(context))
        return pb.CompareModelsResponse(campaign_reports=[report_to_pb(r) for r in reports])

    async def ListConversions(
        self, request: pb.ListConversionsRequest, context: Any
    ) -> pb.ListConversionsResponse:
        v = Violations()
        campaign_id = _campaign_id(request.campaign_id, v)
        model = _model(request.model, "model", v)
        window = _window(request.window_days, "window_days", v)
        half_life = _half_life(request, v)
        types = []
        for i, t in enumerate(request.types):
            if v.check(
                t
                in (
                    pb.SITE_EVENT_TYPE_LEAD,
                    pb.SITE_EVENT_TYPE_PURCHASE,
                    pb.SITE_EVENT_TYPE_PAGE_VIEW,
                ),
                f"types[{i}]",
                f"is not a site event type ({t})",
            ):
                types.append(int(t))
        start = _instant(request, "start_time", v)
        end = _instant(request, "end_time", v)
        if start is not None and end is not None:
            v.check(start < end, "end_time", "must be after start_time")
        line_item = None
        if request.line_item_id:
            try:
                line_item = uuid.UUID(request.line_item_id)
            except ValueError:
                v.add("line_item_id", "must be a UUID")
        size = page_size(request.page_size)
        v.raise_if_any()
        page = await self._conversions.page(
            current_tenant_id(),
            ConversionQuery(
                campaign_id=campaign_id,
                model=model,
                window_days=window,
                half_life_s=half_life,
                types=tuple(sorted(set(types))) or (2, 3),
                start=start,
                end=end,
                line_item_id=line_item,
            ),
            size,
            request.page_token,
            credentials(context),
        )
        return pb.ListConversionsResponse(
            conversions=[
                pb.Conversion(
                    site_event_id=c.event_id,
                    type=c.kind,  # type: ignore[arg-type]
                    event_time=timestamp(c.time),
                    value=_money(c.currency, c.value_minor),
                    household_id=c.household_id,
                    touchpoints=[
                        pb.Touchpoint(
                            exposure_id=t.exposure_id,
                            exposure_time=timestamp(t.time),
                            line_item_id=t.line_item_id,
                            podcast_id=t.podcast_id,
                            episode_id=t.episode_id,
                            credit=t.credit,
                            credited_value=_money(c.currency, t.credited_minor),
                        )
                        for t in c.touchpoints
                    ],
                )
                for c in page.conversions
            ],
            next_page_token=page.next_page_token,
        )
