"""The measurement prefix through the running stack: Envoy redirects, its gRPC access
log reaches analytics, and the prefix methodology counts."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from podmesh.catalog.v1 import catalog_pb2
from podmesh.tenant.v1 import tenant_pb2_grpc

from devstack.stack import Stack
from services.shared.client_ip import IpHasher
from services.shared.measurement_prefix import prefix_id, prefixed_url
from tests.integration.conftest import CatalogStub
from tests.prefix_support import MEDIA, MediaServer, episode_at
from tests.support import TenantHandle, bearer, create_tenant

UA = "PodmeshPrefixTest/1.0 (httpx)"
# Stored within the access log's flush interval (1s); generous for a loaded machine.
ARRIVAL_S = 30.0


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MediaServer]:
    with MediaServer(tmp_path_factory.mktemp("media")) as server:
        yield server


@pytest.fixture(scope="module")
async def tenant(stack: Stack, tenants: tenant_pb2_grpc.TenantServiceAsyncStub) -> TenantHandle:
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


async def stored(db: asyncpg.Connection, request_id: str) -> asyncpg.Record:
    deadline = asyncio.get_running_loop().time() + ARRIVAL_S
    while True:
        row = await db.fetchrow(
            "SELECT r.*, d.request_id IS NOT NULL AS counted FROM prefix_requests r "
            "LEFT JOIN prefix_downloads d ON d.tenant_id = r.tenant_id "
            "AND d.request_id = r.request_id WHERE r.request_id = $1",
            request_id,
        )
        if row is not None:
            return row
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"request {request_id} never reached analytics")
        await asyncio.sleep(0.2)


def household(stack: Stack, tenant: TenantHandle, address: str) -> bytes:
    return IpHasher(stack.secrets.ip_hash_secret.encode(), tenant.id).household_id(address)


async def test_httpx_follows_the_redirect_and_the_request_is_counted(
    stack: Stack,
    tenant: TenantHandle,
    catalog: CatalogStub,
    media: MediaServer,
    db: asyncpg.Connection,
) -> None:
    request_id = str(uuid.uuid4())
    path = f"{media.authority}/show/ep-{uuid.uuid4().hex}.mp3"
    _, episode_id = await episode_at(catalog, tenant, f"https://{path}")
    async with httpx.AsyncClient(verify=media.client_context(), timeout=10) as client:
        response = await client.get(
            prefixed(stack, tenant, f"{path}?src=rss"),
            headers={
                "user-agent": UA,
                "referer": "https://player.example/",
                "x-request-id": request_id,
            },
            follow_redirects=True,
        )
    assert response.status_code == 200
    assert response.content == MEDIA
    (redirect,) = response.history
    assert redirect.status_code == 302
    assert redirect.headers["location"] == f"https://{path}?src=rss"
    assert redirect.headers["cache-control"] == "private, no-store"

    row = await stored(db, request_id)
    assert row["tenant_id"] == uuid.UUID(tenant.id)
    assert row["user_agent"] == UA
    assert row["referer"] == "https://player.example/"
    assert row["household_id"] == household(stack, tenant, "127.0.0.1")
    assert row["media_url"] == f"https://{path}?src=rss"
    assert (row["method"], row["status"], row["filter_reason"]) == ("GET", 302, "")
    assert row["episode_id"] == uuid.UUID(episode_id)
    assert row["counted"]


async def test_curl_follows_the_redirect(
    stack: Stack, tenant: TenantHandle, media: MediaServer, db: asyncpg.Connection, tmp_path: Path
) -> None:
    curl = shutil.which("curl")
    assert curl is not None, "curl is installed by make system-deps"
    request_id = str(uuid.uuid4())
    out = tmp_path / "ep.mp3"
    await asyncio.to_thread(
        subprocess.run,
        [
            curl, "--silent", "--show-error", "--fail", "--location",
            "--cacert", str(media.cert), "--user-agent", "curl-prefix-test/1.0",
            "--header", f"x-request-id: {request_id}", "--output", str(out),
            prefixed(stack, tenant, f"{media.authority}/show/curl.mp3"),
        ],
        check=True,
        timeout=30,
    )  # fmt: skip
    assert out.read_bytes() == MEDIA
    row = await stored(db, request_id)
    assert row["user_agent"] == "curl-prefix-test/1.0"


async def test_head_and_probe_are_stored_but_not_counted(
    stack: Stack,
    tenant: TenantHandle,
    catalog: CatalogStub,
    media: MediaServer,
    db: asyncpg.Connection,
) -> None:
    target = f"{media.authority}/show/probe-{uuid.uuid4().hex}.mp3"
    await episode_at(catalog, tenant, f"https://{target}")
    url = prefixed(stack, tenant, target)
    head_id, probe_id, first_id, again_id = (str(uuid.uuid4()) for _ in range(4))
    async with httpx.AsyncClient(timeout=10) as client:
        head = await client.head(url, headers={"user-agent": UA, "x-request-id": head_id})
        probe = await client.get(
            url, headers={"user-agent": UA, "x-request-id": probe_id, "range": "bytes=0-1"}
        )
        first = await client.get(
            url, headers={"user-agent": UA, "x-request-id": first_id, "range": "bytes=0-"}
        )
        again = await client.get(url, headers={"user-agent": UA, "x-request-id": again_id})
    assert {r.status_code for r in (head, probe, first, again)} == {302}

    head_row, probe_row = await stored(db, head_id), await stored(db, probe_id)
    assert (head_row["filter_reason"], head_row["counted"]) == ("head_request", False)
    assert (probe_row["filter_reason"], probe_row["range_header"]) == ("probe_range", "bytes=0-1")
    assert not probe_row["counted"]
    assert (await stored(db, first_id))["counted"]
    # The same listener's second request of the file that day is no second download.
    again_row = await stored(db, again_id)
    assert (again_row["filter_reason"], again_row["counted"]) == ("", False)


async def test_unknown_prefix_still_redirects_and_is_not_stored(
    stack: Stack, tenant: TenantHandle, media: MediaServer, db: asyncpg.Connection
) -> None:
    unknown_id, known_id = str(uuid.uuid4()), str(uuid.uuid4())
    target = f"{media.authority}/show/ep.mp3"
    async with httpx.AsyncClient(timeout=10) as client:
        unknown = await client.get(
            f"{stack.gateway_url}/e/{prefix_id(uuid.uuid4())}/{target}",
            headers={"user-agent": UA, "x-request-id": unknown_id},
        )
        other = await client.get(
            f"{stack.gateway_url}/e/not-a-prefix/{target}", headers={"user-agent": UA}
        )
        # Sent after, on the same path to analytics: once it is stored, the unknown
        # one would have been too.
        await client.get(
            prefixed(stack, tenant, target), headers={"user-agent": UA, "x-request-id": known_id}
        )
    assert unknown.status_code == other.status_code == 302
    assert unknown.headers["location"] == other.headers["location"] == f"https://{target}"
    await stored(db, known_id)
    assert (
        await db.fetchval("SELECT count(*) FROM prefix_requests WHERE request_id = $1", unknown_id)
        == 0
    )


async def test_a_forged_forwarded_for_is_ignored(
    stack: Stack, tenant: TenantHandle, media: MediaServer, db: asyncpg.Connection
) -> None:
    request_id = str(uuid.uuid4())
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(
            prefixed(stack, tenant, f"{media.authority}/show/forged.mp3"),
            headers={
                "user-agent": UA,
                "x-request-id": request_id,
                "x-forwarded-for": "198.51.100.9, 198.51.100.10",
                "x-real-ip": "198.51.100.11",
            },
        )
    assert response.status_code == 302
    row = await stored(db, request_id)
    assert row["household_id"] == household(stack, tenant, "127.0.0.1")
    assert row["household_id"] != household(stack, tenant, "198.51.100.10")


@pytest.mark.parametrize(
    "target",
    [
        "javascript:alert(1)",
        "evil.example@cdn.example.com/ep.mp3",
        "cdn.example.com%0d%0aSet-Cookie:%20a=b/ep.mp3",
        "cdn.example.com\\@evil.example/ep.mp3",
        "",
        "cdn.example.com/" + "a" * 2100,
    ],
)
async def test_hostile_targets_are_not_redirected(
    stack: Stack, tenant: TenantHandle, target: str
) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(prefixed(stack, tenant, target), headers={"user-agent": UA})
    assert response.status_code in (400, 414)
    assert "location" not in response.headers
    assert "set-cookie" not in response.headers


async def test_only_get_and_head(stack: Stack, tenant: TenantHandle) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(prefixed(stack, tenant, "cdn.example.com/ep.mp3"))
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"


async def test_a_burst_larger_than_an_rpc_request_is_stored_whole(
    stack: Stack, tenant: TenantHandle, db: asyncpg.Connection
) -> None:
    """Envoy sends a flush interval's entries as one message, far over the 64 KiB a
    request to the services may have by default."""
    ids = [str(uuid.uuid4()) for _ in range(200)]
    user_agent = "Player/1.0 " + "x" * 1000
    url = prefixed(stack, tenant, "cdn.example.com/show/burst.mp3")
    async with httpx.AsyncClient(timeout=30) as client:
        answers = await asyncio.gather(
            *(
                client.get(url, headers={"user-agent": user_agent, "x-request-id": request_id})
                for request_id in ids
            )
        )
    assert {answer.status_code for answer in answers} == {302}
    await stored(db, ids[-1])
    deadline = asyncio.get_running_loop().time() + ARRIVAL_S
    while True:
        count = await db.fetchval(
            "SELECT count(*) FROM prefix_requests WHERE request_id = ANY($1::text[])", ids
        )
        if count == len(ids) or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.2)
    assert count == len(ids)


async def test_a_podcast_names_the_prefix_for_its_feed(
    stack: Stack,
    tenant: TenantHandle,
    catalog: CatalogStub,
    media: MediaServer,
    db: asyncpg.Connection,
) -> None:
    created = await catalog.CreatePodcast(
        catalog_pb2.CreatePodcastRequest(podcast=catalog_pb2.Podcast(title="Prefixed Show")),
        metadata=bearer(tenant.owner_key),
    )
    podcast = created.podcast
    assert podcast.measurement_prefix == prefix_id(uuid.UUID(tenant.id))
    fetched = await catalog.GetPodcast(
        catalog_pb2.GetPodcastRequest(podcast_id=podcast.id), metadata=bearer(tenant.owner_key)
    )
    assert fetched.podcast.measurement_prefix == podcast.measurement_prefix
    # The enclosure URL a feed gets, followed as a player would.
    enclosure = prefixed_url(
        stack.gateway_url, uuid.UUID(tenant.id), f"https://{media.authority}/show/feed.mp3"
    )
    assert enclosure == (
        f"{stack.gateway_url}/e/{podcast.measurement_prefix}/{media.authority}/show/feed.mp3"
    )
    request_id = str(uuid.uuid4())
    async with httpx.AsyncClient(verify=media.client_context(), timeout=10) as client:
        response = await client.get(
            enclosure, headers={"user-agent": UA, "x-request-id": request_id}, follow_redirects=True
        )
    assert response.content == MEDIA
    assert (await stored(db, request_id))["media_key"] == f"{media.authority}/show/feed.mp3"
