"""The throwaway PostgreSQL and Redis helpers, alone (no services)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from devstack.postgres import PostgresServer, with_credentials
from devstack.procs import free_ports, pid_alive
from devstack.redis import RedisServer


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found


def _owner_uid(path: Path) -> int:
    return path.stat().st_uid


def _uids(pid: int) -> list[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return [int(n) for n in line.split()[1:]]
    raise AssertionError(f"no Uid line for pid {pid}")


@pytest.fixture
def work_dir(session_dir: Path) -> Path:
    path = Path(tempfile.mkdtemp(prefix="helpers-", dir=session_dir))
    path.chmod(0o755)
    return path


@pytest_asyncio.fixture(loop_scope="session")
async def pg(work_dir: Path) -> AsyncIterator[PostgresServer]:
    (port,) = free_ports(1)
    server = PostgresServer(work_dir / "postgres", port, fast=True)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def rd(work_dir: Path) -> AsyncIterator[RedisServer]:
    (port,) = free_ports(1)
    server = RedisServer(work_dir / "redis", port)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_postgres_answers_on_loopback_with_a_password(pg: PostgresServer) -> None:
    conn = await asyncpg.connect(pg.owner_dsn)
    try:
        assert await conn.fetchval("SELECT 1") == 1
        assert await conn.fetchval("SELECT current_database()") == "podmesh"
        assert await conn.fetchval("SHOW listen_addresses") == "127.0.0.1"
        assert await conn.fetchval("SHOW fsync") == "off"
        assert await conn.fetchval("SHOW max_connections") == "200"
    finally:
        await conn.close()
    wrong = with_credentials(pg.owner_dsn, "podmesh", "not-the-password")
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(wrong)


async def test_postgres_does_not_run_as_root(pg: PostgresServer) -> None:
    conn = await asyncpg.connect(pg.owner_dsn)
    try:
        data_dir = Path(await conn.fetchval("SELECT current_setting('data_directory')"))
        # The backend exits with its connection: read its uids while it serves us.
        backend_uids = _uids(await conn.fetchval("SELECT pg_backend_pid()"))
    finally:
        await conn.close()
    assert data_dir == pg.data_dir
    assert _owner_uid(data_dir) != 0
    assert pg.pid is not None
    assert 0 not in _uids(pg.pid)
    assert 0 not in backend_uids


async def test_postgres_restart_and_stop(pg: PostgresServer) -> None:
    before = pg.pid
    conn = await asyncpg.connect(pg.owner_dsn)
    started = await conn.fetchval("SELECT pg_postmaster_start_time()")
    await conn.execute("CREATE TABLE survives (n int)")
    await conn.close()

    await pg.restart()

    assert pg.pid is not None
    assert pg.pid != before
    conn = await asyncpg.connect(pg.owner_dsn)
    try:
        assert await conn.fetchval("SELECT pg_postmaster_start_time()") > started
        assert await conn.fetchval("SELECT count(*) FROM survives") == 0
    finally:
        await conn.close()

    postmaster = pg.pid
    await pg.stop()
    assert pg.pid is None
    assert not pid_alive(postmaster)
    assert _processes_mentioning(str(pg.data_dir)) == []
    # stop() is idempotent, and start() after it reuses the cluster.
    await pg.stop()
    await pg.start()
    conn = await asyncpg.connect(pg.owner_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM survives") == 0
    finally:
        await conn.close()


async def _ping(url: str) -> bool:
    client = aioredis.from_url(url)
    try:
        return bool(await client.ping())
    finally:
        await client.aclose()


async def test_redis_ping_restart_and_stop(rd: RedisServer) -> None:
    assert await _ping(rd.url)
    before = rd.pid
    assert before is not None
    if os.geteuid() == 0:
        assert 0 not in _uids(before)

    await rd.restart()

    assert rd.pid is not None
    assert rd.pid != before
    assert await _ping(rd.url)

    pid = rd.pid
    assert pid is not None
    await rd.stop()
    assert rd.pid is None
    assert not pid_alive(pid)
    assert _processes_mentioning(f"127.0.0.1:{rd.port}") == []
    await rd.stop()


def test_with_credentials_keeps_server_and_database() -> None:
    dsn = "postgresql://owner:s3cret@db.example:5433/podmesh?sslmode=disable&user=x"
    assert (
        with_credentials(dsn, "podmesh_app", "p@ss/word")
        == "postgresql://podmesh_app:p%40ss%2Fword@db.example:5433/podmesh?sslmode=disable"
    )
