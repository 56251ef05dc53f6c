"""RebuildCounts: a tenant's downloads, ad deliveries, rollups and listener sketches
recomputed from raw requests over a time range, e.g. after a rule or catalog change.
It is also how a new version of the User-Agent lists reaches the past: rebuilt
downloads are classified, filtered and stamped (`downloads.user_agent_lists`) with
the version the service runs, while downloads outside the range keep theirs.

The range is widened to whole counting days (the tenant's calendar for day windows,
UTC days for rolling windows) and rebuilt one day at a time, each day in its own
transaction under the tenant's counting lock, so ingestion waits a moment and then
goes on from the rebuilt state. For one day: the raw requests of its windows are
counted again by the same accumulator ingestion uses (its results are the batch
function's, `count_downloads`, by the counting package's contract, and it also gives
the window states ingestion continues from), the day's downloads and ad deliveries
are replaced, and every rollup and sketch the day's downloads fall in is recomputed
from the detail tables. So a rebuild gives the same numbers however often it runs.

Rolling windows chain: a listener's window starts at the first request 24 hours
after the previous window's start. A day's chains start from the last window of the
day before (rebuilt just before, or as stored for the first day); requests that
window still covers stay with it.

Episodes the catalog no longer knows keep their counts as they are.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import asyncpg
from datasketches import hll_sketch
from google.protobuf.timestamp_pb2 import Timestamp
from podmesh.analytics.v1 import analytics_pb2 as pb

from services.analytics.counting import (
    DAY_US,
    UNKNOWN_COUNTRY,
    AdDelivery,
    CalendarDays,
    CountingRules,
    CountingSettings,
    CountingWindow,
    DownloadAccumulator,
    EpisodeMedia,
    ListenerRequest,
    WindowState,
    compile_rules,
    from_us,
    to_us,
)
from services.analytics.counting.funnel import funnel_of_day
from services.analytics.counting_settings import CountingSettingsStore
from services.analytics.ingest.episodes import EpisodeResolver
from services.analytics.ingest.funnel_rollup import FunnelRollup, FunnelScope, forget_counting_day
from services.analytics.ingest.state import encode
from services.analytics.ingest.store import (
    SKETCH_LG_K,
    UTC_ZONE_NAMES,
    begin_counting,
    insert_ads,
    insert_downloads,
    sketch_member,
)
from services.analytics.live import counters
from services.analytics.live.counters import LiveRecorder
from services.analytics.peers import Metadata, TenantProfiles
from services.shared.context import current_tenant_id
from services.shared.db import Database
from services.shared.errors import NotFound
from services.shared.validation import Violations, parse_uuid

log = logging.getLogger("podmesh.analytics.rebuild")

HOUR_US = 3_600_000_000
# Episodes of one day are rebuilt in chunks of about this many raw requests, so a
# big day never has to fit in memory at once.
CHUNK_REQUESTS = 200_000
# A rebuild that has not finished a day for this long was interrupted (a restart).
STALE_AFTER = dt.timedelta(minutes=10)

_STATES = {
    "PENDING": pb.COUNT_REBUILD_STATE_PENDING,
    "RUNNING": pb.COUNT_REBUILD_STATE_RUNNING,
    "SUCCEEDED": pb.COUNT_REBUILD_STATE_SUCCEEDED,
    "FAILED": pb.COUNT_REBUILD_STATE_FAILED,
}


@dataclass(frozen=True)
class Plan:
    """What one rebuild does: its tenant's rules and the days to recount."""

    rules_settings: CountingSettings
    time_zone: str
    days: tuple[tuple[int, int], ...]
    podcast_id: str | None
    watermark_us: int

    @property
    def rolling(self) -> bool:
        return self.rules_settings.window is CountingWindow.ROLLING_24H

    @property
    def funnel(self) -> FunnelScope:
        return FunnelScope(self.rules_settings.window, self.time_zone)


class CountRebuilder:
    def __init__(
        self,
        db: Database,
        episodes: EpisodeResolver,
        tenants: TenantProfiles,
        counting_settings: CountingSettingsStore,
        live_counters: LiveRecorder,
        *,
        retention_days: int,
        grace_hours: int,
    ) -> None:
        self._db = db
        self._episodes = episodes
        self._tenants = tenants
        self._counting_settings = counting_settings
        self._live = live_counters
        self._retention_days = retention_days
        self._grace_hours = grace_hours
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(
        self, request: pb.RebuildCountsRequest, credentials: Metadata
    ) -> pb.RebuildCountsResponse:
        tenant_id = current_tenant_id()
        wanted = request.count_rebuild
        v = Violations()
        v.check(wanted.HasField("start_time"), "count_rebuild.start_time", "is required")
        v.check(wanted.HasField("end_time"), "count_rebuild.end_time", "is required")
        v.raise_if_any()
        start_us = wanted.start_time.ToMicroseconds()
        end_us = wanted.end_time.ToMicroseconds()
        now_us = time.time_ns() // 1000
        v.check(end_us > start_us, "count_rebuild.end_time", "must be after start_time")
        v.check(
            start_us >= now_us - self._retention_days * DAY_US,
            "count_rebuild.start_time",
            f"raw requests are kept for {self._retention_days} days",
        )
        v.check(end_us <= now_us + DAY_US, "count_rebuild.end_time", "is in the future")
        v.raise_if_any()
        podcast_id = (
            str(parse_uuid(wanted.podcast_id, "count_rebuild.podcast_id"))
            if wanted.podcast_id
            else None
        )
        profile = await self._tenants.get(tenant_id)
        stored = await self._counting_settings.get(tenant_id)
        settings = CountingSettings(
            window=profile.counting_window,
            time_zone=profile.time_zone,
            excluded_ip_ranges=stored.excluded_ip_ranges,
            excluded_user_agents=stored.excluded_user_agents,
        )
        calendar = CalendarDays(
            profile.time_zone if profile.counting_window is CountingWindow.TENANT_DAY else "UTC"
        )
        days: list[tuple[int, int]] = []
        day_start, day_end = calendar.bounds(start_us)
        while day_start < end_us:
            days.append((day_start, day_end))
            day_start, day_end = calendar.bounds(day_end)
        plan = Plan(
            settings,
            profile.time_zone,
            tuple(days),
            podcast_id,
            now_us - self._grace_hours * HOUR_US,
        )
        rebuild_id = uuid.uuid4()
        async with self._db.tenant_transaction(tenant_id) as conn:
            row = await conn.fetchrow(
                """
                INSERT INTO count_rebuilds (tenant_id, rebuild_id, podcast_id, start_time,
                    end_time, state)
                VALUES ($1, $2, $3, $4, $5, 'PENDING')
                RETURNING *, now() AS now
                """,
                tenant_id,
                rebuild_id,
                podcast_id,
                from_us(days[0][0]),
                from_us(days[-1][1]),
            )
        task = asyncio.create_task(self._run(tenant_id, rebuild_id, plan, credentials))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return pb.RebuildCountsResponse(count_rebuild=_to_pb(row))

    async def get(self, request: pb.GetCountRebuildRequest) -> pb.GetCountRebuildResponse:
        tenant_id = current_tenant_id()
        rebuild_id = parse_uuid(request.count_rebuild_id, "count_rebuild_id")
        async with self._db.tenant_transaction(tenant_id) as conn:
            row = await conn.fetchrow(
                "SELECT *, now() AS now FROM count_rebuilds WHERE rebuild_id = $1", rebuild_id
            )
        if row is None:
            raise NotFound("count rebuild", request.count_rebuild_id)
        return pb.GetCountRebuildResponse(count_rebuild=_to_pb(row))

    async def _run(
        self, tenant_id: uuid.UUID, rebuild_id: uuid.UUID, plan: Plan, credentials: Metadata
    ) -> None:
        try:
            await self._rebuild(tenant_id, rebuild_id, plan, credentials)
        except Exception as error:
            log.exception("count rebuild failed", extra={"fields": {"rebuild": str(rebuild_id)}})
            message = getattr(error, "message", None) or f"{type(error).__name__}: {error}"
            async with self._db.tenant_transaction(tenant_id) as conn:
                await conn.execute(
                    """
                    UPDATE count_rebuilds SET state = 'FAILED', error = $2,
                        finish_time = now(), update_time = now()
                    WHERE rebuild_id = $1
                    """,
                    rebuild_id,
                    message[:1000],
                )

    async def _rebuild(
        self, tenant_id: uuid.UUID, rebuild_id: uuid.UUID, plan: Plan, credentials: Metadata
    ) -> None:
        first, last = plan.days[0][0], plan.days[-1][1] + (DAY_US if plan.rolling else 0)
        async with self._db.tenant_transaction(tenant_id) as conn:
            await conn.execute(
                "UPDATE count_rebuilds SET state = 'RUNNING', update_time = now() "
                "WHERE rebuild_id = $1",
                rebuild_id,
            )
            episode_ids = [
                str(r[0])
                for r in await conn.fetch(
                    "SELECT DISTINCT episode_id FROM listener_requests "
                    "WHERE request_time >= $1 AND request_time < $2",
                    from_us(first),
                    from_us(last),
                )
            ]
        # Resolved once, while the caller's credential is fresh.
        resolved = await self._episodes.media(tenant_id, episode_ids, credentials)
        media = {
            episode: r.media
            for episode, r in resolved.items()
            if plan.podcast_id is None or r.episode.podcast_id == plan.podcast_id
        }
        podcasts = {episode: resolved[episode].episode.podcast_id for episode in media}
        rules = compile_rules(plan.rules_settings)
        scopes = {counters.TENANT_SCOPE}
        for episode, podcast in podcasts.items():
            scopes.add(counters.scope_token(None, uuid.UUID(episode)))
            scopes.add(counters.scope_token(uuid.UUID(podcast)))
        # Rolling windows: (episode, listener) -> start of its latest rebuilt window.
        seeds: dict[tuple[str, bytes], int] | None = None
        for done, (day_start, day_end) in enumerate(plan.days, start=1):
            async with self._db.tenant_transaction(tenant_id) as conn:
                await begin_counting(conn, tenant_id)
                if plan.rolling and seeds is None:
                    seeds = await _stored_seeds(conn, day_start, list(media))
                outcome = await _rebuild_day(
                    conn, tenant_id, plan, rules, media, podcasts, day_start, day_end, seeds
                )
                seeds = outcome.seeds if plan.rolling else None
                await conn.execute(
                    """
                    UPDATE count_rebuilds SET
                        progress = $2::float8,
                        raw_requests_scanned = raw_requests_scanned + $3,
                        downloads_before = coalesce(downloads_before, 0) + $4,
                        downloads_after = coalesce(downloads_after, 0) + $5,
                        update_time = now(),
                        state = CASE WHEN $2::float8 >= 1 THEN 'SUCCEEDED' ELSE state END,
                        finish_time = CASE WHEN $2::float8 >= 1 THEN now() ELSE finish_time END
                    WHERE rebuild_id = $1
                    """,
                    rebuild_id,
                    done / len(plan.days),
                    outcome.scanned,
                    outcome.before,
                    outcome.after,
                )
            await self._live.forget_day(
                tenant_id,
                counters.counting_day(
                    from_us(day_start), plan.rules_settings.window, plan.time_zone
                ),
                scopes,
            )


@dataclass
class DayOutcome:
    scanned: int
    before: int
    after: int
    seeds: dict[tuple[str, bytes], int]


async def _stored_seeds(
    conn: asyncpg.Connection, day_start: int, episodes: list[str]
) -> dict[tuple[str, bytes], int]:
    """The latest window of each listener and episode that started the day before."""
    rows = await conn.fetch(
        """
        SELECT episode_id, listener_id, max(window_start) AS start FROM (
            SELECT episode_id, listener_id, window_start FROM downloads
            WHERE episode_id = ANY($1) AND window_start >= $2 AND window_start < $3
            UNION ALL
            SELECT episode_id, listener_id, window_start FROM counting_states
            WHERE episode_id = ANY($1) AND window_start >= $2 AND window_start < $3
        ) w GROUP BY episode_id, listener_id
        """,
        episodes,
        from_us(day_start - DAY_US),
        from_us(day_start),
    )
    return {(str(r[0]), bytes(r[1])): to_us(r[2]) for r in rows}


async def _rebuild_day(
    conn: asyncpg.Connection,
    tenant_id: uuid.UUID,
    plan: Plan,
    rules: CountingRules,
    media: dict[str, EpisodeMedia],
    podcasts: dict[str, str],
    day_start: int,
    day_end: int,
    seeds: dict[tuple[str, bytes], int] | None,
) -> DayOutcome:
    read_end = day_end + DAY_US if plan.rolling else day_end
    counts = await conn.fetch(
        """
        SELECT episode_id, count(*) AS n FROM listener_requests
        WHERE request_time >= $1 AND request_time < $2 GROUP BY episode_id
        """,
        from_us(day_start),
        from_us(read_end),
    )
    chunks: list[list[str]] = []
    size = 0
    for row in counts:
        episode = str(row["episode_id"])
        if episode not in media:
            continue
        if not chunks or size + row["n"] > CHUNK_REQUESTS:
            chunks.append([])
            size = 0
        chunks[-1].append(episode)
        size += row["n"]
    outcome = DayOutcome(0, 0, 0, {})
    for chunk in chunks:
        scanned = requests = await _raw_requests(conn, chunk, day_start, read_end)
        outcome.scanned += len(requests)
        if seeds is not None:
            requests = [
                r
                for r in requests
                if r.time_us >= seeds.get((r.episode_id, r.listener_id), -DAY_US) + DAY_US
            ]
        accumulator = DownloadAccumulator(rules)
        accumulator.apply(requests, media)
        windows = [w for w in accumulator.windows() if day_start <= w.start_us < day_end]
        for w in windows:
            key = (w.episode_id, w.listener_id)
            if w.start_us > outcome.seeds.get(key, -1):
                outcome.seeds[key] = w.start_us
        outcome.before += await _delete_day(conn, tenant_id, chunk, day_start, day_end)
        downloads = [d for w in windows if (d := w.download) is not None]
        ads = [ad for w in windows for ad in _ads(w)]
        # Plain inserts: the day's cubes are recomputed from these rows below.
        await insert_downloads(conn, tenant_id, downloads, podcasts, rules.classifier.version)
        await insert_ads(conn, tenant_id, ads, podcasts)
        outcome.after += len(downloads)
        await _write_states(conn, tenant_id, windows, plan.watermark_us)
        await recompute_cubes(conn, tenant_id, chunk, day_start, read_end, plan.time_zone)
        # Requests a window of the day before covers (rolling windows) are its repeats.
        await forget_counting_day(conn, tenant_id, chunk, plan.funnel.counting_date(day_start))
        funnel = FunnelRollup(plan.funnel)
        funnel.add(funnel_of_day(scanned, windows, rules, day_start, day_end, funnel.bucket))
        await funnel.write(conn, tenant_id, podcasts)
    return outcome


def _ads(window: WindowState) -> list[AdDelivery]:
    download = window.download
    return [] if download is None else [AdDelivery(download, slot) for slot in window.ads]


async def _raw_requests(
    conn: asyncpg.Connection, episodes: list[str], start_us: int, end_us: int
) -> list[ListenerRequest]:
    rows = await conn.fetch(
        """
        SELECT request_id, request_time, episode_id, listener_id, household_id, user_agent,
            http_method, status_code, range_header, bytes_served, country_code, ip_excluded,
            referer
        FROM listener_requests
        WHERE request_time >= $1 AND request_time < $2 AND episode_id = ANY($3)
        ORDER BY request_time, request_id
        """,
        from_us(start_us),
        from_us(end_us),
        episodes,
    )
    return [
        ListenerRequest(
            r[0],
            to_us(r[1]),
            str(r[2]),
            bytes(r[3]),
            bytes(r[4]),
            r[5],
            r[6],
            r[7],
            r[8],
            r[9],
            r[10] or UNKNOWN_COUNTRY,
            r[11],
            r[12],
        )
        for r in rows
    ]


async def _delete_day(
    conn: asyncpg.Connection,
    tenant_id: uuid.UUID,
    episodes: list[str],
    day_start: int,
    day_end: int,
) -> int:
    """Deletes the windows of the day (detail rows and states); returns the downloads."""
    args = (tenant_id, episodes, from_us(day_start), from_us(day_end))
    where = "tenant_id = $1 AND episode_id = ANY($2) AND window_start >= $3 AND window_start < $4"
    await conn.execute(f"DELETE FROM ad_deliveries WHERE {where}", *args)
    await conn.execute(f"DELETE FROM counting_states WHERE {where}", *args)
    deleted: str = await conn.execute(f"DELETE FROM downloads WHERE {where}", *args)
    return int(deleted.split()[-1])


async def _write_states(
    conn: asyncpg.Connection,
    tenant_id: uuid.UUID,
    windows: Sequence[WindowState],
    watermark_us: int,
) -> None:
    """States of the windows ingestion may still add to or check late requests against
    (a rolling window closed up to a day before the watermark tells a request in it
    from one opening a window of its own); older ones are never read."""
    open_windows = [w for w in windows if w.start_us + 2 * DAY_US + HOUR_US > watermark_us]
    if not open_windows:
        return
    await conn.execute(
        """
        INSERT INTO counting_states (tenant_id, episode_id, listener_id, window_start, state)
        SELECT $1, * FROM unnest($2::uuid[], $3::bytea[], $4::timestamptz[], $5::bytea[])
        """,
        tenant_id,
        [w.episode_id for w in open_windows],
        [w.listener_id for w in open_windows],
        [from_us(w.start_us) for w in open_windows],
        [encode(w) for w in open_windows],
    )


# Downloads in [$3, $4) with how many ads each delivered: what every cube sums. The ads
# are counted per download through ad_deliveries' primary key: the rows were all written
# by this transaction, so the planner's statistics predate them, and a join it planned
# for a handful of rows was quadratic in a day's downloads.
_DETAIL = """
    SELECT d.*, (
        SELECT count(*) FROM ad_deliveries a
        WHERE a.tenant_id = d.tenant_id AND a.episode_id = d.episode_id
            AND a.listener_id = d.listener_id AND a.window_start = d.window_start
    ) AS ads
    FROM downloads d
    WHERE d.tenant_id = $1 AND d.episode_id = ANY($2)
        AND d.download_time >= $3 AND d.download_time < $4
"""


async def recompute_cubes(
    conn: asyncpg.Connection,
    tenant_id: uuid.UUID,
    episodes: list[str],
    start_us: int,
    end_us: int,
    time_zone: str,
) -> None:
    """Every rollup row and sketch of `episodes` whose hour or day meets [start, end),
    recomputed from the downloads and ad deliveries tables."""
    first_hour = from_us(start_us - start_us % HOUR_US)
    last_hour = from_us(end_us + (-end_us) % HOUR_US)
    await conn.execute(
        """
        DELETE FROM rollup_hourly
        WHERE tenant_id = $1 AND episode_id = ANY($2) AND hour >= $3 AND hour < $4
        """,
        tenant_id,
        episodes,
        first_hour,
        last_hour,
    )
    await conn.execute(
        f"""
        INSERT INTO rollup_hourly (tenant_id, hour, episode_id, app, device_class,
            country_code, podcast_id, downloads, ads_delivered)
        SELECT $1, date_trunc('hour', download_time, 'UTC'), episode_id, app, device_class,
            country_code, podcast_id, count(*), sum(ads)
        FROM ({_DETAIL}) detail
        GROUP BY 2, 3, 4, 5, 6, 7
        """,
        tenant_id,
        episodes,
        first_hour,
        last_hour,
    )
    zones = [("UTC", "UTC")]
    if time_zone not in UTC_ZONE_NAMES:
        zones.append(("local", time_zone))
    for zone, name in zones:
        calendar = CalendarDays(name)
        first_start, _ = calendar.bounds(start_us)
        _, last_end = calendar.bounds(end_us - 1)
        local = ZoneInfo(name)
        days = (
            from_us(first_start).astimezone(local).date(),
            from_us(last_end - 1).astimezone(local).date(),
        )
        span = (tenant_id, episodes, from_us(first_start), from_us(last_end), zone, name)
        for table in ("rollup_daily", "rollup_daily_dimension", "rollup_daily_ad_slot"):
            await conn.execute(
                f"""
                DELETE FROM {table} WHERE tenant_id = $1 AND zone = $3
                    AND episode_id = ANY($2) AND day >= $4 AND day <= $5
                """,
                tenant_id,
                episodes,
                zone,
                *days,
            )
        await conn.execute(
            f"""
            INSERT INTO rollup_daily (tenant_id, zone, day, episode_id, podcast_id,
                downloads, ads_delivered)
            SELECT $1, $5, (download_time AT TIME ZONE $6)::date, episode_id, podcast_id,
                count(*), sum(ads)
            FROM ({_DETAIL}) detail
            GROUP BY 3, 4, 5
            """,
            *span,
        )
        await conn.execute(
            f"""
            INSERT INTO rollup_daily_dimension (tenant_id, zone, dimension, day, value,
                episode_id, podcast_id, downloads, ads_delivered)
            SELECT $1, $5, v.dimension, (d.download_time AT TIME ZONE $6)::date, v.value,
                d.episode_id, d.podcast_id, count(*), sum(d.ads)
            FROM ({_DETAIL}) d
            CROSS JOIN LATERAL (
                VALUES ('app', d.app), ('device_class', d.device_class),
                    ('country', d.country_code)
            ) AS v(dimension, value)
            GROUP BY 3, 4, 5, 6, 7
            """,
            *span,
        )
        await conn.execute(
            """
            INSERT INTO rollup_daily_ad_slot (tenant_id, zone, day, ad_slot_id, episode_id,
                podcast_id, ads_delivered)
            SELECT $1, $5, (delivered_time AT TIME ZONE $6)::date, ad_slot_id, episode_id,
                podcast_id, count(*)
            FROM ad_deliveries
            WHERE tenant_id = $1 AND episode_id = ANY($2)
                AND delivered_time >= $3 AND delivered_time < $4
            GROUP BY 3, 4, 5, 6
            """,
            *span,
        )
        await _recompute_sketches(
            conn, tenant_id, episodes, zone, name, first_start, last_end, days
        )


async def _recompute_sketches(
    conn: asyncpg.Connection,
    tenant_id: uuid.UUID,
    episodes: list[str],
    zone: str,
    zone_name: str,
    start_us: int,
    end_us: int,
    days: tuple[dt.date, dt.date],
) -> None:
    members: dict[tuple[dt.date, str], list[bytes]] = defaultdict(list)
    podcasts: dict[str, str] = {}
    for row in await conn.fetch(
        """
        SELECT (download_time AT TIME ZONE $5)::date AS day, episode_id, podcast_id, listener_id
        FROM downloads
        WHERE tenant_id = $1 AND episode_id = ANY($2)
            AND download_time >= $3 AND download_time < $4
        """,
        tenant_id,
        episodes,
        from_us(start_us),
        from_us(end_us),
        zone_name,
    ):
        episode = str(row["episode_id"])
        members[(row["day"], episode)].append(bytes(row["listener_id"]))
        podcasts[episode] = str(row["podcast_id"])
    await conn.execute(
        """
        DELETE FROM listener_sketches WHERE tenant_id = $1 AND zone = $3
            AND episode_id = ANY($2) AND day >= $4 AND day <= $5
        """,
        tenant_id,
        episodes,
        zone,
        *days,
    )
    if not members:
        return
    keys = sorted(members)
    sketches = []
    for key in keys:
        sketch = hll_sketch(SKETCH_LG_K)
        for listener_id in members[key]:
            sketch.update(sketch_member(listener_id))
        sketches.append(sketch.serialize_compact())
    await conn.execute(
        """
        INSERT INTO listener_sketches (tenant_id, zone, day, episode_id, podcast_id, sketch)
        SELECT $1, $2, * FROM unnest($3::date[], $4::uuid[], $5::uuid[], $6::bytea[])
        """,
        tenant_id,
        zone,
        [key[0] for key in keys],
        [key[1] for key in keys],
        [podcasts[key[1]] for key in keys],
        sketches,
    )


def _timestamp(moment: dt.datetime | None) -> Timestamp | None:
    if moment is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _to_pb(row: asyncpg.Record) -> pb.CountRebuild:
    state = row["state"]
    error = row["error"]
    finished = row["finish_time"]
    if state in ("PENDING", "RUNNING") and row["now"] - row["update_time"] > STALE_AFTER:
        state, error, finished = (
            "FAILED",
            "interrupted (the server restarted): start it again",
            None,
        )
    return pb.CountRebuild(
        id=str(row["rebuild_id"]),
        podcast_id=str(row["podcast_id"]) if row["podcast_id"] else "",
        start_time=_timestamp(row["start_time"]),
        end_time=_timestamp(row["end_time"]),
        state=_STATES[state],
        progress=row["progress"],
        raw_requests_scanned=row["raw_requests_scanned"],
        downloads_before=row["downloads_before"] or 0,
        downloads_after=row["downloads_after"] or 0,
        error_message=error,
        create_time=_timestamp(row["create_time"]),
        complete_time=_timestamp(finished),
    )
