"""Analytics reports over seeded rollups: gRPC and JSON through Envoy, breakdowns, time
zones, listeners from sketches, CSV, top episodes, insights, settings and live counters.

The ingestion path is built separately, so rollups and sketches are written here as the
schema owner, exactly as ingestion will write them (see 0030_analytics_results.sql).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeAlias

import asyncpg
import grpc
import httpx
import pytest
import redis.asyncio as aioredis
from datasketches import hll_sketch
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp
from podmesh.analytics.v1 import analytics_pb2 as pb
from podmesh.analytics.v1 import analytics_pb2_grpc
from podmesh.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from podmesh.tenant.v1 import tenant_pb2, tenant_pb2_grpc

from devstack.stack import Stack
from services.analytics.counting.windows import CountingWindow
from services.analytics.live import counters as live
from services.analytics.live.watch import LiveWatcher
from services.analytics.peers import TenantClock
from services.shared.db import Database
from services.shared.server import create_redis
from tests.support import TenantHandle, bearer, create_tenant, error_info, violated_fields

Stub: TypeAlias = "analytics_pb2_grpc.AnalyticsServiceAsyncStub"
MAY_1 = datetime(2024, 5, 1, tzinfo=UTC)


def ts(moment: datetime) -> Timestamp:
    value = Timestamp()
    value.FromDatetime(moment)
    return value


def auth(credential: str) -> dict[str, str]:
    return {"authorization": f"Bearer {credential}"}


def sketch(listeners: Sequence[str]) -> bytes:
    s = hll_sketch(12)
    for listener in listeners:
        s.update(listener)
    return bytes(s.serialize_compact())


@dataclass(frozen=True)
class Seeded:
    tenant: TenantHandle
    p1: uuid.UUID
    p2: uuid.UUID
    e1: uuid.UUID
    e2: uuid.UUID
    e3: uuid.UUID


class Seeder:
    def __init__(self, conn: asyncpg.Connection, tenant_id: str) -> None:
        self.conn = conn
        self.tenant = uuid.UUID(tenant_id)

    async def daily(
        self,
        zone: str,
        day: date,
        episode: uuid.UUID,
        podcast: uuid.UUID,
        downloads: int,
        ads: int = 0,
    ) -> None:
        await self.conn.execute(
            """
            INSERT INTO rollup_daily (tenant_id, zone, day, episode_id, podcast_id, downloads,
                ads_delivered) VALUES ($1, $2, $3, $4, $5, $6, $7)
            ON CONFLICT (tenant_id, zone, day, episode_id) DO UPDATE
                SET downloads = rollup_daily.downloads + EXCLUDED.downloads,
                    ads_delivered = rollup_daily.ads_delivered + EXCLUDED.ads_delivered
            """,
            self.tenant, zone, day, episode, podcast, downloads, ads,
        )  # fmt: skip

    async def dimension(
        self,
        zone: str,
        dimension: str,
        day: date,
        value: str,
        episode: uuid.UUID,
        podcast: uuid.UUID,
        downloads: int,
        ads: int = 0,
    ) -> None:
        await self.conn.execute(
            """
            INSERT INTO rollup_daily_dimension (tenant_id, zone, dimension, day, value,
                episode_id, podcast_id, downloads, ads_delivered)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
            """,
            self.tenant, zone, dimension, day, value, episode, podcast, downloads, ads,
        )  # fmt: skip

    async def hourly(
        self,
        hour: datetime,
        episode: uuid.UUID,
        podcast: uuid.UUID,
        downloads: int,
        app: str = "",
    ) -> None:
        await self.conn.execute(
            """
            INSERT INTO rollup_hourly (tenant_id, hour, episode_id, app, device_class,
                country_code, podcast_id, downloads) VALUES ($1, $2, $3, $4, '', '', $5, $6)
            """,
            self.tenant, hour, episode, app, podcast, downloads,
        )  # fmt: skip

    async def listeners(
        self, zone: str, day: date, episode: uuid.UUID, podcast: uuid.UUID, ids: Sequence[str]
    ) -> None:
        await self.conn.execute(
            """
            INSERT INTO listener_sketches (tenant_id, zone, day, episode_id, podcast_id, sketch)
            VALUES ($1, $2, $3, $4, $5, $6)
            """,
            self.tenant, zone, day, episode, podcast, sketch(ids),
        )  # fmt: skip


@pytest.fixture(scope="session")
async def analytics_channel(stack: Stack) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(stack.service_addr("analytics")) as channel:
        yield channel


@pytest.fixture(scope="session")
def analytics(analytics_channel: grpc.aio.Channel) -> Stub:
    return analytics_pb2_grpc.AnalyticsServiceStub(analytics_channel)


@pytest.fixture(scope="session")
def gateway_analytics(gateway_channel: grpc.aio.Channel) -> Stub:
    return analytics_pb2_grpc.AnalyticsServiceStub(gateway_channel)


@pytest.fixture
async def tenant(tenants: tenant_pb2_grpc.TenantServiceAsyncStub, stack: Stack) -> TenantHandle:
    return await create_tenant(tenants, stack.admin_token, "an")


@pytest.fixture
async def seeded(tenant: TenantHandle, owner_conn: asyncpg.Connection) -> Seeded:
    """Three UTC days from 1 May 2024: p1 has e1 and e2, p2 has e3."""
    p1, p2, e1, e2, e3 = (uuid.uuid4() for _ in range(5))
    s = Seeder(owner_conn, tenant.id)
    d1, d2, d3 = (date(2024, 5, day) for day in (1, 2, 3))
    for day, episode, podcast, downloads, ads in (
        (d1, e1, p1, 10, 2), (d1, e2, p1, 5, 0), (d2, e1, p1, 7, 1), (d3, e3, p2, 4, 0),
    ):  # fmt: skip
        await s.daily("UTC", day, episode, podcast, downloads, ads)
    for day, app, episode, podcast, downloads, ads in (
        (d1, "Overcast", e1, p1, 6, 1), (d1, "Spotify", e1, p1, 4, 1), (d1, "", e2, p1, 5, 0),
        (d2, "Overcast", e1, p1, 7, 1), (d3, "Spotify", e3, p2, 4, 0),
    ):  # fmt: skip
        await s.dimension("UTC", "app", day, app, episode, podcast, downloads, ads)
    return Seeded(tenant, p1, p2, e1, e2, e3)


def three_days(**fields: Any) -> pb.QueryMetricsRequest:
    return pb.QueryMetricsRequest(
        start_time=ts(MAY_1), end_time=ts(MAY_1 + timedelta(days=3)), time_zone="UTC", **fields
    )


def series(response: pb.QueryMetricsResponse) -> list[tuple[str, str, int]]:
    return [
        (p.bucket_start_time.ToDatetime().date().isoformat(), p.dimension_value, p.downloads)
        for p in response.points
    ]


async def test_daily_series_with_an_app_breakdown(analytics: Stub, seeded: Seeded) -> None:
    key = bearer(seeded.tenant.owner_key)
    whole = await analytics.QueryMetrics(
        three_days(
            breakdown=pb.DIMENSION_APP, metrics=[pb.METRIC_DOWNLOADS, pb.METRIC_ADS_DELIVERED]
        ),
        metadata=key,
    )
    assert [(t.dimension_value, t.downloads, t.ads_delivered) for t in whole.totals] == [
        ("Overcast", 13, 2),
        ("Spotify", 8, 1),
        ("Unknown", 5, 0),
    ]
    assert series(whole) == [
        ("2024-05-01", "Overcast", 6), ("2024-05-01", "Spotify", 4), ("2024-05-01", "Unknown", 5),
        ("2024-05-02", "Overcast", 7), ("2024-05-02", "Spotify", 0), ("2024-05-02", "Unknown", 0),
        ("2024-05-03", "Overcast", 0), ("2024-05-03", "Spotify", 4), ("2024-05-03", "Unknown", 0),
    ]  # fmt: skip
    assert not whole.points[0].HasField("listeners")
    assert whole.methodology.bucket_time_zone == "UTC"
    assert whole.methodology.counting_window == tenant_pb2.COUNTING_WINDOW_UTC_DAY
    assert whole.methodology.guideline.startswith("IAB Tech Lab Podcast Measurement")

    podcast = await analytics.QueryMetrics(
        three_days(podcast_id=str(seeded.p1), breakdown=pb.DIMENSION_APP, breakdown_limit=1),
        metadata=key,
    )
    assert [(t.dimension_value, t.downloads) for t in podcast.totals] == [
        ("Overcast", 13),
        ("other", 9),
    ]
    episode = await analytics.QueryMetrics(three_days(episode_ids=[str(seeded.e2)]), metadata=key)
    assert series(episode) == [("2024-05-01", "", 5), ("2024-05-02", "", 0), ("2024-05-03", "", 0)]
    by_podcast = await analytics.QueryMetrics(
        three_days(breakdown=pb.DIMENSION_PODCAST, granularity=pb.GRANULARITY_TOTAL), metadata=key
    )
    assert [(p.dimension_value, p.downloads) for p in by_podcast.points] == [
        (str(seeded.p1), 22),
        (str(seeded.p2), 4),
    ]


async def test_the_series_view_holds_the_points_numbers_once_per_value(
    analytics: Stub, http: httpx.AsyncClient, seeded: Seeded
) -> None:
    key = bearer(seeded.tenant.owner_key)
    request = three_days(
        breakdown=pb.DIMENSION_APP, metrics=[pb.METRIC_DOWNLOADS, pb.METRIC_ADS_DELIVERED]
    )
    points = await analytics.QueryMetrics(request, metadata=key)
    request.view = pb.METRICS_VIEW_SERIES
    charted = await analytics.QueryMetrics(request, metadata=key)

    assert not charted.points
    assert [t.ToDatetime().date().isoformat() for t in charted.bucket_start_times] == [
        "2024-05-01", "2024-05-02", "2024-05-03",
    ]  # fmt: skip
    assert [
        (s.dimension_value, list(s.downloads), list(s.ads_delivered)) for s in charted.series
    ] == [
        ("Overcast", [6, 7, 0], [1, 1, 0]),
        ("Spotify", [4, 0, 4], [1, 0, 0]),
        ("Unknown", [5, 0, 0], [0, 0, 0]),
    ]
    assert not any(s.listeners for s in charted.series)
    assert list(charted.totals) == list(points.totals)
    regrouped = [
        (start.ToDatetime().date().isoformat(), s.dimension_value, s.downloads[i])
        for i, start in enumerate(charted.bucket_start_times)
        for s in charted.series
    ]
    assert regrouped == series(points)

    params = httpx.QueryParams(
        [
            ("startTime", "2024-05-01T00:00:00Z"),
            ("endTime", "2024-05-04T00:00:00Z"),
            ("timeZone", "UTC"),
            ("breakdown", "DIMENSION_APP"),
        ]
    )
    as_points = await http.get(
        "/api/v1/metrics:query", params=params, headers=auth(seeded.tenant.owner_key)
    )
    as_series = await http.get(
        "/api/v1/metrics:query",
        params=params.add("view", "METRICS_VIEW_SERIES"),
        headers=auth(seeded.tenant.owner_key),
    )
    assert as_series.status_code == 200, as_series.text
    # The gateway prints empty lists for the metrics not asked for.
    assert as_series.json()["series"][0] == {
        "dimensionValue": "Overcast",
        "downloads": ["6", "7", "0"],
        "listeners": [],
        "adsDelivered": [],
    }
    assert len(as_series.content) < len(as_points.content)

    with pytest.raises(grpc.aio.AioRpcError) as error:
        await analytics.QueryMetrics(three_days(view=7), metadata=key)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error.value) == ["view"]


async def test_podcast_and_tenant_cubes_follow_the_episode_cubes(
    analytics: Stub, stack: Stack, tenant: TenantHandle
) -> None:
    """Upserts and deletes by the service role (RLS on) keep the coarse cubes in step."""
    tenant_id, podcast = uuid.UUID(tenant.id), uuid.uuid4()
    episodes = [uuid.uuid4(), uuid.uuid4()]
    rows = [
        (day, app, episode, downloads)
        for day in (date(2024, 5, 1), date(2024, 5, 2))
        for app, downloads in (("Overcast", 3), ("", 1))
        for episode in episodes
    ]
    upsert = """
        INSERT INTO rollup_daily_dimension AS r (tenant_id, zone, dimension, day, value,
            episode_id, podcast_id, downloads, ads_delivered)
        SELECT $1, 'UTC', 'app', day, value, episode, $2, downloads, 1
        FROM unnest($3::date[], $4::text[], $5::uuid[], $6::bigint[])
            AS t(day, value, episode, downloads)
        ON CONFLICT (tenant_id, zone, dimension, day, value, episode_id) DO UPDATE
            SET downloads = r.downloads + EXCLUDED.downloads,
                ads_delivered = r.ads_delivered + EXCLUDED.ads_delivered
    """
    columns = [list(column) for column in zip(*rows, strict=True)]
    db = await Database.connect(stack.app_dsn, min_size=1, max_size=1)
    try:
        async with db.tenant_transaction(tenant_id) as conn:
            await conn.execute(upsert, tenant_id, podcast, *columns)
            await conn.execute(upsert, tenant_id, podcast, *columns)
            await conn.execute(
                "DELETE FROM rollup_daily_dimension WHERE day = '2024-05-02' AND episode_id = $1",
                episodes[1],
            )
        async with db.tenant_transaction(tenant_id) as conn:
            fine = await conn.fetch(
                """SELECT day, value, sum(downloads) AS d, sum(ads_delivered) AS a
                FROM rollup_daily_dimension GROUP BY day, value ORDER BY day, value"""
            )
            for table in ("rollup_daily_dimension_tenant", "rollup_daily_dimension_podcast"):
                coarse = await conn.fetch(
                    f"""SELECT day, value, downloads AS d, ads_delivered AS a FROM {table}
                    WHERE downloads <> 0 OR ads_delivered <> 0 ORDER BY day, value"""
                )
                assert coarse == fine, table
    finally:
        await db.close()
    assert [r["d"] for r in fine] == [4, 12, 2, 6]

    key = bearer(tenant.owner_key)
    from_tenant_cube = await analytics.QueryMetrics(
        three_days(breakdown=pb.DIMENSION_APP), metadata=key
    )
    from_episode_cube = await analytics.QueryMetrics(
        three_days(breakdown=pb.DIMENSION_APP, episode_ids=[str(e) for e in episodes]),
        metadata=key,
    )
    assert series(from_tenant_cube) == series(from_episode_cube)
    assert [(t.dimension_value, t.downloads) for t in from_tenant_cube.totals] == [
        ("Overcast", 18),
        ("Unknown", 6),
    ]


async def test_weeks_move_the_start_back_to_monday(analytics: Stub, seeded: Seeded) -> None:
    response = await analytics.QueryMetrics(
        three_days(granularity=pb.GRANULARITY_WEEK), metadata=bearer(seeded.tenant.owner_key)
    )
    assert series(response) == [("2024-04-29", "", 26)]


async def test_other_tenants_see_none_of_it(
    analytics: Stub, seeded: Seeded, tenants: tenant_pb2_grpc.TenantServiceAsyncStub, stack: Stack
) -> None:
    other = await create_tenant(tenants, stack.admin_token, "an")
    response = await analytics.QueryMetrics(three_days(), metadata=bearer(other.owner_key))
    assert [p.downloads for p in response.points] == [0, 0, 0]


async def test_the_same_numbers_as_json_through_envoy(
    http: httpx.AsyncClient, gateway_analytics: Stub, seeded: Seeded
) -> None:
    response = await http.get(
        "/api/v1/metrics:query",
        params=[
            ("startTime", "2024-05-01T00:00:00Z"),
            ("endTime", "2024-05-04T00:00:00Z"),
            ("timeZone", "UTC"),
            ("breakdown", "DIMENSION_APP"),
            ("metrics", "METRIC_DOWNLOADS"),
            ("metrics", "METRIC_ADS_DELIVERED"),
        ],
        headers=auth(seeded.tenant.owner_key),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert [(t["dimensionValue"], t["downloads"], t["adsDelivered"]) for t in body["totals"]] == [
        ("Overcast", "13", "2"),
        ("Spotify", "8", "1"),
        ("Unknown", "5", "0"),
    ]
    assert body["points"][0]["bucketStartTime"] == "2024-05-01T00:00:00Z"
    assert body["methodology"]["countingWindow"] == "COUNTING_WINDOW_UTC_DAY"

    through_grpc = await gateway_analytics.QueryMetrics(
        three_days(breakdown=pb.DIMENSION_APP), metadata=bearer(seeded.tenant.owner_key)
    )
    assert [t.downloads for t in through_grpc.totals] == [13, 8, 5]


async def test_csv_export_through_envoy(http: httpx.AsyncClient, seeded: Seeded) -> None:
    response = await http.get(
        "/api/v1/metrics:export",
        params={
            "startTime": "2024-05-01T00:00:00Z",
            "endTime": "2024-05-04T00:00:00Z",
            "timeZone": "UTC",
            "breakdown": "DIMENSION_APP",
        },
        headers=auth(seeded.tenant.owner_key),
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    lines = response.text.splitlines()
    comments = [line for line in lines if line.startswith("#")]
    rows = [line for line in lines if not line.startswith("#")]
    assert "# counting window: calendar day in UTC" in comments
    assert rows[0] == "bucket_start_time,app,downloads"
    assert rows[1:4] == [
        "2024-05-01T00:00:00+00:00,Overcast,6",
        "2024-05-01T00:00:00+00:00,Spotify,4",
        "2024-05-01T00:00:00+00:00,Unknown,5",
    ]
    assert len(rows) == 1 + 3 * 3


async def test_time_zones_pick_the_right_cube_and_buckets(
    analytics: Stub,
    tenant: TenantHandle,
    tenants: tenant_pb2_grpc.TenantServiceAsyncStub,
    owner_conn: asyncpg.Connection,
) -> None:
    await tenants.UpdateTenant(
        tenant_pb2.UpdateTenantRequest(
            tenant=tenant_pb2.Tenant(
                id=tenant.id, settings=tenant_pb2.TenantSettings(time_zone="Europe/Berlin")
            ),
            update_mask=FieldMask(paths=["settings.time_zone"]),
        ),
        metadata=bearer(tenant.owner_key),
    )
    s = Seeder(owner_conn, tenant.id)
    podcast, episode = uuid.uuid4(), uuid.uuid4()
    # Berlin is UTC+2 and New York UTC-4 in May.
    for hour, downloads in ((21, 1), (22, 2), (27, 4), (29, 8)):
        await s.hourly(MAY_1 + timedelta(hours=hour), episode, podcast, downloads)
    for zone, first, second in (("UTC", 3, 12), ("local", 1, 14)):
        await s.daily(zone, date(2024, 5, 1), episode, podcast, first)
        await s.daily(zone, date(2024, 5, 2), episode, podcast, second)
    key = bearer(tenant.owner_key)

    def request(start: datetime, hours: int, **fields: Any) -> pb.QueryMetricsRequest:
        return pb.QueryMetricsRequest(
            start_time=ts(start), end_time=ts(start + timedelta(hours=hours)), **fields
        )

    local = await analytics.QueryMetrics(request(MAY_1 - timedelta(hours=2), 48), metadata=key)
    assert local.methodology.bucket_time_zone == "Europe/Berlin"
    assert [(p.bucket_start_time.ToDatetime(), p.downloads) for p in local.points] == [
        (datetime(2024, 4, 30, 22), 1),
        (datetime(2024, 5, 1, 22), 14),
    ]
    in_utc = await analytics.QueryMetrics(request(MAY_1, 48, time_zone="UTC"), metadata=key)
    assert [p.downloads for p in in_utc.points] == [3, 12]
    new_york = await analytics.QueryMetrics(
        request(MAY_1 + timedelta(hours=4), 48, time_zone="America/New_York"), metadata=key
    )
    assert [(p.bucket_start_time.ToDatetime(), p.downloads) for p in new_york.points] == [
        (datetime(2024, 5, 1, 4), 7),
        (datetime(2024, 5, 2, 4), 8),
    ]
    hourly = await analytics.QueryMetrics(
        request(MAY_1 + timedelta(hours=21), 2, granularity=pb.GRANULARITY_HOUR), metadata=key
    )
    assert [p.downloads for p in hourly.points] == [1, 2]

    with pytest.raises(grpc.aio.AioRpcError) as error:
        await analytics.QueryMetrics(request(MAY_1, 48, time_zone="Asia/Kolkata"), metadata=key)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error.value) == ["time_zone"]


async def test_listeners_are_unions_of_sketches(
    analytics: Stub, tenant: TenantHandle, owner_conn: asyncpg.Connection
) -> None:
    s = Seeder(owner_conn, tenant.id)
    p1, p2, e1, e2, e3 = (uuid.uuid4() for _ in range(5))
    d1, d2 = date(2024, 5, 1), date(2024, 5, 2)
    await s.listeners("UTC", d1, e1, p1, ["a", "b", "c"])
    await s.listeners("UTC", d1, e2, p1, ["c", "d"])
    await s.listeners("UTC", d2, e1, p1, ["a", "e"])
    await s.listeners("UTC", d2, e3, p2, ["f"])
    key = bearer(tenant.owner_key)
    daily = await analytics.QueryMetrics(
        three_days(metrics=[pb.METRIC_LISTENERS, pb.METRIC_DOWNLOADS]), metadata=key
    )
    assert [(p.listeners, p.downloads) for p in daily.points] == [(4, 0), (3, 0), (0, 0)]
    assert daily.totals[0].listeners == 6
    by_podcast = await analytics.QueryMetrics(
        three_days(
            metrics=[pb.METRIC_LISTENERS],
            breakdown=pb.DIMENSION_PODCAST,
            granularity=pb.GRANULARITY_TOTAL,
        ),
        metadata=key,
    )
    assert [(p.dimension_value, p.listeners) for p in by_podcast.points] == [
        (str(p1), 5),
        (str(p2), 1),
    ]

    crowd = [f"listener-{i}" for i in range(5000)]
    e4 = uuid.uuid4()
    await s.listeners("UTC", date(2024, 6, 1), e4, p1, crowd[:3000])
    await s.listeners("UTC", date(2024, 6, 2), e4, p1, crowd[2000:])
    june = await analytics.QueryMetrics(
        pb.QueryMetricsRequest(
            start_time=ts(datetime(2024, 6, 1, tzinfo=UTC)),
            end_time=ts(datetime(2024, 6, 3, tzinfo=UTC)),
            time_zone="UTC",
            granularity=pb.GRANULARITY_TOTAL,
            metrics=[pb.METRIC_LISTENERS],
        ),
        metadata=key,
    )
    assert abs(june.totals[0].listeners - 5000) <= 5000 * 0.03

    with pytest.raises(grpc.aio.AioRpcError) as error:
        await analytics.QueryMetrics(
            three_days(metrics=[pb.METRIC_LISTENERS], breakdown=pb.DIMENSION_APP), metadata=key
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error.value) == ["metrics"]


async def test_bad_requests_name_every_field(
    analytics: Stub, http: httpx.AsyncClient, tenant: TenantHandle
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await analytics.QueryMetrics(
            pb.QueryMetricsRequest(
                start_time=ts(MAY_1),
                end_time=ts(MAY_1 - timedelta(days=1)),
                time_zone="Nowhere/Land",
                breakdown_limit=500,
            ),
            metadata=bearer(tenant.owner_key),
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error.value) == ["breakdown_limit", "time_zone", "end_time"]

    with pytest.raises(grpc.aio.AioRpcError) as error:
        await analytics.QueryMetrics(
            pb.QueryMetricsRequest(start_time=ts(MAY_1), end_time=ts(MAY_1), podcast_id="nope"),
            metadata=bearer(tenant.owner_key),
        )
    assert violated_fields(error.value) == ["podcast_id"]

    response = await http.get(
        "/api/v1/metrics:query",
        params={"startTime": "2024-05-01T00:00:00Z", "endTime": "2025-12-01T00:00:00Z"},
        headers=auth(tenant.owner_key),
    )
    assert response.status_code == 400
    fields = [
        v["field"]
        for d in response.json()["details"]
        if d["@type"].endswith("BadRequest")
        for v in d["fieldViolations"]
    ]
    assert fields == ["end_time"]

    unauthenticated = await http.get("/api/v1/metrics:query")
    assert unauthenticated.status_code == 401


async def test_top_episodes_page_by_downloads_and_rank_by_listeners(
    analytics: Stub, tenant: TenantHandle, owner_conn: asyncpg.Connection
) -> None:
    s = Seeder(owner_conn, tenant.id)
    podcast = uuid.uuid4()
    episodes = sorted(uuid.uuid4() for _ in range(4))
    for episode, downloads in zip(episodes, (5, 20, 30, 20), strict=True):
        await s.daily("UTC", date(2024, 5, 1), episode, podcast, downloads)
    await s.listeners("UTC", date(2024, 5, 1), episodes[0], podcast, ["a", "b", "c"])
    await s.listeners("UTC", date(2024, 5, 2), episodes[0], podcast, ["c", "d"])
    await s.listeners("UTC", date(2024, 5, 1), episodes[2], podcast, ["a"])
    key = bearer(tenant.owner_key)

    def request(**fields: Any) -> pb.ListTopEpisodesRequest:
        return pb.ListTopEpisodesRequest(
            start_time=ts(MAY_1), end_time=ts(MAY_1 + timedelta(days=2)), page_size=2, **fields
        )

    first = await analytics.ListTopEpisodes(request(), metadata=key)
    second = await analytics.ListTopEpisodes(
        request(page_token=first.next_page_token), metadata=key
    )
    ranked = [
        (t.rank, t.episode_id, t.downloads) for t in [*first.top_episodes, *second.top_episodes]
    ]
    assert ranked == [
        (1, str(episodes[2]), 30),
        (2, str(episodes[1]), 20),
        (3, str(episodes[3]), 20),
        (4, str(episodes[0]), 5),
    ]
    assert first.top_episodes[0].listeners == 1
    assert second.next_page_token == ""

    by_listeners = await analytics.ListTopEpisodes(
        request(ranking_metric=pb.METRIC_LISTENERS), metadata=key
    )
    assert [(t.episode_id, t.listeners, t.downloads) for t in by_listeners.top_episodes] == [
        (str(episodes[0]), 4, 5),
        (str(episodes[2]), 1, 30),
    ]
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await analytics.ListTopEpisodes(
            request(page_token=first.next_page_token, podcast_id=str(podcast)), metadata=key
        )
    assert violated_fields(error.value) == ["page_token"]


async def test_anomalies_and_forecast_over_daily_rollups(
    analytics: Stub, tenant: TenantHandle, owner_conn: asyncpg.Connection
) -> None:
    s = Seeder(owner_conn, tenant.id)
    podcast, episode = uuid.uuid4(), uuid.uuid4()
    today = datetime.now(UTC).date()
    spike = today - timedelta(days=5)
    for back in range(1, 71):
        day = today - timedelta(days=back)
        downloads = 1000 + 100 * day.weekday()
        await s.daily("UTC", day, episode, podcast, 10_000 if day == spike else downloads)
    key = bearer(tenant.owner_key)

    found = await analytics.DetectAnomalies(
        pb.DetectAnomaliesRequest(podcast_id=str(podcast)), metadata=key
    )
    assert [(d.day_start_time.ToDatetime().date(), d.direction) for d in found.days] == [
        (spike, pb.ANOMALY_DIRECTION_SPIKE)
    ]
    assert found.days[0].expected_low < found.days[0].expected_high < 10_000
    every_day = await analytics.DetectAnomalies(
        pb.DetectAnomaliesRequest(episode_id=str(episode), include_normal_days=True), metadata=key
    )
    assert len(every_day.days) == 30

    ahead = await analytics.GetForecast(
        pb.GetForecastRequest(podcast_id=str(podcast), horizon_days=14), metadata=key
    )
    assert len(ahead.points) == 14
    assert ahead.points[0].day_start_time.ToDatetime().date() == today + timedelta(days=1)
    assert all(p.lower_bound <= p.predicted_downloads <= p.upper_bound for p in ahead.points)
    assert ahead.history_days >= 70
    assert ahead.confidence_level == pytest.approx(0.95)

    with pytest.raises(grpc.aio.AioRpcError) as error:
        await analytics.GetForecast(
            pb.GetForecastRequest(podcast_id=str(uuid.uuid4())), metadata=key
        )
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await analytics.DetectAnomalies(
            pb.DetectAnomaliesRequest(podcast_id=str(podcast), episode_id=str(episode)),
            metadata=key,
        )
    assert violated_fields(error.value) == ["episode_id"]


async def test_counting_settings_round_trip_and_validation(
    analytics: Stub,
    http: httpx.AsyncClient,
    tenant: TenantHandle,
    tenants: tenant_pb2_grpc.TenantServiceAsyncStub,
) -> None:
    key = bearer(tenant.owner_key)
    empty = await analytics.GetCountingSettings(pb.GetCountingSettingsRequest(), metadata=key)
    assert list(empty.counting_settings.excluded_ip_ranges) == []

    updated = await analytics.UpdateCountingSettings(
        pb.UpdateCountingSettingsRequest(
            counting_settings=pb.CountingSettings(
                excluded_ip_ranges=["203.0.113.0/24", "2001:db8::/32", "203.0.113.0/24"],
                excluded_user_agents=["ignored: not in the mask"],
            ),
            update_mask=FieldMask(paths=["excluded_ip_ranges"]),
        ),
        metadata=key,
    )
    assert list(updated.counting_settings.excluded_ip_ranges) == ["203.0.113.0/24", "2001:db8::/32"]
    assert list(updated.counting_settings.excluded_user_agents) == []

    patched = await http.patch(
        "/api/v1/countingSettings",
        params={"updateMask": "excludedUserAgents"},
        json={"excludedUserAgents": ["UptimeBot", "uptimebot"]},
        headers=auth(tenant.owner_key),
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["countingSettings"]["excludedUserAgents"] == ["UptimeBot"]
    assert patched.json()["countingSettings"]["excludedIpRanges"] == [
        "203.0.113.0/24",
        "2001:db8::/32",
    ]

    with pytest.raises(grpc.aio.AioRpcError) as error:
        await analytics.UpdateCountingSettings(
            pb.UpdateCountingSettingsRequest(
                counting_settings=pb.CountingSettings(excluded_ip_ranges=["10.0.0.1/8", "nope"]),
                update_mask=FieldMask(paths=["excluded_ip_ranges"]),
            ),
            metadata=key,
        )
    assert violated_fields(error.value) == ["excluded_ip_ranges[0]", "excluded_ip_ranges[1]"]
    assert "did you mean 10.0.0.0/8" in (error.value.details() or "")

    reader = await tenants.CreateApiKey(
        tenant_pb2.CreateApiKeyRequest(
            api_key=tenant_pb2.ApiKey(display_name="r", scopes=[tenant_pb2.API_KEY_SCOPE_READ])
        ),
        metadata=key,
    )
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await analytics.UpdateCountingSettings(
            pb.UpdateCountingSettingsRequest(
                counting_settings=pb.CountingSettings(),
                update_mask=FieldMask(paths=["excluded_ip_ranges"]),
            ),
            metadata=bearer(reader.secret),
        )
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    unchanged = await analytics.GetCountingSettings(
        pb.GetCountingSettingsRequest(), metadata=bearer(reader.secret)
    )
    assert len(unchanged.counting_settings.excluded_ip_ranges) == 2


async def test_episode_performance_since_release(
    analytics: Stub,
    stack: Stack,
    tenant: TenantHandle,
    owner_conn: asyncpg.Connection,
) -> None:
    key = bearer(tenant.owner_key)
    async with grpc.aio.insecure_channel(stack.service_addr("catalog")) as channel:
        catalog = catalog_pb2_grpc.CatalogServiceStub(channel)
        podcast = await catalog.CreatePodcast(
            catalog_pb2.CreatePodcastRequest(podcast=catalog_pb2.Podcast(title="Show")),
            metadata=key,
        )
        released = datetime(2024, 5, 1, 9, 30, tzinfo=UTC)
        ids = []
        for number, publish in enumerate((released, released - timedelta(days=14)), 1):
            created = await catalog.CreateEpisode(
                catalog_pb2.CreateEpisodeRequest(
                    podcast_id=podcast.podcast.id,
                    episode=catalog_pb2.Episode(
                        title=f"Episode {number}",
                        media_url=f"https://cdn.example.com/{uuid.uuid4()}.mp3",
                        publish_time=ts(publish),
                    ),
                ),
                metadata=key,
            )
            ids.append(uuid.UUID(created.episode.id))
    episode, older = ids
    podcast_id = uuid.UUID(podcast.podcast.id)
    s = Seeder(owner_conn, tenant.id)
    # Day 1 is 09:00 on 1 May to 09:00 on 2 May (hour-exact).
    await s.hourly(datetime(2024, 5, 1, 9, tzinfo=UTC), episode, podcast_id, 40)
    await s.daily("UTC", date(2024, 5, 1), episode, podcast_id, 50)
    await s.hourly(datetime(2024, 5, 1, 20, tzinfo=UTC), episode, podcast_id, 10)
    await s.hourly(datetime(2024, 5, 2, 8, tzinfo=UTC), episode, podcast_id, 5)
    await s.hourly(datetime(2024, 5, 2, 9, tzinfo=UTC), episode, podcast_id, 7)
    await s.daily("UTC", date(2024, 5, 2), episode, podcast_id, 12)
    await s.daily("UTC", date(2024, 5, 3), episode, podcast_id, 6)
    await s.hourly(datetime(2024, 4, 17, 9, tzinfo=UTC), older, podcast_id, 30)
    await s.daily("UTC", date(2024, 4, 17), older, podcast_id, 30)

    response = await analytics.GetEpisodePerformance(
        pb.GetEpisodePerformanceRequest(episode_id=str(episode), days=[1, 7]), metadata=key
    )
    performance = response.episode_performance
    assert performance.podcast_id == str(podcast_id)
    assert performance.release_time.ToDatetime(tzinfo=UTC) == released
    assert [
        (w.days, w.downloads, w.complete, w.podcast_median_downloads) for w in performance.windows
    ] == [
        (1, 55, True, 30),
        (7, 68, True, 30),
    ]
    assert performance.total_downloads == 68

    with pytest.raises(grpc.aio.AioRpcError) as error:
        await analytics.GetEpisodePerformance(
            pb.GetEpisodePerformanceRequest(episode_id=str(uuid.uuid4())), metadata=key
        )
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(error.value).reason == "EPISODE_NOT_FOUND"
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await analytics.GetEpisodePerformance(
            pb.GetEpisodePerformanceRequest(episode_id=str(episode), days=[0, 400]), metadata=key
        )
    assert violated_fields(error.value) == ["days[0]", "days[1]"]


# Live counters


@pytest.fixture
async def redis_client(stack: Stack) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(stack.redis_url)
    try:
        yield client
    finally:
        await client.aclose()


async def next_update(call: Any, within: float = 10.0) -> pb.WatchMetricsResponse:
    response: pb.WatchMetricsResponse = await asyncio.wait_for(call.read(), within)
    return response


async def until(call: Any, check: Any, within: float = 15.0) -> pb.WatchMetricsResponse:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        update = await next_update(call, deadline - asyncio.get_running_loop().time())
        if check(update.counters):
            return update


async def test_watch_pushes_what_ingestion_records(
    analytics: Stub,
    tenant: TenantHandle,
    owner_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
) -> None:
    podcast, episode = uuid.uuid4(), uuid.uuid4()
    today = datetime.now(UTC).date()
    await Seeder(owner_conn, tenant.id).daily("UTC", today, episode, podcast, 5, 1)
    call = analytics.WatchMetrics(
        pb.WatchMetricsRequest(podcast_id=str(podcast)), metadata=bearer(tenant.owner_key)
    )
    try:
        # A busy machine can make a Redis call time out (the stream then says degraded).
        first = await until(call, lambda c: not c.degraded)
        assert (first.counters.downloads_today, first.counters.ads_delivered_today) == (5, 1)
        assert first.counters.day_start_time.ToDatetime().date() == today

        recorder = live.LiveRecorder(redis_client)
        tenant_id = uuid.UUID(tenant.id)
        assert await recorder.record_batch(
            tenant_id,
            requests=[live.EpisodeRequests(episode, podcast, 10)],
            counted=[live.CountedDownloads(today, episode, podcast, 3, 2, [b"l1", b"l2"])],
        )
        second = await until(call, lambda c: c.downloads_today == 8 and not c.degraded)
        counters = second.counters
        assert counters.ads_delivered_today == 3
        assert counters.listeners_today == 2
        assert counters.requests_last_minute == 10
        assert not second.heartbeat
    finally:
        call.cancel()


async def make_redis_unreachable(admin: aioredis.Redis, milliseconds: int) -> None:
    """Holds every Redis command for a while and drops subscribers, atomically.

    The server keeps running: restarting it from this process would fork a process that
    runs gRPC, whose fork handlers crash the child before it can exec redis-server.
    """
    pipe = admin.pipeline(transaction=True)
    pipe.execute_command("CLIENT", "PAUSE", milliseconds, "ALL")
    pipe.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    await pipe.execute()


async def test_watch_falls_back_to_postgres_while_redis_is_unreachable(
    analytics: Stub,
    tenant: TenantHandle,
    owner_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    stack: Stack,
) -> None:
    podcast, episode = uuid.uuid4(), uuid.uuid4()
    today = datetime.now(UTC).date()
    seeder = Seeder(owner_conn, tenant.id)
    await seeder.daily("UTC", today, episode, podcast, 5)
    writer = create_redis(stack.redis_url)
    recorder = live.LiveRecorder(writer)
    call = analytics.WatchMetrics(
        pb.WatchMetricsRequest(episode_id=str(episode)), metadata=bearer(tenant.owner_key)
    )
    try:
        first = await until(call, lambda c: not c.degraded)
        assert first.counters.downloads_today == 5
        await make_redis_unreachable(redis_client, 8000)
        degraded = await until(call, lambda c: c.degraded)
        assert degraded.counters.downloads_today == 5
        # A batch commits while Redis cannot take its live increments.
        await seeder.daily("UTC", today, episode, podcast, 4)
        counted = live.CountedDownloads(today, episode, podcast, 4, 0)
        assert not await recorder.record_batch(uuid.UUID(tenant.id), counted=[counted])
        polled = await until(call, lambda c: c.downloads_today == 9)
        assert polled.counters.degraded
        recovered = await until(call, lambda c: not c.degraded)
        assert recovered.counters.downloads_today == 9
    finally:
        call.cancel()
        await writer.aclose()


async def test_lost_live_writes_are_repaired_from_postgres(
    stack: Stack, redis_client: aioredis.Redis
) -> None:
    client = create_redis(stack.redis_url)
    recorder = live.LiveRecorder(client)
    tenant_id, podcast, episode = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    day = date(2024, 5, 1)

    def batch(downloads: int) -> list[live.CountedDownloads]:
        return [live.CountedDownloads(day, episode, podcast, downloads, 0, [b"x"])]

    try:
        values, repaired = await live.read(client, tenant_id, day, "t")
        assert (values.downloads, repaired) == (0, False)
        await live.repair(client, tenant_id, day, "t", 5, 0, 3)
        assert await recorder.record_batch(tenant_id, counted=batch(2))
        values, repaired = await live.read(client, tenant_id, day, "t")
        assert (values.downloads, values.listeners, repaired) == (7, 3, True)

        await make_redis_unreachable(redis_client, 1500)
        assert not await recorder.record_batch(tenant_id, counted=batch(3))
        await asyncio.sleep(1.6)
        assert await recorder.record_batch(tenant_id, counted=batch(1))
        values, repaired = await live.read(client, tenant_id, day, "t")
        assert (values.downloads, repaired) == (8, False)

        await live.repair(client, tenant_id, day, "t", 11, 0, 3)
        values, repaired = await live.read(client, tenant_id, day, "t")
        assert (values.downloads, repaired) == (11, True)
        # Repairs only ever raise: increments newer than PostgreSQL's read are kept.
        await live.repair(client, tenant_id, day, "t", 10, 0, 3)
        values, _ = await live.read(client, tenant_id, day, "t")
        assert values.downloads == 11
    finally:
        await client.aclose()


async def test_watch_as_a_streamed_json_array_through_envoy(
    http: httpx.AsyncClient,
    tenant: TenantHandle,
    owner_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
) -> None:
    podcast, episode = uuid.uuid4(), uuid.uuid4()
    today = datetime.now(UTC).date()
    await Seeder(owner_conn, tenant.id).daily("UTC", today, episode, podcast, 2)
    text = ""

    async def downloads_reach(stream: AsyncIterator[str], value: str) -> list[dict[str, Any]]:
        """The messages so far, once one reports `value` downloads today."""
        nonlocal text
        async for chunk in stream:
            text += chunk
            with contextlib.suppress(ValueError):
                parsed: list[dict[str, Any]] = json.loads(text + "]")
                if parsed[-1]["counters"]["downloadsToday"] == value:
                    return parsed
        raise AssertionError(f"the stream ended early: {text!r}")

    async with http.stream(
        "GET",
        "/api/v1/metrics:watch",
        params={"podcastId": str(podcast)},
        headers=auth(tenant.owner_key),
        timeout=20,
    ) as response:
        assert response.status_code == 200
        stream = response.aiter_text()
        first = await asyncio.wait_for(downloads_reach(stream, "2"), 10)
        assert first[0]["heartbeat"] is False
        assert await live.LiveRecorder(redis_client).record_batch(
            uuid.UUID(tenant.id),
            counted=[live.CountedDownloads(today, episode, podcast, 5, 0)],
        )
        updated = await asyncio.wait_for(downloads_reach(stream, "7"), 15)
        assert len(updated) > len(first)


class FixedClocks:
    async def clock(self, tenant_id: uuid.UUID) -> TenantClock:
        return TenantClock("UTC", CountingWindow.UTC_DAY)


async def test_an_idle_watch_sends_heartbeats(stack: Stack, tenant: TenantHandle) -> None:
    db = await Database.connect(stack.app_dsn, min_size=1, max_size=2)
    client = aioredis.from_url(stack.redis_url)
    watcher = LiveWatcher(db, client, FixedClocks(), heartbeat_s=0.3, min_interval_s=0.05)
    updates = watcher.watch(uuid.UUID(tenant.id), None, None)
    try:
        first, first_beat = await asyncio.wait_for(anext(updates), 5)
        second, second_beat = await asyncio.wait_for(anext(updates), 5)
        assert (first_beat, second_beat) == (False, True)
        assert second.same_values(first)
        assert second.update_time > first.update_time
    finally:
        await updates.aclose()
        await client.aclose()
        await db.close()
