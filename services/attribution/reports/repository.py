"""The SQL behind the reports: PostgreSQL aggregates, Python sees one row per credited event.

A report never brings a campaign's exposures into the process one by one: reach is
counted in the database, each credited event (lead, purchase, a visitor's first visit)
arrives as one row with its touches in arrays (time, line item, podcast as indexes into
the report's dimension lists), and the non-converting households' paths arrive grouped
into distinct paths with a count. A touch is an exposure of the campaign in the report's
period, at or before the event and at most the window before it (both bounds inclusive,
as services.attribution.models.in_window); touches are ordered by time, then exposure id
in byte order (COLLATE "C"), which is Python's string order.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from services.attribution.reports.domain import (
    CreditedEvent,
    EventKind,
    Inputs,
    Reach,
    Unattributed,
)

# Sorting a million exposures by household stays in memory.
_WORK_MEM = "SET LOCAL work_mem = '64MB'"

_REACH = """
SELECT line_item_id, podcast_id, count(*) AS impressions,
       count(DISTINCT household_id) AS households,
       GROUPING(line_item_id) AS no_line_item, GROUPING(podcast_id) AS no_podcast
FROM exposures
WHERE tenant_id = $1 AND campaign_id = $2 AND exposure_time >= $3 AND exposure_time < $4
GROUP BY GROUPING SETS ((line_item_id, podcast_id), (line_item_id), (podcast_id), ())
"""

# A touch of event `ev`: the campaign's exposures of its household in the report period
# within the window before it.
_TOUCH = """
e.tenant_id = $1 AND e.campaign_id = $2 AND e.household_id = {ev}.household_id
AND e.exposure_time >= greatest($3, {ev}.event_time - $5::interval)
AND e.exposure_time <= {ev}.event_time AND e.exposure_time < $4
"""

_ORDER = 'e.exposure_time, e.exposure_id COLLATE "C"'

_EVENTS = f"""
WITH conversions AS (
    SELECT s.event_type, s.event_id, s.event_time, s.household_id,
           CASE WHEN s.currency_code = $8 THEN s.value_minor ELSE 0 END AS value_minor
    FROM site_events s
    WHERE s.tenant_id = $1 AND s.sponsor_id = $6 AND s.event_type IN (2, 3)
      AND s.event_time >= $3 AND s.event_time < $7
), visits AS (
    SELECT DISTINCT ON (s.household_id)
           s.event_type, s.event_id, s.event_time, s.household_id, 0::bigint AS value_minor
    FROM site_events s
    WHERE s.tenant_id = $1 AND s.sponsor_id = $6 AND s.event_type = 1
      AND s.event_time >= $3 AND s.event_time < $7
      AND EXISTS (SELECT 1 FROM exposures e WHERE {_TOUCH.format(ev="s")})
    ORDER BY s.household_id, s.event_time, s.event_id COLLATE "C"
), events AS (
    SELECT * FROM conversions UNION ALL SELECT * FROM visits
)
SELECT ev.event_type, extract(epoch FROM ev.event_time)::float8 AS at, ev.value_minor,
       ev.household_id,
       array_agg(extract(epoch FROM e.exposure_time)::float8 ORDER BY {_ORDER}) AS times,
       array_agg(array_position($9::uuid[], e.line_item_id) ORDER BY {_ORDER}) AS channels,
       array_agg(coalesce(array_position($10::uuid[], e.podcast_id), 0) ORDER BY {_ORDER})
           AS podcasts
FROM events ev JOIN exposures e ON {_TOUCH.format(ev="ev")}
GROUP BY ev.event_type, ev.event_id, ev.event_time, ev.value_minor, ev.household_id
"""

# Exposed households with no credited conversion: their whole path in the period.
_NONCONVERTING = f"""
SELECT channels, count(*) AS households FROM (
    SELECT array_agg(array_position($5::uuid[], e.line_item_id) ORDER BY {_ORDER}) AS channels
    FROM exposures e
    WHERE e.tenant_id = $1 AND e.campaign_id = $2 AND e.exposure_time >= $3
      AND e.exposure_time < $4
      AND NOT EXISTS (SELECT 1 FROM unnest($6::bytea[]) AS c (household_id)
                      WHERE c.household_id = e.household_id)
    GROUP BY e.household_id
) paths
GROUP BY channels
"""

_PROMO = """
SELECT upper(promo_code) AS code, count(*) AS purchases
FROM site_events
WHERE tenant_id = $1 AND sponsor_id = $2 AND event_type = 3 AND promo_code <> ''
  AND event_time >= $3 AND event_time < $4
GROUP BY 1
"""

# The sponsor's conversions that no exposure of any of its campaigns preceded within the
# window (at any time: an exposure before the report's period explains one too).
_ANY_EXPOSURE = """
EXISTS (SELECT 1 FROM exposures e
        WHERE e.tenant_id = $1 AND e.household_id = s.household_id
          AND e.campaign_id = ANY($5::uuid[])
          AND e.exposure_time >= s.event_time - $6::interval AND e.exposure_time <= s.event_time)
"""

_UNATTRIBUTED = f"""
SELECT s.event_type, count(*) AS events,
       coalesce(sum(CASE WHEN s.currency_code = $7 THEN s.value_minor ELSE 0 END), 0)::bigint
           AS value
FROM site_events s
WHERE s.tenant_id = $1 AND s.sponsor_id = $2 AND s.event_type IN (2, 3)
  AND s.event_time >= $3 AND s.event_time < $4 AND NOT {_ANY_EXPOSURE}
GROUP BY s.event_type
"""

_UNATTRIBUTED_VISITORS = f"""
SELECT count(*) FROM (
    SELECT s.household_id
    FROM site_events s
    WHERE s.tenant_id = $1 AND s.sponsor_id = $2 AND s.event_type = 1
      AND s.event_time >= $3 AND s.event_time < $4
    GROUP BY s.household_id
    HAVING bool_and(NOT {_ANY_EXPOSURE})
) unexplained
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


async def read_inputs(conn: asyncpg.Connection, scope: Scope, *, data_driven: bool) -> Inputs:
    """Everything one report is computed from, in the caller's tenant transaction."""
    await conn.execute(_WORK_MEM)
    data_end: datetime = await conn.fetchval("SELECT now()")
    line_items: list[uuid.UUID] = []
    podcasts: list[uuid.UUID] = []
    reach_rows = await conn.fetch(
        _REACH, scope.tenant_id, scope.campaign_id, scope.start, scope.end
    )
    for row in reach_rows:
        if not row["no_line_item"] and row["no_podcast"]:
            line_items.append(row["line_item_id"])
        if row["no_line_item"] and not row["no_podcast"] and row["podcast_id"] is not None:
            podcasts.append(row["podcast_id"])
    line_items.sort()
    podcasts.sort()
    li_index = {li: i + 1 for i, li in enumerate(line_items)}
    pod_index = {p: i + 1 for i, p in enumerate(podcasts)}
    total = Reach(0, 0)
    by_line_item: dict[int, Reach] = {}
    by_podcast: dict[int, Reach] = {}
    by_pair: dict[tuple[int, int], int] = {}
    for row in reach_rows:
        reach = Reach(row["impressions"], row["households"])
        li = li_index.get(row["line_item_id"], 0)
        pod = pod_index.get(row["podcast_id"], 0)
        if row["no_line_item"] and row["no_podcast"]:
            total = reach
        elif row["no_podcast"]:
            by_line_item[li] = reach
        elif row["no_line_item"]:
            by_podcast[pod] = reach
        else:
            by_pair[(li, pod)] = reach.impressions

    window = scope.window
    event_rows = await conn.fetch(
        _EVENTS,
        scope.tenant_id,
        scope.campaign_id,
        scope.start,
        scope.end,
        window,
        scope.sponsor_id,
        scope.conversions_end,
        scope.currency,
        line_items,
        podcasts,
    )
    events = [
        CreditedEvent(
            kind=row["event_type"],
            time=row["at"],
            value_minor=row["value_minor"],
            touch_times=tuple(row["times"]),
            channels=tuple(row["channels"]),
            podcasts=tuple(row["podcasts"]),
        )
        for row in event_rows
    ]
    nonconverting: list[tuple[tuple[int, ...], int]] = []
    if data_driven:
        converted = list(
            {row["household_id"] for row in event_rows if row["event_type"] != EventKind.VISIT}
        )
        del event_rows
        nonconverting = [
            (tuple(row["channels"]), row["households"])
            for row in await conn.fetch(
                _NONCONVERTING,
                scope.tenant_id,
                scope.campaign_id,
                scope.start,
                scope.end,
                line_items,
                converted,
            )
        ]
    promo = {
        row["code"]: row["purchases"]
        for row in await conn.fetch(
            _PROMO, scope.tenant_id, scope.sponsor_id, scope.start, scope.conversions_end
        )
    }
    unattributed = await _unattributed(conn, scope)
    return Inputs(
        line_items=line_items,
        podcasts=podcasts,
        total=total,
        by_line_item=by_line_item,
        by_podcast=by_podcast,
        impressions_by_pair=by_pair,
        events=events,
        nonconverting=nonconverting,
        promo_purchases=promo,
        unattributed=unattributed,
        data_end=data_end,
    )


async def _unattributed(conn: asyncpg.Connection, scope: Scope) -> Unattributed:
    args = (
        scope.tenant_id,
        scope.sponsor_id,
        scope.start,
        scope.conversions_end,
        list(scope.sponsor_campaigns),
        scope.window,
        scope.currency,
    )
    leads = purchases = revenue = 0
    for row in await conn.fetch(_UNATTRIBUTED, *args):
        if row["event_type"] == EventKind.LEAD:
            leads = row["events"]
        else:
            purchases, revenue = row["events"], row["value"]
    visitors: int = await conn.fetchval(_UNATTRIBUTED_VISITORS, *args[:6])
    return Unattributed(visitors, leads, purchases, revenue)
