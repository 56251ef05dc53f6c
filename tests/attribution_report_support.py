"""Helpers the attribution report tests and benchmark share: exposures and site events
written straight into their tables (as the ingestion paths would), in the tenant's
scope, with the attribution version bumped in the same transaction."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

EXPOSURE_COLUMNS = (
    "tenant_id",
    "exposure_time",
    "receive_time",
    "campaign_id",
    "line_item_id",
    "podcast_id",
    "source",
    "household_id",
    "exposure_id",
)
SITE_EVENT_COLUMNS = (
    "tenant_id",
    "event_time",
    "receive_time",
    "sponsor_id",
    "event_type",
    "value_minor",
    "household_id",
    "event_id",
    "currency_code",
    "order_id",
    "promo_code",
)
PAGE_VIEW, LEAD, PURCHASE = 1, 2, 3


@dataclass(frozen=True)
class Exposure:
    time: datetime
    line_item_id: str
    podcast_id: str | None
    household: bytes
    id: str = ""


@dataclass(frozen=True)
class SiteEvent:
    time: datetime
    kind: int
    household: bytes
    value_minor: int = 0
    currency: str = "USD"
    promo_code: str = ""
    id: str = ""


def household(n: int) -> bytes:
    return n.to_bytes(16, "big")


async def ensure_partitions(conn: asyncpg.Connection, first: datetime, last: datetime) -> None:
    for table in ("exposures", "site_events"):
        day = first.date()
        while day <= last.date():
            end = min(last.date(), day.fromordinal(day.toordinal() + 60))
            await conn.execute("SELECT attribution_ensure_partitions($1, $2, $3)", table, day, end)
            day = end.fromordinal(end.toordinal() + 1)


async def insert(
    conn: asyncpg.Connection,
    tenant_id: str,
    campaign_id: str,
    sponsor_id: str,
    exposures: Sequence[Exposure],
    events: Sequence[SiteEvent],
) -> None:
    """As the owner: rows of one tenant, through the parents (routed to day partitions)."""
    tenant = uuid.UUID(tenant_id)
    times = [e.time for e in exposures] + [e.time for e in events]
    if times:
        await ensure_partitions(conn, min(times), max(times))
    async with conn.transaction():
        await conn.execute("SELECT set_config('app.tenant_id', $1, true)", tenant_id)
        await conn.executemany(
            f"INSERT INTO exposures ({', '.join(EXPOSURE_COLUMNS)}) "
            "VALUES ($1, $2, $2, $3, $4, $5, 2, $6, $7)",
            [
                (
                    tenant,
                    e.time,
                    uuid.UUID(campaign_id),
                    uuid.UUID(e.line_item_id),
                    uuid.UUID(e.podcast_id) if e.podcast_id else None,
                    e.household,
                    e.id or uuid.uuid4().hex,
                )
                for e in exposures
            ],
        )
        await conn.executemany(
            f"INSERT INTO site_events ({', '.join(SITE_EVENT_COLUMNS)}) "
            "VALUES ($1, $2, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            [
                (
                    tenant,
                    e.time,
                    uuid.UUID(sponsor_id),
                    e.kind,
                    e.value_minor,
                    e.household,
                    e.id or uuid.uuid4().hex,
                    e.currency,
                    uuid.uuid4().hex if e.kind == PURCHASE else "",
                    e.promo_code,
                )
                for e in events
            ],
        )
        await conn.execute(
            "INSERT INTO attribution_versions AS v (tenant_id, version) VALUES ($1, 1) "
            "ON CONFLICT (tenant_id) DO UPDATE SET version = v.version + 1",
            tenant,
        )
