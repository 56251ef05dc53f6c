"""What the exposure RPCs do: analytics' deliveries applied, third-party exposures
checked and stored, exposures listed, and the table's days kept."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import Counter

from services.attribution.exposures import repository as repo
from services.attribution.exposures.bookings import SlotBookings
from services.attribution.exposures.domain import (
    MAX_FUTURE_S,
    MAX_ID_CHARS,
    MAX_TEXT_CHARS,
    ApplyOutcome,
    DeliveryChange,
    Exposure,
    ExposureInput,
    IngestOutcome,
    Reason,
    Rejection,
    Source,
    idempotency_key,
    is_country,
    stored_country,
)
from services.attribution.exposures.repository import ExposureFilter, ExposureStore, utc_day
from services.attribution.peers import Campaigns, LineItemFlight, SlotBooking
from services.attribution.reports.versions import bump_version
from services.shared.client_ip import InvalidIpError, IpHasher
from services.shared.db import Database
from services.shared.leases import PeriodicLease
from services.shared.pagination import PageTokens, split_page

log = logging.getLogger("podmesh.attribution.exposures")

EXPOSURES_STORED = Counter(
    "attribution_exposures_stored_total", "Exposures stored for the first time", ["source"]
)
DELIVERIES_UNBOOKED = Counter(
    "attribution_unbooked_deliveries_total",
    "Ad deliveries from analytics on slots no placement booked at their time (not exposures)",
)
# Upcoming days whose partitions upkeep makes ahead of the rows.
_DAYS_AHEAD = 3


@dataclass(frozen=True)
class ExposureSettings:
    retention_days: int
    ip_hash_secret: bytes
    maintenance_interval_s: float


class Exposures:
    def __init__(
        self,
        db: Database,
        store: ExposureStore,
        campaigns: Campaigns,
        bookings: SlotBookings,
        tokens: PageTokens,
        settings: ExposureSettings,
    ) -> None:
        self._db = db
        self._store = store
        self._campaigns = campaigns
        self._bookings = bookings
        self._tokens = tokens
        self._settings = settings
        self._upkeep: asyncio.Task[None] | None = None

    # --- from analytics -------------------------------------------------------------

    async def apply_deliveries(
        self, tenant_id: uuid.UUID, changes: Sequence[DeliveryChange]
    ) -> ApplyOutcome:
        """Applies analytics' changes, oldest first, in one transaction.

        A delivery's exposure ends up as its last change says. A delivery with any
        removal in the batch loses its stored exposure (and key) first, so one that
        was taken away and counted again (a download moved by a late request keeps
        its key and may change its time) is stored anew; a delivery only added is a
        duplicate when its key is stored, which makes a batch sent again a no-op.
        """
        last: dict[str, DeliveryChange] = {}
        touched_by_removal: set[str] = set()
        for change in changes:
            key = idempotency_key(Source.ANALYTICS, change.exposure_id)
            if change.removed:
                touched_by_removal.add(key)
            last[key] = change
        added = [c for c in last.values() if not c.removed]
        booked = await self._bookings.resolve(
            tenant_id, ((c.ad_slot_id, c.delivered_time) for c in added)
        )
        exposures = []
        for change in added:
            booking = booked[(change.ad_slot_id, change.delivered_time)]
            if booking is not None:
                exposures.append(_from_delivery(change, booking))
        unbooked = len(added) - len(exposures)
        await self._store.ensure_days([utc_day(e.exposure_time) for e in exposures])

        async def work(conn: Any) -> tuple[int, set[str]]:
            removed = await repo.remove(conn, tenant_id, sorted(touched_by_removal))
            stored = await repo.insert(conn, tenant_id, exposures)
            if removed or stored:
                await bump_version(conn)
            return removed, stored

        removed, stored = await self._db.in_tenant_transaction(tenant_id, work)
        EXPOSURES_STORED.labels(source="analytics").inc(len(stored))
        DELIVERIES_UNBOOKED.inc(unbooked)
        return ApplyOutcome(
            added=len(stored),
            removed=removed,
            duplicates=len(exposures) - len(stored),
            unbooked=unbooked,
        )

    # --- third parties --------------------------------------------------------------

    async def ingest(self, tenant_id: uuid.UUID, inputs: Sequence[ExposureInput]) -> IngestOutcome:
        """Stores the valid exposures whose id is new; rejects the others one by one."""
        now = datetime.now(UTC)
        oldest = now - timedelta(days=self._settings.retention_days)
        hasher = IpHasher(self._settings.ip_hash_secret, tenant_id)
        rejections: list[Rejection] = []
        checked: list[tuple[int, ExposureInput, _Parsed]] = []
        for index, item in enumerate(inputs):
            parsed = _check(item, now, oldest, hasher)
            if isinstance(parsed, Rejection):
                rejections.append(
                    Rejection(index, item.exposure_id[:MAX_ID_CHARS], parsed.reason, parsed.message)
                )
            else:
                checked.append((index, item, parsed))
        line_items = (
            await self._campaigns.line_items(
                tenant_id, sorted({p.line_item_id for _, _, p in checked})
            )
            if checked
            else {}
        )
        slots = sorted({p.ad_slot_id for _, _, p in checked if p.placement_id and p.ad_slot_id})
        slot_placements = (
            {b.placement_id: b for b in await self._campaigns.slot_bookings(tenant_id, slots)}
            if slots
            else {}
        )
        exposures: list[Exposure] = []
        for index, item, parsed in checked:
            outcome = _exposure(parsed, line_items.get(parsed.line_item_id), slot_placements)
            if isinstance(outcome, tuple):
                reason, message = outcome
                rejections.append(Rejection(index, item.exposure_id, reason, message))
            else:
                exposures.append(outcome)
        unique: dict[str, Exposure] = {}
        for exposure in exposures:
            unique.setdefault(exposure.key, exposure)
        await self._store.ensure_days([utc_day(e.exposure_time) for e in unique.values()])

        async def work(conn: Any) -> set[str]:
            stored = await repo.insert(conn, tenant_id, list(unique.values()))
            if stored:
                await bump_version(conn)
            return stored

        stored = await self._db.in_tenant_transaction(tenant_id, work)
        EXPOSURES_STORED.labels(source="ingested").inc(len(stored))
        rejections.sort(key=lambda r: r.index)
        return IngestOutcome(
            accepted=len(stored), duplicates=len(exposures) - len(stored), rejections=rejections
        )

    # --- reading --------------------------------------------------------------------

    async def list(
        self, tenant_id: uuid.UUID, where: ExposureFilter, page_size: int, page_token: str
    ) -> tuple[Sequence[Exposure], str]:
        query = {"list": "exposures", **{k: _query_value(v) for k, v in vars(where).items()}}
        cursor = self._tokens.decode(page_token, query)
        after = (
            (datetime.fromisoformat(cursor["t"]), str(cursor["id"]), int(cursor["s"]))
            if cursor
            else None
        )
        async with self._db.tenant_transaction(tenant_id) as conn:
            rows = await repo.list_exposures(conn, where, after, page_size + 1)
        page, more = split_page(rows, page_size)
        token = ""
        if more:
            last = page[-1]
            token = self._tokens.encode(
                {
                    "t": last.exposure_time.isoformat(),
                    "id": last.exposure_id,
                    "s": int(last.source),
                },
                query,
            )
        return page, token

    # --- upkeep ---------------------------------------------------------------------

    def start_upkeep(self, lease: PeriodicLease) -> None:
        """Runs `upkeep` now and every maintenance interval on one replica at a time."""
        self._upkeep = lease.start(self.upkeep)

    async def upkeep(self) -> None:
        """Partitions for the days ahead; days past the raw retention dropped."""
        today = datetime.now(UTC).date()
        made = await self._store.ensure_partitions(
            today - timedelta(days=1), today + timedelta(days=_DAYS_AHEAD)
        )
        dropped = await self._store.drop_partitions_before(
            today - timedelta(days=self._settings.retention_days)
        )
        log.info(
            "exposure upkeep",
            extra={"fields": {"partitions_made": made, "partitions_dropped": len(dropped)}},
        )


@dataclass(frozen=True, slots=True)
class _Parsed:
    exposure_id: str
    exposure_time: datetime
    line_item_id: uuid.UUID
    placement_id: uuid.UUID | None
    podcast_id: uuid.UUID | None
    episode_id: uuid.UUID | None
    ad_slot_id: uuid.UUID | None
    household_id: bytes
    country_code: str


def _check(
    item: ExposureInput, now: datetime, oldest: datetime, hasher: IpHasher
) -> _Parsed | Rejection:
    """The record's own checks, in the order a sender would fix them."""

    def reject(reason: Reason, message: str) -> Rejection:
        return Rejection(-1, "", reason, message)

    if not item.exposure_id or len(item.exposure_id) > MAX_ID_CHARS:
        return reject(Reason.INVALID_ID, f"id must have 1 to {MAX_ID_CHARS} characters")
    # The shared input walk leaves records to this check: PostgreSQL cannot store NUL.
    if "\0" in item.exposure_id:
        return reject(Reason.INVALID_ID, "id contains a NUL character")
    if item.exposure_time is None:
        return reject(Reason.MISSING_TIME, "exposure_time is required")
    if item.exposure_time > now + timedelta(seconds=MAX_FUTURE_S):
        return reject(Reason.TIME_IN_FUTURE, "exposure_time is more than 5 minutes ahead")
    if item.exposure_time < oldest:
        return reject(
            Reason.TIME_TOO_OLD, f"exposure_time is before the raw-data retention ({oldest:%F})"
        )
    texts = {
        "line_item_id": item.line_item_id,
        "placement_id": item.placement_id,
        "podcast_id": item.podcast_id,
        "episode_id": item.episode_id,
        "ad_slot_id": item.ad_slot_id,
        "client_ip": item.client_ip,
        "country_code": item.country_code,
    }
    for name, value in texts.items():
        if len(value) > MAX_TEXT_CHARS:
            return reject(Reason.FIELD_TOO_LONG, f"{name} is longer than {MAX_TEXT_CHARS}")
    line_item_id = _uuid(item.line_item_id)
    if line_item_id is None:
        return reject(Reason.UNKNOWN_LINE_ITEM, "line_item_id is not a line item's id")
    ids: dict[str, uuid.UUID | None] = {}
    for name in ("placement_id", "podcast_id", "episode_id", "ad_slot_id"):
        value = texts[name]
        ids[name] = _uuid(value) if value else None
        if value and ids[name] is None:
            return reject(Reason.INVALID_FIELD, f"{name} is not a UUID")
    country = stored_country(item.country_code)
    if not is_country(country):
        return reject(Reason.INVALID_FIELD, "country_code is not an ISO 3166-1 alpha-2 code")
    try:
        household_id = hasher.household_id(item.client_ip)
    except InvalidIpError:
        return reject(Reason.INVALID_CLIENT_IP, "client_ip is missing or not an IP address")
    return _Parsed(
        exposure_id=item.exposure_id,
        exposure_time=item.exposure_time,
        line_item_id=line_item_id,
        placement_id=ids["placement_id"],
        podcast_id=ids["podcast_id"],
        episode_id=ids["episode_id"],
        ad_slot_id=ids["ad_slot_id"],
        household_id=household_id,
        country_code=country,
    )


def _exposure(
    parsed: _Parsed,
    line_item: LineItemFlight | None,
    slot_placements: dict[uuid.UUID, SlotBooking],
) -> Exposure | tuple[Reason, str]:
    """The exposure of a checked record, or why its line item or placement refuse it."""
    if line_item is None:
        return Reason.UNKNOWN_LINE_ITEM, "no such line item in this tenant"
    moment = parsed.exposure_time
    podcast_id, episode_id = parsed.podcast_id, parsed.episode_id
    if parsed.placement_id is not None:
        booking = slot_placements.get(parsed.placement_id)
        if (
            booking is None
            or booking.line_item_id != line_item.line_item_id
            or booking.ad_slot_id != parsed.ad_slot_id
        ):
            return (
                Reason.UNKNOWN_PLACEMENT,
                "placement_id is not a placement of the line item on ad_slot_id",
            )
        if not booking.covers(moment):
            return Reason.OUTSIDE_FLIGHT, "exposure_time is outside the placement's flight"
        podcast_id = podcast_id or booking.podcast_id
        episode_id = episode_id or booking.episode_id
    elif (line_item.flight_start is not None and moment < line_item.flight_start) or (
        line_item.flight_end is not None and moment >= line_item.flight_end
    ):
        return Reason.OUTSIDE_FLIGHT, "exposure_time is outside the line item's flight"
    return Exposure(
        exposure_id=parsed.exposure_id,
        source=Source.INGESTED,
        exposure_time=moment,
        campaign_id=line_item.campaign_id,
        line_item_id=line_item.line_item_id,
        placement_id=parsed.placement_id,
        podcast_id=podcast_id,
        episode_id=episode_id,
        ad_slot_id=parsed.ad_slot_id,
        household_id=parsed.household_id,
        country_code=parsed.country_code,
    )


def _from_delivery(change: DeliveryChange, booking: SlotBooking) -> Exposure:
    return Exposure(
        exposure_id=change.exposure_id,
        source=Source.ANALYTICS,
        exposure_time=change.delivered_time,
        campaign_id=booking.campaign_id,
        line_item_id=booking.line_item_id,
        placement_id=booking.placement_id,
        podcast_id=change.podcast_id,
        episode_id=change.episode_id,
        ad_slot_id=change.ad_slot_id,
        household_id=change.household_id,
        country_code=stored_country(change.country_code),
    )


def _uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def _query_value(value: object) -> object:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value or "")
