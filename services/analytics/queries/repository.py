"""SQL of the analytics read side (rollups, listener sketches). Every function runs
inside a tenant transaction the caller opened.

Statements are built from a small fixed set of shapes (never from request values), so
asyncpg's per-connection statement cache prepares each shape once. `tenant_id = $1`
repeats what row-level security enforces, so that the planner can use it in indexes.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, TypeAlias

import asyncpg

from services.analytics.queries.reports import (
    CountRow,
    Dimension,
    MeasurementSource,
    Plan,
    Source,
)

Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record]"

# Values of rollup_daily_dimension.dimension.
_DIMENSION_ROWS = {
    Dimension.APP: "app",
    Dimension.DEVICE_CLASS: "device_class",
    Dimension.COUNTRY: "country",
}
_HOURLY_COLUMNS = {
    Dimension.APP: "app",
    Dimension.DEVICE_CLASS: "device_class",
    Dimension.COUNTRY: "country_code",
}
_ID_COLUMNS = {
    Dimension.PODCAST: "podcast_id::text",
    Dimension.EPISODE: "episode_id::text",
    Dimension.AD_SLOT: "ad_slot_id::text",
}


class _Query:
    def __init__(self) -> None:
        self.where: list[str] = []
        self.args: list[Any] = []

    def arg(self, value: Any) -> str:
        self.args.append(value)
        return f"${len(self.args)}"

    def scope(self, podcast_id: uuid.UUID | None, episode_ids: Sequence[uuid.UUID]) -> None:
        if podcast_id is not None:
            self.where.append(f"podcast_id = {self.arg(podcast_id)}")
        if episode_ids:
            self.where.append(f"episode_id = ANY({self.arg(list(episode_ids))}::uuid[])")


def _daily_table(
    base: str,
    podcast_id: uuid.UUID | None,
    episode_ids: Sequence[uuid.UUID],
    breakdown: Dimension | None = None,
) -> str:
    """The coarsest daily cube that still holds the scope and the breakdown asked for."""
    if episode_ids or breakdown is Dimension.EPISODE:
        return base
    if podcast_id is not None or breakdown is Dimension.PODCAST:
        return f"{base}_podcast"
    return f"{base}_tenant"


def _value_expression(plan: Plan) -> str:
    if plan.breakdown is None:
        return "''"
    if plan.breakdown in _ID_COLUMNS:
        return _ID_COLUMNS[plan.breakdown]
    if plan.source is Source.HOURLY:
        return _HOURLY_COLUMNS[plan.breakdown]
    return "value"


async def count_rows(conn: Conn, tenant_id: uuid.UUID, plan: Plan) -> list[CountRow]:
    """Downloads and ads summed per bucket and dimension value, in one statement."""
    q = _Query()
    q.where.append(f"tenant_id = {q.arg(tenant_id)}")
    buckets = plan.buckets
    if plan.source is Source.HOURLY:
        bounds = q.arg(list(buckets.starts))
        q.where.append(f"hour >= {q.arg(buckets.start)} AND hour < {q.arg(buckets.end)}")
        bucket = f"width_bucket(hour, {bounds}::timestamptz[])"
        for dimension, values in plan.filters.items():
            q.where.append(f"{_HOURLY_COLUMNS[dimension]} = ANY({q.arg(list(values))}::text[])")
    else:
        bounds = q.arg(list(buckets.start_dates))
        q.where.append(f"zone = {q.arg(plan.cube_zone)}")
        q.where.append(
            f"day >= {q.arg(buckets.start_dates[0])} AND day < {q.arg(buckets.end_date)}"
        )
        bucket = f"width_bucket(day, {bounds}::date[])"
        if plan.source is Source.DAILY_DIMENSION:
            assert plan.row_dimension is not None
            q.where.append(f"dimension = {q.arg(_DIMENSION_ROWS[plan.row_dimension])}")
            kept = plan.filters.get(plan.row_dimension)
            if kept:
                q.where.append(f"value = ANY({q.arg(list(kept))}::text[])")
    q.scope(plan.podcast_id, plan.episode_ids)
    table = plan.source.value
    if plan.measurement is MeasurementSource.PREFIX:
        # The same shape as rollup_hourly, kept apart (db/migrations/0047).
        table = "prefix_rollup_hourly"
    elif plan.source in (Source.DAILY, Source.DAILY_DIMENSION):
        table = _daily_table(table, plan.podcast_id, plan.episode_ids, plan.breakdown)
    downloads = "0" if plan.source is Source.DAILY_AD_SLOT else "sum(downloads)"
    rows = await conn.fetch(
        f"""
        SELECT {bucket} - 1 AS bucket, {_value_expression(plan)} AS value,
            {downloads}::bigint AS downloads, sum(ads_delivered)::bigint AS ads_delivered
        FROM {table}
        WHERE {" AND ".join(q.where)}
        GROUP BY 1, 2
        """,
        *q.args,
    )
    return [CountRow(r["bucket"], r["value"], r["downloads"], r["ads_delivered"]) for r in rows]


@dataclass(frozen=True)
class SketchRecord:
    day: date
    episode_id: uuid.UUID
    podcast_id: uuid.UUID
    sketch: bytes


async def listener_sketches(
    conn: Conn,
    tenant_id: uuid.UUID,
    zone: str,
    first_day: date,
    end_day: date,
    podcast_id: uuid.UUID | None = None,
    episode_ids: Sequence[uuid.UUID] = (),
) -> list[SketchRecord]:
    """The per-episode, per-day sketches of [first_day, end_day)."""
    q = _Query()
    q.where.append(f"tenant_id = {q.arg(tenant_id)} AND zone = {q.arg(zone)}")
    q.where.append(f"day >= {q.arg(first_day)} AND day < {q.arg(end_day)}")
    q.scope(podcast_id, episode_ids)
    rows = await conn.fetch(
        f"""
        SELECT day, episode_id, podcast_id, sketch FROM listener_sketches
        WHERE {" AND ".join(q.where)}
        """,
        *q.args,
    )
    return [SketchRecord(r["day"], r["episode_id"], r["podcast_id"], r["sketch"]) for r in rows]


async def daily_totals(
    conn: Conn,
    tenant_id: uuid.UUID,
    zone: str,
    first_day: date,
    end_day: date,
    podcast_id: uuid.UUID | None = None,
    episode_ids: Sequence[uuid.UUID] = (),
) -> list[tuple[date, int, int]]:
    """(day, downloads, ads delivered) for the days of [first_day, end_day) with rows."""
    q = _Query()
    q.where.append(f"tenant_id = {q.arg(tenant_id)} AND zone = {q.arg(zone)}")
    q.where.append(f"day >= {q.arg(first_day)} AND day < {q.arg(end_day)}")
    q.scope(podcast_id, episode_ids)
    rows = await conn.fetch(
        f"""
        SELECT day, sum(downloads)::bigint AS downloads, sum(ads_delivered)::bigint AS ads
        FROM {_daily_table("rollup_daily", podcast_id, episode_ids)}
        WHERE {" AND ".join(q.where)}
        GROUP BY day ORDER BY day
        """,
        *q.args,
    )
    return [(r["day"], r["downloads"], r["ads"]) for r in rows]


@dataclass(frozen=True)
class EpisodeTotal:
    episode_id: uuid.UUID
    podcast_id: uuid.UUID
    downloads: int


async def top_episodes(
    conn: Conn,
    tenant_id: uuid.UUID,
    zone: str,
    first_day: date,
    end_day: date,
    podcast_id: uuid.UUID | None,
    after: tuple[int, uuid.UUID] | None,
    limit: int,
) -> list[EpisodeTotal]:
    """Episodes by downloads, most first, then by id; `after` is the last row of a page."""
    q = _Query()
    q.where.append(f"tenant_id = {q.arg(tenant_id)} AND zone = {q.arg(zone)}")
    q.where.append(f"day >= {q.arg(first_day)} AND day < {q.arg(end_day)}")
    q.scope(podcast_id, ())
    having = ""
    if after is not None:
        downloads, episode_id = q.arg(after[0]), q.arg(after[1])
        having = (
            f"HAVING sum(downloads) < {downloads} "
            f"OR (sum(downloads) = {downloads} AND episode_id > {episode_id})"
        )
    rows = await conn.fetch(
        f"""
        SELECT episode_id, min(podcast_id::text)::uuid AS podcast_id,
            sum(downloads)::bigint AS downloads
        FROM rollup_daily WHERE {" AND ".join(q.where)}
        GROUP BY episode_id {having}
        ORDER BY downloads DESC, episode_id
        LIMIT {q.arg(limit)}
        """,
        *q.args,
    )
    return [EpisodeTotal(r["episode_id"], r["podcast_id"], r["downloads"]) for r in rows]


async def episode_totals(
    conn: Conn,
    tenant_id: uuid.UUID,
    zone: str,
    first_day: date,
    end_day: date,
    episode_ids: Sequence[uuid.UUID],
) -> dict[uuid.UUID, int]:
    rows = await conn.fetch(
        """
        SELECT episode_id, sum(downloads)::bigint AS downloads FROM rollup_daily
        WHERE tenant_id = $1 AND zone = $2 AND day >= $3 AND day < $4
            AND episode_id = ANY($5::uuid[])
        GROUP BY episode_id
        """,
        tenant_id,
        zone,
        first_day,
        end_day,
        list(episode_ids),
    )
    return {r["episode_id"]: r["downloads"] for r in rows}


@dataclass(frozen=True)
class ReleaseSpan:
    """Downloads of an episode over hours [hour_start, hour_split) and [hour_resume,
    hour_end) of the hourly cube plus UTC days [day_start, day_end) of the daily cube."""

    episode_id: uuid.UUID
    hour_start: datetime
    hour_split: datetime
    hour_resume: datetime
    hour_end: datetime
    day_start: date
    day_end: date


async def release_span_downloads(
    conn: Conn, tenant_id: uuid.UUID, spans: Sequence[ReleaseSpan]
) -> list[int]:
    """Downloads of each span, in order; hour-exact windows without scanning whole days."""
    rows = await conn.fetch(
        """
        SELECT s.i,
            coalesce((
                SELECT sum(h.downloads) FROM rollup_hourly h
                WHERE h.tenant_id = $1 AND h.episode_id = s.episode_id
                    AND ((h.hour >= s.h0 AND h.hour < s.h1) OR (h.hour >= s.h2 AND h.hour < s.h3))
            ), 0)
            + coalesce((
                SELECT sum(d.downloads) FROM rollup_daily d
                WHERE d.tenant_id = $1 AND d.zone = 'UTC' AND d.episode_id = s.episode_id
                    AND d.day >= s.d0 AND d.day < s.d1
            ), 0) AS downloads
        FROM unnest($2::int[], $3::uuid[], $4::timestamptz[], $5::timestamptz[],
            $6::timestamptz[], $7::timestamptz[], $8::date[], $9::date[])
            AS s(i, episode_id, h0, h1, h2, h3, d0, d1)
        ORDER BY s.i
        """,
        tenant_id,
        list(range(len(spans))),
        [s.episode_id for s in spans],
        [s.hour_start for s in spans],
        [s.hour_split for s in spans],
        [s.hour_resume for s in spans],
        [s.hour_end for s in spans],
        [s.day_start for s in spans],
        [s.day_end for s in spans],
    )
    return [int(r["downloads"]) for r in rows]
