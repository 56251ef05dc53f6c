"""A brake on password guessing: sign-in attempts per account and per client address,
with exponential backoff once the free attempts are used up.

Every attempt is charged before its password is checked, and refunded when it was
right: so attempts made at the same moment cannot all slip through before the first
failure is counted. Counters live in Redis, shared by every tenant process. While
Redis cannot be reached each process keeps its own counters instead: the brake is
then per process (weaker, never off), and nobody is locked out by the outage itself.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger("podmesh.tenant.login")

# One hash tag: a sign-in's account and address counters change in one script, which on
# a Redis Cluster needs both keys in one slot.
_KEY_PREFIX = "{podmesh-login}"
_MEMORY_ENTRIES = 100_000


@dataclass(frozen=True)
class Backoff:
    """`free` failures in a row cost nothing; each further one doubles the wait before
    the next attempt, from `base_s` up to `max_s`. Counters are forgotten `forget_s`
    after the last wait ends."""

    free: int
    base_s: float
    max_s: float
    forget_s: float

    def wait_s(self, failures: int) -> float:
        if failures < self.free:
            return 0.0
        return float(min(self.max_s, self.base_s * 2 ** min(failures - self.free, 32)))


# A person mistyping is not slowed down; a guesser gets a handful of tries, then one
# a second, then one every 2, 4, 8 ... seconds, up to one per 15 minutes.
ACCOUNT = Backoff(free=5, base_s=1.0, max_s=900.0, forget_s=900.0)
# Many people may sign in from one address (an office, a NAT): a wider allowance.
ADDRESS = Backoff(free=20, base_s=1.0, max_s=900.0, forget_s=900.0)


@dataclass(frozen=True)
class Charge:
    """An attempt let through; refunded if its password was right."""

    keys: tuple[str, str]
    in_memory: bool


class TooManyAttempts(Exception):
    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"retry after {retry_after_s:.1f}s")
        self.retry_after_s = retry_after_s


# KEYS: account, address. ARGV: now (ms), then free, base (ms), max (ms), forget (ms) of
# each key. Each key is a hash: f = failures, u = wait until (ms), p = wait before this
# attempt (restored by a refund).
_CHARGE = """
local now = tonumber(ARGV[1])
local wait = 0
for i = 1, #KEYS do
  local u = tonumber(redis.call('HGET', KEYS[i], 'u') or '0')
  if u > now and u - now > wait then wait = u - now end
end
if wait > 0 then return wait end
for i = 1, #KEYS do
  local o = 1 + (i - 1) * 4
  local free, base = tonumber(ARGV[o + 1]), tonumber(ARGV[o + 2])
  local max, forget = tonumber(ARGV[o + 3]), tonumber(ARGV[o + 4])
  local f = redis.call('HINCRBY', KEYS[i], 'f', 1)
  local lock = 0
  if f >= free then lock = math.min(max, base * 2 ^ math.min(f - free, 32)) end
  local before = redis.call('HGET', KEYS[i], 'u') or '0'
  redis.call('HSET', KEYS[i], 'u', now + lock, 'p', before)
  redis.call('PEXPIRE', KEYS[i], math.floor(lock + forget))
end
return 0
"""
# KEYS: account, address. The account starts afresh; the address gets its attempt back.
_REFUND = """
redis.call('DEL', KEYS[1])
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('HINCRBY', KEYS[2], 'f', -1)
  redis.call('HSET', KEYS[2], 'u', redis.call('HGET', KEYS[2], 'p') or '0')
end
return 0
"""


class LoginGuard:
    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._charge = redis.register_script(_CHARGE)
        self._refund = redis.register_script(_REFUND)
        self._memory = _MemoryCounters()
        self._redis_down = False

    async def charge(self, tenant_slug: str, email: str, address: str) -> Charge:
        """Counts an attempt, or raises TooManyAttempts while either counter waits."""
        keys = (account_key(tenant_slug, email), f"{_KEY_PREFIX}:addr:{address}")
        now_ms = int(time.time() * 1000)
        try:
            wait_ms = int(await self._charge(keys=list(keys), args=[now_ms, *_limits()]))
            in_memory = False
            self._redis_up()
        except (RedisError, OSError) as error:
            self._redis_failed(error)
            wait_ms = self._memory.charge(keys, now_ms)
            in_memory = True
        if wait_ms > 0:
            raise TooManyAttempts(wait_ms / 1000)
        return Charge(keys, in_memory)

    async def refund(self, charge: Charge) -> None:
        if charge.in_memory:
            self._memory.refund(charge.keys)
            return
        try:
            await self._refund(keys=list(charge.keys))
        except (RedisError, OSError) as error:
            # The right password still signs in; the counters only stay a little high.
            self._redis_failed(error)

    def _redis_failed(self, error: Exception) -> None:
        if not self._redis_down:
            log.warning(
                "sign-in limits kept in process: Redis unreachable",
                extra={"fields": {"error": type(error).__name__}},
            )
        self._redis_down = True

    def _redis_up(self) -> None:
        if self._redis_down:
            log.info("sign-in limits back in Redis")
        self._redis_down = False


def account_key(tenant_slug: str, email: str) -> str:
    # Hashed: bounded length, and no e-mail addresses in Redis.
    digest = hashlib.sha256(f"{tenant_slug}\0{email}".encode()).hexdigest()[:32]
    return f"{_KEY_PREFIX}:acct:{digest}"


def _limits() -> list[int]:
    return [
        value
        for backoff in (ACCOUNT, ADDRESS)
        for value in (
            backoff.free,
            int(backoff.base_s * 1000),
            int(backoff.max_s * 1000),
            int(backoff.forget_s * 1000),
        )
    ]


@dataclass
class _Counter:
    failures: int = 0
    until_ms: int = 0
    before_ms: int = 0
    forget_at_ms: int = 0


class _MemoryCounters:
    """The same rules as the Redis script, for one process, in bounded memory."""

    def __init__(self, max_entries: int = _MEMORY_ENTRIES) -> None:
        self._max_entries = max_entries
        self._counters: OrderedDict[str, _Counter] = OrderedDict()

    def charge(self, keys: tuple[str, str], now_ms: int) -> int:
        counters = [self._get(key, now_ms) for key in keys]
        wait = max(c.until_ms - now_ms for c in counters)
        if wait > 0:
            return wait
        for counter, backoff in zip(counters, (ACCOUNT, ADDRESS), strict=True):
            counter.failures += 1
            lock_ms = int(backoff.wait_s(counter.failures) * 1000)
            counter.before_ms = counter.until_ms
            counter.until_ms = now_ms + lock_ms
            counter.forget_at_ms = counter.until_ms + int(backoff.forget_s * 1000)
        return 0

    def refund(self, keys: tuple[str, str]) -> None:
        self._counters.pop(keys[0], None)
        address = self._counters.get(keys[1])
        if address is not None:
            address.failures = max(0, address.failures - 1)
            address.until_ms = address.before_ms

    def _get(self, key: str, now_ms: int) -> _Counter:
        counter = self._counters.get(key)
        if counter is not None and counter.forget_at_ms > now_ms:
            self._counters.move_to_end(key)
            return counter
        while len(self._counters) >= self._max_entries:
            # The least recently charged goes first; it is the least likely to be waiting.
            self._counters.popitem(last=False)
        counter = self._counters[key] = _Counter()
        return counter
