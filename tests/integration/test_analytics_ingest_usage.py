"""GetIngestUsage, the analytics RPC billing meters from: a tenant's accepted events
per UTC month, for the platform administrator only, with the month checked."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import grpc
import httpx
import pytest
from podmesh.analytics.v1 import analytics_pb2 as pb
from podmesh.analytics.v1 import analytics_pb2_grpc
from podmesh.tenant.v1 import tenant_pb2_grpc

from devstack.stack import Stack
from tests.analytics_ingest_support import HOUR_US, ingest_tenant, listener_traffic, now_us
from tests.support import bearer, create_tenant, violated_fields


async def test_the_administrator_reads_each_tenants_month_and_tenants_read_none(
    stack: Stack,
    tenants: tenant_pb2_grpc.TenantServiceAsyncStub,
    gateway_channel: grpc.aio.Channel,
    http: httpx.AsyncClient,
) -> None:
    seeded = await ingest_tenant(stack, tenants, gateway_channel, podcasts=1, episodes=2)
    other = await create_tenant(tenants, stack.admin_token, "usage")
    stub = analytics_pb2_grpc.AnalyticsServiceStub(gateway_channel)
    records = list(
        listener_traffic(seeded.episodes, 7, start_us=now_us() - HOUR_US, span_us=HOUR_US // 2)
    )[:7]
    ingested = await stub.IngestListenerEvents(
        pb.IngestListenerEventsRequest(requests=records), metadata=bearer(seeded.ingest_key)
    )
    assert ingested.accepted_count == 7
    now = datetime.now(UTC)
    admin = bearer(stack.admin_token)

    def request(
        tenant_id: str, year: int = now.year, month: int = now.month
    ) -> pb.GetIngestUsageRequest:
        return pb.GetIngestUsageRequest(tenant_id=tenant_id, year=year, month=month)

    usage = await stub.GetIngestUsage(request(seeded.tenant.id), metadata=admin)
    assert usage.accepted_events == 7
    assert usage.period_start_time.ToDatetime(tzinfo=UTC) == datetime(
        now.year, now.month, 1, tzinfo=UTC
    )
    assert usage.period_end_time.ToDatetime(tzinfo=UTC) > now
    assert (await stub.GetIngestUsage(request(other.id), metadata=admin)).accepted_events == 0
    last_year = await stub.GetIngestUsage(request(seeded.tenant.id, now.year - 1), metadata=admin)
    assert last_year.accepted_events == 0

    # A tenant's credential reads nothing: neither another tenant's usage nor its own.
    for credential in (other.owner_key, seeded.tenant.owner_key, seeded.ingest_key):
        for tenant_id in (seeded.tenant.id, other.id):
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await stub.GetIngestUsage(request(tenant_id), metadata=bearer(credential))
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED

    as_json = await http.get(
        f"/api/v1/tenants/{seeded.tenant.id}/ingestUsage",
        params={"year": now.year, "month": now.month},
        headers={"authorization": f"Bearer {stack.admin_token}"},
    )
    assert as_json.status_code == 200
    assert as_json.json()["acceptedEvents"] == "7"


@pytest.mark.parametrize(
    ("tenant_id", "year", "month", "fields"),
    [
        (None, 2026, 13, ["month"]),
        (None, 2026, 0, ["month"]),
        (None, 1999, -1, ["year", "month"]),
        (None, 10000, 1, ["year"]),
        ("not-a-uuid", 2026, 1, ["tenant_id"]),
        ("", 2026, 1, ["tenant_id"]),
    ],
)
async def test_a_bad_tenant_or_month_is_invalid_argument(
    stack: Stack,
    gateway_channel: grpc.aio.Channel,
    tenant_id: str | None,
    year: int,
    month: int,
    fields: list[str],
) -> None:
    stub = analytics_pb2_grpc.AnalyticsServiceStub(gateway_channel)
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await stub.GetIngestUsage(
            pb.GetIngestUsageRequest(
                tenant_id=str(uuid.uuid4()) if tenant_id is None else tenant_id,
                year=year,
                month=month,
            ),
            metadata=bearer(stack.admin_token),
        )
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(bad.value) == fields
