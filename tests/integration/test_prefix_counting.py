"""Prefix requests counted into the tenant's reports, through the running stack: Envoy
redirects, its access log reaches analytics, the catalog resolves the media URL for the
tenant the prefix names, and QueryMetrics and the funnel report prefix downloads apart
from byte-verified ones, disclosed as the prefix methodology."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import httpx
import pytest
from podmesh.catalog.v1 import catalog_pb2
from podmesh.tenant.v1 import tenant_pb2_grpc

from devstack.stack import GEN_DIR, Stack
from services.shared.measurement_prefix import prefix_id
from tests.integration.conftest import CatalogStub
from tests.prefix_support import episode_at
from tests.support import TenantHandle, bearer, create_tenant, error_info

# An Apple Podcasts request, as the OPAWG lists name it.
APPLE = "Podcasts/1650.20 CFNetwork/1333.0.4 Darwin/21.5.0"
ARRIVAL_S = 30.0


@pytest.fixture
async def tenant(stack: Stack, tenants: tenant_pb2_grpc.TenantServiceAsyncStub) -> TenantHandle:
    # A tenant of its own per test: the reports are checked exactly.
    return await create_tenant(tenants, stack.admin_token)


@pytest.fixture
async def db(stack: Stack) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(stack.owner_dsn)
    try:
        yield conn
    finally:
        await conn.close()


def prefixed(stack: Stack, tenant: TenantHandle, target: str) -> str:
    return f"{stack.gateway_url}/e/{prefix_id(uuid.UUID(tenant.id))}/{target}"


async def all_stored(db: asyncpg.Connection, ids: list[str]) -> dict[str, asyncpg.Record]:
    deadline = asyncio.get_running_loop().time() + ARRIVAL_S
    while True:
        rows = await db.fetch(
            "SELECT r.*, d.request_id IS NOT NULL AS counted FROM prefix_requests r "
            "LEFT JOIN prefix_downloads d ON d.tenant_id = r.tenant_id "
            "AND d.request_id = r.request_id WHERE r.request_id = ANY($1::text[])",
            ids,
        )
        if len(rows) == len(ids):
            return {row["request_id"]: row for row in rows}
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{len(ids) - len(rows)} requests never reached analytics")
        await asyncio.sleep(0.2)


def today() -> dict[str, str]:
    start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    # Two days: a request sent just before midnight is still in the range.
    return {
        "startTime": start.isoformat().replace("+00:00", "Z"),
        "endTime": (start + timedelta(days=2)).isoformat().replace("+00:00", "Z"),
        "timeZone": "UTC",
    }


async def query(http: httpx.AsyncClient, tenant: TenantHandle, **params: Any) -> Any:
    response = await http.get(
        "/api/v1/metrics:query",
        params={**today(), **params},
        headers={"authorization": f"Bearer {tenant.owner_key}"},
    )
    assert response.status_code == 200, response.text
    return response.json()


async def test_a_prefix_request_for_a_known_episode_is_a_prefix_download(
    stack: Stack,
    tenant: TenantHandle,
    catalog: CatalogStub,
    http: httpx.AsyncClient,
    db: asyncpg.Connection,
) -> None:
    target = f"cdn.example.com/show/{uuid.uuid4().hex}.mp3"
    podcast_id, episode_id = await episode_at(catalog, tenant, f"https://{target}")
    url = prefixed(stack, tenant, f"{target}?src=rss")
    unknown_url = prefixed(stack, tenant, f"cdn.example.com/show/{uuid.uuid4().hex}.mp3")
    first, again, head, probe, unknown = (str(uuid.uuid4()) for _ in range(5))
    async with httpx.AsyncClient(timeout=10) as client:
        answers = [
            await client.get(url, headers={"user-agent": APPLE, "x-request-id": first}),
            await client.get(url, headers={"user-agent": APPLE, "x-request-id": again}),
            await client.head(url, headers={"user-agent": APPLE, "x-request-id": head}),
            await client.get(
                url, headers={"user-agent": APPLE, "x-request-id": probe, "range": "bytes=0-1"}
            ),
            await client.get(unknown_url, headers={"user-agent": APPLE, "x-request-id": unknown}),
        ]
    assert {answer.status_code for answer in answers} == {302}

    rows = await all_stored(db, [first, again, head, probe, unknown])
    assert rows[first]["counted"]
    assert rows[first]["episode_id"] == uuid.UUID(episode_id)
    assert rows[first]["podcast_id"] == uuid.UUID(podcast_id)
    # Stored, not counted: a repeat in the listener's day, HEAD, the probe, and a URL
    # that is no episode of the tenant.
    assert not any(rows[i]["counted"] for i in (again, head, probe, unknown))
    assert (rows[head]["filter_reason"], rows[probe]["filter_reason"]) == (
        "head_request",
        "probe_range",
    )
    assert rows[unknown]["episode_id"] is None

    prefix = await query(
        http, tenant, source="MEASUREMENT_SOURCE_PREFIX", breakdown="DIMENSION_EPISODE"
    )
    assert [(t["dimensionValue"], t["downloads"]) for t in prefix["totals"]] == [(episode_id, "1")]
    method = prefix["methodology"]
    assert method["source"] == "MEASUREMENT_SOURCE_PREFIX"
    assert method["guideline"].startswith("Podmesh measurement prefix methodology")
    assert method["countingWindow"] == "COUNTING_WINDOW_UTC_DAY"
    by_app = await query(
        http, tenant, source="MEASUREMENT_SOURCE_PREFIX", breakdown="DIMENSION_APP"
    )
    assert [(t["dimensionValue"], t["downloads"]) for t in by_app["totals"]] == [
        ("Apple Podcasts", "1")
    ]
    # Never added to byte-verified numbers.
    measured = await query(http, tenant, podcastId=podcast_id)
    assert measured["methodology"]["source"] == "MEASUREMENT_SOURCE_BYTES"
    assert measured["totals"][0]["downloads"] == "0"

    funnel = (
        await http.get(
            "/api/v1/countingFunnel",
            params={**today(), "source": "MEASUREMENT_SOURCE_PREFIX"},
            headers={"authorization": f"Bearer {tenant.owner_key}"},
        )
    ).json()
    counts = funnel["countingFunnel"]
    assert funnel["methodology"]["source"] == "MEASUREMENT_SOURCE_PREFIX"
    assert (
        counts["receivedCount"],
        counts["storedCount"],
        counts["filteredCount"],
        counts["unmatchedCount"],
        counts["countableCount"],
        counts["windowRepeatCount"],
        counts["downloadCount"],
    ) == ("5", "5", "2", "1", "2", "1", "1")
    assert {f["reason"] for f in counts["filteredCounts"]} == {
        "FILTER_REASON_HEAD_REQUEST",
        "FILTER_REASON_PROBE_RANGE",
    }
    # The episode's own funnel has no unmatched requests: they belong to no episode.
    scoped = (
        await http.get(
            "/api/v1/countingFunnel",
            params={**today(), "source": "MEASUREMENT_SOURCE_PREFIX", "episodeId": episode_id},
            headers={"authorization": f"Bearer {tenant.owner_key}"},
        )
    ).json()["countingFunnel"]
    assert (scoped["receivedCount"], scoped["unmatchedCount"], scoped["downloadCount"]) == (
        "4",
        "0",
        "1",
    )

    export = await http.get(
        "/api/v1/metrics:export",
        params={**today(), "source": "MEASUREMENT_SOURCE_PREFIX"},
        headers={"authorization": f"Bearer {tenant.owner_key}"},
    )
    assert "# source: measurement prefix (redirects, no bytes served)" in export.text
    assert "# guideline: Podmesh measurement prefix methodology" in export.text

    table = await asyncio.to_thread(
        subprocess.run,
        [
            str(Path(sys.executable).parent / "podmesh"), "--gateway", stack.gateway_url,
            "--api-key", tenant.owner_key, "metrics", "query", "--source", "prefix",
            "--podcast", podcast_id, "--start", today()["startTime"],
            "--end", today()["endTime"], "--granularity", "total",
        ],
        env={**os.environ, "PYTHONPATH": str(GEN_DIR)},
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert table.returncode == 0, table.stderr
    # The caption (the guideline) wraps to the table's width.
    assert "Podmesh measurement prefix methodology v1" in " ".join(table.stdout.split())
    assert table.stdout.split("\n")[3].split()[-2:] == ["1", "│"]


async def test_a_chained_prefix_counts_for_the_episode_behind_it(
    stack: Stack, tenant: TenantHandle, catalog: CatalogStub, db: asyncpg.Connection
) -> None:
    target = f"cdn.example.com/show/{uuid.uuid4().hex}.mp3"
    _, episode_id = await episode_at(catalog, tenant, f"https://{target}")
    direct, chained = str(uuid.uuid4()), str(uuid.uuid4())
    async with httpx.AsyncClient(timeout=10) as client:
        await client.get(
            prefixed(stack, tenant, f"op3.dev/e/{target}"),
            headers={"user-agent": APPLE, "x-request-id": chained},
        )
        await client.get(
            prefixed(stack, tenant, target), headers={"user-agent": APPLE, "x-request-id": direct}
        )
    rows = await all_stored(db, [chained, direct])
    assert rows[chained]["episode_id"] == rows[direct]["episode_id"] == uuid.UUID(episode_id)
    # One listener, one episode, one day: one download, whichever URL it came by.
    assert [rows[chained]["counted"], rows[direct]["counted"]] == [True, False]


async def test_prefix_reports_refuse_what_prefix_data_cannot_say(
    tenant: TenantHandle, http: httpx.AsyncClient
) -> None:
    response = await http.get(
        "/api/v1/metrics:query",
        params={
            **today(),
            "source": "MEASUREMENT_SOURCE_PREFIX",
            "metrics": ["METRIC_DOWNLOADS", "METRIC_LISTENERS"],
        },
        headers={"authorization": f"Bearer {tenant.owner_key}"},
    )
    assert response.status_code == 400
    assert "prefix data has downloads only" in response.text


async def test_only_the_platform_administrator_resolves_in_a_named_tenant(
    stack: Stack,
    tenants: tenant_pb2_grpc.TenantServiceAsyncStub,
    tenant: TenantHandle,
    catalog: CatalogStub,
) -> None:
    url = f"https://cdn.example.com/show/{uuid.uuid4().hex}.mp3"
    _, episode_id = await episode_at(catalog, tenant, url)
    other = await create_tenant(tenants, stack.admin_token)
    request = catalog_pb2.BatchResolveEpisodesRequest(media_urls=[url], tenant_id=tenant.id)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await catalog.BatchResolveEpisodes(request, metadata=bearer(other.owner_key))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_info(refused.value).reason == "TENANT_ID_NOT_ALLOWED"
    admin = bearer(stack.admin_token)
    found = await catalog.BatchResolveEpisodes(request, metadata=admin)
    assert found.by_media_url[url].episode_id == episode_id
    # The same URL in another tenant is none of that tenant's episodes (row-level
    # security in the named tenant's transaction).
    elsewhere = await catalog.BatchResolveEpisodes(
        catalog_pb2.BatchResolveEpisodesRequest(media_urls=[url], tenant_id=other.id),
        metadata=admin,
    )
    assert url not in elsewhere.by_media_url
    with pytest.raises(grpc.aio.AioRpcError) as malformed:
        await catalog.BatchResolveEpisodes(
            catalog_pb2.BatchResolveEpisodesRequest(media_urls=[url], tenant_id="nope"),
            metadata=admin,
        )
    assert malformed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
