"""Strict input, checked once in the shared layer for every service: NUL characters,
undeclared enum numbers, unparseable and oversized requests, bounded error details,
request ids, page tokens and time zones, through the real stack."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias

import asyncpg
import grpc
import httpx
import pytest
from google.protobuf import json_format
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp
from podmesh.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from podmesh.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from podmesh.tenant.v1 import tenant_pb2 as pb
from podmesh.tenant.v1 import tenant_pb2_grpc

from devstack.stack import Stack
from tests.analytics_ingest_support import (
    HOUR_US,
    IngestTenant,
    ingest_tenant,
    listener_traffic,
    now_us,
)
from tests.support import (
    TenantHandle,
    bearer,
    create_tenant,
    create_user,
    error_info,
    violated_fields,
)

TenantStub: TypeAlias = "tenant_pb2_grpc.TenantServiceAsyncStub"
LOGIN = "/podmesh.tenant.v1.TenantService/Login"
STREAM_EVENTS = "/podmesh.analytics.v1.AnalyticsService/StreamListenerEvents"


@pytest.fixture
async def tenant(tenants: TenantStub, stack: Stack) -> TenantHandle:
    return await create_tenant(tenants, stack.admin_token, "strict")


@pytest.fixture(scope="session")
async def analytics_channel(stack: Stack) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(stack.service_addr("analytics")) as channel:
        yield channel


@pytest.fixture(scope="session")
def analytics(
    analytics_channel: grpc.aio.Channel,
) -> analytics_pb2_grpc.AnalyticsServiceAsyncStub:
    return analytics_pb2_grpc.AnalyticsServiceStub(analytics_channel)


async def refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def json_violations(body: dict[str, Any]) -> list[dict[str, str]]:
    for detail in body.get("details", []):
        if detail.get("@type", "").endswith("google.rpc.BadRequest"):
            violations: list[dict[str, str]] = detail["fieldViolations"]
            return violations
    return []


def json_reason(body: dict[str, Any]) -> str:
    for detail in body.get("details", []):
        if detail.get("@type", "").endswith("google.rpc.ErrorInfo"):
            reason: str = detail["reason"]
            return reason
    return ""


# --- 1. NUL characters ----------------------------------------------------------------


async def test_nul_in_a_public_method_is_400_naming_the_field(http: httpx.AsyncClient) -> None:
    # No credentials: Login is public, and the check runs before its handler.
    response = await http.post("/api/v1/auth:login", json={"tenantSlug": "x\u0000"})

    assert response.status_code == 400
    body = response.json()
    assert json_reason(body) == "NUL_CHARACTER"
    assert [v["field"] for v in json_violations(body)] == ["tenant_slug"]


async def test_nul_in_nested_and_repeated_fields_is_invalid_argument(
    tenants: TenantStub, catalog: catalog_pb2_grpc.CatalogServiceAsyncStub, tenant: TenantHandle
) -> None:
    key = bearer(tenant.owner_key)
    user = await refused(
        tenants.CreateUser(
            pb.CreateUserRequest(
                user=pb.User(email="a\0@example.com", role=pb.ROLE_VIEWER),
                password="correct horse battery staple",
            ),
            metadata=key,
        )
    )
    search = await refused(
        catalog.SearchEpisodes(catalog_pb2.SearchEpisodesRequest(query="news\0"), metadata=key)
    )
    batch = await refused(
        catalog.BatchGetEpisodes(
            catalog_pb2.BatchGetEpisodesRequest(episode_ids=[str(uuid.uuid4()), "x\0"]),
            metadata=key,
        )
    )

    for error in (user, search, batch):
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert error_info(error).reason == "NUL_CHARACTER"
    assert violated_fields(user) == ["user.email"]
    assert violated_fields(search) == ["query"]
    assert violated_fields(batch) == ["episode_ids[1]"]


# --- 1b. ingestion: one poisoned record is rejected alone ------------------------------


@pytest.fixture
async def seeded(
    stack: Stack, tenants: TenantStub, gateway_channel: grpc.aio.Channel
) -> IngestTenant:
    return await ingest_tenant(stack, tenants, gateway_channel, podcasts=1, episodes=2)


def poisoned_batch(seeded: IngestTenant) -> list[analytics_pb2.ListenerRequest]:
    records = list(
        listener_traffic(seeded.episodes, 6, start_us=now_us() - HOUR_US, span_us=HOUR_US // 2)
    )[:6]
    records[2].user_agent = "Overcast\0/3.0"
    records[4].media_url = "https://cdn.example.com/\0.mp3"
    return records


def assert_only_poisoned_rejected(
    accepted: int, rejections: Sequence[analytics_pb2.Rejection]
) -> None:
    assert {r.index: r.reason for r in rejections} == {
        2: analytics_pb2.REJECTION_REASON_INVALID_TEXT,
        4: analytics_pb2.REJECTION_REASON_INVALID_TEXT,
    }
    assert "user_agent" in rejections[0].message
    assert "media_url" in rejections[1].message
    assert accepted == 4


async def test_a_record_with_nul_is_rejected_alone_on_the_stream(
    seeded: IngestTenant, gateway_channel: grpc.aio.Channel
) -> None:
    analytics = analytics_pb2_grpc.AnalyticsServiceStub(gateway_channel)

    async def one_batch() -> AsyncIterator[analytics_pb2.StreamListenerEventsRequest]:
        yield analytics_pb2.StreamListenerEventsRequest(sequence=1, requests=poisoned_batch(seeded))

    acks = [
        ack
        async for ack in analytics.StreamListenerEvents(
            one_batch(), metadata=bearer(seeded.ingest_key)
        )
    ]

    assert [a.sequence for a in acks] == [1]
    assert_only_poisoned_rejected(acks[0].accepted_count, acks[0].rejections)


async def test_a_record_with_nul_is_rejected_alone_in_json(
    seeded: IngestTenant, http: httpx.AsyncClient
) -> None:
    body = json_format.MessageToDict(
        analytics_pb2.IngestListenerEventsRequest(requests=poisoned_batch(seeded))
    )
    assert "\u0000" in body["requests"][2]["userAgent"]

    response = await http.post(
        "/api/v1/listenerEvents:ingest",
        json=body,
        headers={"authorization": f"Bearer {seeded.ingest_key}"},
    )

    assert response.status_code == 200, response.text
    ack = json_format.ParseDict(response.json(), analytics_pb2.IngestListenerEventsResponse())
    assert_only_poisoned_rejected(ack.accepted_count, ack.rejections)


# --- 2 and 3. unparseable and oversized requests ----------------------------------------


def _string_field(number: int, value: bytes) -> bytes:
    length = len(value)
    varint = bytearray()
    while True:
        byte = length & 0x7F
        length >>= 7
        varint.append(byte | (0x80 if length else 0))
        if not length:
            return bytes([number << 3 | 2]) + bytes(varint) + value


@pytest.mark.parametrize(
    "raw",
    [b"\xff\xff\xff\xff", _string_field(1, b"slug-\xff\xfe"), b"\x0a\x10short"],
    ids=["garbage", "invalid-utf8", "truncated"],
)
async def test_an_unparseable_request_is_invalid_argument(
    tenant_channel: grpc.aio.Channel, raw: bytes
) -> None:
    call = tenant_channel.unary_unary(LOGIN, None, None)

    error = await refused(call(raw))

    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(error).reason == "MALFORMED_REQUEST"


async def test_an_unparseable_stream_message_is_invalid_argument(
    analytics_channel: grpc.aio.Channel, seeded: IngestTenant
) -> None:
    call = analytics_channel.stream_stream(STREAM_EVENTS, None, None)

    async def garbage() -> AsyncIterator[bytes]:
        yield _string_field(2, b"\xff\xff")

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call(garbage(), metadata=bearer(seeded.ingest_key)):
            pass

    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value).reason == "MALFORMED_REQUEST"


async def test_a_request_over_its_methods_limit_is_refused_before_parsing(
    tenant_channel: grpc.aio.Channel,
) -> None:
    # A login of 100 KiB, well-formed: the default limit (64 KiB) refuses it unread.
    call = tenant_channel.unary_unary(LOGIN, None, None)

    error = await refused(call(_string_field(1, b"s" * 100 * 1024)))

    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(error)
    assert info.reason == "REQUEST_TOO_LARGE"
    assert info.metadata["max_bytes"] == str(64 * 1024)


async def test_a_service_receives_little_more_than_its_largest_method_needs(
    tenant_channel: grpc.aio.Channel,
) -> None:
    # The tenant service's methods all take the default (64 KiB), so gRPC itself refuses
    # past that and the 1 MiB margin, where it accepted 16 MiB before.
    call = tenant_channel.unary_unary(LOGIN, None, None)

    error = await refused(call(_string_field(1, b"s" * 2 * 1024 * 1024)))

    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


# --- 4. undeclared enum numbers -------------------------------------------------------


async def test_an_enum_number_the_contract_does_not_declare_is_invalid_argument(
    tenants: TenantStub, tenant: TenantHandle
) -> None:
    request = pb.UpdateTenantRequest(
        tenant=pb.Tenant(id=tenant.id, settings=pb.TenantSettings(time_zone="UTC")),
        update_mask=FieldMask(paths=["settings.counting_window"]),
    )
    request.tenant.settings.counting_window = 99  # type: ignore[assignment]

    error = await refused(tenants.UpdateTenant(request, metadata=bearer(tenant.owner_key)))

    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(error).reason == "UNKNOWN_ENUM_VALUE"
    assert violated_fields(error) == ["tenant.settings.counting_window"]
    got = await tenants.GetTenant(
        pb.GetTenantRequest(tenant_id=tenant.id), metadata=bearer(tenant.owner_key)
    )
    assert got.tenant.settings.counting_window == pb.COUNTING_WINDOW_UTC_DAY


# --- 5. error details stay small enough for the gateway ----------------------------------


async def test_a_thousand_violations_come_back_capped_through_envoy(
    http: httpx.AsyncClient, gateway_channel: grpc.aio.Channel, tenant: TenantHandle
) -> None:
    catalog = catalog_pb2_grpc.CatalogServiceStub(gateway_channel)
    key = bearer(tenant.owner_key)
    podcast = await catalog.CreatePodcast(
        catalog_pb2.CreatePodcastRequest(podcast=catalog_pb2.Podcast(title="Capped")),
        metadata=key,
    )
    episode = await catalog.CreateEpisode(
        catalog_pb2.CreateEpisodeRequest(
            podcast_id=podcast.podcast.id,
            episode=catalog_pb2.Episode(
                title="One", media_url=f"https://cdn.example.com/{tenant.slug}/1.mp3"
            ),
        ),
        metadata=key,
    )

    # Every empty slot misses its position, insertion and duration.
    response = await http.patch(
        f"/api/v1/episodes/{episode.episode.id}",
        params={"updateMask": "adSlots"},
        json={"adSlots": [{}] * 1000},
        headers={"authorization": f"Bearer {tenant.owner_key}"},
    )

    assert response.status_code == 400, response.text[:500]
    assert len(response.content) < 8 * 1024
    violations = json_violations(response.json())
    assert len(violations) == 21
    assert violations[0]["field"].startswith("episode.ad_slots")
    assert violations[-1]["reason"] == "MORE_VIOLATIONS"
    assert re.fullmatch(r"\d+ more violations not shown", violations[-1]["description"])
    assert int(violations[-1]["description"].split()[0]) >= 1000


# --- 6. request ids ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("supplied", "kept"),
    [
        ("req-2024.05.01:abc_DEF", True),
        ("r" * 129, False),
        ("x" * 4000, False),
        ("<script>alert(1)</script>", False),
        ("id with spaces", False),
    ],
    ids=["safe", "too-long", "huge", "markup", "spaces"],
)
async def test_only_a_safe_client_request_id_reaches_the_audit_log(
    tenants: TenantStub, tenant: TenantHandle, supplied: str, kept: bool
) -> None:
    created = await tenants.CreateApiKey(
        pb.CreateApiKeyRequest(
            api_key=pb.ApiKey(display_name="audited", scopes=[pb.API_KEY_SCOPE_READ])
        ),
        metadata=(*bearer(tenant.owner_key), ("x-request-id", supplied)),
    )

    events = await tenants.ListAuditEvents(
        pb.ListAuditEventsRequest(page_size=50), metadata=bearer(tenant.owner_key)
    )
    (event,) = [e for e in events.audit_events if e.resource_id == created.api_key.id]
    if kept:
        assert event.request_id == supplied
    else:
        assert event.request_id != supplied
        assert re.fullmatch(r"[0-9a-f]{32}", event.request_id)


# --- 7. page tokens ---------------------------------------------------------------------


async def test_a_page_token_of_one_tenant_is_refused_for_another(
    tenants: TenantStub, tenant: TenantHandle, stack: Stack
) -> None:
    other = await create_tenant(tenants, stack.admin_token, "strict")
    for handle in (tenant, other):
        for _ in range(2):
            await create_user(tenants, handle.owner_key, pb.ROLE_VIEWER)
    first = await tenants.ListUsers(
        pb.ListUsersRequest(page_size=1), metadata=bearer(tenant.owner_key)
    )
    assert first.next_page_token

    error = await refused(
        tenants.ListUsers(
            pb.ListUsersRequest(page_size=1, page_token=first.next_page_token),
            metadata=bearer(other.owner_key),
        )
    )
    again = await tenants.ListUsers(
        pb.ListUsersRequest(page_size=1, page_token=first.next_page_token),
        metadata=bearer(tenant.owner_key),
    )

    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error) == ["page_token"]
    assert again.users
    assert again.users[0].id != first.users[0].id


# --- 8. time zones ----------------------------------------------------------------------


@pytest.mark.parametrize("zone", ["localtime", "posixrules", "Factory", "../UTC"])
async def test_a_name_that_is_no_iana_zone_is_refused_as_a_tenant_setting(
    tenants: TenantStub, tenant: TenantHandle, zone: str
) -> None:
    error = await refused(
        tenants.UpdateTenant(
            pb.UpdateTenantRequest(
                tenant=pb.Tenant(id=tenant.id, settings=pb.TenantSettings(time_zone=zone)),
                update_mask=FieldMask(paths=["settings.time_zone"]),
            ),
            metadata=bearer(tenant.owner_key),
        )
    )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error) == ["tenant.settings.time_zone"]


@pytest.mark.parametrize("zone", ["localtime", "posixrules", "Factory"])
async def test_a_name_that_is_no_iana_zone_is_refused_by_query_metrics(
    analytics: analytics_pb2_grpc.AnalyticsServiceAsyncStub, tenant: TenantHandle, zone: str
) -> None:
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start, stop = Timestamp(), Timestamp()
    start.FromDatetime(end - timedelta(days=2))
    stop.FromDatetime(end)

    error = await refused(
        analytics.QueryMetrics(
            analytics_pb2.QueryMetricsRequest(start_time=start, end_time=stop, time_zone=zone),
            metadata=bearer(tenant.owner_key),
        )
    )

    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error) == ["time_zone"]


async def test_a_real_zone_is_still_accepted(tenants: TenantStub, tenant: TenantHandle) -> None:
    updated = await tenants.UpdateTenant(
        pb.UpdateTenantRequest(
            tenant=pb.Tenant(id=tenant.id, settings=pb.TenantSettings(time_zone="Europe/Berlin")),
            update_mask=FieldMask(paths=["settings.time_zone"]),
        ),
        metadata=bearer(tenant.owner_key),
    )
    assert updated.tenant.settings.time_zone == "Europe/Berlin"


async def test_a_zone_saved_before_it_was_refused_reads_as_utc(
    analytics: analytics_pb2_grpc.AnalyticsServiceAsyncStub,
    tenant: TenantHandle,
    owner_conn: asyncpg.Connection,
) -> None:
    # As a tenant could have saved it before: analytics must not fail its reports.
    await owner_conn.execute(
        "UPDATE tenants SET time_zone = 'localtime', counting_window = 2 WHERE tenant_id = $1",
        uuid.UUID(tenant.id),
    )
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start, stop = Timestamp(), Timestamp()
    start.FromDatetime(end - timedelta(days=2))
    stop.FromDatetime(end)

    report = await analytics.QueryMetrics(
        analytics_pb2.QueryMetricsRequest(start_time=start, end_time=stop),
        metadata=bearer(tenant.owner_key),
    )

    assert report.methodology.counting_time_zone == "UTC"
