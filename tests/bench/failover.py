"""The production-posture issue's benchmarks: failover between two analytics replicas,
and the analytics server's memory while every batch fails.

failover_seconds: ingestion callers send batches through Envoy without pause; one of
two analytics replicas is SIGKILLed; the figure is the longest time any caller then
waits (from the kill) for a batch to succeed again, on the other replica.

analytics_rss_mb_failing: with the catalog down and the episode cache expired every
batch fails; the analytics server's peak RSS over FAIL_SECONDS of that, next to its
peak over as long a time of successful ingestion (analytics_rss_mb_success).

Starts its own platform (no supervisor: the killed replica stays dead).
BENCH_SCALE < 1 shortens the phases.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import grpc

from devstack.stack import GEN_DIR, ROOT, PortPlan, Stack, ensure_generated
from tests.bench import scale

# `make bench` runs this as a plain module: the generated code is not on the path yet.
ensure_generated()
sys.path.insert(0, str(GEN_DIR))

from podmesh.analytics.v1 import analytics_pb2 as pb  # noqa: E402
from podmesh.catalog.v1 import catalog_pb2_grpc  # noqa: E402
from podmesh.tenant.v1 import tenant_pb2_grpc  # noqa: E402

from tests.analytics_ingest_support import (  # noqa: E402
    EpisodeSpec,
    api_key,
    create_episodes,
    listener_traffic,
)
from tests.support import bearer, create_tenant  # noqa: E402

CALLERS = 4
BATCH = 250
POOL = 200
METHOD = "/podmesh.analytics.v1.AnalyticsService/IngestListenerEvents"
FAIL_SECONDS = 60.0
HOUR_US = 3_600_000_000
# Short, so that with the catalog down every batch misses the cache and fails.
EPISODE_CACHE_TTL_S = "1"


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for pid {pid}")


def batch_pool(episodes: Sequence[EpisodeSpec], seed: int) -> list[bytes]:
    """POOL batches, serialised ahead: the client's CPU must not be what is measured.
    Sent in a loop; a batch sent again is a successful call too (duplicates)."""
    traffic = listener_traffic(
        episodes,
        POOL * BATCH,
        start_us=time.time_ns() // 1000 - 2 * HOUR_US,
        span_us=HOUR_US,
        seed=seed,
    )
    records = list(itertools.islice(traffic, POOL * BATCH))
    return [
        pb.IngestListenerEventsRequest(requests=records[i : i + BATCH]).SerializeToString()
        for i in range(0, len(records), BATCH)
    ]


class Callers:
    """CALLERS loops each sending one batch after another, recording each outcome."""

    def __init__(self, channel: grpc.aio.Channel, key: str, pools: Sequence[list[bytes]]):
        self._call = channel.unary_unary(
            METHOD,
            request_serializer=None,
            response_deserializer=pb.IngestListenerEventsResponse.FromString,
        )
        self._key = key
        self._pools = pools
        self.stop = asyncio.Event()
        # Per caller: (monotonic time the call ended, succeeded).
        self.outcomes: list[list[tuple[float, bool]]] = [[] for _ in range(CALLERS)]

    async def run(self) -> None:
        await asyncio.gather(*(self._caller(index) for index in range(CALLERS)))

    async def _caller(self, index: int) -> None:
        for body in itertools.cycle(self._pools[index]):
            if self.stop.is_set():
                return
            try:
                await self._call(body, metadata=bearer(self._key), timeout=10)
                ok = True
            except grpc.aio.AioRpcError:
                ok = False
            self.outcomes[index].append((time.monotonic(), ok))
            if not ok:
                await asyncio.sleep(0.05)

    def failures(self, after: float = 0.0) -> int:
        return sum(1 for calls in self.outcomes for at, ok in calls if at >= after and not ok)

    def worst_wait_after(self, killed_at: float) -> float:
        """The longest any caller waited from killed_at for a batch to succeed."""
        waits = []
        for calls in self.outcomes:
            first = next((at for at, ok in calls if at >= killed_at and ok), None)
            if first is None:
                return float("inf")
            waits.append(first - killed_at)
        return max(waits)


async def peak_rss(pid: int, seconds: float, callers: Callers) -> int:
    """The highest VmRSS sampled every 100 ms while `callers` send for `seconds`."""
    peak = rss_kib(pid)
    running = asyncio.create_task(callers.run())
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        peak = max(peak, rss_kib(pid))
        await asyncio.sleep(0.1)
    callers.stop.set()
    await running
    return peak


async def setup(stack: Stack, gateway: grpc.aio.Channel) -> tuple[str, list[EpisodeSpec]]:
    async with grpc.aio.insecure_channel(stack.service_addr("tenant")) as tenant_channel:
        tenants = tenant_pb2_grpc.TenantServiceStub(tenant_channel)
        tenant = await create_tenant(tenants, stack.admin_token, "bench")
        key = await api_key(tenants, tenant.owner_key)
    episodes = await create_episodes(
        catalog_pb2_grpc.CatalogServiceStub(gateway), tenant.owner_key, 10, 10
    )
    return key, episodes


async def failover(
    stack: Stack, gateway: grpc.aio.Channel, key: str, pools: Sequence[list[bytes]]
) -> None:
    callers = Callers(gateway, key, pools)
    running = asyncio.create_task(callers.run())
    await asyncio.sleep(3.0)
    victim = stack.process("analytics")
    assert victim is not None
    killed_at = time.monotonic()
    os.kill(victim.pid, signal.SIGKILL)
    await asyncio.sleep(max(5.0, 10.0 * scale()))
    callers.stop.set()
    await running
    print(f"failed batches after the kill: {callers.failures(killed_at)}")
    print(f"failover_seconds: {callers.worst_wait_after(killed_at):.2f}")


async def memory(
    stack: Stack, gateway: grpc.aio.Channel, key: str, pools: Sequence[list[bytes]]
) -> None:
    seconds = max(10.0, FAIL_SECONDS * scale())
    process = stack.process("analytics-2")
    assert process is not None
    success = Callers(gateway, key, pools)
    success_kib = await peak_rss(process.pid, seconds, success)
    print(f"successful batches: {sum(ok for c in success.outcomes for _, ok in c)}")
    print(f"analytics_rss_mb_success: {success_kib / 1024:.0f}")

    await stack.kill_service("catalog")
    # Past the episode cache's lifetime: from here every batch needs the catalog.
    await asyncio.sleep(float(EPISODE_CACHE_TTL_S) + 1.0)
    failing = Callers(gateway, key, pools)
    failing_kib = await peak_rss(process.pid, seconds, failing)
    succeeded = sum(ok for c in failing.outcomes for _, ok in c)
    print(f"failing batches: {failing.failures()} (succeeded: {succeeded})")
    print(f"analytics_rss_mb_failing: {failing_kib / 1024:.0f}")
    print(f"analytics_rss_failing_vs_success_ratio: {failing_kib / success_kib:.2f}")


async def main() -> None:
    run_dir = ROOT / ".run" / f"bench-failover-{os.getpid()}"
    shutil.rmtree(run_dir, ignore_errors=True)
    async with Stack(
        run_dir,
        ports=PortPlan.free({"analytics": 2}),
        fast_postgres=True,
        service_env_extra={"PODMESH_EPISODE_CACHE_TTL_S": EPISODE_CACHE_TTL_S},
    ) as stack:
        async with grpc.aio.insecure_channel(stack.gateway_addr) as gateway:
            key, episodes = await setup(stack, gateway)
            pools = [batch_pool(episodes, seed) for seed in range(CALLERS)]
            await failover(stack, gateway, key, pools)
        # One replica from here: its memory is the one measured.
        async with grpc.aio.insecure_channel(stack.gateway_addr) as gateway:
            await memory(stack, gateway, key, pools)
    shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
