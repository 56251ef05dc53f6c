"""The catalog as JSON through Envoy's transcoder, as a browser calls it."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest
from podmesh.tenant.v1 import tenant_pb2_grpc

from devstack.stack import Stack
from tests.catalog.support import FeedServer, fixture
from tests.support import TenantHandle, create_tenant


@pytest.fixture
async def tenant(tenants: tenant_pb2_grpc.TenantServiceAsyncStub, stack: Stack) -> TenantHandle:
    return await create_tenant(tenants, stack.admin_token, "json-cat")


def auth(tenant: TenantHandle) -> dict[str, str]:
    return {"authorization": f"Bearer {tenant.owner_key}"}


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


async def test_podcast_and_episode_round_trip(
    http: httpx.AsyncClient, tenant: TenantHandle
) -> None:
    created = ok(
        await http.post(
            "/api/v1/podcasts",
            json={
                "podcast": {
                    "title": "JSON Radio",
                    "author": "Ana",
                    "categories": ["Technology"],
                    "podcastType": "PODCAST_TYPE_EPISODIC",
                }
            },
            headers=auth(tenant),
        )
    )["podcast"]
    podcast_id = created["id"]
    assert created["categories"] == ["Technology"]
    assert (
        ok(await http.get(f"/api/v1/podcasts/{podcast_id}", headers=auth(tenant)))["podcast"]
        == created
    )

    patched = ok(
        await http.patch(
            f"/api/v1/podcasts/{podcast_id}",
            params={"updateMask": "author,ownerEmail"},
            json={"title": "ignored", "author": "Bea", "ownerEmail": "bea@example.com"},
            headers=auth(tenant),
        )
    )["podcast"]
    assert (patched["title"], patched["author"], patched["ownerEmail"]) == (
        "JSON Radio",
        "Bea",
        "bea@example.com",
    )

    episode = ok(
        await http.post(
            f"/api/v1/podcasts/{podcast_id}/episodes",
            json={
                "episode": {
                    "title": "First",
                    "mediaUrl": f"https://cdn.example.com/{tenant.slug}/1.mp3",
                    "mediaSizeBytes": "4800000",
                    "duration": "300s",
                    "id3SizeBytes": "0",
                    "publishTime": "2024-05-01T10:00:00Z",
                    "adSlots": [
                        {
                            "position": "AD_POSITION_PRE_ROLL",
                            "startOffset": "0s",
                            "duration": "15s",
                            "insertion": "AD_INSERTION_DYNAMIC",
                        }
                    ],
                }
            },
            headers=auth(tenant),
        )
    )["episode"]
    assert episode["bitrateBps"] == 128_000
    assert episode["adSlots"][0]["startByte"] == "0"
    assert episode["adSlots"][0]["endByte"] == str(15 * 16_000 - 1)
    assert episode["adSlots"][0]["byteRangeDerived"] is True

    listed = ok(await http.get(f"/api/v1/podcasts/{podcast_id}/episodes", headers=auth(tenant)))
    assert [e["id"] for e in listed["episodes"]] == [episode["id"]]
    batch = ok(
        await http.get(
            "/api/v1/episodes:batchGet", params={"episodeIds": episode["id"]}, headers=auth(tenant)
        )
    )
    assert [e["id"] for e in batch["episodes"]] == [episode["id"]]
    resolved = ok(
        await http.get(
            "/api/v1/episodes:resolve",
            params={"mediaUrl": f"http://cdn.example.com/{tenant.slug}/1.mp3?x=1"},
            headers=auth(tenant),
        )
    )["episodeMedia"]
    assert resolved["episodeId"] == episode["id"]
    batch_resolved = ok(
        await http.post(
            "/api/v1/episodes:batchResolve",
            json={"episodeIds": [episode["id"]], "mediaUrls": ["https://nowhere.example/x.mp3"]},
            headers=auth(tenant),
        )
    )
    assert list(batch_resolved["byEpisodeId"]) == [episode["id"]]
    assert batch_resolved["byMediaUrl"] == {}

    updated = ok(
        await http.patch(
            f"/api/v1/episodes/{episode['id']}",
            params={"updateMask": "title"},
            json={"title": "First, renamed", "mediaSizeBytes": "1"},
            headers=auth(tenant),
        )
    )["episode"]
    assert (updated["title"], updated["mediaSizeBytes"]) == ("First, renamed", "4800000")

    refused = await http.delete(f"/api/v1/podcasts/{podcast_id}", headers=auth(tenant))
    assert refused.status_code == 400  # FAILED_PRECONDITION
    ok(await http.delete(f"/api/v1/episodes/{episode['id']}", headers=auth(tenant)))
    ok(await http.delete(f"/api/v1/podcasts/{podcast_id}", headers=auth(tenant)))
    gone = await http.get(f"/api/v1/podcasts/{podcast_id}", headers=auth(tenant))
    assert gone.status_code == 404


async def test_pages_through_the_gateway(http: httpx.AsyncClient, tenant: TenantHandle) -> None:
    titles = [f"Show {n:02d}" for n in range(7)]
    for title in reversed(titles):
        ok(
            await http.post(
                "/api/v1/podcasts", json={"podcast": {"title": title}}, headers=auth(tenant)
            )
        )
    seen: list[str] = []
    params: dict[str, Any] = {"pageSize": 3}
    while True:
        page = ok(await http.get("/api/v1/podcasts", params=params, headers=auth(tenant)))
        seen += [p["title"] for p in page["podcasts"]]
        if not page.get("nextPageToken"):
            break
        params["pageToken"] = page["nextPageToken"]
    assert seen == titles


async def test_import_and_search_through_the_gateway(
    http: httpx.AsyncClient, feeds: FeedServer, tenant: TenantHandle
) -> None:
    url = feeds.serve_fixture(f"/{tenant.slug}/apple.xml", "apple.xml")
    imported = ok(
        await http.post("/api/v1/podcasts:importFeed", json={"feedUrl": url}, headers=auth(tenant))
    )
    assert imported["podcastCreated"] is True
    assert imported["createdEpisodeCount"] == 5
    body = base64.b64encode(fixture("messy.xml")).decode()
    messy = ok(
        await http.post(
            "/api/v1/podcasts:importFeed", json={"feedBody": body}, headers=auth(tenant)
        )
    )
    assert messy["skippedItemCount"] == 3
    assert {"item": "ktc-12", "message": "duplicate GUID, item skipped"} in messy["warnings"]

    found = ok(
        await http.get(
            "/api/v1/podcasts:search", params={"query": "persnal finance"}, headers=auth(tenant)
        )
    )
    assert found["results"][0]["podcast"]["title"] == "The Personal Finance Hour"
    episodes = ok(
        await http.get(
            "/api/v1/episodes:search", params={"query": "sauerkraut"}, headers=auth(tenant)
        )
    )
    assert [r["episode"]["guid"] for r in episodes["results"]] == ["ktc-11"]


async def test_another_tenants_podcast_is_404(
    http: httpx.AsyncClient,
    tenants: tenant_pb2_grpc.TenantServiceAsyncStub,
    stack: Stack,
    tenant: TenantHandle,
) -> None:
    podcast = ok(
        await http.post(
            "/api/v1/podcasts", json={"podcast": {"title": "Mine"}}, headers=auth(tenant)
        )
    )["podcast"]
    other = await create_tenant(tenants, stack.admin_token, "json-other")
    for method, path in (
        ("GET", f"/api/v1/podcasts/{podcast['id']}"),
        ("GET", f"/api/v1/podcasts/{podcast['id']}/episodes"),
        ("DELETE", f"/api/v1/podcasts/{podcast['id']}"),
    ):
        response = await http.request(method, path, headers=auth(other))
        assert response.status_code == 404, (method, path)
        assert "PODCAST_NOT_FOUND" in response.text
