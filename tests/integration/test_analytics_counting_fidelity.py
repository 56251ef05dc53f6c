"""Counting fidelity end to end: late requests in rolling windows, the User-Agent lists'
version with every download and in the methodology, web players named by the Referer."""

from __future__ import annotations

import asyncpg
import grpc
import httpx
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp
from podmesh.analytics.v1 import analytics_pb2 as pb
from podmesh.analytics.v1 import analytics_pb2_grpc
from podmesh.tenant.v1 import tenant_pb2, tenant_pb2_grpc

from devstack.stack import Stack
from services.analytics.counting import default_classifier, from_us
from tests.analytics_ingest_support import (
    HOUR_US,
    IngestTenant,
    ingest_tenant,
    now_us,
    wait_rebuilt,
)
from tests.support import bearer

APPLE_PODCASTS = "Podcasts/1650.20 CFNetwork/1408.0.4 Darwin/22.5.0"
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/114.0.0.0 Safari/537.36"
)


def _record(
    seeded: IngestTenant,
    request_id: str,
    time_us: int,
    ip: str,
    user_agent: str = APPLE_PODCASTS,
    referer: str = "",
) -> dict[str, object]:
    episode = seeded.episodes[0]
    return {
        "id": request_id,
        "requestTime": from_us(time_us).isoformat().replace("+00:00", "Z"),
        "episodeId": episode.episode_id,
        "clientIp": ip,
        "userAgent": user_agent,
        "referer": referer,
        "httpMethod": "GET",
        "statusCode": 200,
        "bytesServed": str(episode.media.size_bytes),
    }


async def _ingest(http: httpx.AsyncClient, key: str, records: list[dict[str, object]]) -> int:
    response = await http.post(
        "/api/v1/listenerEvents:ingest",
        json={"requests": records},
        headers={"authorization": f"Bearer {key}"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body.get("rejections", []) == []
    accepted: int = body["acceptedCount"]
    return accepted


async def _downloads(conn: asyncpg.Connection, tenant_id: str) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            "SELECT download_time, app, device_class, os, user_agent_lists FROM downloads "
            "WHERE tenant_id = $1::uuid ORDER BY download_time",
            tenant_id,
        )
    )


async def test_rolling_window_request_73_hours_old_is_counted(
    stack: Stack,
    tenants: tenant_pb2_grpc.TenantServiceAsyncStub,
    gateway_channel: grpc.aio.Channel,
    http: httpx.AsyncClient,
    owner_conn: asyncpg.Connection,
) -> None:
    seeded = await ingest_tenant(stack, tenants, gateway_channel, podcasts=1, episodes=1)
    await tenants.UpdateTenant(
        tenant_pb2.UpdateTenantRequest(
            tenant=tenant_pb2.Tenant(
                id=seeded.tenant.id,
                settings=tenant_pb2.TenantSettings(counting_window="COUNTING_WINDOW_ROLLING_24H"),
            ),
            update_mask=FieldMask(paths=["settings.counting_window"]),
        ),
        metadata=bearer(seeded.tenant.owner_key),
    )
    now = now_us()
    # Its window closed 49 hours ago: within the 72 hours of grace.
    within = _record(seeded, "late-73h", now - 73 * HOUR_US, "198.51.100.73")
    # Its window closed 73 hours ago: stored, left to a rebuild.
    beyond = _record(seeded, "late-97h", now - 97 * HOUR_US, "198.51.100.97")

    assert await _ingest(http, seeded.ingest_key, [within, beyond]) == 2

    downloads = await _downloads(owner_conn, seeded.tenant.id)
    assert [d["download_time"] for d in downloads] == [from_us(now - 73 * HOUR_US)]
    stored = await owner_conn.fetchval(
        "SELECT count(*) FROM listener_requests WHERE tenant_id = $1::uuid", seeded.tenant.id
    )
    assert stored == 2


async def test_downloads_and_methodology_carry_the_user_agent_lists_version(
    stack: Stack,
    tenants: tenant_pb2_grpc.TenantServiceAsyncStub,
    gateway_channel: grpc.aio.Channel,
    http: httpx.AsyncClient,
    owner_conn: asyncpg.Connection,
) -> None:
    seeded = await ingest_tenant(stack, tenants, gateway_channel, podcasts=1, episodes=1)
    start = now_us() - 3 * HOUR_US
    records = [
        _record(seeded, "app", start, "198.51.100.1"),
        # A browser: the Referer names the web player, as the lists' referrers say.
        _record(
            seeded,
            "web",
            start + HOUR_US,
            "198.51.100.2",
            CHROME,
            "https://music.amazon.com/podcasts/abc",
        ),
        _record(seeded, "bot", start + HOUR_US, "198.51.100.3", "AIS VirtualListener/1.0"),
    ]
    assert await _ingest(http, seeded.ingest_key, records) == 3
    version = default_classifier().version

    def rows(found: list[asyncpg.Record]) -> list[tuple[str, str, str, str]]:
        return [(d["app"], d["device_class"], d["os"], d["user_agent_lists"]) for d in found]

    expected = [
        ("Apple Podcasts", "mobile", "iOS", version),
        ("Amazon Music", "desktop", "Windows", version),
    ]
    assert rows(await _downloads(owner_conn, seeded.tenant.id)) == expected

    analytics = analytics_pb2_grpc.AnalyticsServiceStub(gateway_channel)
    report = await analytics.QueryMetrics(
        pb.QueryMetricsRequest(
            start_time=Timestamp(seconds=(start - 24 * HOUR_US) // 1_000_000),
            end_time=Timestamp(seconds=(start + 24 * HOUR_US) // 1_000_000),
            granularity=pb.GRANULARITY_TOTAL,
            breakdown=pb.DIMENSION_APP,
        ),
        metadata=bearer(seeded.tenant.owner_key),
    )
    assert report.methodology.user_agent_lists == version
    assert {t.dimension_value for t in report.totals} == {"Apple Podcasts", "Amazon Music"}

    # A rebuild reads the Referer back from the stored requests and stamps its rows
    # with the version it counted with.
    await owner_conn.execute(
        "UPDATE downloads SET user_agent_lists = 'older' WHERE tenant_id = $1::uuid",
        seeded.tenant.id,
    )
    started = await analytics.RebuildCounts(
        pb.RebuildCountsRequest(
            count_rebuild=pb.CountRebuild(
                start_time=Timestamp(seconds=(start - HOUR_US) // 1_000_000),
                end_time=Timestamp(seconds=now_us() // 1_000_000),
            )
        ),
        metadata=bearer(seeded.tenant.owner_key),
    )
    done = await wait_rebuilt(analytics, started.count_rebuild.id, seeded.tenant.owner_key)
    assert done.state == pb.COUNT_REBUILD_STATE_SUCCEEDED, done.error_message
    assert rows(await _downloads(owner_conn, seeded.tenant.id)) == expected
