"""Pixels and site events: the operations behind the sites RPCs (semantics in
attribution.proto), and the upkeep of the raw site events' day partitions.

A batch is checked record by record (services.attribution.sites.records), then its
new rows are stored in one transaction (services.attribution.sites.store) and only
then acknowledged. A stream prepares up to `site_events_max_in_flight` batches at once
and acknowledges them in order; the next message is read only when one is
acknowledged, so a slow database slows the sender through gRPC flow control.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from podmesh.attribution.v1 import attribution_pb2 as pb
from pydantic import Field, field_validator

from services.attribution.peers import Campaigns
from services.attribution.sites import origins
from services.attribution.sites.limits import PixelRateLimiter
from services.attribution.sites.records import (
    PixelInfo,
    Request,
    check_batch,
    pixel_ids,
    source_ids,
)
from services.attribution.sites.store import SiteEventStore
from services.shared.batch_stream import acknowledged_in_order, batch_size_problem
from services.shared.client_ip import InvalidIpError, IpHasher
from services.shared.config import Settings
from services.shared.context import principal_var, tenant_of
from services.shared.errors import (
    InvalidArgument,
    ResourceExhausted,
)
from services.shared.leases import PeriodicLease
from services.shared.peers import Metadata

log = logging.getLogger("podmesh.attribution.sites")

MAX_STREAM_BATCH_EVENTS = 5_000
MAX_TRACK_EVENTS = 500


class SiteSettings(Settings):
    # The gateway's public address, as the sponsors' visitors' browsers reach it: the
    # snippet posts there (PODMESH_ATTRIBUTION_PUBLIC_GATEWAY_URL).
    attribution_public_gateway_url: str = "http://127.0.0.1:8080"
    # Raw site events older than this are rejected on arrival and dropped by the day;
    # the same setting (PODMESH_RAW_RETENTION_DAYS) as analytics' listener requests.
    raw_retention_days: int = Field(default=180, ge=31)
    # Calls without a credential, per pixel and client address: a sustained rate per
    # minute and a burst of as many.
    pixel_calls_per_minute: int = Field(default=120, ge=1)
    # Batches per stream between reading and acknowledging.
    site_events_max_in_flight: int = Field(default=4, ge=1, le=8)
    maintenance_interval_s: float = Field(default=3600.0, gt=0)

    @field_validator("attribution_public_gateway_url")
    @classmethod
    def _gateway_url(cls, value: str) -> str:
        scheme, _, rest = value.partition("://")
        if scheme not in ("http", "https") or not rest or any(c in value for c in " \"'<>\\"):
            raise ValueError(
                "the public gateway URL is an http(s) URL, e.g. https://api.example.com"
            )
        return value.rstrip("/")


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    accepted: int
    duplicates: int
    rejections: Sequence[pb.Rejection] = field(default_factory=list)


class SiteEvents:
    def __init__(
        self,
        store: SiteEventStore,
        campaigns: Campaigns,
        limiter: PixelRateLimiter,
        settings: SiteSettings,
    ) -> None:
        self.store = store
        self.campaigns = campaigns
        self._limiter = limiter
        self._settings = settings
        self._ip_secret = settings.ip_hash_secret.get_secret_value().encode()
        self._hashers: dict[uuid.UUID, IpHasher] = {}
        self._upkeep: asyncio.Task[None] | None = None

    @property
    def gateway_url(self) -> str:
        return self._settings.attribution_public_gateway_url

    async def sponsor_domain(self, sponsor_id: uuid.UUID, credentials: Metadata) -> str:
        """The sponsor's normalised web domain ('' if it has none); NotFound when the
        caller's tenant has no such sponsor."""
        sponsor = await self.campaigns.sponsor(sponsor_id, credentials)
        return origins.normalise_domain(sponsor.domain)

    # --- ingestion -------------------------------------------------------------------

    async def track(self, events: Sequence[pb.SiteEvent], request: Request) -> BatchOutcome:
        problem = batch_size_problem(
            len(events), sum(e.ByteSize() for e in events), MAX_TRACK_EVENTS, "events"
        )
        if problem is not None:
            raise problem
        principal = principal_var.get()
        if principal is not None:
            return await self._batch(tenant_of(principal), events, request)
        named = pixel_ids(events)
        tenants = await self.store.pixel_tenants(named) if named else {}
        if not tenants:
            # Nothing to store: every record is rejected before its household is needed.
            return await self._batch(None, events, request)
        tenant_id = Counter(tenants.values()).most_common(1)[0][0]
        await self._limit(tenant_id, [p for p, t in tenants.items() if t == tenant_id], request)
        return await self._batch(tenant_id, events, request)

    async def _limit(
        self, tenant_id: uuid.UUID, pixels: Sequence[uuid.UUID], request: Request
    ) -> None:
        try:
            household = self._hasher(tenant_id).household_id(request.client_ip)
        except InvalidIpError:
            return
        waits = [await self._limiter.wait_s(pixel_id, household) for pixel_id in sorted(pixels)]
        wait = max(waits, default=0.0)
        if wait > 0:
            raise ResourceExhausted(
                f"a pixel may send {self._settings.pixel_calls_per_minute} calls a minute "
                "from one address; send again later",
                reason="RATE_LIMITED",
                retry_delay_s=wait,
            )

    async def stream(
        self,
        messages: AsyncIterator[pb.StreamSiteEventsRequest],
        request: Request,
    ) -> AsyncIterator[pb.StreamSiteEventsResponse]:
        """Acknowledges each batch once durable, in order; ends with the first batch error."""
        principal = principal_var.get()
        assert principal is not None, "streams require a credential"
        tenant_id = tenant_of(principal)

        def check(message: pb.StreamSiteEventsRequest) -> InvalidArgument | None:
            return batch_size_problem(
                len(message.events), message.ByteSize(), MAX_STREAM_BATCH_EVENTS, "events"
            )

        async for sequence, outcome in acknowledged_in_order(
            messages,
            check,
            lambda message: self._batch(tenant_id, message.events, request),
            self._settings.site_events_max_in_flight,
        ):
            yield pb.StreamSiteEventsResponse(
                sequence=sequence,
                accepted_count=outcome.accepted,
                duplicate_count=outcome.duplicates,
                rejections=outcome.rejections,
            )

    async def _batch(
        self, tenant_id: uuid.UUID | None, events: Sequence[pb.SiteEvent], request: Request
    ) -> BatchOutcome:
        now = dt.datetime.now(dt.UTC)
        pixels: dict[uuid.UUID, PixelInfo] = {}
        sponsors: frozenset[uuid.UUID] = frozenset()
        if tenant_id is not None:
            pixels, sponsors = await self.store.sources(tenant_id, *source_ids(events))
        checked = check_batch(
            events,
            tenant_id=tenant_id or uuid.UUID(int=0),
            pixels=pixels,
            sponsors=sponsors,
            request=request,
            household=self._household(tenant_id),
            now=now,
            oldest=now - dt.timedelta(days=self._settings.raw_retention_days),
        )
        accepted = await self.store.commit(tenant_id, checked.rows) if tenant_id else 0
        return BatchOutcome(
            accepted, len(checked.rows) - accepted + checked.duplicates, checked.rejections
        )

    def _household(self, tenant_id: uuid.UUID | None) -> Callable[[str], bytes]:
        if tenant_id is None:
            return _no_household
        return self._hasher(tenant_id).household_id

    def _hasher(self, tenant_id: uuid.UUID) -> IpHasher:
        hasher = self._hashers.get(tenant_id)
        if hasher is None:
            hasher = self._hashers[tenant_id] = IpHasher(self._ip_secret, tenant_id)
        return hasher

    # --- upkeep ----------------------------------------------------------------------

    async def _run_upkeep(self) -> None:
        await self.upkeep()

    def start_upkeep(self, lease: PeriodicLease) -> None:
        """Runs `upkeep` now and every `maintenance_interval_s` while the process lives,
        on one replica per interval (the lease's holder)."""
        self._upkeep = lease.start(self._run_upkeep)

    async def upkeep(self) -> list[str]:
        """Partitions for yesterday to three days ahead; days past retention dropped,
        with their idempotency keys. Returns the dropped partitions' names."""
        today = dt.datetime.now(dt.UTC).date()
        await self.store.ensure_partitions(today + dt.timedelta(days=d) for d in range(-1, 4))
        dropped = await self.store.drop_partitions_before(
            today - dt.timedelta(days=self._settings.raw_retention_days)
        )
        log.info("site events upkeep", extra={"fields": {"partitions_dropped": len(dropped)}})
        return dropped


def _no_household(client_ip: str) -> bytes:
    raise AssertionError("a record of a call without a tenant reached household hashing")
