"""Campaign reports on a handful of exposures and site events, computed by hand.

Two line items (A on podcast P, B on podcast Q) and five households, window 7 days:
- h1: A at t0, B at t0 + 25 h; a page view at t0 + 36 h; a purchase of USD 100.00 with
  A's promo code (in lower case) at t0 + 2 days.
- h2: A at t0; a lead at t0 + 3 days.
- h3: B at t0; nothing else (a non-converting path).
- h4: no exposure; a page view and a USD 50.00 purchase (unattributed).
- h5: A at t0; a USD 7.00 purchase at t0 + 10 days, beyond the window (unattributed).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from fractions import Fraction

import asyncpg
import grpc
import pytest
from podmesh.attribution.v1 import attribution_pb2 as pb
from podmesh.attribution.v1 import attribution_pb2_grpc
from podmesh.campaign.v1 import campaign_pb2 as cpb
from podmesh.type.v1 import attribution_model_pb2 as mpb

from devstack.stack import Stack
from tests.attribution_report_support import (
    LEAD,
    PAGE_VIEW,
    PURCHASE,
    Exposure,
    SiteEvent,
    household,
    insert,
)
from tests.campaign_support import (
    CampaignStub,
    create_campaign,
    create_line_item,
    create_sponsor,
    day_floor,
    seconds,
    ts,
)
from tests.support import TenantHandle, bearer, create_tenant, error_info, violated_fields

P = "00000000-0000-4000-8000-00000000000a"
Q = "00000000-0000-4000-8000-00000000000b"
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
ALL = [
    getattr(mpb, f"ATTRIBUTION_MODEL_{m}")
    for m in (
        "FIRST_TOUCH",
        "LAST_TOUCH",
        "LINEAR",
        "TIME_DECAY",
        "POSITION_BASED",
        "MARKOV",
        "SHAPLEY",
    )
]


@pytest.fixture(scope="module")
async def attribution(
    stack: Stack,
) -> AsyncIterator[attribution_pb2_grpc.AttributionServiceAsyncStub]:
    async with grpc.aio.insecure_channel(stack.service_addr("attribution")) as channel:
        yield attribution_pb2_grpc.AttributionServiceStub(channel)


class World:
    def __init__(self, tenant: TenantHandle, campaign: cpb.Campaign, a: str, b: str, t0: datetime):
        self.tenant = tenant
        self.campaign = campaign
        self.a = a
        self.b = b
        self.t0 = t0


@pytest.fixture
async def world(
    tenants: object, stack: Stack, campaigns: CampaignStub, owner_conn: asyncpg.Connection
) -> World:
    tenant = await create_tenant(tenants, stack.admin_token, "attr")  # type: ignore[arg-type]
    key = tenant.owner_key
    sponsor = await create_sponsor(campaigns, key)
    start = day_floor(datetime.now(UTC)) - timedelta(days=20)
    campaign = await create_campaign(
        campaigns, key, sponsor.id, start=start, end=start + timedelta(days=30)
    )
    a = await create_line_item(campaigns, key, campaign.id, display_name="A", promo_code="SAVE10")
    b = await create_line_item(campaigns, key, campaign.id, display_name="B")
    t0 = start + HOUR
    h1, h2, h3, h4, h5 = (household(n) for n in range(1, 6))
    exposures = [
        Exposure(t0, a.id, P, h1, "e1"),
        Exposure(t0 + 25 * HOUR, b.id, Q, h1, "e2"),
        Exposure(t0, a.id, P, h2, "e3"),
        Exposure(t0, b.id, Q, h3, "e4"),
        Exposure(t0, a.id, P, h5, "e5"),
    ]
    events = [
        SiteEvent(t0 + 36 * HOUR, PAGE_VIEW, h1, id="v1"),
        SiteEvent(t0 + 2 * DAY, PURCHASE, h1, 10_000, promo_code="save10", id="p1"),
        SiteEvent(t0 + 3 * DAY, LEAD, h2, id="l2"),
        SiteEvent(t0 + 2 * DAY, PAGE_VIEW, h4, id="v4"),
        SiteEvent(t0 + 2 * DAY, PURCHASE, h4, 5_000, id="p4"),
        SiteEvent(t0 + 10 * DAY, PURCHASE, h5, 700, id="p5"),
    ]
    await insert(owner_conn, tenant.id, campaign.id, sponsor.id, exposures, events)
    return World(tenant, campaign, a.id, b.id, t0)


def rows(report: pb.CampaignReport) -> dict[str, pb.ReportMetrics]:
    return {r.dimension_value: r.metrics for r in report.rows}


async def report(
    attribution: attribution_pb2_grpc.AttributionServiceAsyncStub,
    w: World,
    model: int,
    **fields: object,
) -> pb.CampaignReport:
    response = await attribution.GetCampaignReport(
        pb.GetCampaignReportRequest(
            campaign_id=w.campaign.id,
            model=model,  # type: ignore[arg-type]
            window_days=7,
            breakdown=pb.REPORT_BREAKDOWN_LINE_ITEM,
            **fields,  # type: ignore[arg-type]
        ),
        metadata=bearer(w.tenant.owner_key),
    )
    return response.campaign_report


async def test_last_touch_by_hand(
    attribution: attribution_pb2_grpc.AttributionServiceAsyncStub,
    world: World,
    campaigns: CampaignStub,
) -> None:
    r = await report(attribution, world, mpb.ATTRIBUTION_MODEL_LAST_TOUCH)
    t = r.totals
    assert (t.impressions, t.households_reached) == (5, 4)
    assert t.frequency == 1.25
    assert (t.visitors, t.visit_rate, t.leads, t.purchases) == (1, 0.25, 1, 1)
    assert t.revenue.minor_units == 10_000
    assert t.revenue.currency_code == "USD"
    assert t.promo_code_purchases == 1
    by = rows(r)
    a, b = by[world.a], by[world.b]
    assert (a.impressions, a.households_reached) == (3, 3)
    assert (b.impressions, b.households_reached) == (2, 2)
    # The lead's only touch is A; the visit and the purchase go to B, the later touch.
    assert (a.visitors, a.leads, a.purchases, a.revenue.minor_units) == (0, 1, 0, 0)
    assert (b.visitors, b.leads, b.purchases, b.revenue.minor_units) == (1, 0, 1, 10_000)
    assert (a.promo_code_purchases, b.promo_code_purchases) == (1, 0)
    # B's touch was 23 h before the purchase and 11 h before the visit; A's 3 days
    # before the lead.
    windows = {w.days: w for w in t.response_windows}
    assert [windows[1].visitors, windows[1].leads, windows[1].purchases] == [1, 0, 1]
    assert windows[1].revenue.minor_units == 10_000
    assert [windows[7].visitors, windows[7].leads, windows[7].purchases] == [1, 1, 1]
    assert [windows[30].leads, windows[30].purchases] == [1, 1]
    un = r.unattributed
    assert (un.visitors, un.leads, un.purchases, un.revenue.minor_units) == (1, 0, 2, 5_700)
    assert r.window_days == 7
    assert r.model == mpb.ATTRIBUTION_MODEL_LAST_TOUCH
    assert r.start_time == world.campaign.flight_start_time
    assert r.HasField("data_end_time")
    # Four exposed households and no downloaders in analytics: too few to say anything.
    assert not r.HasField("lift")
    assert "household" in r.lift_unavailable_reason
    pacing = await campaigns.GetPacing(
        cpb.GetPacingRequest(campaign_id=world.campaign.id),
        metadata=bearer(world.tenant.owner_key),
    )
    assert t.spend.minor_units == pacing.pacing.spend.minor_units


async def test_first_touch_and_linear_by_hand(
    attribution: attribution_pb2_grpc.AttributionServiceAsyncStub, world: World
) -> None:
    first = rows(await report(attribution, world, mpb.ATTRIBUTION_MODEL_FIRST_TOUCH))
    assert (first[world.a].visitors, first[world.a].leads, first[world.a].purchases) == (1, 1, 1)
    assert first[world.a].revenue.minor_units == 10_000
    assert (first[world.b].visitors, first[world.b].purchases) == (0, 0)
    linear = rows(await report(attribution, world, mpb.ATTRIBUTION_MODEL_LINEAR))
    assert (linear[world.a].purchases, linear[world.b].purchases) == (0.5, 0.5)
    assert (linear[world.a].visitors, linear[world.b].visitors) == (0.5, 0.5)
    assert linear[world.a].revenue.minor_units == linear[world.b].revenue.minor_units == 5_000
    assert (linear[world.a].leads, linear[world.b].leads) == (1, 0)


async def test_time_decay_half_life(
    attribution: attribution_pb2_grpc.AttributionServiceAsyncStub, world: World
) -> None:
    # With a 25-hour half-life the purchase's touches are 48 h and 23 h old: weights
    # 2^(-48/25) and 2^(-23/25), whose ratio is exactly 1/2.
    r = await report(
        attribution,
        world,
        mpb.ATTRIBUTION_MODEL_TIME_DECAY,
        time_decay_half_life=seconds(25 * 3600),
    )
    by = rows(r)
    assert by[world.a].purchases == pytest.approx(1 / 3, abs=1e-9)
    assert by[world.b].purchases == pytest.approx(2 / 3, abs=1e-9)
    assert by[world.a].revenue.minor_units + by[world.b].revenue.minor_units == 10_000
    assert {by[world.a].revenue.minor_units, by[world.b].revenue.minor_units} == {3_333, 6_667}


async def test_every_model_rows_sum_to_totals(
    attribution: attribution_pb2_grpc.AttributionServiceAsyncStub, world: World
) -> None:
    response = await attribution.CompareModels(
        pb.CompareModelsRequest(
            campaign_id=world.campaign.id, window_days=7, breakdown=pb.REPORT_BREAKDOWN_LINE_ITEM
        ),
        metadata=bearer(world.tenant.owner_key),
    )
    assert [r.model for r in response.campaign_reports] == ALL
    for r in response.campaign_reports:
        t = r.totals
        assert (t.impressions, t.visitors, t.leads, t.purchases) == (5, 1, 1, 1), r.model
        assert t.revenue.minor_units == 10_000
        for name in ("visitors", "leads", "purchases"):
            total = sum(Fraction(getattr(row.metrics, name)) for row in r.rows)
            assert total == pytest.approx(Fraction(getattr(t, name)), abs=1e-9), (r.model, name)
        assert sum(row.metrics.revenue.minor_units for row in r.rows) == t.revenue.minor_units
        assert sum(row.metrics.spend.minor_units for row in r.rows) == t.spend.minor_units
        assert sum(row.metrics.impressions for row in r.rows) == t.impressions
        for days in (1, 7, 30):
            window = next(w for w in t.response_windows if w.days == days)
            parts = [
                next(w for w in row.metrics.response_windows if w.days == days) for row in r.rows
            ]
            assert sum(p.revenue.minor_units for p in parts) == window.revenue.minor_units


async def test_requested_order_and_podcast_breakdown(
    attribution: attribution_pb2_grpc.AttributionServiceAsyncStub, world: World
) -> None:
    response = await attribution.CompareModels(
        pb.CompareModelsRequest(
            campaign_id=world.campaign.id,
            models=[mpb.ATTRIBUTION_MODEL_SHAPLEY, mpb.ATTRIBUTION_MODEL_FIRST_TOUCH],
            window_days=7,
            breakdown=pb.REPORT_BREAKDOWN_PODCAST,
        ),
        metadata=bearer(world.tenant.owner_key),
    )
    shapley, first = response.campaign_reports
    assert (shapley.model, first.model) == (
        mpb.ATTRIBUTION_MODEL_SHAPLEY,
        mpb.ATTRIBUTION_MODEL_FIRST_TOUCH,
    )
    by = rows(first)
    assert set(by) == {P, Q}
    assert (by[P].impressions, by[Q].impressions) == (3, 2)
    assert (by[P].purchases, by[Q].purchases) == (1, 0)
    # Rows are ordered by impressions, most first.
    assert [row.dimension_value for row in first.rows] == [P, Q]


async def test_new_rows_change_the_cached_report(
    attribution: attribution_pb2_grpc.AttributionServiceAsyncStub,
    world: World,
    owner_conn: asyncpg.Connection,
) -> None:
    before = await report(attribution, world, mpb.ATTRIBUTION_MODEL_LAST_TOUCH)
    assert before.totals.leads == 1
    campaign = world.campaign
    await insert(
        owner_conn,
        world.tenant.id,
        campaign.id,
        campaign.sponsor_id,
        [Exposure(world.t0 + DAY, world.b, Q, household(3), "e6")],
        [SiteEvent(world.t0 + 2 * DAY, LEAD, household(3), id="l3")],
    )
    after = await report(attribution, world, mpb.ATTRIBUTION_MODEL_LAST_TOUCH)
    assert (after.totals.impressions, after.totals.leads) == (6, 2)
    assert rows(after)[world.b].leads == 1


async def test_list_conversions_newest_first_with_credits(
    attribution: attribution_pb2_grpc.AttributionServiceAsyncStub, world: World
) -> None:
    key = bearer(world.tenant.owner_key)
    first = await attribution.ListConversions(
        pb.ListConversionsRequest(
            campaign_id=world.campaign.id,
            model=mpb.ATTRIBUTION_MODEL_LINEAR,
            window_days=7,
            page_size=1,
        ),
        metadata=key,
    )
    (lead,) = first.conversions
    assert lead.site_event_id == "l2"
    assert lead.type == pb.SITE_EVENT_TYPE_LEAD
    assert [t.exposure_id for t in lead.touchpoints] == ["e3"]
    assert lead.touchpoints[0].credit == 1
    assert first.next_page_token
    second = await attribution.ListConversions(
        pb.ListConversionsRequest(
            campaign_id=world.campaign.id,
            model=mpb.ATTRIBUTION_MODEL_LINEAR,
            window_days=7,
            page_size=1,
            page_token=first.next_page_token,
        ),
        metadata=key,
    )
    (purchase,) = second.conversions
    assert purchase.site_event_id == "p1"
    assert [t.exposure_id for t in purchase.touchpoints] == ["e1", "e2"]
    assert [t.credit for t in purchase.touchpoints] == [0.5, 0.5]
    assert [t.credited_value.minor_units for t in purchase.touchpoints] == [5_000, 5_000]
    assert purchase.value.minor_units == 10_000
    assert not second.next_page_token
    only_b = await attribution.ListConversions(
        pb.ListConversionsRequest(
            campaign_id=world.campaign.id, window_days=7, line_item_id=world.b
        ),
        metadata=key,
    )
    assert [c.site_event_id for c in only_b.conversions] == ["p1"]


async def test_foreign_and_unknown_campaigns_are_not_found(
    attribution: attribution_pb2_grpc.AttributionServiceAsyncStub,
    world: World,
    tenants: object,
    stack: Stack,
) -> None:
    other = await create_tenant(tenants, stack.admin_token, "attr-other")  # type: ignore[arg-type]
    for campaign_id in (world.campaign.id, "00000000-0000-4000-8000-000000000001"):
        for call in (
            attribution.GetCampaignReport(
                pb.GetCampaignReportRequest(campaign_id=campaign_id),
                metadata=bearer(other.owner_key),
            ),
            attribution.CompareModels(
                pb.CompareModelsRequest(campaign_id=campaign_id), metadata=bearer(other.owner_key)
            ),
            attribution.ListConversions(
                pb.ListConversionsRequest(campaign_id=campaign_id),
                metadata=bearer(other.owner_key),
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
            assert error_info(caught.value).reason == "CAMPAIGN_NOT_FOUND"


@pytest.mark.parametrize(
    ("fields", "violated"),
    [
        ({"campaign_id": "nope"}, "campaign_id"),
        ({"window_days": 91}, "window_days"),
        ({"window_days": -1}, "window_days"),
        ({"model": 42}, "model"),
        ({"breakdown": 9}, "breakdown"),
        ({"time_decay_half_life": seconds(-5)}, "time_decay_half_life"),
    ],
)
async def test_bad_report_requests(
    attribution: attribution_pb2_grpc.AttributionServiceAsyncStub,
    world: World,
    fields: dict[str, object],
    violated: str,
) -> None:
    request = pb.GetCampaignReportRequest(campaign_id=world.campaign.id)
    for name, value in fields.items():
        if name == "time_decay_half_life":
            request.time_decay_half_life.CopyFrom(value)  # type: ignore[arg-type]
        else:
            setattr(request, name, value)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await attribution.GetCampaignReport(request, metadata=bearer(world.tenant.owner_key))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated in violated_fields(caught.value)


async def test_bad_periods_and_model_lists(
    attribution: attribution_pb2_grpc.AttributionServiceAsyncStub, world: World
) -> None:
    key = bearer(world.tenant.owner_key)
    start = world.campaign.flight_start_time
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await attribution.GetCampaignReport(
            pb.GetCampaignReportRequest(
                campaign_id=world.campaign.id, start_time=start, end_time=start
            ),
            metadata=key,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "end_time" in violated_fields(caught.value)
    # A start after the flight's end, with the end defaulted to it.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await attribution.GetCampaignReport(
            pb.GetCampaignReportRequest(
                campaign_id=world.campaign.id,
                start_time=ts(world.t0 + timedelta(days=60)),
            ),
            metadata=key,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for models in ([0], [mpb.ATTRIBUTION_MODEL_LINEAR, mpb.ATTRIBUTION_MODEL_LINEAR], [8]):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await attribution.CompareModels(
                pb.CompareModelsRequest(campaign_id=world.campaign.id, models=models),  # type: ignore[arg-type]
                metadata=key,
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "models[" in ",".join(violated_fields(caught.value))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await attribution.ListConversions(
            pb.ListConversionsRequest(campaign_id=world.campaign.id, page_token="garbage"),
            metadata=key,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
