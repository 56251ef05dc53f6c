"""What the gateway answers itself, through the stack's Envoy: errors as google.rpc.Status
JSON for JSON clients and as gRPC status for gRPC clients, CORS for allowed origins only,
and no request refused upstream for the size of its URL or headers."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
import pytest
from podmesh.tenant.v1 import tenant_pb2_grpc

from devstack.stack import Stack
from gateway.envoy_config import (
    DEFAULT_MAX_GRPC_UNARY_REQUEST_BYTES,
    DEFAULT_MAX_REQUEST_BODY_BYTES,
    DEFAULT_MAX_REQUEST_HEADERS_KB,
)
from tests.conftest import TEST_CORS_ORIGIN
from tests.support import TenantHandle, create_tenant

ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
OTHER_ORIGIN = "https://elsewhere.example"
CODE = {status: status.value[0] for status in grpc.StatusCode}


@pytest.fixture
async def tenant(tenants: tenant_pb2_grpc.TenantServiceAsyncStub, stack: Stack) -> TenantHandle:
    return await create_tenant(tenants, stack.admin_token, "gw-trust")


def raw_call(
    channel: grpc.aio.Channel, method: str
) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
    """A unary call that sends and receives bytes as they are."""
    return channel.unary_unary(method, request_serializer=None, response_deserializer=None)


def auth(tenant: TenantHandle) -> dict[str, str]:
    return {"authorization": f"Bearer {tenant.owner_key}"}


def assert_status_json(response: httpx.Response, status: int, code: grpc.StatusCode) -> str:
    """The response is a google.rpc.Status as JSON; returns its ErrorInfo reason."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json", response.headers
    body: dict[str, Any] = json.loads(response.content)
    assert body["code"] == CODE[code], body
    assert isinstance(body["message"], str), body
    assert body["message"], body
    (info,) = [d for d in body["details"] if d["@type"] == ERROR_INFO]
    assert info["domain"] == "podmesh.dev"
    assert info["reason"].isupper()
    return str(info["reason"])


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    path: str
    status: int
    code: grpc.StatusCode
    reason: str
    body: bytes | None = None
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


NO_PODCAST = "00000000-0000-4000-8000-000000000000"
CASES = [
    # The strict-JSON filter reads the body before the transcoder does, so it names it.
    Case(
        "malformed JSON",
        "POST",
        "/api/v1/podcasts",
        400,
        grpc.StatusCode.INVALID_ARGUMENT,
        "MALFORMED_JSON",
        body=b'{"podcast": {"title": ',
    ),
    Case(
        "enum without its prefix",
        "POST",
        "/api/v1/podcasts",
        400,
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
        body=b'{"podcast": {"title": "T", "podcastType": "EPISODIC"}}',
    ),
    Case(
        "malformed timestamp",
        "POST",
        f"/api/v1/podcasts/{NO_PODCAST}/episodes",
        400,
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
        body=b'{"episode": {"title": "E", "publishTime": "yesterday"}}',
    ),
    Case(
        "unknown query parameter",
        "GET",
        "/api/v1/podcasts",
        400,
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
        params={"noSuchParameter": "1"},
    ),
    Case(
        "unknown path",
        "GET",
        "/api/v1/nothingHere",
        404,
        grpc.StatusCode.NOT_FOUND,
        "METHOD_NOT_FOUND",
    ),
    Case(
        "unknown verb",
        "PUT",
        "/api/v1/podcasts",
        404,
        grpc.StatusCode.NOT_FOUND,
        "METHOD_NOT_FOUND",
        body=b"{}",
    ),
    Case(
        "body over the limit",
        "POST",
        "/api/v1/podcasts",
        413,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "REQUEST_TOO_LARGE",
        body=b'{"podcast": {"title": "' + b"x" * DEFAULT_MAX_REQUEST_BODY_BYTES + b'"}}',
    ),
    Case(
        "headers over the limit",
        "GET",
        "/api/v1/podcasts",
        431,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "REQUEST_HEADERS_TOO_LARGE",
        headers={"x-padding": "p" * (DEFAULT_MAX_REQUEST_HEADERS_KB * 1024)},
    ),
    # Reaches the service, whose own check answers: the gateway forwards a long URL's
    # parameters in the body, never as a header the service would refuse.
    Case(
        "a 20 KB page token",
        "GET",
        "/api/v1/podcasts",
        400,
        grpc.StatusCode.INVALID_ARGUMENT,
        "",
        params={"pageToken": "A" * 20_000},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_gateway_errors_are_status_json(
    http: httpx.AsyncClient, tenant: TenantHandle, case: Case
) -> None:
    headers = {**auth(tenant), **case.headers}
    if case.body is not None:
        headers["content-type"] = "application/json"
    response = await http.request(
        case.method, case.path, content=case.body, params=case.params, headers=headers
    )
    reason = assert_status_json(response, case.status, case.code)
    if case.reason:
        assert reason == case.reason


async def test_large_headers_within_the_gateway_limit_reach_the_service(
    http: httpx.AsyncClient, tenant: TenantHandle
) -> None:
    # Over grpc's default metadata limit (8 KiB, 16 KiB at most), under the gateway's.
    padding = {"x-padding": "p" * 20_000}
    response = await http.get("/api/v1/podcasts", headers={**auth(tenant), **padding})
    assert response.status_code == 200, response.text


async def test_batch_get_takes_200_ids_in_a_post_body(
    http: httpx.AsyncClient, tenant: TenantHandle
) -> None:
    podcast = (
        await http.post(
            "/api/v1/podcasts", json={"podcast": {"title": "Batch"}}, headers=auth(tenant)
        )
    ).json()["podcast"]
    episode = (
        await http.post(
            f"/api/v1/podcasts/{podcast['id']}/episodes",
            json={"episode": {"title": "One", "mediaUrl": f"https://cdn.example/{uuid.uuid4()}"}},
            headers=auth(tenant),
        )
    ).json()["episode"]
    ids = [str(uuid.uuid4()) for _ in range(199)] + [episode["id"]]
    response = await http.post(
        "/api/v1/episodes:batchGet", json={"episodeIds": ids}, headers=auth(tenant)
    )
    assert response.status_code == 200, response.text
    assert [e["id"] for e in response.json()["episodes"]] == [episode["id"]]
    # The same ids as a query string, about 10 KB of URL, are not refused either.
    response = await http.get(
        "/api/v1/episodes:batchGet", params={"episodeIds": ids}, headers=auth(tenant)
    )
    assert response.status_code == 200, response.text
    assert [e["id"] for e in response.json()["episodes"]] == [episode["id"]]


async def test_an_unavailable_service_is_status_json_and_grpc_status(
    stack: Stack, http: httpx.AsyncClient, tenant: TenantHandle
) -> None:
    await stack.stop_service("campaign")
    try:
        response = await http.get("/api/v1/campaigns", headers=auth(tenant))
        assert assert_status_json(response, 503, grpc.StatusCode.UNAVAILABLE) == (
            "SERVICE_UNAVAILABLE"
        )
        # Envoy's own text names upstream hosts and socket errors.
        assert "upstream" not in response.text
        async with grpc.aio.insecure_channel(stack.gateway_addr) as channel:
            call = raw_call(channel, "/podmesh.campaign.v1.CampaignService/ListCampaigns")
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await call(b"", metadata=tuple(auth(tenant).items()), timeout=10)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        # gRPC clients keep Envoy's plain message, not the JSON meant for JSON clients.
        assert not (error.value.details() or "").startswith("{")
    finally:
        await stack.start_service("campaign")


async def test_grpc_clients_keep_grpc_status_from_the_gateway(stack: Stack) -> None:
    async with grpc.aio.insecure_channel(stack.gateway_addr) as channel:
        unknown = raw_call(channel, "/podmesh.nothing.v1.NothingService/Nothing")
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await unknown(b"", timeout=10)
        assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED

        # Unary gRPC requests are capped at the edge, before any service reads them.
        import_feed = raw_call(channel, "/podmesh.catalog.v1.CatalogService/ImportFeed")
        oversized = b"\x12" + b"x" * DEFAULT_MAX_GRPC_UNARY_REQUEST_BYTES
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await import_feed(oversized, timeout=30)
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


# --- CORS -------------------------------------------------------------------------------


def cors_headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.startswith("access-control-")}


async def preflight(http: httpx.AsyncClient, origin: str) -> httpx.Response:
    return await http.options(
        "/api/v1/podcasts",
        headers={
            "origin": origin,
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type",
        },
    )


async def test_cors_preflight_from_an_allowed_origin(http: httpx.AsyncClient) -> None:
    response = await preflight(http, TEST_CORS_ORIGIN)
    assert response.status_code == 200
    headers = cors_headers(response)
    assert headers["access-control-allow-origin"] == TEST_CORS_ORIGIN
    assert "authorization" in headers["access-control-allow-headers"]


@pytest.mark.parametrize(
    "origin", [OTHER_ORIGIN, "null", TEST_CORS_ORIGIN.upper(), TEST_CORS_ORIGIN + ".evil.example"]
)
async def test_cors_gives_other_origins_nothing(
    http: httpx.AsyncClient, tenant: TenantHandle, origin: str
) -> None:
    assert cors_headers(await preflight(http, origin)) == {}
    simple = await http.get("/api/v1/podcasts", headers={**auth(tenant), "origin": origin})
    assert simple.status_code == 200
    assert cors_headers(simple) == {}


async def test_cors_simple_request_from_an_allowed_origin(
    http: httpx.AsyncClient, tenant: TenantHandle
) -> None:
    response = await http.get(
        "/api/v1/podcasts", headers={**auth(tenant), "origin": TEST_CORS_ORIGIN}
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == TEST_CORS_ORIGIN
    assert "grpc-status" in response.headers["access-control-expose-headers"]
