"""What a service depends on, watched: PostgreSQL, Redis and the peers it calls.

Probed every few seconds, not per request: a transition (down, back up) is logged
once and counted, and gauges say the current state. PostgreSQL holds every service's
data, so without it a service cannot do its job and says NOT_SERVING (Envoy then
stops routing to it); without Redis or a peer it still serves what it can, degraded,
and says so in `podmesh_degraded`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping

import redis.asyncio as aioredis
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import Counter, Gauge

from services.shared.db import Database

log = logging.getLogger("podmesh.dependencies")

DEPENDENCY_UP = Gauge(
    "podmesh_dependency_up",
    "1 while a dependency answers its probe, 0 while it does not",
    ["service", "dependency"],
)
DEPENDENCY_TRANSITIONS = Counter(
    "podmesh_dependency_transitions_total",
    "A dependency going down or coming back",
    ["service", "dependency", "state"],
)
DEGRADED = Gauge(
    "podmesh_degraded",
    "1 while the service serves without an optional dependency (Redis, a peer)",
    ["service"],
)

PROBE_INTERVAL_S = 2.0
PROBE_TIMEOUT_S = 1.0
REQUIRED = "postgres"

Probe = Callable[[], Awaitable[object]]
OnRequired = Callable[[bool], Awaitable[None]]


def standard_probes(
    db: Database, redis: aioredis.Redis, channels: Mapping[str, aio.Channel]
) -> dict[str, Probe]:
    """PostgreSQL, Redis, and every peer channel the service has opened so far."""

    async def postgres() -> object:
        async with db.pool.acquire(timeout=PROBE_TIMEOUT_S) as conn:
            return await conn.fetchval("SELECT 1", timeout=PROBE_TIMEOUT_S)

    async def redis_ping() -> object:
        return await redis.ping()

    probes: dict[str, Probe] = {"postgres": postgres, "redis": redis_ping}
    for peer, channel in channels.items():
        probes[peer] = _peer_probe(channel)
    return probes


def _peer_probe(channel: aio.Channel) -> Probe:
    stub = health_pb2_grpc.HealthStub(channel)

    async def check() -> object:
        reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=PROBE_TIMEOUT_S)
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            raise ConnectionError(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
        return reply

    return check


class DependencyWatch:
    """Probes dependencies; logs and counts each transition; reports health."""

    def __init__(
        self,
        service: str,
        probes: Callable[[], Mapping[str, Probe]],
        on_required: OnRequired,
        interval_s: float = PROBE_INTERVAL_S,
    ) -> None:
        self._service = service
        self._probes = probes
        self._on_required = on_required
        self._interval_s = interval_s
        self.up: dict[str, bool] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:
                log.exception("dependency check failed")
            await asyncio.sleep(self._interval_s)

    async def check(self) -> None:
        probes = dict(self._probes())
        results = await asyncio.gather(
            *(asyncio.wait_for(probe(), PROBE_TIMEOUT_S * 2) for probe in probes.values()),
            return_exceptions=True,
        )
        for name, result in zip(probes, results, strict=True):
            await self._record(name, result)
        optional_down = any(not up for name, up in self.up.items() if name != REQUIRED)
        DEGRADED.labels(self._service).set(1 if optional_down else 0)

    async def _record(self, name: str, result: object) -> None:
        now_up = not isinstance(result, BaseException)
        was_up = self.up.get(name)
        self.up[name] = now_up
        DEPENDENCY_UP.labels(self._service, name).set(1 if now_up else 0)
        if was_up == now_up or (was_up is None and now_up):
            return
        DEPENDENCY_TRANSITIONS.labels(self._service, name, "up" if now_up else "down").inc()
        if now_up:
            log.warning("dependency back", extra={"fields": {"dependency": name}})
        else:
            log.error(
                "dependency down",
                extra={
                    "fields": {
                        "dependency": name,
                        "error": f"{type(result).__name__}: {result}",
                        "effect": "NOT_SERVING" if name == REQUIRED else "degraded",
                    }
                },
            )
        if name == REQUIRED:
            await self._on_required(now_up)
