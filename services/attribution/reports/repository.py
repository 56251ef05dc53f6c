"""The reads behind a report: one pass over the campaign's exposures, one household per row.

Exposures and site events are partitioned by day, so matching each event to its
household's exposures in SQL (a nested loop into every day's partition per event) costs
far more than reading both once: the sponsor's site events of the period (one row each,
kept by household), then the campaign's exposures aggregated per household in the
database (one row per household, its touches in arrays ordered by time and then
exposure id in byte order, COLLATE "C", Python's string order), streamed through a
cursor. Each household is matched against its own events as it arrives and then
dropped, so memory holds the events and the results, never the exposures.

A touch of an event is an exposure of the campaign in the report's period at or before
the event and at most the window before it (both bounds inclusive, as
services.attribution.models.in_window). Exposures up to a window before the period are
read too: they cannot be touches, but they explain a conversion, which is then not
unattributed.
"""

from __future__ import annotations

import functools
import struct
import uuid
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from services.attribution.reports.domain import (
    CreditedEvent,
    EventKind,
    Inputs,
    Reach,
    Unattributed,
)

_CURSOR_PREFETCH = 5_000
# Sorting a million exposures by household stays in memory (about 120 MB), and the
# households are read by one sort of the campaign's rows rather than by merging every
# day partition's household index, which reads the heap in random order (several times
# slower at a million exposures). Bitmap scans of the campaign index stay allowed.
_SETTINGS = ("SET LOCAL work_mem = '160MB'", "SET LOCAL enable_indexscan = off")

_DIMENSIONS = """
SELECT DISTINCT line_item_id, podcast_id
FROM exposures
WHERE tenant_id = $1 AND campaign_id = $2 AND exposure_time >= $3 AND exposure_time < $4
"""

_ORDER = 'exposure_time, exposure_id COLLATE "C"'

# One row per household: its exposures packed as (microseconds since the epoch,
# line item index, podcast index), big-endian, in touch order. array_agg would give each
# of 200,000 groups a memory context of its own, several times slower; the packed bytes
# cost 14 per exposure and unpack in C (struct.iter_unpack).
_HOUSEHOLDS = f"""
SELECT household_id,
       string_agg(
           int8send((extract(epoch FROM exposure_time) * 1000000)::int8)
           || int2send(coalesce(array_position($5::uuid[], line_item_id), 0)::int2)
           || int4send(coalesce(array_position($6::uuid[], podcast_id), 0)),
           ''::bytea ORDER BY {_ORDER}) AS packed
FROM exposures
WHERE tenant_id = $1 AND campaign_id = $2 AND exposure_time >= $3 AND exposure_time < $4
GROUP BY household_id
"""
_PACKED_BYTES = struct.calcsize(">qhi")


@functools.lru_cache(maxsize=256)
def _unpacker(exposures: int) -> struct.Struct:
    """All of a household's exposures in one C call, flat: (time, line item, podcast)..."""
    return struct.Struct(">" + "qhi" * exposures)


_EVENTS = """
SELECT household_id, event_type, (extract(epoch FROM event_time) * 1000000)::int8 AS at,
       CASE WHEN currency_code = $5 THEN value_minor ELSE 0 END AS value_minor
FROM site_events
WHERE tenant_id = $1 AND sponsor_id = $2 AND event_time >= $3 AND event_time < $4
ORDER BY household_id, event_time, event_id COLLATE "C"
"""

# Exposures of the sponsor's other campaigns, only for households with a conversion
# this campaign does not explain.
_OTHER_EXPOSURES = """
SELECT household_id,
       array_agg((extract(epoch FROM exposure_time) * 1000000)::int8) AS times
FROM exposures
WHERE tenant_id = $1 AND campaign_id = ANY($2::uuid[]) AND household_id = ANY($3::bytea[])
  AND exposure_time >= $4 AND exposure_time < $5
GROUP BY household_id
"""

_PROMO = """
SELECT upper(promo_code) AS code, count(*) AS purchases
FROM site_events
WHERE tenant_id = $1 AND sponsor_id = $2 AND event_type = 3 AND promo_code <> ''
  AND event_time >= $3 AND event_time < $4
GROUP BY 1
"""


@dataclass(frozen=True)
class Scope:
    tenant_id: uuid.UUID
    campaign_id: uuid.UUID
    sponsor_id: uuid.UUID
    currency: str
    start: datetime
    end: datetime
    window: timedelta
    # Every campaign of the sponsor, for unattributed conversions.
    sponsor_campaigns: tuple[uuid.UUID, ...]

    @property
    def conversions_end(self) -> datetime:
        return self.end + self.window


# A site event as read: (time in microseconds, kind, value in the campaign's currency).
_Event = tuple[int, int, int]
_US = 1_000_000


def _explained(times: Sequence[int], at: int, window_us: int) -> bool:
    """Whether an exposure at one of `times` (ascending) is within the window before `at`."""
    return bisect_right(times, at) > bisect_left(times, at - window_us)


class _Matcher:
    """Matches households' exposures to their events, one household at a time."""

    def __init__(self, start: int, end: int, window_us: int) -> None:
        self.start = start
        self.end = end
        self.window_us = window_us
        self.events: list[CreditedEvent] = []
        self.pairs: dict[tuple[int, int], int] = {}
        self.line_item_reach: dict[int, int] = {}
        self.podcast_reach: dict[int, int] = {}
        self.reached: set[bytes] = set()
        self.visitors: set[bytes] = set()
        self.purchasers: set[bytes] = set()
        self.nonconverting: Counter[tuple[int, ...]] = Counter()
        # Per household, the conversions no exposure of this campaign explains, and its
        # page views when none of them is explained.
        self.unexplained: dict[bytes, list[_Event]] = {}

    def household(
        self,
        household: bytes,
        packed: bytes,
        events: list[_Event] | None,
    ) -> None:
        flat = _unpacker(len(packed) // _PACKED_BYTES).unpack(packed)
        times = list(flat[0::3])
        channels = list(flat[1::3])
        podcasts = list(flat[2::3])
        first = bisect_left(times, self.start)
        last = bisect_left(times, self.end, first)
        if first < last:
            self.reached.add(household)
            own_channels = channels[first:last]
            own_podcasts = podcasts[first:last]
            # Plain dict counts: Counter.update's checks cost more than the counting.
            pairs = self.pairs
            for pair in zip(own_channels, own_podcasts, strict=True):
                pairs[pair] = pairs.get(pair, 0) + 1
            line_items = self.line_item_reach
            for channel in set(own_channels):
                line_items[channel] = line_items.get(channel, 0) + 1
            podcast_reach = self.podcast_reach
            for podcast in set(own_podcasts):
                podcast_reach[podcast] = podcast_reach.get(podcast, 0) + 1
        converted = False
        if events:
            converted = self._match(household, times, channels, podcasts, first, last, events)
        if first < last and not converted:
            self.nonconverting[tuple(channels[first:last])] += 1

    def _match(
        self,
        household: bytes,
        times: list[int],
        channels: list[int],
        podcasts: list[int],
        first: int,
        last: int,
        events: list[_Event],
    ) -> bool:
        converted = visited = False
        unexplained: list[_Event] = []
        views: list[_Event] = []
        views_explained = False
        for event in events:
            at, kind, _ = event
            lo = bisect_left(times, at - self.window_us, first, last)
            hi = bisect_right(times, at, lo, last)
            touched = hi > lo
            if touched and kind == EventKind.VISIT:
                self.visitors.add(household)
            elif touched and kind == EventKind.PURCHASE:
                self.purchasers.add(household)
            if touched and not (kind == EventKind.VISIT and visited):
                self.events.append(
                    CreditedEvent(
                        kind,
                        at / _US,
                        event[2],
                        tuple(t / _US for t in times[lo:hi]),
                        tuple(channels[lo:hi]),
                        tuple(podcasts[lo:hi]),
                    )
                )
            explained = touched or _explained(times, at, self.window_us)
            if kind == EventKind.VISIT:
                visited = visited or touched
                views.append(event)
                views_explained = views_explained or explained
            else:
                converted = converted or touched
                if not explained:
                    unexplained.append(event)
        if not views_explained:
            unexplained.extend(views)
        if unexplained:
            self.unexplained[household] = unexplained
        return converted


def _unattributed(
    unexplained: dict[bytes, list[_Event]],
    others: dict[bytes, list[int]],
    window_us: int,
) -> Unattributed:
    """The candidates that the sponsor's other campaigns do not explain either."""
    visitors = leads = purchases = revenue = 0
    for household, events in unexplained.items():
        times = sorted(others.get(household, ()))
        views = views_explained = False
        for at, kind, value in events:
            explained = _explained(times, at, window_us)
            if kind == EventKind.VISIT:
                views = True
                views_explained = views_explained or explained
            elif explained:
                continue
            elif kind == EventKind.LEAD:
                leads += 1
            else:
                purchases += 1
                revenue += value
        if views and not views_explained:
            visitors += 1
    return Unattributed(visitors, leads, purchases, revenue)


@dataclass(frozen=True)
class LiftGroups:
    """The households the lift compares: the exposed (reached in the period) with their
    visitors and purchasers as the report credits them, and the sponsor's households
    with a page view or a purchase in [start, end + window), for the control group."""

    exposed: set[bytes]
    exposed_visitors: set[bytes]
    exposed_purchasers: set[bytes]
    site_visitors: set[bytes]
    site_purchasers: set[bytes]


async def read_inputs(conn: asyncpg.Connection, scope: Scope) -> tuple[LiftGroups, Inputs]:
    """Everything one report is computed from, in the caller's tenant transaction."""
    for setting in _SETTINGS:
        await conn.execute(setting)
    data_end: datetime = await conn.fetchval("SELECT now()")
    window_us = scope.window // timedelta(microseconds=1)
    dimensions = await conn.fetch(
        _DIMENSIONS, scope.tenant_id, scope.campaign_id, scope.start, scope.end
    )
    line_items = sorted({row["line_item_id"] for row in dimensions})
    podcasts = sorted({row["podcast_id"] for row in dimensions if row["podcast_id"] is not None})

    events: dict[bytes, list[_Event]] = {}
    for row in await conn.fetch(
        _EVENTS,
        scope.tenant_id,
        scope.sponsor_id,
        scope.start,
        scope.conversions_end,
        scope.currency,
    ):
        events.setdefault(row["household_id"], []).append(
            (row["at"], row["event_type"], row["value_minor"])
        )

    site_visitors = {h for h, own in events.items() if any(e[1] == EventKind.VISIT for e in own)}
    site_purchasers = {
        h for h, own in events.items() if any(e[1] == EventKind.PURCHASE for e in own)
    }
    matcher = _Matcher(_micros(scope.start), _micros(scope.end), window_us)
    cursor = await conn.cursor(
        _HOUSEHOLDS,
        scope.tenant_id,
        scope.campaign_id,
        scope.start - scope.window,
        scope.conversions_end,
        line_items,
        podcasts,
    )
    while rows := await cursor.fetch(_CURSOR_PREFETCH):
        for household, packed in rows:
            matcher.household(household, packed, events.pop(household, None))
    # Households the campaign never reached: nothing of it explains their events.
    for household, own in events.items():
        matcher.unexplained[household] = own
    del events

    others = [c for c in scope.sponsor_campaigns if c != scope.campaign_id]
    other_times: dict[bytes, list[int]] = {}
    if others and matcher.unexplained:
        for row in await conn.fetch(
            _OTHER_EXPOSURES,
            scope.tenant_id,
            others,
            list(matcher.unexplained),
            scope.start - scope.window,
            scope.conversions_end,
        ):
            other_times[row["household_id"]] = row["times"]

    promo = {
        row["code"]: row["purchases"]
        for row in await conn.fetch(
            _PROMO, scope.tenant_id, scope.sponsor_id, scope.start, scope.conversions_end
        )
    }
    groups = LiftGroups(
        exposed=matcher.reached,
        exposed_visitors=matcher.visitors,
        exposed_purchasers=matcher.purchasers,
        site_visitors=site_visitors,
        site_purchasers=site_purchasers,
    )
    return groups, Inputs(
        line_items=line_items,
        podcasts=podcasts,
        total=Reach(sum(matcher.pairs.values()), len(matcher.reached)),
        by_line_item=_reach(matcher.pairs, matcher.line_item_reach, 0),
        by_podcast=_reach(matcher.pairs, matcher.podcast_reach, 1),
        impressions_by_pair=matcher.pairs,
        events=matcher.events,
        nonconverting=list(matcher.nonconverting.items()),
        promo_purchases=promo,
        unattributed=_unattributed(matcher.unexplained, other_times, window_us),
        data_end=data_end,
    )


def _reach(
    pairs: dict[tuple[int, int], int], households: dict[int, int], position: int
) -> dict[int, Reach]:
    impressions: dict[int, int] = {}
    for pair, n in pairs.items():
        impressions[pair[position]] = impressions.get(pair[position], 0) + n
    return {key: Reach(impressions[key], households.get(key, 0)) for key in impressions}


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
