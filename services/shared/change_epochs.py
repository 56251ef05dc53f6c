"""Per-tenant change counters in Redis, so one service can keep what it read from another
and know when to read it again.

The service that owns some data bumps its tenant's counter after every committed change
to it; a reader remembers an answer with the counter's value read before asking, and uses
it only while the counter still reads the same. Bumping after the commit means a reader
never keeps an answer older than the counter says; between a commit and its bump a reader
can use the answer from just before the change, as it could have without any memory.

A counter that Redis lost (restart, eviction) starts again from a random value, never
from one a reader may have seen. While Redis cannot be asked the reader learns nothing
(None) and must ask the owner; a bump that failed is logged, and readers bound how long
they keep an answer for that case.
"""

from __future__ import annotations

import logging
import secrets
import time
import uuid

import redis.asyncio as aioredis

from services.shared.redis_outages import REDIS_ERRORS, RedisOutage

log = logging.getLogger("podmesh.change_epochs")

# The catalog's podcasts and episodes (bumped by the catalog service).
CATALOG = "catalog"
# Counters outlive any reader's memory of them by far, and vanish with an idle tenant.
KEY_TTL_S = 7 * 24 * 3600
MAX_TENANTS = 10_000

# KEYS[1] the counter; ARGV[1] a random start for a missing counter, ARGV[2] 1 to bump,
# ARGV[3] the key's lifetime in seconds. Returns the counter's value (after a bump) as
# text: Lua's numbers are doubles.
_READ_OR_BUMP = """
if redis.call('EXISTS', KEYS[1]) == 0 then
    redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
if ARGV[2] == '1' then
    redis.call('INCR', KEYS[1])
end
return redis.call('GET', KEYS[1])
"""
# Random starts far apart, and far below the counters' 64-bit limit.
_START_BITS = 48


class ChangeEpochs:
    """The counters of one kind of data, e.g. "catalog" (keys "epoch:catalog:<tenant>")."""

    def __init__(self, redis: aioredis.Redis, name: str, *, recheck_s: float = 0.0) -> None:
        """`recheck_s`: how long a counter read here is taken as current, so a hot path
        does not ask Redis on every call; readers then see a change up to that much
        later (0: ask every time)."""
        self._script = redis.register_script(_READ_OR_BUMP)
        self._name = name
        self._recheck_s = recheck_s
        self._read: dict[uuid.UUID, tuple[float, int]] = {}
        self._outage = RedisOutage(
            log,
            "change counters unavailable: Redis does not answer",
            "change counters answer again",
            {"epochs": name},
        )

    async def read(self, tenant_id: uuid.UUID) -> int | None:
        """The tenant's counter (as of at most `recheck_s` ago); None while Redis cannot
        be asked."""
        now = time.monotonic()
        known = self._read.get(tenant_id)
        if known is not None and now - known[0] < self._recheck_s:
            return known[1]
        value = await self._call(tenant_id, bump=False)
        if value is None:
            self._read.pop(tenant_id, None)
            return None
        if len(self._read) >= MAX_TENANTS:
            self._read.clear()
        self._read[tenant_id] = (now, value)
        return value

    async def bump(self, tenant_id: uuid.UUID) -> None:
        """Marks every answer read before now as old; after the change committed."""
        await self._call(tenant_id, bump=True)

    async def _call(self, tenant_id: uuid.UUID, *, bump: bool) -> int | None:
        # A bump is tried even during an outage: it is the owner's one chance to tell.
        if not bump and self._outage.waiting():
            return None
        try:
            value = await self._script(
                keys=[f"epoch:{self._name}:{tenant_id}"],
                args=[secrets.randbits(_START_BITS), "1" if bump else "0", KEY_TTL_S],
            )
        except REDIS_ERRORS as error:
            self._outage.failed(error)
            return None
        self._outage.answered()
        return int(value)
