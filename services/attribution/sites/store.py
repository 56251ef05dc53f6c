"""PostgreSQL for pixels and site events: every statement the sites package runs."""

from __future__ import annotations

import datetime as dt
import json
import operator
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from services.attribution.reports.versions import bump_version
from services.attribution.sites.records import COLUMNS, PixelInfo, Row, order_key_of
from services.shared.db import Database
from services.shared.errors import Unavailable

KIND_EVENT = 1
KIND_ORDER = 2
ACTIVE, DISABLED = 1, 2
# A pixel's last_event_time is rewritten at most this often: a busy pixel's row is not
# updated by every batch, and "last seen" needs no better precision.
LAST_EVENT_RESOLUTION = dt.timedelta(minutes=1)
_TABLE = "site_events"
_PIXEL_COLUMNS = (
    "pixel_id, sponsor_id, display_name, state, allowed_origins, sponsor_domain, "
    "last_event_time, created_at, updated_at"
)


@dataclass(frozen=True, slots=True)
class PixelRow:
    pixel_id: uuid.UUID
    sponsor_id: uuid.UUID
    display_name: str
    state: int
    allowed_origins: tuple[str, ...]
    sponsor_domain: str
    last_event_time: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> PixelRow:
        return cls(**{**dict(record), "allowed_origins": tuple(record["allowed_origins"])})


@dataclass(frozen=True, slots=True)
class EventFilter:
    pixel_id: uuid.UUID | None
    sponsor_id: uuid.UUID | None
    types: tuple[int, ...]
    start: dt.datetime | None
    end: dt.datetime | None


# Sorted, so concurrent batches sharing keys (resends) take their locks in one order.
# A site event's key carries the latest event time of its batch: it goes with that day's
# partition, so never before its own event's row (kind 3 keys carry their own time).
# The keys come as one JSON array: asyncpg checks every element of a text[] parameter
# for being a nested array, through Python-level isinstance checks on each key.
_INSERT_KEYS = """
    INSERT INTO attribution_keys (tenant_id, kind, key, event_time)
    SELECT $1, $2, k.key, $4
    FROM json_array_elements_text($3::json) AS k (key)
    ORDER BY k.key
"""
_EVENT_TIME = operator.itemgetter(COLUMNS.index("event_time"))
_EVENT_ID = operator.itemgetter(COLUMNS.index("event_id"))


# Which of these events (id and time) are stored already; $4 and $5 bound the times, so
# only their days' partitions are read.
_STORED = f"""
    SELECT s.event_id, s.event_time
    FROM {_TABLE} s
    JOIN unnest($2::text[], $3::timestamptz[]) AS k (event_id, event_time)
      ON s.event_id = k.event_id AND s.event_time = k.event_time
    WHERE s.tenant_id = $1 AND s.event_time BETWEEN $4 AND $5
"""


def partition_name(day: dt.date) -> str:
    return f"{_TABLE}_{day:%Y%m%d}"


def _by_day(rows: Iterable[Row]) -> dict[dt.date, list[Row]]:
    by_day: dict[dt.date, list[Row]] = {}
    for row in rows:
        day = row.event_time.date()
        day_rows = by_day.get(day)
        if day_rows is None:
            by_day[day] = [row]
        else:
            day_rows.append(row)
    return by_day


class SiteEventStore:
    def __init__(self, db: Database, hypertable: bool) -> None:
        self._db = db
        # TimescaleDB chunks are not ours to COPY into: rows then go through the
        # hypertable from a staging table.
        self._hypertable = hypertable
        self._partitions: set[dt.date] = set()

    @classmethod
    async def create(cls, db: Database) -> SiteEventStore:
        async with db.platform_transaction() as conn:
            hypertable = await conn.fetchval(
                "SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'"
            )
        return cls(db, bool(hypertable))

    # --- pixels ----------------------------------------------------------------------

    async def insert_pixel(self, tenant_id: uuid.UUID, pixel: PixelRow) -> PixelRow:
        async with self._db.tenant_transaction(tenant_id) as conn:
            record = await conn.fetchrow(
                f"""
                INSERT INTO pixels (tenant_id, pixel_id, sponsor_id, display_name, state,
                                    allowed_origins, sponsor_domain)
                VALUES ($1, $2, $3, $4, $5, $6, $7)
                RETURNING {_PIXEL_COLUMNS}
                """,
                tenant_id,
                pixel.pixel_id,
                pixel.sponsor_id,
                pixel.display_name,
                pixel.state,
                list(pixel.allowed_origins),
                pixel.sponsor_domain,
            )
        return PixelRow.of(record)

    async def pixel(self, tenant_id: uuid.UUID, pixel_id: uuid.UUID) -> PixelRow | None:
        async with self._db.tenant_transaction(tenant_id) as conn:
            record = await conn.fetchrow(
                f"SELECT {_PIXEL_COLUMNS} FROM pixels WHERE tenant_id = $1 AND pixel_id = $2",
                tenant_id,
                pixel_id,
            )
        return PixelRow.of(record) if record else None

    async def list_pixels(
        self,
        tenant_id: uuid.UUID,
        sponsor_id: uuid.UUID | None,
        after: tuple[dt.datetime, uuid.UUID] | None,
        limit: int,
    ) -> list[PixelRow]:
        async with self._db.tenant_transaction(tenant_id) as conn:
            records = await conn.fetch(
                f"""
                SELECT {_PIXEL_COLUMNS} FROM pixels
                WHERE tenant_id = $1
                  AND ($2::uuid IS NULL OR sponsor_id = $2)
                  AND ($3::timestamptz IS NULL OR (created_at, pixel_id) > ($3, $4))
                ORDER BY created_at, pixel_id
                LIMIT $5
                """,
                tenant_id,
                sponsor_id,
                after[0] if after else None,
                after[1] if after else None,
                limit,
            )
        return [PixelRow.of(r) for r in records]

    async def update_pixel(
        self, tenant_id: uuid.UUID, pixel_id: uuid.UUID, changes: Mapping[str, Any]
    ) -> PixelRow | None:
        assignments = ", ".join(f"{name} = ${i}" for i, name in enumerate(changes, start=3))
        async with self._db.tenant_transaction(tenant_id) as conn:
            record = await conn.fetchrow(
                f"""
                UPDATE pixels SET {assignments}, updated_at = now()
                WHERE tenant_id = $1 AND pixel_id = $2
                RETURNING {_PIXEL_COLUMNS}
                """,
                tenant_id,
                pixel_id,
                *changes.values(),
            )
        return PixelRow.of(record) if record else None

    async def delete_pixel(self, tenant_id: uuid.UUID, pixel_id: uuid.UUID) -> bool:
        async with self._db.tenant_transaction(tenant_id) as conn:
            deleted = await conn.fetchval(
                "DELETE FROM pixels WHERE tenant_id = $1 AND pixel_id = $2 RETURNING 1",
                tenant_id,
                pixel_id,
            )
        return bool(deleted)

    async def pixel_tenants(self, pixel_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, uuid.UUID]:
        """Which tenant each pixel belongs to, for calls without a credential."""
        async with self._db.platform_transaction() as conn:
            records = await conn.fetch(
                "SELECT pixel_id, tenant_id FROM attribution_pixel_tenants($1)", list(pixel_ids)
            )
        return {r["pixel_id"]: r["tenant_id"] for r in records}

    async def sources(
        self, tenant_id: uuid.UUID, pixel_ids: Iterable[uuid.UUID], sponsor_ids: Iterable[uuid.UUID]
    ) -> tuple[dict[uuid.UUID, PixelInfo], frozenset[uuid.UUID]]:
        """The tenant's pixels among `pixel_ids`, and which of `sponsor_ids` have a
        pixel (the sponsors server events may name)."""
        async with self._db.tenant_transaction(tenant_id) as conn:
            pixels = await conn.fetch(
                """
                SELECT pixel_id, sponsor_id, state, allowed_origins, sponsor_domain
                FROM pixels WHERE tenant_id = $1 AND pixel_id = ANY ($2)
                """,
                tenant_id,
                list(pixel_ids),
            )
            sponsors = await conn.fetch(
                "SELECT DISTINCT sponsor_id FROM pixels WHERE tenant_id = $1 "
                "AND sponsor_id = ANY ($2)",
                tenant_id,
                list(sponsor_ids),
            )
        return {
            r["pixel_id"]: PixelInfo(
                sponsor_id=r["sponsor_id"],
                active=r["state"] == ACTIVE,
                allowed_origins=tuple(r["allowed_origins"]),
                sponsor_domain=r["sponsor_domain"],
            )
            for r in pixels
        }, frozenset(r["sponsor_id"] for r in sponsors)

    # --- site events -----------------------------------------------------------------

    async def commit(self, tenant_id: uuid.UUID, rows: Sequence[Row]) -> int:
        """Stores the rows that are new events (and, for purchases, new orders); returns
        how many. Durable when it returns.

        An event with its own time is identified by id and time: the day partitions'
        unique index (migration 0071) refuses it again. An event whose time is its
        arrival (browser pixels send none) cannot be known by its time, so its id is
        claimed in attribution_keys, as every purchase's order is."""
        if not rows:
            return 0
        try:
            await self.ensure_partitions({row.event_time.date() for row in rows})
            async with self._db.tenant_transaction(tenant_id) as conn:
                # Acknowledged batches must survive a crash whatever the server default.
                await conn.execute("SELECT set_config('synchronous_commit', 'on', true)")
                fresh = await self._claim(conn, tenant_id, rows)
                stored = await self._insert(conn, tenant_id, fresh) if fresh else fresh
                if stored:
                    await self._touch_pixels(conn, tenant_id, stored)
                    await bump_version(conn)
                return len(stored)
        except (asyncpg.InterfaceError, asyncpg.PostgresConnectionError) as error:
            raise Unavailable(f"database unavailable: {type(error).__name__}") from error

    async def _claim(
        self, conn: asyncpg.Connection, tenant_id: uuid.UUID, rows: Sequence[Row]
    ) -> Sequence[Row]:
        """The rows left once arrival-timed events and purchases' orders stored before
        are taken out (`rows` itself when none were): keys this transaction stored first."""
        until = max(map(_EVENT_TIME, rows))
        arrived = [row.event_id for row in rows if row.event_time == row.receive_time]
        new = rows
        if arrived:
            claimed = await self._insert_keys(conn, tenant_id, KIND_EVENT, arrived, until)
            if claimed is not None:
                new = [
                    row
                    for row in rows
                    if row.event_id in claimed or row.event_time != row.receive_time
                ]
        orders = [row for row in new if row.order_id]
        if not orders:
            return new
        keys = [order_key_of(row.sponsor_id, row.order_id) for row in orders]
        claimed = await self._insert_keys(conn, tenant_id, KIND_ORDER, keys, until)
        if claimed is None:
            return new
        refused = {
            (row.event_id, row.event_time)
            for row, key in zip(orders, keys, strict=True)
            if key not in claimed
        }
        return [row for row in new if (row.event_id, row.event_time) not in refused]

    @staticmethod
    async def _insert_keys(
        conn: asyncpg.Connection,
        tenant_id: uuid.UUID,
        kind: int,
        keys: list[str],
        until: dt.datetime,
    ) -> set[str] | None:
        """The keys this transaction stored, None when it stored all; the others were
        stored before.

        Fresh keys are the rule (resends are rare), so they are first inserted plainly,
        which costs less than a speculative insert per key; only when one was stored
        before do they go again, skipping the stored ones.
        """
        args = (tenant_id, kind, json.dumps(keys, ensure_ascii=False), until)
        try:
            async with conn.transaction():
                await conn.execute(_INSERT_KEYS, *args)
            return None
        except asyncpg.UniqueViolationError:
            pass
        records = await conn.fetch(_INSERT_KEYS + " ON CONFLICT DO NOTHING RETURNING key", *args)
        return {r["key"] for r in records}

    async def _insert(
        self, conn: asyncpg.Connection, tenant_id: uuid.UUID, rows: Sequence[Row]
    ) -> Sequence[Row]:
        """Copies the rows in, leaving out events stored before (same id and time);
        returns the rows stored.

        New events are the rule (resends are rare), so the rows are first copied as
        they are; only when the unique index refuses one are the stored ones looked up
        and the rest copied again. A concurrent transaction storing one of them makes
        the copy wait for it, and fail only once that one committed, which the next
        lookup then sees: each round leaves out more, so the rounds end."""
        while True:
            try:
                async with conn.transaction():
                    await self._copy(conn, rows)
                return rows
            except asyncpg.UniqueViolationError:
                pass
            stored = {
                (r["event_id"], r["event_time"])
                for r in await conn.fetch(
                    _STORED,
                    tenant_id,
                    [row.event_id for row in rows],
                    [row.event_time for row in rows],
                    min(map(_EVENT_TIME, rows)),
                    max(map(_EVENT_TIME, rows)),
                )
            }
            rows = [row for row in rows if (row.event_id, row.event_time) not in stored]
            if not rows:
                return rows

    async def _copy(self, conn: asyncpg.Connection, rows: Sequence[Row]) -> None:
        if self._hypertable:
            await conn.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS staged_site_events (LIKE {_TABLE}) ON COMMIT DROP"
            )
            await conn.execute("TRUNCATE staged_site_events")
            await conn.copy_records_to_table(
                "staged_site_events", records=sorted(rows, key=_EVENT_ID), columns=COLUMNS
            )
            await conn.execute(f"INSERT INTO {_TABLE} SELECT * FROM staged_site_events")
            return
        for day, day_rows in _by_day(rows).items():
            # In id order, so two batches sharing events (resends) meet in one order in
            # the unique index and never deadlock.
            day_rows.sort(key=_EVENT_ID)
            await conn.copy_records_to_table(partition_name(day), records=day_rows, columns=COLUMNS)

    @staticmethod
    async def _touch_pixels(
        conn: asyncpg.Connection, tenant_id: uuid.UUID, rows: Sequence[Row]
    ) -> None:
        latest: dict[uuid.UUID, dt.datetime] = {}
        for row in rows:
            pixel_id = row.pixel_id
            if pixel_id is not None and (
                pixel_id not in latest or row.receive_time > latest[pixel_id]
            ):
                latest[pixel_id] = row.receive_time
        if not latest:
            return
        await conn.execute(
            """
            UPDATE pixels p SET last_event_time = t.seen
            FROM unnest($2::uuid[], $3::timestamptz[]) AS t (pixel_id, seen)
            WHERE p.tenant_id = $1 AND p.pixel_id = t.pixel_id
              AND (p.last_event_time IS NULL OR p.last_event_time < t.seen - $4::interval)
            """,
            tenant_id,
            list(latest),
            list(latest.values()),
            LAST_EVENT_RESOLUTION,
        )

    async def list_events(
        self,
        tenant_id: uuid.UUID,
        where: EventFilter,
        before: tuple[dt.datetime, str] | None,
        limit: int,
    ) -> list[asyncpg.Record]:
        async with self._db.tenant_transaction(tenant_id) as conn:
            return list(
                await conn.fetch(
                    f"""
                    SELECT {", ".join(COLUMNS)} FROM {_TABLE}
                    WHERE tenant_id = $1
                      AND ($2::uuid IS NULL OR pixel_id = $2)
                      AND ($3::uuid IS NULL OR sponsor_id = $3)
                      AND (cardinality($4::smallint[]) = 0 OR event_type = ANY ($4))
                      AND ($5::timestamptz IS NULL OR event_time >= $5)
                      AND ($6::timestamptz IS NULL OR event_time < $6)
                      AND ($7::timestamptz IS NULL OR (event_time, event_id) < ($7, $8))
                    ORDER BY event_time DESC, event_id DESC
                    LIMIT $9
                    """,
                    tenant_id,
                    where.pixel_id,
                    where.sponsor_id,
                    list(where.types),
                    where.start,
                    where.end,
                    before[0] if before else None,
                    before[1] if before else None,
                    limit,
                )
            )

    # --- partitions ------------------------------------------------------------------

    async def ensure_partitions(self, days: Iterable[dt.date]) -> None:
        """Creates the day partitions this process has not seen yet, in a transaction
        of their own: creating one locks the parent, which must never wait inside a
        transaction that holds rows."""
        missing = sorted(set(days) - self._partitions)
        if not missing:
            return
        if not self._hypertable:
            async with self._db.platform_transaction() as conn:
                for day in missing:
                    await conn.fetchval(
                        "SELECT attribution_ensure_partitions($1, $2, $2)", _TABLE, day
                    )
        self._partitions.update(missing)

    async def drop_partitions_before(self, day: dt.date) -> list[str]:
        """Drops the day partitions (all tenants) before `day`, with their keys."""
        async with self._db.platform_transaction() as conn:
            records = await conn.fetch("SELECT attribution_drop_partitions($1, $2)", _TABLE, day)
        self._partitions = {known for known in self._partitions if known >= day}
        return [r[0] for r in records]
