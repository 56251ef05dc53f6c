"""Exposures in PostgreSQL: stored once by key, taken away with their key, listed
newest first, and their day partitions made and dropped (migration 0060)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg

from services.attribution.exposures.domain import KEY_KIND, Exposure, Source
from services.shared.db import Database

# attribution_ensure_partitions makes at most this many days per call.
_PARTITION_SPAN_DAYS = 62


@dataclass(frozen=True)
class ExposureFilter:
    campaign_id: uuid.UUID | None = None
    line_item_id: uuid.UUID | None = None
    placement_id: uuid.UUID | None = None
    podcast_id: uuid.UUID | None = None
    episode_id: uuid.UUID | None = None
    ad_slot_id: uuid.UUID | None = None
    household_id: bytes | None = None
    source: Source | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None


class ExposureStore:
    def __init__(self, db: Database, retention_days: int) -> None:
        self._db = db
        self._retention_days = retention_days
        # Recent days whose partition this process made or saw made: retention drops
        # none of them while they are remembered. Older days are checked every time.
        self._days: set[date] = set()

    async def ensure_days(self, days: Sequence[date]) -> None:
        """The partitions of these UTC days, in transactions of their own: making one
        locks the parent table, which no transaction carrying rows should hold."""
        wanted = sorted(set(days) - self._days)
        if not wanted:
            return
        start = 0
        while start < len(wanted):
            first = wanted[start]
            end = start
            while end + 1 < len(wanted) and (wanted[end + 1] - first).days < _PARTITION_SPAN_DAYS:
                end += 1
            await self.ensure_partitions(first, wanted[end])
            start = end + 1
        safe = datetime.now(UTC).date() - timedelta(days=self._retention_days - 2)
        self._days.update(d for d in wanted if d >= safe)

    async def ensure_partitions(self, first: date, last: date) -> int:
        async with self._db.platform_transaction() as conn:
            made: int = await conn.fetchval(
                "SELECT attribution_ensure_partitions('exposures', $1, $2)", first, last
            )
            return made

    async def drop_partitions_before(self, before: date) -> list[str]:
        async with self._db.platform_transaction() as conn:
            rows = await conn.fetch(
                "SELECT attribution_drop_partitions('exposures', $1) AS name", before
            )
        self._days = {d for d in self._days if d >= before}
        return [r["name"] for r in rows]


async def remove(conn: Any, tenant_id: uuid.UUID, keys: Sequence[str]) -> int:
    """Takes away the exposures of these keys (analytics' own only); returns how many."""
    if not keys:
        return 0
    gone = await conn.fetch(
        """
        DELETE FROM attribution_keys
        WHERE tenant_id = $1 AND kind = $2 AND key = ANY($3::text[])
        RETURNING key, event_time
        """,
        tenant_id,
        KEY_KIND,
        list(keys),
    )
    if not gone:
        return 0
    prefix = f"{int(Source.ANALYTICS)}/"
    await conn.execute(
        """
        DELETE FROM exposures e
        USING unnest($2::text[], $3::timestamptz[]) AS k(exposure_id, exposure_time)
        WHERE e.tenant_id = $1 AND e.source = $4 AND e.exposure_id = k.exposure_id
            AND e.exposure_time = k.exposure_time
        """,
        tenant_id,
        [r["key"].removeprefix(prefix) for r in gone],
        [r["event_time"] for r in gone],
        int(Source.ANALYTICS),
    )
    return len(gone)


async def insert(conn: Any, tenant_id: uuid.UUID, exposures: Sequence[Exposure]) -> set[str]:
    """Stores the exposures whose key is new; returns the keys stored."""
    if not exposures:
        return set()
    rows = await conn.fetch(
        """
        INSERT INTO attribution_keys (tenant_id, kind, key, event_time)
        SELECT $1, $2, * FROM unnest($3::text[], $4::timestamptz[])
        ON CONFLICT DO NOTHING
        RETURNING key
        """,
        tenant_id,
        KEY_KIND,
        [e.key for e in exposures],
        [e.exposure_time for e in exposures],
    )
    new = {r["key"] for r in rows}
    fresh = [e for e in exposures if e.key in new]
    if fresh:
        await conn.execute(
            """
            INSERT INTO exposures (tenant_id, exposure_time, receive_time, campaign_id,
                line_item_id, placement_id, podcast_id, episode_id, ad_slot_id, source,
                household_id, exposure_id, country_code)
            SELECT $1, k.exposure_time, now(), k.campaign_id, k.line_item_id, k.placement_id,
                k.podcast_id, k.episode_id, k.ad_slot_id, k.source, k.household_id,
                k.exposure_id, k.country_code
            FROM unnest($2::timestamptz[], $3::uuid[], $4::uuid[], $5::uuid[], $6::uuid[],
                $7::uuid[], $8::uuid[], $9::smallint[], $10::bytea[], $11::text[], $12::text[])
                AS k(exposure_time, campaign_id, line_item_id, placement_id, podcast_id,
                    episode_id, ad_slot_id, source, household_id, exposure_id, country_code)
            """,
            tenant_id,
            [e.exposure_time for e in fresh],
            [e.campaign_id for e in fresh],
            [e.line_item_id for e in fresh],
            [e.placement_id for e in fresh],
            [e.podcast_id for e in fresh],
            [e.episode_id for e in fresh],
            [e.ad_slot_id for e in fresh],
            [int(e.source) for e in fresh],
            [e.household_id for e in fresh],
            [e.exposure_id for e in fresh],
            [e.country_code for e in fresh],
        )
    return new


async def list_exposures(
    conn: Any,
    where: ExposureFilter,
    after: tuple[datetime, str, int] | None,
    limit: int,
) -> list[Exposure]:
    rows = await conn.fetch(
        """
        SELECT * FROM exposures
        WHERE ($1::uuid IS NULL OR campaign_id = $1)
          AND ($2::uuid IS NULL OR line_item_id = $2)
          AND ($3::uuid IS NULL OR placement_id = $3)
          AND ($4::uuid IS NULL OR podcast_id = $4)
          AND ($5::uuid IS NULL OR episode_id = $5)
          AND ($6::uuid IS NULL OR ad_slot_id = $6)
          AND ($7::bytea IS NULL OR household_id = $7)
          AND ($8::smallint IS NULL OR source = $8)
          AND ($9::timestamptz IS NULL OR exposure_time >= $9)
          AND ($10::timestamptz IS NULL OR exposure_time < $10)
          AND ($11::timestamptz IS NULL
               OR (exposure_time, exposure_id, source) < ($11, $12::text, $13::smallint))
        ORDER BY exposure_time DESC, exposure_id DESC, source DESC
        LIMIT $14
        """,
        where.campaign_id,
        where.line_item_id,
        where.placement_id,
        where.podcast_id,
        where.episode_id,
        where.ad_slot_id,
        where.household_id,
        int(where.source) if where.source is not None else None,
        where.start_time,
        where.end_time,
        after[0] if after else None,
        after[1] if after else None,
        after[2] if after else None,
        limit,
    )
    return [_exposure(r) for r in rows]


def _exposure(row: asyncpg.Record) -> Exposure:
    return Exposure(
        exposure_id=row["exposure_id"],
        source=Source(row["source"]),
        exposure_time=row["exposure_time"],
        campaign_id=row["campaign_id"],
        line_item_id=row["line_item_id"],
        placement_id=row["placement_id"],
        podcast_id=row["podcast_id"],
        episode_id=row["episode_id"],
        ad_slot_id=row["ad_slot_id"],
        household_id=bytes(row["household_id"]),
        country_code=row["country_code"],
        receive_time=row["receive_time"],
    )


def utc_day(moment: datetime) -> date:
    return moment.astimezone(UTC).date()
