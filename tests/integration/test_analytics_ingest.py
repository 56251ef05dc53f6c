"""Ingestion end to end through Envoy: streamed batches are stored once and counted
exactly. The oracle is the counting package's batch function over the same requests;
the 0030 tables, the listener sketches and QueryMetrics must all agree with it."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import httpx
import pytest
from datasketches import hll_sketch
from google.protobuf import json_format
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp
from podmesh.analytics.v1 import analytics_pb2 as pb
from podmesh.analytics.v1 import analytics_pb2_grpc
from podmesh.tenant.v1 import tenant_pb2, tenant_pb2_grpc

from devstack.stack import Stack
from services.analytics.counting import CountingSettings, CountingWindow
from services.analytics.ingest.records import RAW_COLUMNS
from tests.analytics_ingest_support import (
    HOUR_US,
    IngestTenant,
    ResendingClient,
    batches,
    counted,
    expected_counts,
    expected_tables,
    ingest_tenant,
    listener_traffic,
    listeners_estimate,
    now_us,
    wait_rebuilt,
)
from tests.support import bearer


@pytest.fixture
async def seeded(
    stack: Stack, tenants: tenant_pb2_grpc.TenantServiceAsyncStub, gateway_channel: grpc.aio.Channel
) -> IngestTenant:
    return await ingest_tenant(stack, tenants, gateway_channel)


def stamp(moment: datetime) -> Timestamp:
    value = Timestamp()
    value.FromDatetime(moment)
    return value


async def test_stream_through_envoy_counts_exactly(
    seeded: IngestTenant,
    gateway_channel: grpc.aio.Channel,
    owner_conn: asyncpg.Connection,
    stack: Stack,
) -> None:
    records = list(
        listener_traffic(seeded.episodes, 3000, start_us=now_us() - 2 * HOUR_US, span_us=HOUR_US)
    )
    analytics = analytics_pb2_grpc.AnalyticsServiceStub(gateway_channel)
    day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    query = pb.QueryMetricsRequest(
        start_time=stamp(day - timedelta(days=1)),
        end_time=stamp(day + timedelta(days=1)),
        granularity=pb.GRANULARITY_TOTAL,
        metrics=[pb.METRIC_DOWNLOADS, pb.METRIC_LISTENERS, pb.METRIC_ADS_DELIVERED],
    )
    client = ResendingClient(gateway_channel, seeded.ingest_key)
    first = await client.send(batches(records[:1000], 250))
    # The dashboard asked halfway: its answer may be reused only while nothing changes.
    halfway = await analytics.QueryMetrics(query, metadata=bearer(seeded.tenant.owner_key))
    rest = await client.send(batches(records[1000:], 250))

    assert (first.accepted + rest.accepted, first.duplicates + rest.duplicates) == (
        len(records),
        0,
    )
    assert first.rejected == rest.rejected == 0
    secret, tenant_id = stack.secrets.ip_hash_secret, seeded.tenant.id
    assert halfway.totals[0].downloads == len(
        expected_counts(records[:1000], seeded.episodes, secret, tenant_id).downloads
    )
    expected = expected_counts(records, seeded.episodes, secret, tenant_id)
    assert len(expected.downloads) > 500
    assert len(expected.ads) > 100
    assert await counted(owner_conn, seeded.tenant.id) == expected_tables(expected, len(records))
    listeners = len({d.listener_id for d in expected.downloads})
    assert await listeners_estimate(owner_conn, seeded.tenant.id) == pytest.approx(
        listeners, rel=0.03
    )

    report = await analytics.QueryMetrics(query, metadata=bearer(seeded.tenant.owner_key))
    (total,) = report.totals
    assert total.downloads == len(expected.downloads)
    assert total.ads_delivered == len(expected.ads)
    assert total.listeners == pytest.approx(listeners, rel=0.03)


async def test_resent_batches_change_nothing(
    seeded: IngestTenant,
    gateway_channel: grpc.aio.Channel,
    owner_conn: asyncpg.Connection,
    stack: Stack,
) -> None:
    records = list(
        listener_traffic(seeded.episodes, 600, start_us=now_us() - HOUR_US, span_us=HOUR_US // 2)
    )
    client = ResendingClient(gateway_channel, seeded.ingest_key)
    first = await client.send(batches(records, 200))
    before = await counted(owner_conn, seeded.tenant.id)

    again = await client.send(batches(records[100:500], 150))
    # A batch repeating its own records: the first of each stands.
    repeated = await client.send([records[:50] + records[:50]])

    assert (first.accepted, first.duplicates) == (len(records), 0)
    assert (again.accepted, again.duplicates) == (0, 400)
    assert (repeated.accepted, repeated.duplicates) == (0, 100)
    assert await counted(owner_conn, seeded.tenant.id) == before
    expected = expected_counts(
        records, seeded.episodes, stack.secrets.ip_hash_secret, seeded.tenant.id
    )
    assert before == expected_tables(expected, len(records))


async def test_concurrent_streams_of_one_tenant_count_once(
    seeded: IngestTenant,
    gateway_channel: grpc.aio.Channel,
    owner_conn: asyncpg.Connection,
    stack: Stack,
) -> None:
    """Four shippers send overlapping traffic at once (the same listeners, some of the
    same records): every record is stored once and every window counted once."""
    records = list(
        listener_traffic(seeded.episodes, 4000, start_us=now_us() - HOUR_US, span_us=HOUR_US // 2)
    )
    shares = [records[i::3] + records[: len(records) // 10] for i in range(3)]
    shares.append(records[::7])
    clients = [ResendingClient(gateway_channel, seeded.ingest_key) for _ in shares]

    results = await asyncio.gather(
        *(client.send(batches(share, 300)) for client, share in zip(clients, shares, strict=True))
    )

    assert sum(r.accepted for r in results) == len(records)
    assert sum(r.accepted + r.duplicates for r in results) == sum(len(s) for s in shares)
    expected = expected_counts(
        records, seeded.episodes, stack.secrets.ip_hash_secret, seeded.tenant.id
    )
    assert await counted(owner_conn, seeded.tenant.id) == expected_tables(expected, len(records))


async def test_json_batches_through_the_gateway(
    seeded: IngestTenant, http: httpx.AsyncClient, owner_conn: asyncpg.Connection, stack: Stack
) -> None:
    records = list(
        listener_traffic(seeded.episodes, 400, start_us=now_us() - HOUR_US, span_us=HOUR_US // 4)
    )
    headers = {"authorization": f"Bearer {seeded.ingest_key}"}

    answers = []
    for batch in batches(records, 150):
        body = json_format.MessageToDict(pb.IngestListenerEventsRequest(requests=batch))
        response = await http.post("/api/v1/listenerEvents:ingest", json=body, headers=headers)
        assert response.status_code == 200, response.text
        answers.append(response.json())
    resent = await http.post(
        "/api/v1/listenerEvents:ingest",
        json=json_format.MessageToDict(pb.IngestListenerEventsRequest(requests=records[:10])),
        headers=headers,
    )

    assert sum(a["acceptedCount"] for a in answers) == len(records)
    assert resent.json() == {
        "acceptedCount": 0,
        "duplicateCount": 10,
        "rejections": [],
        "filteredCounts": [],
        "lateCount": 0,
        "countableCount": 0,
    }
    expected = expected_counts(
        records, seeded.episodes, stack.secrets.ip_hash_secret, seeded.tenant.id
    )
    assert await counted(owner_conn, seeded.tenant.id) == expected_tables(expected, len(records))


async def test_rebuild_twice_gives_identical_counts(
    seeded: IngestTenant,
    gateway_channel: grpc.aio.Channel,
    owner_conn: asyncpg.Connection,
    stack: Stack,
) -> None:
    start = now_us() - 30 * HOUR_US
    records = list(listener_traffic(seeded.episodes, 2000, start_us=start, span_us=28 * HOUR_US))
    await ResendingClient(gateway_channel, seeded.ingest_key).send(batches(records, 250))
    ingested = await counted(owner_conn, seeded.tenant.id)
    analytics = analytics_pb2_grpc.AnalyticsServiceStub(gateway_channel)
    request = pb.RebuildCountsRequest(
        count_rebuild=pb.CountRebuild(
            start_time=Timestamp(seconds=(start - 2 * HOUR_US) // 1_000_000),
            end_time=Timestamp(seconds=now_us() // 1_000_000),
        )
    )

    snapshots = []
    for _ in range(2):
        started = await analytics.RebuildCounts(request, metadata=bearer(seeded.tenant.owner_key))
        assert started.count_rebuild.state == pb.COUNT_REBUILD_STATE_PENDING
        done = await wait_rebuilt(analytics, started.count_rebuild.id, seeded.tenant.owner_key)
        assert done.state == pb.COUNT_REBUILD_STATE_SUCCEEDED, done.error_message
        assert done.progress == 1.0
        assert done.raw_requests_scanned == len(records)
        assert done.downloads_before == done.downloads_after == ingested["downloads"]
        snapshots.append(await detail_snapshot(owner_conn, seeded.tenant.id))

    assert snapshots[0] == snapshots[1]
    assert await counted(owner_conn, seeded.tenant.id) == ingested
    expected = expected_counts(
        records, seeded.episodes, stack.secrets.ip_hash_secret, seeded.tenant.id
    )
    assert ingested == expected_tables(expected, len(records))


async def live_downloads_today(
    analytics: analytics_pb2_grpc.AnalyticsServiceAsyncStub, key: str
) -> int:
    """Today's downloads as a new WatchMetrics stream first shows them."""
    call = analytics.WatchMetrics(pb.WatchMetricsRequest(), metadata=bearer(key))
    try:
        async for update in call:
            # A busy machine can make a Redis call time out (the stream then says degraded).
            if not update.counters.degraded:
                return update.counters.downloads_today
    finally:
        call.cancel()
    raise AssertionError("the watch ended")


async def test_a_rebuild_that_lowers_today_lowers_the_live_counters(
    seeded: IngestTenant, gateway_channel: grpc.aio.Channel
) -> None:
    midnight_us = now_us() // (24 * HOUR_US) * (24 * HOUR_US)
    start = max(midnight_us, now_us() - HOUR_US)
    records = list(
        listener_traffic(seeded.episodes, 1500, start_us=start, span_us=(now_us() - start) // 2)
    )
    await ResendingClient(gateway_channel, seeded.ingest_key).send(batches(records, 250))
    analytics = analytics_pb2_grpc.AnalyticsServiceStub(gateway_channel)
    owner = seeded.tenant.owner_key
    before = await live_downloads_today(analytics, owner)

    await analytics.UpdateCountingSettings(
        pb.UpdateCountingSettingsRequest(
            counting_settings=pb.CountingSettings(excluded_user_agents=["Spotify", "Overcast"]),
            update_mask=FieldMask(paths=["excluded_user_agents"]),
        ),
        metadata=bearer(owner),
    )
    started = await analytics.RebuildCounts(
        pb.RebuildCountsRequest(
            count_rebuild=pb.CountRebuild(
                start_time=Timestamp(seconds=midnight_us // 1_000_000),
                end_time=Timestamp(seconds=now_us() // 1_000_000),
            )
        ),
        metadata=bearer(owner),
    )
    done = await wait_rebuilt(analytics, started.count_rebuild.id, owner)
    assert done.state == pb.COUNT_REBUILD_STATE_SUCCEEDED, done.error_message
    report = await analytics.QueryMetrics(
        pb.QueryMetricsRequest(
            start_time=Timestamp(seconds=midnight_us // 1_000_000),
            end_time=Timestamp(seconds=midnight_us // 1_000_000 + 86_400),
            granularity=pb.GRANULARITY_TOTAL,
        ),
        metadata=bearer(owner),
    )
    after = report.totals[0].downloads

    assert before == done.downloads_before
    assert 0 < after < before
    assert await live_downloads_today(analytics, owner) == after


async def detail_snapshot(
    conn: asyncpg.Connection, tenant_id: str
) -> list[list[tuple[object, ...]]]:
    """Every counted row of the tenant, in a stable order; sketches by their estimate
    (a sketch's bytes depend on the order its members arrived in)."""
    tables = {
        "downloads": "episode_id, listener_id, window_start",
        "ad_deliveries": "episode_id, listener_id, window_start, ad_slot_id",
        "rollup_hourly": "hour, episode_id, app, device_class, country_code",
        "rollup_daily": "zone, day, episode_id",
        "rollup_daily_dimension": "zone, dimension, day, value, episode_id",
        "rollup_daily_ad_slot": "zone, day, ad_slot_id",
        "listener_sketches": "zone, day, episode_id",
    }
    snapshot = []
    for table, order in tables.items():
        rows = await conn.fetch(
            f"SELECT * FROM {table} WHERE tenant_id = $1::uuid ORDER BY {order}", tenant_id
        )
        snapshot.append(
            [
                tuple(
                    hll_sketch.deserialize(value).get_estimate() if name == "sketch" else value
                    for name, value in row.items()
                )
                for row in rows
            ]
        )
    return snapshot


@pytest.mark.parametrize(
    ("window", "time_zone"),
    [(CountingWindow.TENANT_DAY, "America/New_York"), (CountingWindow.ROLLING_24H, "Asia/Kolkata")],
)
async def test_other_counting_windows_ingest_and_rebuild_alike(
    window: CountingWindow,
    time_zone: str,
    stack: Stack,
    tenants: tenant_pb2_grpc.TenantServiceAsyncStub,
    gateway_channel: grpc.aio.Channel,
    owner_conn: asyncpg.Connection,
) -> None:
    seeded = await ingest_tenant(stack, tenants, gateway_channel)
    await tenants.UpdateTenant(
        tenant_pb2.UpdateTenantRequest(
            tenant=tenant_pb2.Tenant(
                id=seeded.tenant.id,
                settings=tenant_pb2.TenantSettings(
                    time_zone=time_zone, counting_window=tenant_pb2.CountingWindow.Name(window)
                ),
            ),
            update_mask=FieldMask(paths=["settings.time_zone", "settings.counting_window"]),
        ),
        metadata=bearer(seeded.tenant.owner_key),
    )
    start = now_us() - 40 * HOUR_US
    records = list(listener_traffic(seeded.episodes, 3000, start_us=start, span_us=38 * HOUR_US))
    await ResendingClient(gateway_channel, seeded.ingest_key).send(batches(records, 200))
    settings = CountingSettings(window=window, time_zone=time_zone)
    expected = expected_counts(
        records, seeded.episodes, stack.secrets.ip_hash_secret, seeded.tenant.id, settings
    )
    assert await counted(owner_conn, seeded.tenant.id) == expected_tables(expected, len(records))
    local = await owner_conn.fetchval(
        "SELECT sum(downloads) FROM rollup_daily WHERE tenant_id = $1::uuid AND zone = 'local'",
        seeded.tenant.id,
    )
    assert local == len(expected.downloads)
    ingested = await detail_snapshot(owner_conn, seeded.tenant.id)

    analytics = analytics_pb2_grpc.AnalyticsServiceStub(gateway_channel)
    started = await analytics.RebuildCounts(
        pb.RebuildCountsRequest(
            count_rebuild=pb.CountRebuild(
                start_time=Timestamp(seconds=(start - 2 * HOUR_US) // 1_000_000),
                end_time=Timestamp(seconds=now_us() // 1_000_000),
            )
        ),
        metadata=bearer(seeded.tenant.owner_key),
    )
    done = await wait_rebuilt(analytics, started.count_rebuild.id, seeded.tenant.owner_key)

    assert done.state == pb.COUNT_REBUILD_STATE_SUCCEEDED, done.error_message
    assert await detail_snapshot(owner_conn, seeded.tenant.id) == ingested


async def test_requests_arriving_out_of_order_count_as_in_order(
    seeded: IngestTenant,
    gateway_channel: grpc.aio.Channel,
    owner_conn: asyncpg.Connection,
    stack: Stack,
) -> None:
    """Later batches first: downloads are counted, then moved to their earlier first
    request (another hour, maybe another country), and the cubes end as if in order."""
    start = now_us() - 6 * HOUR_US
    records = list(listener_traffic(seeded.episodes, 3000, start_us=start, span_us=4 * HOUR_US))
    backwards = list(batches(records, 100))[::-1]

    totals = await ResendingClient(gateway_channel, seeded.ingest_key).send(backwards)

    assert totals.accepted == len(records)
    expected = expected_counts(
        records, seeded.episodes, stack.secrets.ip_hash_secret, seeded.tenant.id
    )
    assert await counted(owner_conn, seeded.tenant.id) == expected_tables(expected, len(records))
    ingested = await detail_snapshot(owner_conn, seeded.tenant.id)
    analytics = analytics_pb2_grpc.AnalyticsServiceStub(gateway_channel)
    started = await analytics.RebuildCounts(
        pb.RebuildCountsRequest(
            count_rebuild=pb.CountRebuild(
                start_time=Timestamp(seconds=start // 1_000_000),
                end_time=Timestamp(seconds=now_us() // 1_000_000),
            )
        ),
        metadata=bearer(seeded.tenant.owner_key),
    )
    done = await wait_rebuilt(analytics, started.count_rebuild.id, seeded.tenant.owner_key)
    assert done.state == pb.COUNT_REBUILD_STATE_SUCCEEDED, done.error_message
    assert await detail_snapshot(owner_conn, seeded.tenant.id) == ingested


async def copy_as(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, table: str, row: tuple[object, ...]
) -> None:
    async with conn.transaction():
        await conn.execute("SELECT set_config('app.tenant_id', $1, true)", str(tenant_id))
        await conn.copy_records_to_table(table, records=[row], columns=RAW_COLUMNS)


async def test_raw_storage_keeps_tenants_apart_and_old_days_go(
    stack: Stack, owner_conn: asyncpg.Connection
) -> None:
    """The application may only add its own tenant's rows to a day's partition, may
    not read partitions directly, and drops whole days past retention (never recent
    ones); closed windows' states are pruned across tenants."""
    today = datetime.now(UTC).date()
    old_day = today - timedelta(days=40)
    mine, theirs = uuid.uuid4(), uuid.uuid4()
    row = (mine, datetime.now(UTC), uuid.uuid4(), 1, 200, False)
    row_text = (b"l" * 16, b"h" * 16, "GET", "", "ua", "", "", "")
    app = await asyncpg.connect(stack.app_dsn)
    try:
        await app.fetchval("SELECT analytics_ensure_request_partitions($1, $1)", old_day)
        await app.fetchval("SELECT analytics_ensure_request_partitions($1, $1)", today)
        partition = f"listener_requests_{today:%Y%m%d}"
        await copy_as(app, mine, partition, (*row, "r-1", *row_text))
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await copy_as(app, theirs, partition, (*row, "r-2", *row_text))
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await app.fetch(f"SELECT * FROM {partition}")
        with pytest.raises(asyncpg.RaiseError):
            await app.fetch("SELECT analytics_drop_request_partitions($1)", today)
        dropped = await app.fetch(
            "SELECT analytics_drop_request_partitions($1)", today - timedelta(days=31)
        )
        assert f"listener_requests_{old_day:%Y%m%d}" in {r[0] for r in dropped}
        assert await owner_conn.fetchval("SELECT to_regclass($1)", partition) is not None

        await owner_conn.executemany(
            "INSERT INTO counting_states VALUES ($1, $2, $3, $4, '')",
            [
                (theirs, uuid.uuid4(), b"l", datetime.now(UTC) - timedelta(days=days))
                for days in (10, 1)
            ],
        )
        await app.fetchval("SELECT analytics_prune_counting_states(now())")
        left = await owner_conn.fetchval(
            "SELECT count(*) FROM counting_states WHERE tenant_id = $1", theirs
        )
        assert left == 1
    finally:
        await app.close()
