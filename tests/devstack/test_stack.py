"""The whole platform as the `stack` fixture brings it up."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import asyncpg
import httpx
import redis.asyncio as aioredis

from devstack.stack import SERVICES, Stack, grpc_serving


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.decode().partition("=") for item in raw.split(b"\0") if item)
    return {key: value for key, _, value in pairs}


async def test_every_process_is_healthy(stack: Stack) -> None:
    for name in SERVICES:
        assert await grpc_serving(stack.service_addr(name)), name
    assert await grpc_serving(stack.reflection_addr)
    async with httpx.AsyncClient(base_url=stack.envoy_admin_url) as client:
        assert (await client.get("/ready")).status_code == 200


async def test_services_get_their_configuration_from_the_environment(stack: Stack) -> None:
    proc = stack.process("campaign")
    assert proc is not None
    env = _environ(proc.pid)
    assert env["PODMESH_GRPC_HOST"] == "127.0.0.1"
    assert env["PODMESH_GRPC_PORT"] == str(stack.ports.grpc["campaign"])
    assert env["PODMESH_METRICS_PORT"] == str(stack.ports.metrics["campaign"])
    assert env["DATABASE_URL"] == stack.app_dsn
    assert env["REDIS_URL"] == stack.redis_url
    assert env["PODMESH_ADMIN_TOKEN"] == stack.admin_token
    for peer in SERVICES:
        assert env[f"PODMESH_{peer.upper()}_ADDR"] == stack.service_addr(peer)
    for secret in ("PODMESH_JWT_SECRET", "PODMESH_IP_HASH_SECRET"):
        assert len(env[secret]) >= 32


async def test_admin_token_file_is_private(stack: Stack) -> None:
    if not stack.secrets.admin_token_generated:
        assert not stack.admin_token_file.exists()
        return
    assert stack.admin_token_file.read_text().strip() == stack.admin_token
    assert stat.S_IMODE(stack.admin_token_file.stat().st_mode) == 0o600


async def test_services_log_in_as_the_unprivileged_app_role(stack: Stack) -> None:
    conn = await asyncpg.connect(stack.app_dsn)
    try:
        row = await conn.fetchrow(
            "SELECT current_user AS name, rolsuper, rolbypassrls"
            " FROM pg_roles WHERE rolname = current_user"
        )
    finally:
        await conn.close()
    assert row is not None
    assert row["name"] == "podmesh_app"
    assert row["rolsuper"] is False
    assert row["rolbypassrls"] is False


async def test_owner_connection_and_redis(stack: Stack, owner_conn: asyncpg.Connection) -> None:
    versions = await owner_conn.fetchval("SELECT count(*) FROM schema_migrations")
    assert versions >= 1
    client = aioredis.from_url(stack.redis_url)
    try:
        assert await client.ping() is True
    finally:
        await client.aclose()


async def test_a_killed_service_comes_back(stack: Stack) -> None:
    before = stack.process("catalog")
    assert before is not None
    assert await stack.kill_service("catalog") == -9
    assert not await grpc_serving(stack.service_addr("catalog"))

    await stack.start_service("catalog")

    after = stack.process("catalog")
    assert after is not None
    assert after.pid != before.pid
    assert await grpc_serving(stack.service_addr("catalog"))


async def test_sigterm_stops_a_service_cleanly(stack: Stack) -> None:
    assert await stack.stop_service("analytics") == 0
    assert stack.process("analytics") is None
    await stack.start_service("analytics")
    assert await grpc_serving(stack.service_addr("analytics"))


def test_services_are_out_of_reach_of_a_terminal_ctrl_c(stack: Stack) -> None:
    proc = stack.process("tenant")
    assert proc is not None
    assert os.getsid(proc.pid) == proc.pid
