"""ListConversions: a campaign's credited conversions, newest first, with each touch's credit.

The evidence behind a report: the same touches (the campaign's exposures of the household
in the campaign's flight, at most the window before the event) and the same credits as
the report's. Pages are keyed by (event time, event id), newest first, in encrypted page
tokens bound to the tenant and the query. Data-driven models are fitted on the campaign's
paths on every call, which costs what a report does.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from services.attribution.models import Model, Touchpoint, allocate_minor, credits
from services.attribution.peers import Campaigns
from services.attribution.reports.domain import channel_name, fit
from services.attribution.reports.repository import Scope, read_inputs
from services.attribution.reports.service import resolve
from services.shared.db import Database
from services.shared.pagination import PageTokens
from services.shared.peers import Metadata

_PAGE = """
SELECT s.event_id, s.event_type, s.event_time, s.value_minor, s.currency_code, s.household_id
FROM site_events s
WHERE s.tenant_id = $1 AND s.sponsor_id = $2 AND s.event_type = ANY($3::smallint[])
  AND s.event_time >= $4 AND s.event_time < $5
  AND ($8::timestamptz IS NULL OR (s.event_time, s.event_id COLLATE "C") < ($8, $9::text))
  AND EXISTS (
      SELECT 1 FROM exposures e
      WHERE e.tenant_id = $1 AND e.campaign_id = $6 AND e.household_id = s.household_id
        AND e.exposure_time >= greatest($10, s.event_time - $7::interval)
        AND e.exposure_time <= s.event_time AND e.exposure_time < $11
        AND ($12::uuid IS NULL OR e.line_item_id = $12))
ORDER BY s.event_time DESC, s.event_id COLLATE "C" DESC
LIMIT $13
"""

_TOUCHES = """
SELECT ev.event_id, ev.event_time, e.exposure_id, e.exposure_time, e.line_item_id,
       e.podcast_id, e.episode_id
FROM unnest($2::text[], $3::timestamptz[], $4::bytea[]) AS ev (event_id, event_time, household_id)
JOIN exposures e
  ON e.tenant_id = $1 AND e.campaign_id = $5 AND e.household_id = ev.household_id
 AND e.exposure_time >= greatest($6, ev.event_time - $7::interval)
 AND e.exposure_time <= ev.event_time AND e.exposure_time < $8
ORDER BY ev.event_id, ev.event_time, e.exposure_time, e.exposure_id COLLATE "C"
"""


@dataclass(frozen=True)
class ConversionQuery:
    campaign_id: uuid.UUID
    model: Model | None
    window_days: int | None
    half_life_s: float | None
    types: tuple[int, ...]
    start: datetime | None
    end: datetime | None
    line_item_id: uuid.UUID | None


@dataclass(frozen=True)
class CreditedTouch:
    exposure_id: str
    time: datetime
    line_item_id: str
    podcast_id: str
    episode_id: str
    credit: float
    credited_minor: int


@dataclass(frozen=True)
class Conversion:
    event_id: str
    kind: int
    time: datetime
    value_minor: int
    currency: str
    household_id: str
    touchpoints: tuple[CreditedTouch, ...]


@dataclass(frozen=True)
class ConversionPage:
    conversions: list[Conversion]
    next_page_token: str


def _text(value: uuid.UUID | None) -> str:
    return str(value) if value is not None else ""


class Conversions:
    def __init__(self, db: Database, campaigns: Campaigns, tokens: PageTokens) -> None:
        self._db = db
        self._campaigns = campaigns
        self._tokens = tokens

    async def page(
        self,
        tenant_id: uuid.UUID,
        query: ConversionQuery,
        size: int,
        token: str,
        credentials: Metadata,
    ) -> ConversionPage:
        campaign = await self._campaigns.campaign(query.campaign_id, credentials)
        period = resolve(campaign, (query.model,), query.window_days, None, None, query.half_life_s)
        (model,) = period.models
        window = timedelta(days=period.window_days)
        fingerprint = {
            "campaign": str(query.campaign_id),
            "model": int(model),
            "window": period.window_days,
            "half_life": period.half_life_s,
            "types": list(query.types),
            "start": query.start.isoformat() if query.start else "",
            "end": query.end.isoformat() if query.end else "",
            "line_item": _text(query.line_item_id),
        }
        cursor = self._tokens.decode(token, fingerprint)
        after = (datetime.fromisoformat(cursor["t"]), str(cursor["id"])) if cursor else (None, None)
        lowest = max(query.start or period.start, period.start)
        highest = min(query.end or period.end + window, period.end + window)
        async with self._db.tenant_transaction(tenant_id) as conn:
            rows = await conn.fetch(
                _PAGE,
                tenant_id,
                campaign.sponsor_id,
                list(query.types),
                lowest,
                highest,
                campaign.id,
                window,
                after[0],
                after[1],
                period.start,
                period.end,
                query.line_item_id,
                size + 1,
            )
            more = len(rows) > size
            rows = rows[:size]
            touches = await conn.fetch(
                _TOUCHES,
                tenant_id,
                [r["event_id"] for r in rows],
                [r["event_time"] for r in rows],
                [r["household_id"] for r in rows],
                campaign.id,
                period.start,
                window,
                period.end,
            )
            weights = None
            index: dict[uuid.UUID, int] = {}
            if model.data_driven and rows:
                scope = Scope(
                    tenant_id=tenant_id,
                    campaign_id=campaign.id,
                    sponsor_id=campaign.sponsor_id,
                    currency=campaign.currency,
                    start=period.start,
                    end=period.end,
                    window=window,
                    sponsor_campaigns=(campaign.id,),
                )
                _, inputs = await read_inputs(conn, scope)
                weights = fit(model, inputs)
                index = {li: i + 1 for i, li in enumerate(inputs.line_items)}
        # A site event is its id and time (two events may share an id at other times).
        by_event: dict[tuple[str, datetime], list[asyncpg.Record]] = {}
        for t in touches:
            by_event.setdefault((t["event_id"], t["event_time"]), []).append(t)
        conversions = []
        for r in rows:
            own = by_event.get((r["event_id"], r["event_time"]), [])
            at = r["event_time"]
            points = [
                Touchpoint(
                    t["exposure_id"],
                    t["exposure_time"].timestamp(),
                    (
                        channel_name(index.get(t["line_item_id"], 0))
                        if weights is not None
                        else str(t["line_item_id"])
                    ),
                )
                for t in own
            ]
            shares = credits(
                model,
                points,
                at.timestamp(),
                half_life_s=period.half_life_s,
                channel_weights=weights,
            )
            value = r["value_minor"]
            money = allocate_minor(value, shares) if shares else []
            conversions.append(
                Conversion(
                    event_id=r["event_id"],
                    kind=r["event_type"],
                    time=at.astimezone(UTC),
                    value_minor=value,
                    currency=r["currency_code"] or campaign.currency,
                    household_id=bytes(r["household_id"]).hex(),
                    touchpoints=tuple(
                        CreditedTouch(
                            exposure_id=t["exposure_id"],
                            time=t["exposure_time"],
                            line_item_id=_text(t["line_item_id"]),
                            podcast_id=_text(t["podcast_id"]),
                            episode_id=_text(t["episode_id"]),
                            credit=float(share),
                            credited_minor=minor,
                        )
                        for t, share, minor in zip(own, shares, money, strict=True)
                    ),
                )
            )
        next_token = ""
        if more and rows:
            last = rows[-1]
            next_token = self._tokens.encode(
                {"t": last["event_time"].isoformat(), "id": last["event_id"]}, fingerprint
            )
        return ConversionPage(conversions, next_token)
