"""PostgreSQL side of ingestion: raw requests, counting state and everything counted,
written in one transaction per group of batches.

One transaction stores the raw rows (only the new ones count), charges the tenant's
monthly quota, loads the counting state of the windows the rows touch, applies the
accumulator and writes what changed: states, downloads, ad deliveries, rollups and
listener sketches.

A tenant's transactions count one at a time, under an advisory lock: each reads states,
changes them and writes them back, and two at once would each miss the other's
requests. Raw rows go in before the lock (they are only ever added). Within this
process the next transaction also counts before the lock, on the states the one before
it is writing (Handoff); a counting version bumped under the lock shows whether anything
else counted in between, and if so it counts again under the lock. Different tenants
never wait for each other.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TypeVar
from zoneinfo import ZoneInfo

import asyncpg
from datasketches import hll_sketch

from services.analytics.counting import (
    DAY_US,
    UNKNOWN_COUNTRY,
    AdDelivery,
    CalendarDays,
    CountDelta,
    CountingRules,
    CountingWindow,
    Download,
    DownloadAccumulator,
    EpisodeMedia,
    FilterReason,
    ListenerRequest,
    WindowState,
    from_us,
)
from services.analytics.counting.funnel import (
    Arrival,
    FunnelKey,
    Outcome,
    arrivals,
    funnel_changes,
)
from services.analytics.counting.user_agents import UNKNOWN
from services.analytics.ingest.funnel_rollup import Bucket, FunnelRollup, FunnelScope
from services.analytics.ingest.records import RAW_COLUMNS, RawRow
from services.analytics.ingest.state import decode, encode
from services.analytics.live.counters import CountedDownloads, EpisodeRequests
from services.shared.db import Database
from services.shared.errors import ResourceExhausted, Unavailable

log = logging.getLogger("podmesh.analytics.ingest")

HOUR_US = 3_600_000_000
# Listener sketches: Apache DataSketches HLL, 2^12 buckets (about 1.6% error).
SKETCH_LG_K = 12
# Namespace of the per-tenant advisory lock (any int4; "INGS").
_LOCK_NAMESPACE = 0x494E4753
_EPOCH_DATE = dt.date(1970, 1, 1)
T = TypeVar("T")
UTC_ZONE_NAMES = frozenset(
    {"UTC", "Etc/UTC", "Etc/UCT", "UCT", "Etc/Universal", "Universal", "Zulu"}
)


class QuotaExceeded(ResourceExhausted):
    """The tenant's monthly events would pass its quota; nothing was stored."""


@dataclass(slots=True)
class StagedBatch:
    """A checked batch waiting for its transaction."""

    rows: list[RawRow]
    # Parallel to rows: the anonymised requests.
    requests: list[ListenerRequest]
    media: Mapping[str, EpisodeMedia]
    podcasts: Mapping[str, str]
    # (episode id, request time) of the records dropped as repeats within the batch.
    repeated: Sequence[tuple[str, int]] = ()


@dataclass(frozen=True, slots=True)
class TenantCounting:
    """How one tenant's batches are counted and limited right now."""

    rules: CountingRules
    window: CountingWindow
    time_zone: str
    monthly_events: int


@dataclass(frozen=True, slots=True)
class Counted:
    """A transaction's counting: what changed, and the windows it changed, encoded."""

    delta: CountDelta
    encoded: dict[tuple[str, bytes, int], bytes]
    # The tenant's counting version the states it counted on lead to.
    version: int
    # Parallel to the requests counted: filtered (why), late or countable.
    outcomes: list[tuple[Arrival, FilterReason | None]]
    # The counting funnel's changes (duplicates are added under the lock).
    funnel: FunnelRollup


@dataclass(eq=False)
class Handoff:
    """What one of a tenant's counting transactions tells the next one in this process.

    `locked` is set once it holds the tenant's counting lock: the next may start, copy
    its raw rows and load states. `settled` is set once its counting is final (or it
    failed, and `counted` is None): the next may count on top of it before the lock.
    """

    locked: asyncio.Event = field(default_factory=asyncio.Event)
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    counted: Counted | None = None

    def settle(self, counted: Counted | None) -> None:
        if not self.settled.is_set():
            self.counted = counted
            self.settled.set()
        self.locked.set()


@dataclass(slots=True)
class BatchArrivals:
    """What counting made of a batch's rows stored for the first time (its acknowledgement)."""

    accepted: int = 0
    filtered: dict[FilterReason, int] = field(default_factory=dict)
    late: int = 0

    @property
    def countable(self) -> int:
        return self.accepted - sum(self.filtered.values()) - self.late


@dataclass(slots=True)
class GroupResult:
    # Per batch, in the order given: rows stored for the first time.
    accepted: list[int]
    # Per batch, in the order given: how those rows were counted.
    arrivals: list[BatchArrivals] = field(default_factory=list)
    # For the live counters.
    requests: list[EpisodeRequests] = field(default_factory=list)
    counted: list[CountedDownloads] = field(default_factory=list)


def partition_name(day: int) -> str:
    return f"listener_requests_{(_EPOCH_DATE + dt.timedelta(days=day)):%Y%m%d}"


async def begin_counting(conn: asyncpg.Connection, tenant_id: uuid.UUID) -> int:
    """Starts a counting transaction: waits for the tenant's others (ingestion, rebuilds)
    to end, makes its commit wait for the WAL flush whatever the server's default (an
    acknowledged batch must survive a crash), and returns the tenant's new counting
    version: one more for every counting transaction that commits."""
    version: int = await conn.fetchval(
        """
        WITH locked AS (
            SELECT pg_advisory_xact_lock($2::int4, $3::int4),
                set_config('synchronous_commit', 'on', true)
        )
        INSERT INTO counting_versions AS v (tenant_id, version)
        SELECT $1, 1 FROM locked
        ON CONFLICT (tenant_id) DO UPDATE SET version = v.version + 1
        RETURNING version
        """,
        tenant_id,
        _LOCK_NAMESPACE,
        int.from_bytes(tenant_id.bytes[:4], "big", signed=True),
    )
    return version


def _month(now_us: int) -> dt.date:
    return from_us(now_us).date().replace(day=1)


@lru_cache(maxsize=512)
def _calendar(time_zone: str) -> CalendarDays:
    return CalendarDays(time_zone)


def _stored(value: str, unknown: str) -> str:
    """Dimension values as the cubes store them: '' for unknown."""
    return "" if value == unknown else value


class IngestStore:
    def __init__(self, db: Database, hypertable: bool) -> None:
        self._db = db
        # TimescaleDB chunks are not ours to COPY into: every insert goes through the
        # hypertable (and its policy) from the staging table.
        self._hypertable = hypertable
        self._partitions: set[int] = set()

    @classmethod
    async def create(cls, db: Database) -> IngestStore:
        async with db.platform_transaction() as conn:
            hypertable = await conn.fetchval(
                "SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'"
            )
        return cls(db, bool(hypertable))

    async def ensure_partitions(self, days: Iterable[int]) -> None:
        """Creates the daily partitions of `days` that this process has not seen yet.

        In its own transaction, before the batch's: creating a partition locks the
        parent table, which must never wait inside a transaction that holds rows.
        """
        missing = sorted(set(days) - self._partitions)
        if not missing or self._hypertable:
            self._partitions.update(missing)
            return
        async with self._db.platform_transaction() as conn:
            for day in missing:
                date = _EPOCH_DATE + dt.timedelta(days=day)
                await conn.fetchval("SELECT analytics_ensure_request_partitions($1, $1)", date)
        self._partitions.update(missing)

    async def drop_partitions_before(self, day: int) -> list[str]:
        """Drops the daily partitions (all tenants) of days before `day`; their names."""
        async with self._db.platform_transaction() as conn:
            rows = await conn.fetch(
                "SELECT analytics_drop_request_partitions($1)",
                _EPOCH_DATE + dt.timedelta(days=day),
            )
        self._partitions = {known for known in self._partitions if known >= day}
        return [row[0] for row in rows]

    async def prune_states_before(self, time_us: int) -> int:
        """Deletes the states of windows (all tenants) that started before `time_us`."""
        async with self._db.platform_transaction() as conn:
            pruned: int = await conn.fetchval(
                "SELECT analytics_prune_counting_states($1)", from_us(time_us)
            )
        return pruned

    async def commit(
        self,
        tenant_id: uuid.UUID,
        batches: Sequence[StagedBatch],
        counting: TenantCounting,
        watermark_us: int,
        handoff: Handoff,
        previous: Handoff | None = None,
    ) -> GroupResult:
        """Stores and counts a group of batches in one transaction, or nothing of them.

        Requests for windows that closed before `watermark_us` are stored, not counted.
        Raises QuotaExceeded when the group's new rows would pass the monthly quota.

        The transaction reports through `handoff` (see Handoff) and, given the handoff
        of the tenant's transaction before it (`previous`), stores its raw rows and
        counts while that one still writes.
        """
        rows = [row for batch in batches for row in batch.rows]
        try:
            return await self._commit(
                tenant_id, batches, rows, counting, watermark_us, handoff, previous
            )
        except (asyncpg.InterfaceError, asyncpg.PostgresConnectionError) as error:
            raise Unavailable(f"database unavailable: {type(error).__name__}") from error
        finally:
            handoff.settle(None)

    async def _commit(
        self,
        tenant_id: uuid.UUID,
        batches: Sequence[StagedBatch],
        rows: list[RawRow],
        counting: TenantCounting,
        watermark_us: int,
        handoff: Handoff,
        previous: Handoff | None,
    ) -> GroupResult:
        await self.ensure_partitions({day_index_of(row) for row in rows})
        async with self._db.tenant_transaction(tenant_id) as conn:
            # Raw rows need no lock: they are only ever added, and a row that two
            # transactions both add waits for the first to end (and is a duplicate).
            new = await self._insert_raw(conn, rows)
            result, fresh, media, podcasts = _sort_new(batches, new)
            rules = counting.rules
            early = None
            if fresh and previous is not None and rules.days is not None:
                early = await self._count_early(
                    conn, tenant_id, fresh, media, counting, watermark_us, previous
                )
            version = await begin_counting(conn, tenant_id)
            handoff.locked.set()
            if early is not None and early.version == version:
                counted = early
            else:
                states = await self._load_states(conn, tenant_id, fresh, rules)
                counted = _count(fresh, states, media, counting, watermark_us, version)
            handoff.settle(counted)
            accepted = sum(result.accepted)
            if accepted:
                await self._charge(conn, tenant_id, accepted, counting)
            result.arrivals = _batch_arrivals(result.accepted, counted.outcomes)
            if fresh:
                await self._write_states(conn, tenant_id, counted)
                result.counted = await self._write_counts(
                    conn, tenant_id, counted.delta, podcasts, counting
                )
            funnel = counted.funnel
            funnel.add(_duplicates(batches, new, funnel.bucket))
            await funnel.write(conn, tenant_id, podcasts)
        return result

    async def _count_early(
        self,
        conn: asyncpg.Connection,
        tenant_id: uuid.UUID,
        requests: list[ListenerRequest],
        media: Mapping[str, EpisodeMedia],
        counting: TenantCounting,
        watermark_us: int,
        previous: Handoff,
    ) -> Counted | None:
        """Counts before the lock, on the states as they will be once the transaction
        before commits: what is stored now, and what that one writes. Right when no
        other counting transaction commits in between, which the version shows."""
        rules = counting.rules
        stored = await self._load_states(conn, tenant_id, requests, rules)
        await previous.settled.wait()
        before = previous.counted
        if before is None:
            return None
        states = {_window_key(state): state for state in stored}
        for key, blob in before.encoded.items():
            if key in states:
                states[key] = decode(blob)
        assert rules.days is not None
        start = rules.days.start
        for r in requests:
            key = (r.episode_id, r.listener_id, start(r.time_us))
            if key not in states and key in before.encoded:
                states[key] = decode(before.encoded[key])
        return _count(
            requests, list(states.values()), media, counting, watermark_us, before.version + 1
        )

    async def _insert_raw(self, conn: asyncpg.Connection, rows: list[RawRow]) -> list[bool]:
        """Stores the rows not stored before; says which were new, in order.

        The fast path copies straight into the day partitions. A row stored before (a
        resend) makes it fail as a whole: then the rows go through the staging table,
        and only the new ones are inserted.
        """
        if not rows:
            return []
        if not self._hypertable:
            by_day: dict[int, list[RawRow]] = defaultdict(list)
            for row in rows:
                by_day[day_index_of(row)].append(row)
            try:
                async with conn.transaction():
                    for day, day_rows in by_day.items():
                        await conn.copy_records_to_table(
                            partition_name(day), records=day_rows, columns=RAW_COLUMNS
                        )
                return [True] * len(rows)
            except asyncpg.UniqueViolationError:
                pass
        await conn.execute(
            "CREATE TEMP TABLE ingest_requests (LIKE listener_requests) ON COMMIT DROP"
        )
        await conn.copy_records_to_table("ingest_requests", records=rows, columns=RAW_COLUMNS)
        inserted = await conn.fetch(
            """
            INSERT INTO listener_requests SELECT * FROM ingest_requests
            ON CONFLICT DO NOTHING
            RETURNING request_id, request_time
            """
        )
        fresh = {(r["request_id"], r["request_time"]) for r in inserted}
        flags: list[bool] = []
        for row in rows:
            key = (row[6], row[1])
            if key in fresh:
                fresh.discard(key)
                flags.append(True)
            else:
                flags.append(False)
        return flags

    async def _charge(
        self, conn: asyncpg.Connection, tenant_id: uuid.UUID, events: int, counting: TenantCounting
    ) -> None:
        now_us = _now_us()
        total = await conn.fetchval(
            """
            INSERT INTO ingest_usage AS u (tenant_id, month, events) VALUES ($1, $2, $3)
            ON CONFLICT (tenant_id, month) DO UPDATE SET events = u.events + EXCLUDED.events
            RETURNING events
            """,
            tenant_id,
            _month(now_us),
            events,
        )
        if total > counting.monthly_events:
            raise QuotaExceeded(
                f"the tenant's quota of {counting.monthly_events:,} events this month "
                f"would be exceeded ({total - events:,} used, {events:,} in this batch)",
                reason="MONTHLY_QUOTA_EXCEEDED",
                metadata={"quota": str(counting.monthly_events)},
            )

    async def _load_states(
        self,
        conn: asyncpg.Connection,
        tenant_id: uuid.UUID,
        requests: list[ListenerRequest],
        rules: CountingRules,
    ) -> list[WindowState]:
        days = rules.days
        if days is not None:
            exact = list({(r.episode_id, r.listener_id, days.start(r.time_us)) for r in requests})
            rows = await conn.fetch(
                """
                SELECT s.state
                FROM unnest($2::uuid[], $3::bytea[], $4::timestamptz[])
                    AS k(episode_id, listener_id, window_start)
                JOIN counting_states s ON s.tenant_id = $1 AND s.episode_id = k.episode_id
                    AND s.listener_id = k.listener_id AND s.window_start = k.window_start
                """,
                tenant_id,
                [key[0] for key in exact],
                [key[1] for key in exact],
                [from_us(key[2]) for key in exact],
            )
        else:
            # Every window of the listener and episode that a request could fall in
            # or move: those still open at the earliest request.
            earliest: dict[tuple[str, bytes], int] = {}
            for r in requests:
                key = (r.episode_id, r.listener_id)
                if r.time_us < earliest.get(key, r.time_us + 1):
                    earliest[key] = r.time_us
            rows = await conn.fetch(
                """
                SELECT s.state
                FROM unnest($2::uuid[], $3::bytea[], $4::timestamptz[])
                    AS k(episode_id, listener_id, since)
                JOIN counting_states s ON s.tenant_id = $1 AND s.episode_id = k.episode_id
                    AND s.listener_id = k.listener_id AND s.window_start > k.since
                """,
                tenant_id,
                [key[0] for key in earliest],
                [key[1] for key in earliest],
                [from_us(time_us - DAY_US) for time_us in earliest.values()],
            )
        rolling = days is None
        # States of the other kind of window (the tenant changed its window) are left
        # alone: windows of the new kind start afresh.
        return [state for row in rows if ((state := decode(row[0])).pieces is None) != rolling]

    async def _write_states(
        self, conn: asyncpg.Connection, tenant_id: uuid.UUID, counted: Counted
    ) -> None:
        delta = counted.delta
        if delta.dropped_windows:
            gone = [_window_key(w) for w in delta.dropped_windows]
            await conn.execute(
                """
                DELETE FROM counting_states s
                USING unnest($2::uuid[], $3::bytea[], $4::timestamptz[])
                    AS k(episode_id, listener_id, window_start)
                WHERE s.tenant_id = $1 AND s.episode_id = k.episode_id
                    AND s.listener_id = k.listener_id AND s.window_start = k.window_start
                """,
                tenant_id,
                [key[0] for key in gone],
                [key[1] for key in gone],
                [from_us(key[2]) for key in gone],
            )
        if not counted.encoded:
            return
        keys = list(counted.encoded)
        await conn.execute(
            """
            INSERT INTO counting_states AS s
                (tenant_id, episode_id, listener_id, window_start, state)
            SELECT $1, * FROM unnest($2::uuid[], $3::bytea[], $4::timestamptz[], $5::bytea[])
            ON CONFLICT (tenant_id, episode_id, listener_id, window_start)
                DO UPDATE SET state = EXCLUDED.state
            """,
            tenant_id,
            [key[0] for key in keys],
            [key[1] for key in keys],
            [from_us(key[2]) for key in keys],
            list(counted.encoded.values()),
        )

    async def _write_counts(
        self,
        conn: asyncpg.Connection,
        tenant_id: uuid.UUID,
        delta: CountDelta,
        podcasts: Mapping[str, str],
        counting: TenantCounting,
    ) -> list[CountedDownloads]:
        """Downloads and ad deliveries, then rollups and sketches from exactly the rows
        inserted and deleted, so the cubes always add up to the detail tables."""
        ads_gone = await delete_ads(conn, tenant_id, delta.ads_removed)
        downloads_gone = await delete_downloads(conn, tenant_id, delta.downloads_removed)
        downloads_new = await insert_downloads(
            conn, tenant_id, delta.downloads_added, podcasts, counting.rules.classifier.version
        )
        ads_new = await insert_ads(conn, tenant_id, delta.ads_added, podcasts)
        if not (ads_gone or downloads_gone or downloads_new or ads_new):
            return []
        cube = Cube(counting, podcasts)
        for download in downloads_gone:
            cube.add_download(download, -1)
        for download in downloads_new:
            cube.add_download(download, 1)
        for ad in ads_gone:
            cube.add_ad(ad, -1)
        for ad in ads_new:
            cube.add_ad(ad, 1)
        await cube.write(conn, tenant_id)
        return cube.live()


def _sort_new(
    batches: Sequence[StagedBatch], new: list[bool]
) -> tuple[GroupResult, list[ListenerRequest], dict[str, EpisodeMedia], dict[str, str]]:
    """Which requests of each batch are stored for the first time (to count)."""
    result = GroupResult(accepted=[])
    fresh: list[ListenerRequest] = []
    media: dict[str, EpisodeMedia] = {}
    podcasts: dict[str, str] = {}
    per_episode: dict[str, int] = defaultdict(int)
    position = 0
    for batch in batches:
        stored = 0
        for request in batch.requests:
            if new[position]:
                stored += 1
                per_episode[request.episode_id] += 1
                fresh.append(request)
            position += 1
        result.accepted.append(stored)
        media.update(batch.media)
        podcasts.update(batch.podcasts)
    result.requests = [
        EpisodeRequests(uuid.UUID(episode), uuid.UUID(podcasts[episode]), count)
        for episode, count in per_episode.items()
    ]
    return result, fresh, media, podcasts


def _batch_arrivals(
    accepted: list[int], outcomes: list[tuple[Arrival, FilterReason | None]]
) -> list[BatchArrivals]:
    """Per batch: the outcomes of its fresh requests (in batch order, as counted)."""
    result: list[BatchArrivals] = []
    position = 0
    for stored in accepted:
        batch = BatchArrivals(accepted=stored)
        for arrival, reason in outcomes[position : position + stored]:
            if reason is not None:
                batch.filtered[reason] = batch.filtered.get(reason, 0) + 1
            elif arrival is Arrival.LATE:
                batch.late += 1
        position += stored
        result.append(batch)
    return result


def _duplicates(
    batches: Sequence[StagedBatch], new: list[bool], bucket: Callable[[int], Bucket]
) -> dict[FunnelKey[Bucket], int]:
    """The funnel's duplicates: rows stored before, and repeats within a batch."""
    funnel: dict[FunnelKey[Bucket], int] = defaultdict(int)
    position = 0
    for batch in batches:
        for request in batch.requests:
            if not new[position]:
                key = (request.episode_id, bucket(request.time_us), Outcome.DUPLICATE, None)
                funnel[key] += 1
            position += 1
        for episode_id, time_us in batch.repeated:
            funnel[(episode_id, bucket(time_us), Outcome.DUPLICATE, None)] += 1
    return funnel


def _count(
    requests: list[ListenerRequest],
    states: list[WindowState],
    media: Mapping[str, EpisodeMedia],
    counting: TenantCounting,
    watermark_us: int,
    version: int,
) -> Counted:
    rules = counting.rules
    accumulator = DownloadAccumulator(rules)
    # Before any state is loaded: requests for windows closed before the watermark,
    # whose state may already be pruned, are left to RebuildCounts.
    accumulator.evict(watermark_us)
    accumulator.load(states)
    delta = accumulator.apply(requests, media)
    encoded = {_window_key(w): encode(w) for w in delta.changed_windows}
    # Here rather than under the lock: the early count runs this beside the writes of
    # the transaction before.
    outcomes = arrivals(requests, delta, rules)
    funnel = FunnelRollup(FunnelScope(counting.window, counting.time_zone))
    funnel.add(funnel_changes(requests, outcomes, delta, funnel.bucket))
    return Counted(delta, encoded, version, outcomes, funnel)


def day_index_of(row: RawRow) -> int:
    moment = row[1]
    return (moment.date() - _EPOCH_DATE).days


def _now_us() -> int:
    return time.time_ns() // 1000


def _window_key(window: WindowState) -> tuple[str, bytes, int]:
    return window.episode_id, window.listener_id, window.start_us


def _download_key(download: Download) -> tuple[str, bytes, int]:
    return download.episode_id, download.listener_id, download.window_start_us


def _ad_key(ad: AdDelivery) -> tuple[str, bytes, int, str]:
    return (*_download_key(ad.download), ad.slot_id)


def _affected(
    sent: list[T], returned: list[asyncpg.Record], key: Callable[[T], tuple[object, ...]]
) -> list[T]:
    """The rows a statement actually affected: all of them, but in odd cases (a state
    pruned while its download stayed), and then the returned keys say which."""
    if len(returned) == len(sent):
        return sent
    log.warning(
        "counting state and detail rows disagreed",
        extra={"fields": {"sent": len(sent), "affected": len(returned)}},
    )
    affected = {
        (str(r[0]), bytes(r[1]), _us(r[2])) + ((str(r[3]),) if len(r) > 3 else ()) for r in returned
    }
    return [item for item in sent if key(item) in affected]


def _us(moment: dt.datetime) -> int:
    return (moment - from_us(0)) // dt.timedelta(microseconds=1)


async def delete_ads(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, ads: list[AdDelivery]
) -> list[AdDelivery]:
    if not ads:
        return []
    returned = await conn.fetch(
        """
        DELETE FROM ad_deliveries a
        USING unnest($2::uuid[], $3::bytea[], $4::timestamptz[], $5::uuid[])
            AS k(episode_id, listener_id, window_start, ad_slot_id)
        WHERE a.tenant_id = $1 AND a.episode_id = k.episode_id
            AND a.listener_id = k.listener_id AND a.window_start = k.window_start
            AND a.ad_slot_id = k.ad_slot_id
        RETURNING a.episode_id, a.listener_id, a.window_start, a.ad_slot_id
        """,
        tenant_id,
        [a.download.episode_id for a in ads],
        [a.download.listener_id for a in ads],
        [from_us(a.download.window_start_us) for a in ads],
        [a.slot_id for a in ads],
    )
    return _affected(ads, returned, _ad_key)


async def delete_downloads(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, downloads: list[Download]
) -> list[Download]:
    if not downloads:
        return []
    returned = await conn.fetch(
        """
        DELETE FROM downloads d
        USING unnest($2::uuid[], $3::bytea[], $4::timestamptz[])
            AS k(episode_id, listener_id, window_start)
        WHERE d.tenant_id = $1 AND d.episode_id = k.episode_id
            AND d.listener_id = k.listener_id AND d.window_start = k.window_start
        RETURNING d.episode_id, d.listener_id, d.window_start
        """,
        tenant_id,
        [d.episode_id for d in downloads],
        [d.listener_id for d in downloads],
        [from_us(d.window_start_us) for d in downloads],
    )
    return _affected(downloads, returned, _download_key)


async def insert_downloads(
    conn: asyncpg.Connection,
    tenant_id: uuid.UUID,
    downloads: list[Download],
    podcasts: Mapping[str, str],
    user_agent_lists: str,
) -> list[Download]:
    """Stores new downloads with their household and the version of the User-Agent
    lists that classified them."""
    if not downloads:
        return []
    returned = await conn.fetch(
        """
        INSERT INTO downloads (tenant_id, episode_id, listener_id, window_start, podcast_id,
            download_time, app, device_class, os, country_code, household_id, region_code,
            user_agent_lists)
        SELECT $1, k.*, '', $12 FROM unnest($2::uuid[], $3::bytea[], $4::timestamptz[],
            $5::uuid[], $6::timestamptz[], $7::text[], $8::text[], $9::text[], $10::text[],
            $11::bytea[]) AS k
        ON CONFLICT DO NOTHING
        RETURNING episode_id, listener_id, window_start
        """,
        tenant_id,
        [d.episode_id for d in downloads],
        [d.listener_id for d in downloads],
        [from_us(d.window_start_us) for d in downloads],
        [podcasts[d.episode_id] for d in downloads],
        [from_us(d.time_us) for d in downloads],
        [_stored(d.app, UNKNOWN) for d in downloads],
        [_stored(d.device_class.value, "unknown") for d in downloads],
        [_stored(d.os, UNKNOWN) for d in downloads],
        [_stored(d.country, UNKNOWN_COUNTRY) for d in downloads],
        [d.household_id for d in downloads],
        user_agent_lists,
    )
    return _affected(downloads, returned, _download_key)


async def insert_ads(
    conn: asyncpg.Connection,
    tenant_id: uuid.UUID,
    ads: list[AdDelivery],
    podcasts: Mapping[str, str],
) -> list[AdDelivery]:
    if not ads:
        return []
    returned = await conn.fetch(
        """
        INSERT INTO ad_deliveries (tenant_id, episode_id, listener_id, window_start, ad_slot_id,
            podcast_id, delivered_time, household_id)
        SELECT $1, * FROM unnest($2::uuid[], $3::bytea[], $4::timestamptz[], $5::uuid[],
            $6::uuid[], $7::timestamptz[], $8::bytea[])
        ON CONFLICT DO NOTHING
        RETURNING episode_id, listener_id, window_start, ad_slot_id
        """,
        tenant_id,
        [a.download.episode_id for a in ads],
        [a.download.listener_id for a in ads],
        [from_us(a.download.window_start_us) for a in ads],
        [a.slot_id for a in ads],
        [podcasts[a.download.episode_id] for a in ads],
        [from_us(a.download.time_us) for a in ads],
        [a.download.household_id for a in ads],
    )
    return _affected(ads, returned, _ad_key)


class Cube:
    """Rollup deltas of one transaction, summed per key before they are written.

    Days are the download's UTC date ('UTC' rows) and its date in the tenant's time
    zone ('local' rows, only when that zone is not UTC: the query side reads 'UTC'
    rows for such tenants). Live counters get the day of the counting window's zone.
    """

    def __init__(self, counting: TenantCounting, podcasts: Mapping[str, str]) -> None:
        self._podcasts = podcasts
        local = counting.time_zone not in UTC_ZONE_NAMES
        self._zones: tuple[tuple[str, CalendarDays], ...] = (("UTC", _calendar("UTC")),) + (
            (("local", _calendar(counting.time_zone)),) if local else ()
        )
        self._local_zone = ZoneInfo(counting.time_zone)
        self._live_zone = (
            "local" if local and counting.window is CountingWindow.TENANT_DAY else "UTC"
        )
        self.hourly: dict[tuple[int, str, str, str, str], list[int]] = defaultdict(lambda: [0, 0])
        self.daily: dict[tuple[str, dt.date, str], list[int]] = defaultdict(lambda: [0, 0])
        self.dimension: dict[tuple[str, str, dt.date, str, str], list[int]] = defaultdict(
            lambda: [0, 0]
        )
        self.ad_slots: dict[tuple[str, dt.date, str, str], int] = defaultdict(int)
        self.listeners: dict[tuple[str, dt.date, str], list[bytes]] = defaultdict(list)
        self._live: dict[tuple[dt.date, str], list[int]] = defaultdict(lambda: [0, 0])
        self._live_listeners: dict[tuple[dt.date, str], list[bytes]] = defaultdict(list)
        self._days: dict[tuple[str, int], dt.date] = {}

    def _day(self, zone: str, calendar: CalendarDays, time_us: int) -> dt.date:
        start = calendar.start(time_us)
        day = self._days.get((zone, start))
        if day is None:
            day = self._days[(zone, start)] = (
                from_us(time_us).astimezone(self._local_zone).date()
                if zone == "local"
                else _EPOCH_DATE + dt.timedelta(days=start // DAY_US)
            )
        return day

    def _add(self, download: Download, downloads: int, ads: int, slot: str | None) -> None:
        episode = download.episode_id
        app = _stored(download.app, UNKNOWN)
        device = _stored(download.device_class.value, "unknown")
        country = _stored(download.country, UNKNOWN_COUNTRY)
        hour = download.time_us - download.time_us % HOUR_US
        _bump(self.hourly[(hour, episode, app, device, country)], downloads, ads)
        for zone, calendar in self._zones:
            day = self._day(zone, calendar, download.time_us)
            _bump(self.daily[(zone, day, episode)], downloads, ads)
            for dimension, value in (("app", app), ("device_class", device), ("country", country)):
                _bump(self.dimension[(zone, dimension, day, value, episode)], downloads, ads)
            if slot is not None:
                self.ad_slots[(zone, day, slot, episode)] += ads
            if downloads > 0:
                self.listeners[(zone, day, episode)].append(download.listener_id)
            if zone == self._live_zone:
                _bump(self._live[(day, episode)], downloads, ads)
                if downloads > 0:
                    self._live_listeners[(day, episode)].append(download.listener_id)

    def add_download(self, download: Download, sign: int) -> None:
        self._add(download, sign, 0, None)

    def add_ad(self, ad: AdDelivery, sign: int) -> None:
        self._add(ad.download, 0, sign, ad.slot_id)

    def live(self) -> list[CountedDownloads]:
        return [
            CountedDownloads(
                day=day,
                episode_id=uuid.UUID(episode),
                podcast_id=uuid.UUID(self._podcasts[episode]),
                downloads=downloads,
                ads_delivered=ads,
                listener_ids=self._live_listeners.get((day, episode), ()),
            )
            for (day, episode), (downloads, ads) in self._live.items()
            if downloads or ads
        ]

    async def write(self, conn: asyncpg.Connection, tenant_id: uuid.UUID) -> None:
        podcasts = self._podcasts
        hourly = [(k, v) for k, v in self.hourly.items() if v != [0, 0]]
        if hourly:
            await conn.execute(
                """
                INSERT INTO rollup_hourly AS r (tenant_id, hour, episode_id, app, device_class,
                    country_code, podcast_id, downloads, ads_delivered)
                SELECT $1, * FROM unnest($2::timestamptz[], $3::uuid[], $4::text[], $5::text[],
                    $6::text[], $7::uuid[], $8::int8[], $9::int8[])
                ON CONFLICT (tenant_id, hour, episode_id, app, device_class, country_code)
                DO UPDATE SET downloads = r.downloads + EXCLUDED.downloads,
                    ads_delivered = r.ads_delivered + EXCLUDED.ads_delivered
                """,
                tenant_id,
                [from_us(k[0]) for k, _ in hourly],
                [k[1] for k, _ in hourly],
                [k[2] for k, _ in hourly],
                [k[3] for k, _ in hourly],
                [k[4] for k, _ in hourly],
                [podcasts[k[1]] for k, _ in hourly],
                [v[0] for _, v in hourly],
                [v[1] for _, v in hourly],
            )
        daily = [(k, v) for k, v in self.daily.items() if v != [0, 0]]
        if daily:
            await conn.execute(
                """
                INSERT INTO rollup_daily AS r (tenant_id, zone, day, episode_id, podcast_id,
                    downloads, ads_delivered)
                SELECT $1, * FROM unnest($2::text[], $3::date[], $4::uuid[], $5::uuid[],
                    $6::int8[], $7::int8[])
                ON CONFLICT (tenant_id, zone, day, episode_id)
                DO UPDATE SET downloads = r.downloads + EXCLUDED.downloads,
                    ads_delivered = r.ads_delivered + EXCLUDED.ads_delivered
                """,
                tenant_id,
                [k[0] for k, _ in daily],
                [k[1] for k, _ in daily],
                [k[2] for k, _ in daily],
                [podcasts[k[2]] for k, _ in daily],
                [v[0] for _, v in daily],
                [v[1] for _, v in daily],
            )
        dimension = [(k, v) for k, v in self.dimension.items() if v != [0, 0]]
        if dimension:
            await conn.execute(
                """
                INSERT INTO rollup_daily_dimension AS r (tenant_id, zone, dimension, day, value,
                    episode_id, podcast_id, downloads, ads_delivered)
                SELECT $1, * FROM unnest($2::text[], $3::text[], $4::date[], $5::text[],
                    $6::uuid[], $7::uuid[], $8::int8[], $9::int8[])
                ON CONFLICT (tenant_id, zone, dimension, day, value, episode_id)
                DO UPDATE SET downloads = r.downloads + EXCLUDED.downloads,
                    ads_delivered = r.ads_delivered + EXCLUDED.ads_delivered
                """,
                tenant_id,
                [k[0] for k, _ in dimension],
                [k[1] for k, _ in dimension],
                [k[2] for k, _ in dimension],
                [k[3] for k, _ in dimension],
                [k[4] for k, _ in dimension],
                [podcasts[k[4]] for k, _ in dimension],
                [v[0] for _, v in dimension],
                [v[1] for _, v in dimension],
            )
        slots = [(k, v) for k, v in self.ad_slots.items() if v]
        if slots:
            await conn.execute(
                """
                INSERT INTO rollup_daily_ad_slot AS r (tenant_id, zone, day, ad_slot_id,
                    episode_id, podcast_id, ads_delivered)
                SELECT $1, * FROM unnest($2::text[], $3::date[], $4::uuid[], $5::uuid[],
                    $6::uuid[], $7::int8[])
                ON CONFLICT (tenant_id, zone, day, ad_slot_id)
                DO UPDATE SET ads_delivered = r.ads_delivered + EXCLUDED.ads_delivered
                """,
                tenant_id,
                [k[0] for k, _ in slots],
                [k[1] for k, _ in slots],
                [k[2] for k, _ in slots],
                [k[3] for k, _ in slots],
                [podcasts[k[3]] for k, _ in slots],
                [v for _, v in slots],
            )
        await self._drop_emptied(conn, tenant_id)
        if self.listeners:
            await merge_sketches(conn, tenant_id, self.listeners, podcasts)

    async def _drop_emptied(self, conn: asyncpg.Connection, tenant_id: uuid.UUID) -> None:
        """Deletes the rows that taken-back downloads brought to zero, so a cube holds the
        same rows however its downloads arrived (and as RebuildCounts recomputes it)."""
        lowered: list[tuple[str, str, str, list[tuple[object, ...]]]] = [
            (
                "rollup_hourly",
                "hour, episode_id, app, device_class, country_code",
                "timestamptz[], uuid[], text[], text[], text[]",
                [(from_us(k[0]), *k[1:]) for k, v in self.hourly.items() if min(v) < 0],
            ),
            (
                "rollup_daily",
                "zone, day, episode_id",
                "text[], date[], uuid[]",
                [k for k, v in self.daily.items() if min(v) < 0],
            ),
            (
                "rollup_daily_dimension",
                "zone, dimension, day, value, episode_id",
                "text[], text[], date[], text[], uuid[]",
                [k for k, v in self.dimension.items() if min(v) < 0],
            ),
            (
                "rollup_daily_ad_slot",
                "zone, day, ad_slot_id",
                "text[], date[], uuid[]",
                [k[:3] for k, v in self.ad_slots.items() if v < 0],
            ),
        ]
        for table, columns, types, keys in lowered:
            if not keys:
                continue
            names = columns.split(", ")
            arrays = ", ".join(f"${i + 2}::{t}" for i, t in enumerate(types.split(", ")))
            matches = " AND ".join(f"r.{name} = k.{name}" for name in names)
            counters = "r.ads_delivered = 0" + (
                "" if table == "rollup_daily_ad_slot" else " AND r.downloads = 0"
            )
            await conn.execute(
                f"""
                DELETE FROM {table} r USING unnest({arrays}) AS k({columns})
                WHERE r.tenant_id = $1 AND {matches} AND {counters}
                """,
                tenant_id,
                *([key[i] for key in keys] for i in range(len(names))),
            )


def _bump(totals: list[int], downloads: int, ads: int) -> None:
    totals[0] += downloads
    totals[1] += ads


def sketch_member(listener_id: bytes) -> int:
    """A listener as a sketch member: the first 8 bytes of its id (HMAC output, so
    uniform) as a signed 64-bit integer, which DataSketches' Python API takes as is."""
    return int.from_bytes(listener_id[:8], "big", signed=True)


async def merge_sketches(
    conn: asyncpg.Connection,
    tenant_id: uuid.UUID,
    listeners: Mapping[tuple[str, dt.date, str], Sequence[bytes]],
    podcasts: Mapping[str, str],
) -> None:
    """Adds listener ids to the (zone, day, episode) sketches, creating them as needed."""
    keys = list(listeners)
    zones = [key[0] for key in keys]
    days = [key[1] for key in keys]
    episodes = [key[2] for key in keys]
    existing = {
        (r["zone"], r["day"], str(r["episode_id"])): r["sketch"]
        for r in await conn.fetch(
            """
            SELECT s.zone, s.day, s.episode_id, s.sketch
            FROM listener_sketches s
            JOIN unnest($2::text[], $3::date[], $4::uuid[]) AS k(zone, day, episode_id)
                ON s.zone = k.zone AND s.day = k.day AND s.episode_id = k.episode_id
            WHERE s.tenant_id = $1
            """,
            tenant_id,
            zones,
            days,
            episodes,
        )
    }
    sketches: list[bytes] = []
    for key in keys:
        stored = existing.get(key)
        sketch = hll_sketch.deserialize(stored) if stored is not None else hll_sketch(SKETCH_LG_K)
        for listener_id in listeners[key]:
            sketch.update(sketch_member(listener_id))
        sketches.append(sketch.serialize_compact())
    await conn.execute(
        """
        INSERT INTO listener_sketches (tenant_id, zone, day, episode_id, podcast_id, sketch)
        SELECT $1, * FROM unnest($2::text[], $3::date[], $4::uuid[], $5::uuid[], $6::bytea[])
        ON CONFLICT (tenant_id, zone, day, episode_id) DO UPDATE SET sketch = EXCLUDED.sketch
        """,
        tenant_id,
        zones,
        days,
        episodes,
        [podcasts[key[2]] for key in keys],
        sketches,
    )
