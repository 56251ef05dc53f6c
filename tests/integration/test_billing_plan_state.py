"""What the plan and its state do to ingestion: the free plan stops at its events, paid
plans bill beyond them, a past-due tenant ingests for the grace period and is then
read-only (reads never stop, nothing is deleted)."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeAlias

import asyncpg
import grpc
import httpx
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from podmesh.analytics.v1 import analytics_pb2 as pb
from podmesh.analytics.v1 import analytics_pb2_grpc
from podmesh.tenant.v1 import tenant_pb2, tenant_pb2_grpc

from devstack.stack import Stack
from tests.analytics_ingest_support import (
    HOUR_US,
    IngestTenant,
    ingest_tenant,
    listener_traffic,
    now_us,
)
from tests.billing_support import CARD, request_id
from tests.support import bearer, error_info

WARNING = "podmesh-billing-warning"

Tenants: TypeAlias = "tenant_pb2_grpc.TenantServiceAsyncStub"
Analytics: TypeAlias = "analytics_pb2_grpc.AnalyticsServiceAsyncStub"


@pytest.fixture
def analytics(gateway_channel: grpc.aio.Channel) -> Analytics:
    return analytics_pb2_grpc.AnalyticsServiceStub(gateway_channel)


async def _on_plan(
    stack: Stack, tenants: Tenants, channel: grpc.aio.Channel, plan: str
) -> IngestTenant:
    seeded = await ingest_tenant(stack, tenants, channel, podcasts=1, episodes=1)
    await tenants.StartSubscription(
        tenant_pb2.StartSubscriptionRequest(
            tenant_id=seeded.tenant.id, plan=plan, payment_method=CARD
        ),
        metadata=bearer(seeded.tenant.owner_key) + request_id(),
    )
    return seeded


async def _ingest(analytics: Analytics, seeded: IngestTenant, n: int) -> int:
    records = list(
        listener_traffic(seeded.episodes, n, start_us=now_us() - HOUR_US, span_us=HOUR_US // 2)
    )[:n]
    response = await analytics.IngestListenerEvents(
        pb.IngestListenerEventsRequest(requests=records), metadata=bearer(seeded.ingest_key)
    )
    return int(response.accepted_count)


async def _used(owner_conn: asyncpg.Connection, seeded: IngestTenant, events: int) -> None:
    """Events already counted this month, as analytics' own monthly usage row holds them."""
    now = datetime.now(UTC)
    await owner_conn.execute(
        "INSERT INTO ingest_usage (tenant_id, month, events) VALUES ($1, $2, $3)",
        uuid.UUID(seeded.tenant.id),
        date(now.year, now.month, 1),
        events,
    )


async def _past_due(owner_conn: asyncpg.Connection, seeded: IngestTenant, days: int) -> None:
    await owner_conn.execute(
        """
        UPDATE billing_accounts SET subscription_state = 'past_due',
            past_due_since = now() - make_interval(days => $2)
        WHERE tenant_id = $1
        """,
        uuid.UUID(seeded.tenant.id),
        days,
    )


async def _read(analytics: Analytics, seeded: IngestTenant) -> Any:
    now = datetime.now(UTC)
    start, end = Timestamp(), Timestamp()
    start.FromDatetime(now - timedelta(days=1))
    end.FromDatetime(now + timedelta(days=1))
    return await analytics.QueryMetrics(
        pb.QueryMetricsRequest(
            start_time=start,
            end_time=end,
            granularity=pb.GRANULARITY_TOTAL,
            metrics=[pb.METRIC_DOWNLOADS],
        ),
        metadata=bearer(seeded.tenant.owner_key),
    )


async def test_a_free_tenant_over_its_events_is_refused_with_the_reason(
    stack: Stack,
    tenants: Tenants,
    gateway_channel: grpc.aio.Channel,
    analytics: Analytics,
    owner_conn: asyncpg.Connection,
) -> None:
    seeded = await _on_plan(stack, tenants, gateway_channel, "free")
    await _used(owner_conn, seeded, 9_990)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _ingest(analytics, seeded, 20)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(refused.value).reason == "MONTHLY_QUOTA_EXCEEDED"
    assert "10,000" in (refused.value.details() or "")
    assert await _ingest(analytics, seeded, 10) == 10


async def test_a_paid_tenant_over_its_included_events_keeps_ingesting_and_is_billed(
    stack: Stack,
    tenants: Tenants,
    gateway_channel: grpc.aio.Channel,
    analytics: Analytics,
    owner_conn: asyncpg.Connection,
) -> None:
    seeded = await _on_plan(stack, tenants, gateway_channel, "growth")
    await _used(owner_conn, seeded, 1_000_000)
    assert await _ingest(analytics, seeded, 20) == 20
    usage = await tenants.GetUsage(
        tenant_pb2.GetUsageRequest(tenant_id=seeded.tenant.id),
        metadata=bearer(seeded.tenant.owner_key),
    )
    assert usage.counted_events == 1_000_020
    assert usage.included_events == 1_000_000
    assert usage.overage_events == 20
    # USD 99 a month, and USD 0.05 for each started thousand events beyond the included.
    assert (usage.projected_bill.currency_code, usage.projected_bill.minor_units) == ("USD", 9_905)


async def test_a_past_due_tenant_within_grace_ingests_and_is_warned(
    stack: Stack,
    tenants: Tenants,
    gateway_channel: grpc.aio.Channel,
    analytics: Analytics,
    owner_conn: asyncpg.Connection,
) -> None:
    seeded = await _on_plan(stack, tenants, gateway_channel, "growth")
    await _past_due(owner_conn, seeded, 1)
    call = tenants.GetTenant(
        tenant_pb2.GetTenantRequest(tenant_id=seeded.tenant.id),
        metadata=bearer(seeded.tenant.owner_key),
    )
    billing = (await call).tenant.billing
    assert billing.subscription_state == tenant_pb2.SUBSCRIPTION_STATE_PAST_DUE
    assert billing.ingestion_allowed
    assert billing.reason == "SUBSCRIPTION_PAST_DUE"
    assert billing.grace_end_time.ToDatetime(tzinfo=UTC) > datetime.now(UTC) + timedelta(days=5)
    # Every response carries the warning: the tenant service's own, another service's
    # (whose credential check goes through IntrospectCredential), and JSON's as a header.
    assert "past due" in str(dict(await call.initial_metadata() or ())[WARNING])
    records = list(
        listener_traffic(seeded.episodes, 10, start_us=now_us() - HOUR_US, span_us=HOUR_US // 2)
    )[:10]
    ingest = analytics.IngestListenerEvents(
        pb.IngestListenerEventsRequest(requests=records), metadata=bearer(seeded.ingest_key)
    )
    assert (await ingest).accepted_count == 10
    assert "past due" in str(dict(await ingest.initial_metadata() or ())[WARNING])
    async with httpx.AsyncClient(base_url=stack.gateway_url) as client:
        response = await client.get(
            f"/api/v1/tenants/{seeded.tenant.id}",
            headers={"authorization": f"Bearer {seeded.tenant.owner_key}"},
        )
    assert response.status_code == 200
    assert "past due" in response.headers[WARNING]


async def test_a_tenant_in_good_standing_gets_no_warning(
    stack: Stack, tenants: Tenants, gateway_channel: grpc.aio.Channel
) -> None:
    seeded = await _on_plan(stack, tenants, gateway_channel, "growth")
    call = tenants.GetTenant(
        tenant_pb2.GetTenantRequest(tenant_id=seeded.tenant.id),
        metadata=bearer(seeded.tenant.owner_key),
    )
    assert (await call).tenant.billing.reason == ""
    assert WARNING not in dict(await call.initial_metadata() or ())


async def test_after_grace_ingestion_stops_and_reads_go_on(
    stack: Stack,
    tenants: Tenants,
    gateway_channel: grpc.aio.Channel,
    analytics: Analytics,
    owner_conn: asyncpg.Connection,
) -> None:
    seeded = await _on_plan(stack, tenants, gateway_channel, "growth")
    await _past_due(owner_conn, seeded, 8)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _ingest(analytics, seeded, 10)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(refused.value).reason == "SUBSCRIPTION_INACTIVE"
    # Reads still answer (a refusal here would raise).
    assert (await _read(analytics, seeded)).HasField("methodology")
