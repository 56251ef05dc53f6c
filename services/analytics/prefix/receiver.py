"""Envoy's gRPC access log service, receiving the prefix route's requests.

Envoy opens a client stream (StreamAccessLogs) per worker and sends batches of entries
about once a second; nothing is answered until the stream ends. A batch is stored as it
arrives, one transaction per tenant, so what was received survives a restart of either
side. Delivery is best effort (see gateway.prefix_redirect): Envoy does not resend.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import asyncpg
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc
from grpc import aio

from services.analytics.counting.filters import RequestFilter
from services.analytics.peers import TenantProfile
from services.analytics.prefix.entries import PrefixHit, prefix_hit
from services.analytics.prefix.methodology import prefix_filter_reason, window_day
from services.shared.auth import MethodRule, Permission
from services.shared.client_ip import InvalidIpError, IpHasher
from services.shared.db import Database
from services.shared.errors import DomainError, NotFound
from services.shared.inputs import MIB, InputRule, InputRules

log = logging.getLogger("podmesh.analytics.prefix")

SERVICE = "envoy.service.accesslog.v3.AccessLogService"
# Only the gateway, with the platform administrator's token, may report requests.
RULES: dict[str, MethodRule] = {f"/{SERVICE}/StreamAccessLogs": Permission.PLATFORM_ADMIN}
# Envoy sends what it buffered since its last flush, hundreds of entries under load.
# The entries are checked one by one (services.analytics.prefix.entries), so the
# shared walk, which would refuse the whole batch for one bad entry, leaves them out.
INPUTS: InputRules = {
    f"/{SERVICE}/StreamAccessLogs": InputRule(
        max_bytes=16 * MIB, unchecked_fields=frozenset({"http_logs", "tcp_logs"})
    )
}

_EPOCH = dt.date(1970, 1, 1)
# A tenant created after its prefix was first seen is counted from this long after.
UNKNOWN_PREFIX_TTL_S = 60.0
MAX_UNKNOWN_PREFIXES = 100_000

Clock = Callable[[], float]


class TenantSource(Protocol):
    async def get(self, tenant_id: uuid.UUID) -> TenantProfile: ...


class PrefixRecorder:
    """Stores prefix requests and counts them by the prefix methodology."""

    def __init__(
        self,
        db: Database,
        tenants: TenantSource,
        ip_hash_secret: bytes,
        *,
        clock: Clock = time.monotonic,
    ) -> None:
        self._db = db
        self._tenants = tenants
        self._secret = ip_hash_secret
        self._hashers: dict[uuid.UUID, IpHasher] = {}
        self._filter = RequestFilter()
        self._clock = clock
        # Prefix ids anyone can make up: each is asked about once a while, not once a
        # batch, so made-up prefixes cannot slow the stream down to losing entries.
        self._unknown: dict[uuid.UUID, float] = {}

    async def record(self, hits: Sequence[PrefixHit]) -> int:
        """Stores `hits`; the number of new downloads they counted."""
        by_tenant: dict[uuid.UUID, list[PrefixHit]] = defaultdict(list)
        for hit in hits:
            by_tenant[hit.tenant_id].append(hit)
        counted = 0
        for tenant_id, tenant_hits in by_tenant.items():
            if not await self._tenant_exists(tenant_id):
                continue
            counted += await self._db.in_tenant_transaction(
                tenant_id,
                functools.partial(
                    _store, tenant_id=tenant_id, rows=self._rows(tenant_id, tenant_hits)
                ),
            )
        return counted

    async def _tenant_exists(self, tenant_id: uuid.UUID) -> bool:
        now = self._clock()
        if self._unknown.get(tenant_id, 0.0) > now:
            return False
        try:
            await self._tenants.get(tenant_id)
        except NotFound:
            # A well-formed prefix of no tenant: redirected, never counted.
            if len(self._unknown) >= MAX_UNKNOWN_PREFIXES:
                self._unknown.clear()
            self._unknown[tenant_id] = now + UNKNOWN_PREFIX_TTL_S
            return False
        return True

    def _rows(self, tenant_id: uuid.UUID, hits: Sequence[PrefixHit]) -> list[_Row]:
        hasher = self._hashers.get(tenant_id)
        if hasher is None:
            hasher = self._hashers[tenant_id] = IpHasher(self._secret, tenant_id)
        rows: list[_Row] = []
        for hit in hits:
            try:
                listener_id, household_id = hasher.ids(hit.client_ip, hit.user_agent)
            except InvalidIpError:
                continue
            reason = prefix_filter_reason(hit, self._filter)
            rows.append(
                _Row(
                    hit,
                    listener_id,
                    household_id,
                    reason.value if reason is not None else "",
                    _EPOCH + dt.timedelta(days=window_day(hit.time_us)),
                )
            )
        return rows


@dataclass(frozen=True, slots=True)
class _Row:
    hit: PrefixHit
    listener_id: bytes
    household_id: bytes
    filter_reason: str
    day: dt.date


async def _store(conn: asyncpg.Connection, *, tenant_id: uuid.UUID, rows: list[_Row]) -> int:
    """Stores new requests (a resent request id is a duplicate) and counts the first
    countable one of each listener, media file and day."""
    if not rows:
        return 0
    inserted = await conn.fetch(
        """
        INSERT INTO prefix_requests (tenant_id, request_id, request_time, media_url,
            media_key, listener_id, household_id, user_agent, referer, method,
            range_header, status, filter_reason)
        SELECT $1, r.request_id, r.request_time, r.media_url, r.media_key, r.listener_id,
            r.household_id, r.user_agent, r.referer, r.method, r.range_header, r.status,
            r.filter_reason
        FROM unnest($2::text[], $3::timestamptz[], $4::text[], $5::text[], $6::bytea[],
            $7::bytea[], $8::text[], $9::text[], $10::text[], $11::text[], $12::int[],
            $13::text[])
            AS r(request_id, request_time, media_url, media_key, listener_id,
                household_id, user_agent, referer, method, range_header, status,
                filter_reason)
        ON CONFLICT (tenant_id, request_id) DO NOTHING
        RETURNING request_id
        """,
        tenant_id,
        [row.hit.request_id for row in rows],
        [dt.datetime.fromtimestamp(row.hit.time_us / 1_000_000, dt.UTC) for row in rows],
        [row.hit.media_url for row in rows],
        [row.hit.media_key for row in rows],
        [row.listener_id for row in rows],
        [row.household_id for row in rows],
        [row.hit.user_agent for row in rows],
        [row.hit.referer for row in rows],
        [row.hit.method for row in rows],
        [row.hit.range_header for row in rows],
        [row.hit.status for row in rows],
        [row.filter_reason for row in rows],
    )
    new = {record["request_id"] for record in inserted}
    countable = [row for row in rows if row.hit.request_id in new and not row.filter_reason]
    if not countable:
        return 0
    counted = await conn.fetch(
        """
        INSERT INTO prefix_downloads (tenant_id, day, media_key, listener_id, request_id)
        SELECT $1, r.day, r.media_key, r.listener_id, r.request_id
        FROM unnest($2::date[], $3::text[], $4::bytea[], $5::text[])
            AS r(day, media_key, listener_id, request_id)
        ON CONFLICT DO NOTHING
        RETURNING request_id
        """,
        tenant_id,
        [row.day for row in countable],
        [row.hit.media_key for row in countable],
        [row.listener_id for row in countable],
        [row.hit.request_id for row in countable],
    )
    return len(counted)


class AccessLogReceiver:
    """The AccessLogService servicer (registered by its generated adder)."""

    def __init__(self, recorder: PrefixRecorder) -> None:
        self._recorder = recorder

    async def StreamAccessLogs(
        self,
        request_iterator: AsyncIterator[Any],
        context: aio.ServicerContext[
            als_pb2.StreamAccessLogsMessage, als_pb2.StreamAccessLogsResponse
        ],
    ) -> als_pb2.StreamAccessLogsResponse:
        async for message in request_iterator:
            hits = [
                hit
                for entry in message.http_logs.log_entry
                if (hit := prefix_hit(entry)) is not None
            ]
            if not hits:
                continue
            try:
                await self._recorder.record(hits)
            except DomainError as error:
                # Envoy does not resend, and ending the stream would only lose the
                # batches after this one too.
                log.warning("prefix requests lost: %d (%s)", len(hits), error)
        return als_pb2.StreamAccessLogsResponse()


def register(server: aio.Server, recorder: PrefixRecorder) -> None:
    als_pb2_grpc.add_AccessLogServiceServicer_to_server(AccessLogReceiver(recorder), server)
