"""Finished report responses, kept in the process and answered again while the tenant's
counts have not changed.

Dashboards ask the same questions over and over (every viewer, every refresh), and a
90-day series with a breakdown costs milliseconds of SQL and message building, while
checking that the counts behind it are unchanged costs one indexed read: every counting
transaction (ingestion, rebuild) bumps the tenant's row in counting_versions. A
response stored at version v is therefore exact for as long as the version is v, and
the check reads PostgreSQL under row-level security (tenant_counting_version, one
statement), so a reused answer is as current as a fresh one. The version is read
before the report's own transaction starts, so a response is never stored under a
version newer than its numbers (at worst under an older one, and then not reused).

Entries also expire after `ttl_s`: a response discloses until when its numbers are
complete, which moves with the clock, not with the counts. Concurrent requests for an
answer being computed wait for it instead of computing it again. Bounded by the
serialized size of the responses, least recently used first out.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from google.protobuf.message import Message
from prometheus_client import Counter

from services.shared.db import Database
from services.shared.single_flight import SingleFlight

M = TypeVar("M", bound=Message)

LOOKUPS = Counter(
    "podmesh_report_cache_lookups_total", "Report cache lookups by result", ["result"]
)


@dataclass(frozen=True, slots=True)
class _Entry(Generic[M]):
    version: int
    expires: float
    size: int
    response: M


class ReportCache(Generic[M]):
    def __init__(self, db: Database, *, max_bytes: int, ttl_s: float) -> None:
        self._db = db
        self._max_bytes = max_bytes
        self._ttl_s = ttl_s
        self._entries: OrderedDict[tuple[uuid.UUID, Hashable], _Entry[M]] = OrderedDict()
        self._bytes = 0
        self._flights: SingleFlight[M] = SingleFlight()

    async def answer(
        self, tenant_id: uuid.UUID, key: Hashable, compute: Callable[[], Awaitable[M]]
    ) -> M:
        """The response for `key`, reused while the tenant's counts are unchanged.

        The caller must not change the returned message: it may be shared.
        """
        if self._max_bytes <= 0:
            return await compute()
        version = await self._version(tenant_id)
        slot = (tenant_id, key)
        entry = self._entries.get(slot)
        if entry is not None and entry.version == version and entry.expires > time.monotonic():
            self._entries.move_to_end(slot)
            LOOKUPS.labels("hit").inc()
            return entry.response
        flight = (tenant_id, key, version)
        if self._flights.running(flight):
            LOOKUPS.labels("joined").inc()
            return await self._flights.run(flight, compute)
        LOOKUPS.labels("miss").inc()
        response = await self._flights.run(flight, compute)
        self._store(slot, version, response)
        return response

    async def _version(self, tenant_id: uuid.UUID) -> int:
        version: int = await self._db.fetchval("SELECT tenant_counting_version($1)", tenant_id)
        return version

    def _store(self, slot: tuple[uuid.UUID, Hashable], version: int, response: M) -> None:
        size = response.ByteSize()
        if size > self._max_bytes:
            return
        old = self._entries.pop(slot, None)
        if old is not None:
            self._bytes -= old.size
        self._entries[slot] = _Entry(version, time.monotonic() + self._ttl_s, size, response)
        self._bytes += size
        while self._bytes > self._max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.size
