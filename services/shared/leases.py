"""Periodic jobs that one replica of a service runs per interval, not each replica.

Two guards. A Redis lease (SET NX with an expiry just under the interval) lets the
first replica to ask run the job and makes the others skip it for that interval. A
session advisory lock in PostgreSQL, taken without waiting, keeps two runs from ever
overlapping, also when Redis is down and every replica believes it won the lease:
then the job may run once per replica per interval, which is why such jobs must stay
idempotent (they are: partitions created if missing, old ones dropped if present).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.shared.db import Database

log = logging.getLogger("podmesh.leases")

# Namespace of the jobs' advisory locks (any int4; "LEAS").
_LOCK_NAMESPACE = 0x4C454153
# The lease ends a little before the next round, so a replica that wakes slightly
# early next time is not refused its own turn.
_LEASE_SHARE = 0.9


def lease_key(service: str, job: str) -> str:
    # One hash tag per service: a Redis Cluster keeps a service's leases in one slot.
    return f"{{lease:{service}}}:{job}"


class PeriodicLease:
    """Runs a job at most once per interval across every replica of a service."""

    def __init__(
        self,
        db: Database,
        redis: aioredis.Redis,
        service: str,
        job: str,
        interval_s: float,
    ) -> None:
        self._db = db
        self._redis = redis
        self._key = lease_key(service, job)
        self._lock_name = f"{service}:{job}"
        self._interval_s = interval_s
        self._token = secrets.token_hex(8)
        self._redis_down = False

    def start(self, job: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        """Runs job now and every interval until the task is cancelled, on one replica
        per interval; a round that fails is logged and the next one runs."""
        return asyncio.create_task(self._every_interval(job))

    async def _every_interval(self, job: Callable[[], Awaitable[None]]) -> None:
        while True:
            try:
                await self.run(job)
            except Exception:
                log.exception("job %s failed; trying again next round", self._lock_name)
            await asyncio.sleep(self._interval_s)

    async def run(self, job: Callable[[], Awaitable[None]]) -> bool:
        """Runs job unless another replica holds this interval's lease or runs it now."""
        if not await self._take_lease():
            return False
        async with self._db.pool.acquire() as conn:
            held = await conn.fetchval(
                "SELECT pg_try_advisory_lock($1::int4, hashtext($2::text))",
                _LOCK_NAMESPACE,
                self._lock_name,
            )
            if not held:
                return False
            try:
                await job()
            finally:
                await conn.execute(
                    "SELECT pg_advisory_unlock($1::int4, hashtext($2::text))",
                    _LOCK_NAMESPACE,
                    self._lock_name,
                )
        return True

    async def _take_lease(self) -> bool:
        try:
            won = await self._redis.set(
                self._key,
                self._token,
                nx=True,
                px=max(1, int(self._interval_s * _LEASE_SHARE * 1000)),
            )
        except RedisError as error:
            if not self._redis_down:
                log.warning(
                    "lease %s: Redis unavailable (%s); the advisory lock alone guards the job",
                    self._key,
                    type(error).__name__,
                )
                self._redis_down = True
            return True
        if self._redis_down:
            log.info("lease %s: Redis answers again", self._key)
            self._redis_down = False
        return bool(won)
