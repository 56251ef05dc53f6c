"""Unknown JSON fields through the running gateway: refused with 400 naming the field and
nothing written, while valid bodies (json and proto names, nesting, well-known types,
unicode escapes) still reach the services."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import grpc
import httpx
import pytest
from google.protobuf import json_format
from podmesh.analytics.v1 import analytics_pb2 as pb
from podmesh.tenant.v1 import tenant_pb2_grpc

from devstack.stack import Stack
from tests.analytics_ingest_support import (
    HOUR_US,
    IngestTenant,
    ingest_tenant,
    listener_traffic,
    now_us,
)
from tests.support import TenantHandle, create_tenant


@pytest.fixture
async def tenant(tenants: tenant_pb2_grpc.TenantServiceAsyncStub, stack: Stack) -> TenantHandle:
    return await create_tenant(tenants, stack.admin_token, "strict")


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def unknown_field(response: httpx.Response) -> str:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    info, bad_request = body["details"]
    assert info["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
    assert (info["reason"], info["domain"]) == ("UNKNOWN_FIELD", "podmesh.dev")
    assert bad_request["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    (violation,) = bad_request["fieldViolations"]
    assert violation == {"field": info["metadata"]["field"], "description": "unknown field"}
    assert violation["field"] in body["message"]
    return str(violation["field"])


async def count(conn: asyncpg.Connection, table: str, tenant: TenantHandle) -> int:
    value = await conn.fetchval(
        f"SELECT count(*) FROM {table} WHERE tenant_id = $1", uuid.UUID(tenant.id)
    )
    return int(value)


async def create_podcast(http: httpx.AsyncClient, tenant: TenantHandle) -> str:
    response = await http.post(
        "/api/v1/podcasts", json={"podcast": {"title": "Strict"}}, headers=auth(tenant.owner_key)
    )
    assert response.status_code == 200, response.text
    return str(response.json()["podcast"]["id"])


def episode(**fields: Any) -> dict[str, Any]:
    return {
        "title": "First",
        "mediaUrl": f"https://cdn.example.com/{uuid.uuid4().hex}.mp3",
        "mediaSizeBytes": "4800000",
        "duration": "300s",
    } | fields


async def test_a_typo_in_create_episode_is_400_and_writes_nothing(
    http: httpx.AsyncClient, tenant: TenantHandle, owner_conn: asyncpg.Connection
) -> None:
    podcast_id = await create_podcast(http, tenant)
    body = episode()
    body["mediaSize"] = body.pop("mediaSizeBytes")
    response = await http.post(
        f"/api/v1/podcasts/{podcast_id}/episodes",
        json={"episode": body},
        headers=auth(tenant.owner_key),
    )
    assert unknown_field(response) == "episode.mediaSize"
    assert await count(owner_conn, "episodes", tenant) == 0


async def test_a_typo_in_update_episode_is_400_and_changes_nothing(
    http: httpx.AsyncClient, tenant: TenantHandle
) -> None:
    podcast_id = await create_podcast(http, tenant)
    created = await http.post(
        f"/api/v1/podcasts/{podcast_id}/episodes",
        json={"episode": episode()},
        headers=auth(tenant.owner_key),
    )
    episode_id = created.json()["episode"]["id"]
    response = await http.patch(
        f"/api/v1/episodes/{episode_id}",
        params={"updateMask": "title"},
        json={"titel": "Renamed"},
        headers=auth(tenant.owner_key),
    )
    assert unknown_field(response) == "episode.titel"
    stored = await http.get(f"/api/v1/episodes/{episode_id}", headers=auth(tenant.owner_key))
    assert stored.json()["episode"]["title"] == "First"


async def test_a_typo_in_create_user_is_400_and_writes_nothing(
    http: httpx.AsyncClient, tenant: TenantHandle, owner_conn: asyncpg.Connection
) -> None:
    before = await count(owner_conn, "users", tenant)
    response = await http.post(
        "/api/v1/users",
        json={
            "user": {"email": "new@example.com", "role": "ROLE_VIEWER", "displayNmae": "New"},
            "password": "correct horse battery staple",
        },
        headers=auth(tenant.owner_key),
    )
    assert unknown_field(response) == "user.displayNmae"
    assert await count(owner_conn, "users", tenant) == before


@pytest.fixture
async def seeded(
    stack: Stack, tenants: tenant_pb2_grpc.TenantServiceAsyncStub, gateway_channel: grpc.aio.Channel
) -> IngestTenant:
    return await ingest_tenant(stack, tenants, gateway_channel, podcasts=1, episodes=2)


async def test_a_stray_field_in_an_ingest_record_is_400_and_stores_no_record(
    http: httpx.AsyncClient, seeded: IngestTenant, owner_conn: asyncpg.Connection
) -> None:
    records = list(
        listener_traffic(seeded.episodes, 20, start_us=now_us() - HOUR_US, span_us=HOUR_US // 2)
    )
    body = json_format.MessageToDict(pb.IngestListenerEventsRequest(requests=records))
    body["requests"][3]["bytesServd"] = "100"
    response = await http.post(
        "/api/v1/listenerEvents:ingest", json=body, headers=auth(seeded.ingest_key)
    )
    assert unknown_field(response) == "requests[3].bytesServd"
    assert await count(owner_conn, "listener_requests", seeded.tenant) == 0

    del body["requests"][3]["bytesServd"]
    accepted = await http.post(
        "/api/v1/listenerEvents:ingest", json=body, headers=auth(seeded.ingest_key)
    )
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["acceptedCount"] == len(records)


async def test_valid_bodies_with_both_names_nesting_and_escapes_pass(
    http: httpx.AsyncClient, tenant: TenantHandle
) -> None:
    podcast_id = await create_podcast(http, tenant)
    url = f"https://cdn.example.com/{uuid.uuid4().hex}.mp3"
    # Proto and json names mixed, nested and repeated messages, a Duration and a
    # Timestamp, and keys and a value written with unicode escapes.
    raw = (
        '{"episode": {"title": "Caf\\u00e9 {\\"1\\"}", "media_url": "URL",'
        ' "media\\u0053izeBytes": "4800000", "duration": "300s",'
        ' "publish_time": "2024-05-01T10:00:00Z", "id3SizeBytes": "0",'
        ' "ad_slots": [{"position": "AD_POSITION_PRE_ROLL", "startOffset": "0s",'
        ' "duration": "15s", "insertion": "AD_INSERTION_DYNAMIC"}]}}'
    ).replace("URL", url)
    response = await http.post(
        f"/api/v1/podcasts/{podcast_id}/episodes",
        content=raw,
        headers=auth(tenant.owner_key) | {"content-type": "application/json"},
    )
    assert response.status_code == 200, response.text
    created = response.json()["episode"]
    assert created["title"] == 'Café {"1"}'
    assert created["mediaSizeBytes"] == "4800000"
    assert created["publishTime"] == "2024-05-01T10:00:00Z"
    assert created["adSlots"][0]["duration"] == "15s"


async def test_http_body_routes_are_unaffected(
    http: httpx.AsyncClient, tenant: TenantHandle
) -> None:
    response = await http.get(
        "/api/v1/metrics:export",
        params={
            "startTime": "2024-05-01T00:00:00Z",
            "endTime": "2024-05-02T00:00:00Z",
            "timeZone": "UTC",
        },
        headers=auth(tenant.owner_key),
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
