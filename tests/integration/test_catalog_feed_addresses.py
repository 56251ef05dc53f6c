"""ImportFeed with the production address policy: feeds on private addresses,
in any IPv6 disguise, are refused without saying what a name resolves to."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO, TypeAlias

import grpc
import pytest
from podmesh.catalog.v1 import catalog_pb2 as pb
from podmesh.catalog.v1 import catalog_pb2_grpc
from podmesh.tenant.v1 import tenant_pb2_grpc

from devstack.procs import free_ports, terminate
from devstack.stack import Stack, grpc_serving
from tests.catalog.support import FeedServer
from tests.support import (
    TenantHandle,
    bearer,
    create_tenant,
    error_info,
    rich_status,
    violated_fields,
)

Stub: TypeAlias = "catalog_pb2_grpc.CatalogServiceAsyncStub"


@pytest.fixture
async def tenant(tenants: tenant_pb2_grpc.TenantServiceAsyncStub, stack: Stack) -> TenantHandle:
    return await create_tenant(tenants, stack.admin_token, "trust")


@pytest.fixture(scope="module")
async def strict_catalog(stack: Stack, session_dir: Path) -> AsyncIterator[Stub]:
    """A second catalog process on the same database, with private addresses
    refused as in production (the stack's own catalog allows them, for the
    loopback feed server the other tests use)."""
    grpc_port, metrics_port = free_ports(2)
    env = stack.service_env("catalog")
    env.update(
        {
            "PODMESH_GRPC_PORT": str(grpc_port),
            "PODMESH_METRICS_PORT": str(metrics_port),
            "PODMESH_FEED_ALLOW_PRIVATE_ADDRESSES": "false",
        }
    )
    address = f"127.0.0.1:{grpc_port}"
    with (session_dir / "strict-catalog.log").open("wb") as log:
        process = _spawn([sys.executable, "-m", "services.catalog"], env, log)
        try:
            for _ in range(300):
                if await grpc_serving(address):
                    break
                assert process.poll() is None, "the strict catalog exited"
                await asyncio.sleep(0.1)
            async with grpc.aio.insecure_channel(address) as channel:
                yield catalog_pb2_grpc.CatalogServiceStub(channel)
        finally:
            await terminate(process)


def _spawn(argv: list[str], env: dict[str, str], log: BinaryIO) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, env=env, stdout=log, stderr=log)


@pytest.mark.parametrize(
    "host",
    [
        "[64:ff9b::a9fe:a9fe]",  # NAT64 of the cloud metadata address
        "[2002:7f00:1::1]",  # 6to4 of 127.0.0.1
        "[::7f00:1]",  # IPv4-compatible 127.0.0.1
        "[::ffff:169.254.169.254]",
        "[fec0::1]",  # site-local
        "[2001:0:4136:e378:8000:63bf:80ff:fffe]",  # Teredo, client 127.0.0.1
        "localhost",
    ],
)
async def test_import_refuses_feeds_on_private_addresses_in_any_form(
    strict_catalog: Stub, feeds: FeedServer, tenant: TenantHandle, host: str
) -> None:
    port = feeds.base_url.rsplit(":", 1)[1]
    path = f"/{tenant.slug}/private.xml"
    feeds.serve_fixture(path, "apple.xml")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await strict_catalog.ImportFeed(
            pb.ImportFeedRequest(feed_url=f"http://{host}:{port}{path}"),
            metadata=bearer(tenant.owner_key),
        )
    error = raised.value
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(error).reason == "FEED_ADDRESS_NOT_ALLOWED"
    assert violated_fields(error) == ["feed_url"]
    # What the host resolves to stays unsaid.
    said = rich_status(error).message
    assert "the feed's host is not a public address" in said
    for address in ("127.0.0.1", "::1", "169.254"):
        assert address not in said
    assert feeds.hits[path] == 0
