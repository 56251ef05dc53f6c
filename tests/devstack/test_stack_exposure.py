"""What the stack exposes: every process on loopback unless told, and Redis behind a
password (the "Trust" findings on `make run`)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import stat
import uuid
from pathlib import Path

import grpc
import httpx
import pytest
import redis.asyncio as aioredis
import redis.exceptions
from podmesh.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from podmesh.tenant.v1 import tenant_pb2_grpc

from devstack.__main__ import banner
from devstack.procs import StackError
from devstack.redis import ExternalRedis, RedisServer
from devstack.stack import SERVICES, PortPlan, Stack
from tests.support import bearer, create_tenant

_TCP_LISTEN = "0A"


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target.removeprefix("socket:[").removesuffix("]"))
    return inodes


def _address(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    # /proc/net/tcp* prints each 32-bit word in host (little-endian) order.
    address = ipaddress.ip_address(b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4)))
    # grpc binds 127.0.0.1 on a dual-stack socket: ::ffff:127.0.0.1.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def listening_addresses(pid: int) -> set[str]:
    """host:port of every TCP socket the process listens on (IPv4 and IPv6)."""
    inodes = _socket_inodes(pid)
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == _TCP_LISTEN and inode in inodes:
                host, port = local.split(":")
                found.add(f"{_address(host)}:{int(port, 16)}")
    return found


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def stack_pids(stack: Stack) -> dict[str, int]:
    pids: dict[str, int] = {}
    for name in (*SERVICES, "reflection", "envoy"):
        proc = stack.process(name)
        assert proc is not None, name
        pids[name] = proc.pid
    if isinstance(stack.redis, RedisServer):
        assert stack.redis.pid is not None
        pids["redis"] = stack.redis.pid
    postgres_pid = getattr(stack.postgres, "pid", None)
    if postgres_pid is not None:
        pids["postgres"] = postgres_pid
    return pids


async def test_every_process_of_the_stack_listens_on_loopback_only(stack: Stack) -> None:
    for name, pid in stack_pids(stack).items():
        addresses = listening_addresses(pid)
        assert addresses, f"{name} listens nowhere?"
        for address in addresses:
            host = address.rpartition(":")[0]
            assert ipaddress.ip_address(host).is_loopback, f"{name} listens on {address}"


async def test_the_gateway_listener_is_bound_to_loopback(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.envoy_admin_url) as client:
        listeners = (await client.get("/listeners", params={"format": "json"})).json()
    (listener,) = listeners["listener_statuses"]
    address = listener["local_address"]["socket_address"]
    assert (address["address"], address["port_value"]) == ("127.0.0.1", stack.ports.gateway)
    assert stack.gateway_listen == f"127.0.0.1:{stack.ports.gateway}"
    assert "loopback only" in banner(stack)


async def _render(tmp_path: Path, env: dict[str, str]) -> dict[str, object]:
    stack = Stack(tmp_path / "run", ports=PortPlan.free(), env=env)
    await stack._render_envoy_config()
    config: dict[str, object] = json.loads(stack.envoy_config_path.read_text())
    return config


def _listener_host(config: dict[str, object]) -> str:
    listener = config["static_resources"]["listeners"][0]  # type: ignore[index]
    return str(listener["address"]["socket_address"]["address"])


def _cors_origins(config: dict[str, object]) -> list[str]:
    listener = config["static_resources"]["listeners"][0]  # type: ignore[index]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    policy = hcm["route_config"]["virtual_hosts"][0]["typed_per_filter_config"][
        "envoy.filters.http.cors"
    ]
    return [matcher["exact"] for matcher in policy["allow_origin_string_match"]]


async def test_exposing_the_gateway_and_allowing_origins_are_explicit_settings(
    tmp_path: Path,
) -> None:
    quiet = {k: v for k, v in os.environ.items() if not k.startswith("PODMESH_")}
    default = await _render(tmp_path / "default", quiet)
    assert _listener_host(default) == "127.0.0.1"
    assert _cors_origins(default) == []

    exposed_env = {
        **quiet,
        "PODMESH_GATEWAY_BIND": "0.0.0.0",
        "PODMESH_CORS_ALLOWED_ORIGINS": "https://app.example.com, http://localhost:5173",
    }
    exposed = await _render(tmp_path / "exposed", exposed_env)
    assert _listener_host(exposed) == "0.0.0.0"
    assert _cors_origins(exposed) == ["https://app.example.com", "http://localhost:5173"]
    stack = Stack(tmp_path / "run", ports=PortPlan.free(), env=exposed_env)
    # Clients on this machine still connect over loopback.
    assert stack.gateway_addr == f"127.0.0.1:{stack.ports.gateway}"
    assert f"0.0.0.0:{stack.ports.gateway}" in banner(stack)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PODMESH_GATEWAY_BIND", "everywhere"),
        ("PODMESH_CORS_ALLOWED_ORIGINS", "*"),
        ("PODMESH_CORS_ALLOWED_ORIGINS", "https://*.example.com"),
        ("PODMESH_CORS_ALLOWED_ORIGINS", "https://app.example.com/"),
        ("PODMESH_CORS_ALLOWED_ORIGINS", "null"),
    ],
)
def test_bad_exposure_settings_are_refused(tmp_path: Path, name: str, value: str) -> None:
    with pytest.raises(StackError, match=name):
        Stack(tmp_path / "run", ports=PortPlan.free(), env={name: value})


# --- Redis ----------------------------------------------------------------------------


async def test_the_stacks_redis_refuses_unauthenticated_clients(stack: Stack) -> None:
    if isinstance(stack.redis, ExternalRedis):
        pytest.skip("REDIS_URL names a Redis this stack does not configure")
    anonymous = aioredis.from_url(f"redis://127.0.0.1:{stack.ports.redis}/0")
    try:
        with pytest.raises(redis.exceptions.AuthenticationError):
            await anonymous.ping()
    finally:
        await anonymous.aclose()
    password_file = stack.redis.password_file
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    assert password_file.read_text().strip() == stack.redis.password
    assert stack.redis.password not in banner(stack)
    # Not on a command line that every local user can read.
    redis_pid = stack.redis.pid
    assert redis_pid is not None
    assert stack.redis.password not in _cmdline(redis_pid)


async def test_services_authenticate_to_redis(stack: Stack) -> None:
    """Live counters come from Redis; without it (or refused by it) a watch says degraded."""
    async with grpc.aio.insecure_channel(stack.service_addr("tenant")) as channel:
        tenants = tenant_pb2_grpc.TenantServiceStub(channel)
        tenant = await create_tenant(tenants, stack.admin_token, "redis-auth")
    async with grpc.aio.insecure_channel(stack.service_addr("analytics")) as channel:
        call = analytics_pb2_grpc.AnalyticsServiceStub(channel).WatchMetrics(
            analytics_pb2.WatchMetricsRequest(podcast_id=str(uuid.uuid4())),
            metadata=bearer(tenant.owner_key),
        )
        try:

            async def served_from_redis() -> None:
                # A busy machine can make one Redis call time out; a refused AUTH never heals.
                while True:
                    update = await call.read()
                    assert isinstance(update, analytics_pb2.WatchMetricsResponse)
                    if not update.counters.degraded:
                        return

            await asyncio.wait_for(served_from_redis(), 20)
        finally:
            call.cancel()
    assert "NOAUTH" not in stack.log_path("analytics").read_text(errors="replace")


def test_redis_url_from_the_environment_is_used_as_given(tmp_path: Path) -> None:
    url = "redis://:secret@redis.example:6380/2"
    stack = Stack(tmp_path / "run", ports=PortPlan.free(), env={"REDIS_URL": url})
    assert isinstance(stack.redis, ExternalRedis)
    assert stack.redis_url == url
    assert stack.service_env("tenant")["REDIS_URL"] == url
