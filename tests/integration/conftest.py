"""Clients of the running stack, shared by the integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TypeAlias

import grpc
import httpx
import pytest
import redis.asyncio as aioredis
from podmesh.campaign.v1 import campaign_pb2_grpc
from podmesh.catalog.v1 import catalog_pb2_grpc
from podmesh.tenant.v1 import tenant_pb2_grpc

from devstack.stack import Stack
from services.shared.server import create_redis
from tests.catalog.support import FeedServer

CatalogStub: TypeAlias = "catalog_pb2_grpc.CatalogServiceAsyncStub"


@pytest.fixture(scope="session")
async def tenant_channel(stack: Stack) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(stack.service_addr("tenant")) as channel:
        yield channel


@pytest.fixture(scope="session")
async def gateway_channel(stack: Stack) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(stack.gateway_addr) as channel:
        yield channel


@pytest.fixture(scope="session")
def tenants(tenant_channel: grpc.aio.Channel) -> tenant_pb2_grpc.TenantServiceAsyncStub:
    """The tenant service, called directly on its own port."""
    return tenant_pb2_grpc.TenantServiceStub(tenant_channel)


@pytest.fixture(scope="session")
def gateway_tenants(gateway_channel: grpc.aio.Channel) -> tenant_pb2_grpc.TenantServiceAsyncStub:
    """The tenant service, called as gRPC through Envoy."""
    return tenant_pb2_grpc.TenantServiceStub(gateway_channel)


@pytest.fixture(scope="session")
async def http(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """JSON over HTTP/1.1 through Envoy, as a browser would call it."""
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=10) as client:
        yield client


@pytest.fixture
async def redis(stack: Stack) -> AsyncIterator[aioredis.Redis]:
    """The stack's Redis, with the client settings the services use."""
    client = create_redis(stack.redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(scope="session")
async def catalog(stack: Stack) -> AsyncIterator[CatalogStub]:
    """The catalog service, called directly on its own port."""
    async with grpc.aio.insecure_channel(stack.service_addr("catalog")) as channel:
        yield catalog_pb2_grpc.CatalogServiceStub(channel)


@pytest.fixture(scope="session")
def feeds() -> Iterator[FeedServer]:
    """A local HTTP server for feed fixtures (the catalog may fetch from loopback in tests)."""
    with FeedServer() as server:
        yield server


@pytest.fixture(scope="session")
async def campaigns(stack: Stack) -> AsyncIterator[campaign_pb2_grpc.CampaignServiceAsyncStub]:
    """The campaign service, called directly on its own port."""
    async with grpc.aio.insecure_channel(stack.service_addr("campaign")) as channel:
        yield campaign_pb2_grpc.CampaignServiceStub(channel)
