"""Production posture: a supervised stack with two analytics and two catalog replicas.

Its own Stack (not the session's): parts are killed here, and the session's other
tests must not see that. Each part killed comes back by itself; with two replicas,
killing one costs idempotent callers nothing and ingestion loses and double-counts
nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import grpc
import httpx
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from podmesh.analytics.v1 import analytics_pb2 as pb
from podmesh.analytics.v1 import analytics_pb2_grpc
from podmesh.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from podmesh.tenant.v1 import tenant_pb2_grpc

from devstack.redis import RedisServer, ping
from devstack.stack import PortPlan, Stack, grpc_serving
from tests.analytics_ingest_support import (
    HOUR_US,
    IngestTenant,
    ResendingClient,
    Totals,
    batches,
    counted,
    expected_counts,
    expected_tables,
    ingest_tenant,
    listener_traffic,
    now_us,
)
from tests.support import bearer

REPLICAS = {"analytics": 2, "catalog": 2}
# Generous: the machine is shared; these bound a hang, they measure nothing.
COME_BACK_S = 120.0


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def supervised(session_dir: Path) -> AsyncIterator[Stack]:
    run_dir = session_dir / "supervised"
    shutil.rmtree(run_dir, ignore_errors=True)
    stack = Stack(run_dir, ports=PortPlan.free(REPLICAS), fast_postgres=True, env=dict(os.environ))
    async with stack:
        stack.supervise()
        yield stack


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def channel(supervised: Stack) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(supervised.gateway_addr) as gateway:
        yield gateway


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def seeded(supervised: Stack, channel: grpc.aio.Channel) -> IngestTenant:
    async with grpc.aio.insecure_channel(supervised.service_addr("tenant")) as direct:
        return await ingest_tenant(supervised, tenant_pb2_grpc.TenantServiceStub(direct), channel)


async def eventually(probe: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + COME_BACK_S
    while not await probe():
        assert time.monotonic() < deadline, f"{what} within {COME_BACK_S:.0f}s"
        await asyncio.sleep(0.2)


class LightLoad:
    """A caller listing tenants through the gateway every 50 ms, counting outcomes."""

    def __init__(self, stack: Stack) -> None:
        self._stack = stack
        self.ok = 0
        self.failed = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LightLoad:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        headers = {"authorization": f"Bearer {self._stack.admin_token}"}
        async with httpx.AsyncClient(base_url=self._stack.gateway_url, timeout=5.0) as client:
            while True:
                try:
                    reply = await client.get("/api/v1/tenants", headers=headers)
                    ok = reply.status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.ok += ok
                self.failed += not ok
                await asyncio.sleep(0.05)


async def tenants_listed(stack: Stack) -> bool:
    headers = {"authorization": f"Bearer {stack.admin_token}"}
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=5.0) as client:
        try:
            return (await client.get("/api/v1/tenants", headers=headers)).status_code == 200
        except httpx.HTTPError:
            return False


def _pid_of(stack: Stack, part: str) -> int:
    if part == "redis":
        assert isinstance(stack.redis, RedisServer)
        assert stack.redis.pid is not None
        return stack.redis.pid
    if part == "postgres":
        pid = stack.postgres.pid if hasattr(stack.postgres, "pid") else None
        assert isinstance(pid, int)
        return pid
    proc = stack.process(part)
    assert proc is not None, f"{part} is not running"
    return proc.pid


async def _serving(stack: Stack, part: str) -> bool:
    if part == "redis":
        assert isinstance(stack.redis, RedisServer)
        return await ping(stack.redis.host, stack.redis.port, password=stack.redis.password)
    if part == "postgres":
        try:
            conn = await asyncpg.connect(stack.owner_dsn, timeout=2)
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return False
        await conn.close()
        return True
    if part == "envoy":
        async with httpx.AsyncClient(base_url=stack.envoy_admin_url, timeout=2.0) as client:
            try:
                return (await client.get("/ready")).status_code == 200
            except httpx.HTTPError:
                return False
    address = stack.reflection_addr if part == "reflection" else stack.service_addr(part)
    return await grpc_serving(address)


async def test_replicas_run_the_analytics_upkeep_once(supervised: Stack) -> None:
    # First in this module: later tests kill Redis, which forgets the lease.
    def runs() -> int:
        return sum(
            supervised.log_path(name).read_text().count("ingestion upkeep")
            for name in supervised.replicas("analytics")
        )

    async def ran() -> bool:
        return runs() > 0

    await eventually(ran, "the upkeep ran")
    # Both replicas started their upkeep loop with the platform; one holds the lease.
    await asyncio.sleep(2.0)
    assert runs() == 1


PARTS = [
    "tenant", "catalog", "catalog-2", "campaign", "attribution", "analytics", "analytics-2",
    "reflection", "envoy", "redis", "postgres",
]  # fmt: skip


@pytest.mark.parametrize("part", PARTS)
async def test_a_killed_part_comes_back_by_itself(
    supervised: Stack, part: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="devstack.supervise")
    old_pid = _pid_of(supervised, part)
    async with LightLoad(supervised) as load:
        os.kill(old_pid, signal.SIGKILL)
        await eventually(
            lambda: _new_and_serving(supervised, part, old_pid), f"{part} restarted and serving"
        )
        # Everything that depended on the part (pools, channels, Envoy's view) recovers too.
        await eventually(lambda: tenants_listed(supervised), "the gateway answers again")
        await supervised.wait_gateway_sees(supervised.service_children)
    assert load.ok > 0
    died = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"{part} died")]
    assert died, caplog.text
    if part != "postgres":
        # PostgreSQL is pg_ctl's child, not ours: its exit status is not ours to read.
        assert "killed by SIGKILL" in died[0]


async def _new_and_serving(stack: Stack, part: str, old_pid: int) -> bool:
    try:
        pid = _pid_of(stack, part)
    except AssertionError:
        return False
    return pid != old_pid and await _serving(stack, part)


# --- replicas -------------------------------------------------------------------------


async def test_replicas_are_endpoints_of_one_envoy_cluster(supervised: Stack) -> None:
    async with httpx.AsyncClient(base_url=supervised.envoy_admin_url, timeout=5.0) as client:
        clusters = (await client.get("/clusters", params={"format": "json"})).json()
    ports = {
        cluster["name"]: {
            host["address"]["socket_address"]["port_value"]
            for host in cluster.get("host_statuses", [])
        }
        for cluster in clusters["cluster_statuses"]
    }
    for service, count in REPLICAS.items():
        expected = {supervised.ports.grpc_port(service, n) for n in range(1, count + 1)}
        assert ports[service] == expected
    assert len(ports["tenant"]) == 1


async def _idempotent_calls(
    channel: grpc.aio.Channel, key: str, stop: asyncio.Event
) -> tuple[int, list[grpc.StatusCode]]:
    """Reads from both replicated services until stopped; returns (calls, failures)."""
    analytics = analytics_pb2_grpc.AnalyticsServiceStub(channel)
    catalog = catalog_pb2_grpc.CatalogServiceStub(channel)
    calls = 0
    failures: list[grpc.StatusCode] = []
    while not stop.is_set():
        try:
            await analytics.GetCountingSettings(
                pb.GetCountingSettingsRequest(), metadata=bearer(key), timeout=10
            )
            await catalog.ListPodcasts(
                catalog_pb2.ListPodcastsRequest(page_size=5), metadata=bearer(key), timeout=10
            )
        except grpc.aio.AioRpcError as error:
            failures.append(error.code())
        calls += 2
        await asyncio.sleep(0.01)
    return calls, failures


@pytest.mark.parametrize("replica", ["analytics-2", "catalog"])
async def test_killing_one_replica_costs_idempotent_callers_nothing(
    supervised: Stack, seeded: IngestTenant, channel: grpc.aio.Channel, replica: str
) -> None:
    # Both replicas in rotation first: with one already out, losing the other is an outage.
    await supervised.wait_gateway_sees(supervised.service_children)
    stop = asyncio.Event()
    reading = asyncio.create_task(_idempotent_calls(channel, seeded.tenant.owner_key, stop))
    await asyncio.sleep(1.0)
    os.kill(_pid_of(supervised, replica), signal.SIGKILL)
    await asyncio.sleep(3.0)
    stop.set()
    calls, failures = await reading
    assert calls > 0
    assert failures == []
    await eventually(lambda: _serving(supervised, replica), f"{replica} back")


async def test_ingestion_moves_to_the_other_replica_and_counts_exactly(
    supervised: Stack, seeded: IngestTenant, channel: grpc.aio.Channel
) -> None:
    records = list(
        listener_traffic(seeded.episodes, 20_000, start_us=now_us() - 3 * HOUR_US, span_us=HOUR_US)
    )
    reached = asyncio.Event()

    def on_ack(totals: Totals) -> None:
        if totals.accepted + totals.duplicates >= 4000:
            reached.set()

    await supervised.wait_gateway_sees(supervised.service_children)
    client = ResendingClient(channel, seeded.ingest_key, max_reconnects=300, on_ack=on_ack)
    sending = asyncio.create_task(client.send(batches(records, 500)))
    await reached.wait()
    os.kill(_pid_of(supervised, "analytics"), signal.SIGKILL)
    totals = await sending

    assert totals.rejected == 0
    assert totals.accepted + totals.duplicates == len(records)
    expected = expected_counts(
        records, seeded.episodes, supervised.secrets.ip_hash_secret, seeded.tenant.id
    )
    conn = await asyncpg.connect(supervised.owner_dsn)
    try:
        assert await counted(conn, seeded.tenant.id) == expected_tables(expected, len(records))
    finally:
        await conn.close()


# --- degraded modes (last: supervision is paused while Redis and PostgreSQL stay down) ---


def _sample(exposition: str, series: str) -> float | None:
    for line in exposition.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


async def _metric(stack: Stack, name: str, series: str) -> float | None:
    async with httpx.AsyncClient(timeout=5.0) as client:
        try:
            return _sample((await client.get(stack.metrics_url(name))).text, series)
        except httpx.HTTPError:
            return None


async def _health(address: str) -> int | None:
    async with grpc.aio.insecure_channel(address) as direct:
        try:
            reply = await health_pb2_grpc.HealthStub(direct).Check(
                health_pb2.HealthCheckRequest(), timeout=2
            )
        except grpc.aio.AioRpcError:
            return None
        return int(reply.status)


def _lines(stack: Stack, names: list[str], text: str) -> int:
    return sum(stack.log_path(name).read_text().count(text) for name in names)


async def test_redis_down_is_a_degraded_mode_logged_once(
    supervised: Stack, seeded: IngestTenant, channel: grpc.aio.Channel
) -> None:
    replicas = supervised.replicas("analytics")
    before = _lines(supervised, replicas, "live counters not updated")
    down_before = _lines(supervised, replicas, '"dependency down"')
    await supervised.stop_supervising()
    await supervised.redis.stop()
    try:
        series = 'podmesh_degraded{service="analytics"}'
        for name in replicas:

            async def degraded(name: str = name) -> bool:
                return await _metric(supervised, name, series) == 1.0

            await eventually(degraded, f"{name} reports itself degraded")
        records = list(
            listener_traffic(seeded.episodes, 2000, start_us=now_us() - HOUR_US, span_us=HOUR_US)
        )
        totals = await ResendingClient(channel, seeded.ingest_key).send(batches(records, 100))
        assert totals.accepted + totals.duplicates == len(records)
        up = 'podmesh_dependency_up{dependency="redis",service="analytics"}'
        assert await _metric(supervised, replicas[0], up) == 0.0
        # Still serving: Redis only degrades a feature.
        assert await _health(supervised.service_addr("analytics")) == 1
    finally:
        await supervised.redis.start()
        supervised.supervise()
    # 20 batches while Redis was down: one line per process and outage, not per batch.
    assert 1 <= _lines(supervised, replicas, "live counters not updated") - before <= 2
    assert _lines(supervised, replicas, '"dependency down"') - down_before == len(replicas)


async def test_without_postgresql_a_service_is_not_serving(supervised: Stack) -> None:
    address = supervised.service_addr("tenant")
    await supervised.stop_supervising()
    await supervised.postgres.stop()
    try:
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING

        async def refuses() -> bool:
            return await _health(address) == int(not_serving)

        await eventually(refuses, "tenant says NOT_SERVING")
    finally:
        await supervised.postgres.start()
        supervised.supervise()

    async def serves() -> bool:
        return await _health(address) == int(health_pb2.HealthCheckResponse.SERVING)

    await eventually(serves, "tenant serving again")
