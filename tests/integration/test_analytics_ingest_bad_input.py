"""What ingestion refuses: bad records one by one (the rest is stored), and whole
batches over a limit, from a key without the ingest scope, over the rate limit or the
monthly quota, which end the stream with a status and store nothing of that batch."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterable, AsyncIterator, Sequence

import asyncpg
import grpc
import httpx
import pytest
from google.protobuf import json_format
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp
from podmesh.analytics.v1 import analytics_pb2 as pb
from podmesh.analytics.v1 import analytics_pb2_grpc
from podmesh.tenant.v1 import tenant_pb2, tenant_pb2_grpc

from devstack.stack import Stack
from tests.analytics_ingest_support import (
    HOUR_US,
    IngestTenant,
    api_key,
    counted,
    ingest_tenant,
    listener_traffic,
    now_us,
)
from tests.support import bearer, error_info, violated_fields

DAY_US = 24 * HOUR_US


@pytest.fixture
async def seeded(
    stack: Stack, tenants: tenant_pb2_grpc.TenantServiceAsyncStub, gateway_channel: grpc.aio.Channel
) -> IngestTenant:
    return await ingest_tenant(stack, tenants, gateway_channel, podcasts=1, episodes=2)


@pytest.fixture
def analytics(gateway_channel: grpc.aio.Channel) -> analytics_pb2_grpc.AnalyticsServiceAsyncStub:
    return analytics_pb2_grpc.AnalyticsServiceStub(gateway_channel)


def stamp(time_us: int) -> Timestamp:
    return Timestamp(seconds=time_us // 1_000_000, nanos=time_us % 1_000_000 * 1000)


def good(seeded: IngestTenant, n: int, start_us: int | None = None) -> list[pb.ListenerRequest]:
    start = now_us() - HOUR_US if start_us is None else start_us
    return list(listener_traffic(seeded.episodes, n, start_us=start, span_us=HOUR_US // 2))[:n]


async def stream(
    analytics: analytics_pb2_grpc.AnalyticsServiceAsyncStub,
    key: str,
    batches: Sequence[Sequence[pb.ListenerRequest]],
) -> list[pb.StreamListenerEventsResponse]:
    async def requests() -> AsyncIterator[pb.StreamListenerEventsRequest]:
        for sequence, batch in enumerate(batches, start=1):
            yield pb.StreamListenerEventsRequest(sequence=sequence, requests=batch)

    return [ack async for ack in analytics.StreamListenerEvents(requests(), metadata=bearer(key))]


async def stored_ids(conn: asyncpg.Connection, tenant_id: str) -> set[str]:
    rows = await conn.fetch(
        "SELECT request_id FROM listener_requests WHERE tenant_id = $1", uuid.UUID(tenant_id)
    )
    return {r[0] for r in rows}


async def test_bad_records_are_rejected_one_by_one_and_the_rest_stored(
    seeded: IngestTenant,
    analytics: analytics_pb2_grpc.AnalyticsServiceAsyncStub,
    owner_conn: asyncpg.Connection,
) -> None:
    now = now_us()
    base = good(seeded, 1)[0]

    def variant(**changes: object) -> pb.ListenerRequest:
        record = pb.ListenerRequest()
        record.CopyFrom(base)
        record.id = f"bad-{uuid.uuid4().hex[:8]}"
        for name, value in changes.items():
            if name == "clear":
                record.ClearField(str(value))
            elif name == "request_time":
                record.request_time.CopyFrom(stamp(int(str(value))))
            else:
                setattr(record, name, value)
        return record

    bad = {
        pb.REJECTION_REASON_INVALID_ID: variant(id="x" * 129),
        pb.REJECTION_REASON_MISSING_TIME: variant(clear="request_time"),
        pb.REJECTION_REASON_TIME_IN_FUTURE: variant(request_time=now + 3600 * 1_000_000),
        pb.REJECTION_REASON_TIME_TOO_OLD: variant(request_time=now - 400 * DAY_US),
        pb.REJECTION_REASON_MISSING_EPISODE: variant(clear="episode"),
        pb.REJECTION_REASON_UNKNOWN_EPISODE: variant(episode_id=str(uuid.uuid4())),
        pb.REJECTION_REASON_INVALID_CLIENT_IP: variant(client_ip="300.1.2.3"),
        pb.REJECTION_REASON_INVALID_METHOD: variant(http_method="GET /"),
        pb.REJECTION_REASON_INVALID_STATUS: variant(status_code=999),
        pb.REJECTION_REASON_INVALID_RANGE: variant(range="pages=1-2"),
        pb.REJECTION_REASON_INVALID_BYTES_SERVED: variant(bytes_served=-1),
        pb.REJECTION_REASON_INVALID_LOCATION: variant(country_code="XQ"),
        pb.REJECTION_REASON_FIELD_TOO_LONG: variant(user_agent="A" * 2049),
    }
    unknown_url = variant(media_url="https://nowhere.example.com/unknown.mp3")
    records = [*good(seeded, 20), *bad.values(), unknown_url, variant(region_code="DE-BY")]

    (ack,) = await stream(analytics, seeded.ingest_key, [records])

    reasons = {r.index: r.reason for r in ack.rejections}
    assert reasons == {
        **{20 + i: reason for i, reason in enumerate(bad)},
        20 + len(bad): pb.REJECTION_REASON_UNKNOWN_EPISODE,
        21 + len(bad): pb.REJECTION_REASON_INVALID_LOCATION,
    }
    assert all(r.message for r in ack.rejections)
    assert (ack.accepted_count, ack.duplicate_count) == (20, 0)
    assert await stored_ids(owner_conn, seeded.tenant.id) == {r.id for r in records[:20]}


async def test_a_batch_over_the_limits_ends_the_stream_and_stores_nothing_of_it(
    seeded: IngestTenant,
    analytics: analytics_pb2_grpc.AnalyticsServiceAsyncStub,
    owner_conn: asyncpg.Connection,
) -> None:
    first = good(seeded, 100)
    too_many = good(seeded, 5001, now_us() - 2 * HOUR_US)
    for record in too_many:
        record.id = "many-" + record.id
    acks: list[pb.StreamListenerEventsResponse] = []

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await collect(
            analytics.StreamListenerEvents(
                _requests([first, too_many, first]), metadata=bearer(seeded.ingest_key)
            ),
            acks,
        )

    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(refused.value).reason == "BATCH_TOO_LARGE"
    assert violated_fields(refused.value) == ["requests"]
    assert [a.sequence for a in acks] == [1]
    assert await stored_ids(owner_conn, seeded.tenant.id) == {r.id for r in first}

    huge = good(seeded, 1100, now_us() - 3 * HOUR_US)
    for record in huge:
        record.referer = "https://example.com/" + "r" * 2000
        record.user_agent = record.user_agent + " " + "u" * (2040 - len(record.user_agent))
    with pytest.raises(grpc.aio.AioRpcError) as too_big:
        await stream(analytics, seeded.ingest_key, [huge])
    assert too_big.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "4 MiB" in (too_big.value.details() or "")
    assert await stored_ids(owner_conn, seeded.tenant.id) == {r.id for r in first}


async def collect(
    call: AsyncIterable[pb.StreamListenerEventsResponse],
    acks: list[pb.StreamListenerEventsResponse],
) -> None:
    """Keeps every acknowledgement, also those before the status that ends the stream."""
    async for ack in call:
        acks.append(ack)


def _requests(
    batches: Sequence[Sequence[pb.ListenerRequest]],
) -> AsyncIterator[pb.StreamListenerEventsRequest]:
    async def generate() -> AsyncIterator[pb.StreamListenerEventsRequest]:
        for sequence, batch in enumerate(batches, start=1):
            yield pb.StreamListenerEventsRequest(sequence=sequence, requests=batch)

    return generate()


async def test_a_key_without_the_ingest_scope_is_refused(
    seeded: IngestTenant,
    analytics: analytics_pb2_grpc.AnalyticsServiceAsyncStub,
    tenants: tenant_pb2_grpc.TenantServiceAsyncStub,
    http: httpx.AsyncClient,
    owner_conn: asyncpg.Connection,
) -> None:
    read_key = await api_key(tenants, seeded.tenant.owner_key, tenant_pb2.API_KEY_SCOPE_READ)
    records = good(seeded, 10)

    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await stream(analytics, read_key, [records])
    response = await http.post(
        "/api/v1/listenerEvents:ingest",
        json=json_format.MessageToDict(pb.IngestListenerEventsRequest(requests=records)),
        headers={"authorization": f"Bearer {read_key}"},
    )

    assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert error_info(denied.value).reason == "MISSING_PERMISSION"
    assert response.status_code == 403
    assert await stored_ids(owner_conn, seeded.tenant.id) == set()


async def test_the_monthly_quota_refuses_the_batch_that_would_pass_it(
    stack: Stack,
    tenants: tenant_pb2_grpc.TenantServiceAsyncStub,
    gateway_channel: grpc.aio.Channel,
    analytics: analytics_pb2_grpc.AnalyticsServiceAsyncStub,
    owner_conn: asyncpg.Connection,
) -> None:
    seeded = await ingest_tenant(stack, tenants, gateway_channel, podcasts=1, episodes=1)
    await tenants.UpdateTenant(
        tenant_pb2.UpdateTenantRequest(
            tenant=tenant_pb2.Tenant(
                id=seeded.tenant.id, quota=tenant_pb2.Quota(monthly_events=250)
            ),
            update_mask=FieldMask(paths=["quota.monthly_events"]),
        ),
        metadata=bearer(stack.admin_token),
    )
    records = good(seeded, 300)
    acks: list[pb.StreamListenerEventsResponse] = []

    with pytest.raises(grpc.aio.AioRpcError) as exhausted:
        await collect(
            analytics.StreamListenerEvents(
                _requests([records[:100], records[100:200], records[200:300]]),
                metadata=bearer(seeded.ingest_key),
            ),
            acks,
        )

    assert exhausted.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(exhausted.value).reason == "MONTHLY_QUOTA_EXCEEDED"
    assert [a.accepted_count for a in acks] == [100, 100]
    totals = await counted(owner_conn, seeded.tenant.id)
    assert totals["raw"] == 200
    usage = await owner_conn.fetchval(
        "SELECT events FROM ingest_usage WHERE tenant_id = $1", uuid.UUID(seeded.tenant.id)
    )
    assert usage == 200


async def test_the_rate_limit_refuses_batches_beyond_the_burst(
    stack: Stack,
    tenants: tenant_pb2_grpc.TenantServiceAsyncStub,
    gateway_channel: grpc.aio.Channel,
    http: httpx.AsyncClient,
) -> None:
    seeded = await ingest_tenant(stack, tenants, gateway_channel, podcasts=1, episodes=1)
    await tenants.UpdateTenant(
        tenant_pb2.UpdateTenantRequest(
            tenant=tenant_pb2.Tenant(
                id=seeded.tenant.id, quota=tenant_pb2.Quota(api_key_requests_per_second=1)
            ),
            update_mask=FieldMask(paths=["quota.api_key_requests_per_second"]),
        ),
        metadata=bearer(stack.admin_token),
    )
    headers = {"authorization": f"Bearer {seeded.ingest_key}"}
    statuses = []
    for n in range(4):
        body = pb.IngestListenerEventsRequest(requests=good(seeded, 5, now_us() - n * HOUR_US))
        response = await http.post(
            "/api/v1/listenerEvents:ingest",
            json=json_format.MessageToDict(body),
            headers=headers,
        )
        statuses.append(response.status_code)

    # One a second, bursts of two.
    assert statuses[:2] == [200, 200]
    assert 429 in statuses[2:]


async def test_json_batches_over_the_limit_are_refused(
    seeded: IngestTenant, http: httpx.AsyncClient
) -> None:
    headers = {"authorization": f"Bearer {seeded.ingest_key}"}
    empty = await http.post("/api/v1/listenerEvents:ingest", json={}, headers=headers)
    records = good(seeded, 1) * 5001
    many = await http.post(
        "/api/v1/listenerEvents:ingest",
        json=json_format.MessageToDict(pb.IngestListenerEventsRequest(requests=records)),
        headers=headers,
    )

    assert empty.status_code == 400
    assert empty.json()["details"][0]["reason"] == "BATCH_EMPTY"
    # Envoy's body limit (4 MiB) or ours, whichever the JSON passes first.
    assert many.status_code in (400, 413)
