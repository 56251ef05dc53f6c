"""SQL for the campaign service. Every function runs inside a transaction the caller
opened; tenant rows are only visible inside that tenant's transaction (RLS)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias

import asyncpg

from services.campaign.domain import (
    AdPosition,
    AdType,
    Campaign,
    CampaignState,
    Deal,
    DealEvent,
    DealStage,
    LineItem,
    Money,
    PacingStrategy,
    Placement,
    PlacementState,
    PricingModel,
    Sponsor,
    Targeting,
)
from services.shared.audit_outbox import Outbox

Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record]"
# Where every campaign change's audit record is written (services.shared.audit_outbox).
AUDIT = Outbox("campaign")
_RUNNING = [int(PlacementState.BOOKED), int(PlacementState.LIVE), int(PlacementState.COMPLETED)]
# The same states written into a booking's probes as the predicate of their partial
# indexes (0056): a plan can use a partial index only when the statement itself states
# its predicate (a parameter proves nothing in a plan made for any value).
_RUNNING_PROBE = f"p.state BETWEEN {min(_RUNNING)} AND {max(_RUNNING)}"
assert sorted(_RUNNING) == list(range(min(_RUNNING), max(_RUNNING) + 1))


def _ids(values: Sequence[uuid.UUID]) -> list[str]:
    return [str(v) for v in values]


# Sponsors


def _sponsor(row: Mapping[str, Any]) -> Sponsor:
    return Sponsor(
        id=row["sponsor_id"],
        display_name=row["display_name"],
        domain=row["domain"],
        iab_categories=tuple(row["iab_categories"]),
        competitive_category=row["competitive_category"],
        contact_name=row["contact_name"],
        contact_email=row["contact_email"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def insert_sponsor(conn: Conn, tenant_id: uuid.UUID, s: Sponsor) -> Sponsor:
    row = await conn.fetchrow(
        """
        INSERT INTO sponsors (tenant_id, sponsor_id, display_name, domain, iab_categories,
            competitive_category, contact_name, contact_email)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING *
        """,
        tenant_id,
        s.id,
        s.display_name,
        s.domain,
        list(s.iab_categories),
        s.competitive_category,
        s.contact_name,
        s.contact_email,
    )
    return _sponsor(row)


async def get_sponsor(
    conn: Conn, sponsor_id: uuid.UUID, *, for_update: bool = False
) -> Sponsor | None:
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(f"SELECT * FROM sponsors WHERE sponsor_id = $1{lock}", sponsor_id)
    return _sponsor(row) if row else None


async def list_sponsors(
    conn: Conn, competitive_key: str, after: tuple[str, uuid.UUID] | None, limit: int
) -> list[Sponsor]:
    rows = await conn.fetch(
        """
        SELECT * FROM sponsors
        WHERE ($1 = '' OR competitive_key = $1)
          AND ($2::text IS NULL OR (lower(display_name), sponsor_id) > ($2, $3::uuid))
        ORDER BY lower(display_name), sponsor_id
        LIMIT $4
        """,
        competitive_key,
        after[0] if after else None,
        after[1] if after else None,
        limit,
    )
    return [_sponsor(r) for r in rows]


async def update_sponsor(conn: Conn, s: Sponsor) -> Sponsor:
    row = await conn.fetchrow(
        """
        UPDATE sponsors SET display_name = $2, domain = $3, iab_categories = $4,
            competitive_category = $5, contact_name = $6, contact_email = $7, updated_at = now()
        WHERE sponsor_id = $1 RETURNING *
        """,
        s.id,
        s.display_name,
        s.domain,
        list(s.iab_categories),
        s.competitive_category,
        s.contact_name,
        s.contact_email,
    )
    return _sponsor(row)


async def sponsor_usage(conn: Conn, sponsor_id: uuid.UUID) -> tuple[int, int]:
    row = await conn.fetchrow(
        """
        SELECT (SELECT count(*) FROM campaigns WHERE sponsor_id = $1) AS campaigns,
               (SELECT count(*) FROM deals WHERE sponsor_id = $1) AS deals
        """,
        sponsor_id,
    )
    return row["campaigns"], row["deals"]


async def delete_sponsor(conn: Conn, sponsor_id: uuid.UUID) -> None:
    await conn.execute("DELETE FROM sponsors WHERE sponsor_id = $1", sponsor_id)


# Campaigns


def _campaign(row: Mapping[str, Any]) -> Campaign:
    return Campaign(
        id=row["campaign_id"],
        sponsor_id=row["sponsor_id"],
        display_name=row["display_name"],
        state=CampaignState(row["state"]),
        budget=Money(row["currency_code"], row["budget_minor"]),
        flight_start=row["flight_start"],
        flight_end=row["flight_end"],
        attribution_window_days=row["attribution_window_days"],
        attribution_model=row["attribution_model"],
        external_order_number=row["external_order_number"],
        notes=row["notes"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def insert_campaign(conn: Conn, tenant_id: uuid.UUID, c: Campaign) -> Campaign:
    assert c.budget is not None
    row = await conn.fetchrow(
        """
        INSERT INTO campaigns (tenant_id, campaign_id, sponsor_id, display_name, state,
            currency_code, budget_minor, flight_start, flight_end, attribution_window_days,
            attribution_model, external_order_number, notes)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING *
        """,
        tenant_id,
        c.id,
        c.sponsor_id,
        c.display_name,
        int(c.state),
        c.budget.currency_code,
        c.budget.minor_units,
        c.flight_start,
        c.flight_end,
        c.attribution_window_days,
        c.attribution_model,
        c.external_order_number,
        c.notes,
    )
    return _campaign(row)


async def get_campaign(
    conn: Conn, campaign_id: uuid.UUID, *, for_update: bool = False
) -> Campaign | None:
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(f"SELECT * FROM campaigns WHERE campaign_id = $1{lock}", campaign_id)
    return _campaign(row) if row else None


async def list_campaigns(
    conn: Conn,
    sponsor_id: uuid.UUID | None,
    states: Sequence[CampaignState],
    active_at: datetime | None,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[Campaign]:
    rows = await conn.fetch(
        """
        SELECT * FROM campaigns
        WHERE ($1::uuid IS NULL OR sponsor_id = $1)
          AND (cardinality($2::int[]) = 0 OR state = ANY($2::int[]))
          AND ($3::timestamptz IS NULL OR (flight_start <= $3 AND flight_end > $3))
          AND ($4::timestamptz IS NULL OR (flight_start, campaign_id) < ($4, $5::uuid))
        ORDER BY flight_start DESC, campaign_id DESC
        LIMIT $6
        """,
        sponsor_id,
        [int(s) for s in states],
        active_at,
        after[0] if after else None,
        after[1] if after else None,
        limit,
    )
    return [_campaign(r) for r in rows]


async def update_campaign(conn: Conn, c: Campaign) -> Campaign:
    assert c.budget is not None
    row = await conn.fetchrow(
        """
        UPDATE campaigns SET display_name = $2, state = $3, currency_code = $4,
            budget_minor = $5, flight_start = $6, flight_end = $7,
            attribution_window_days = $8, attribution_model = $9,
            external_order_number = $10, notes = $11, updated_at = now()
        WHERE campaign_id = $1 RETURNING *
        """,
        c.id,
        c.display_name,
        int(c.state),
        c.budget.currency_code,
        c.budget.minor_units,
        c.flight_start,
        c.flight_end,
        c.attribution_window_days,
        c.attribution_model,
        c.external_order_number,
        c.notes,
    )
    return _campaign(row)


async def delete_campaign(conn: Conn, campaign_id: uuid.UUID) -> None:
    await conn.execute("DELETE FROM campaigns WHERE campaign_id = $1", campaign_id)


async def line_item_flights(conn: Conn, campaign_id: uuid.UUID) -> list[tuple[datetime, datetime]]:
    rows = await conn.fetch(
        "SELECT flight_start, flight_end FROM line_items WHERE campaign_id = $1", campaign_id
    )
    return [(r["flight_start"], r["flight_end"]) for r in rows]


async def count_line_items(conn: Conn, campaign_id: uuid.UUID) -> int:
    count: int = await conn.fetchval(
        "SELECT count(*) FROM line_items WHERE campaign_id = $1", campaign_id
    )
    return count


# Line items


def _targeting_json(t: Targeting) -> str:
    return json.dumps(
        {
            "podcast_ids": _ids(t.podcast_ids),
            "episode_ids": _ids(t.episode_ids),
            "categories": list(t.categories),
            "country_codes": list(t.country_codes),
            "positions": [int(p) for p in t.positions],
            "excluded_podcast_ids": _ids(t.excluded_podcast_ids),
            "exclude_explicit": t.exclude_explicit,
        },
        separators=(",", ":"),
    )


def _targeting(raw: str) -> Targeting:
    t: dict[str, Any] = json.loads(raw)
    return Targeting(
        podcast_ids=tuple(uuid.UUID(i) for i in t.get("podcast_ids", ())),
        episode_ids=tuple(uuid.UUID(i) for i in t.get("episode_ids", ())),
        categories=tuple(t.get("categories", ())),
        country_codes=tuple(t.get("country_codes", ())),
        positions=tuple(AdPosition(p) for p in t.get("positions", ())),
        excluded_podcast_ids=tuple(uuid.UUID(i) for i in t.get("excluded_podcast_ids", ())),
        exclude_explicit=bool(t.get("exclude_explicit", False)),
    )


def _line_item(row: Mapping[str, Any]) -> LineItem:
    return LineItem(
        id=row["line_item_id"],
        campaign_id=row["campaign_id"],
        display_name=row["display_name"],
        state=CampaignState(row["state"]),
        ad_type=AdType(row["ad_type"]),
        pricing_model=PricingModel(row["pricing_model"]),
        rate=Money(row["currency_code"], row["rate_minor"]),
        impression_goal=row["impression_goal"],
        impression_cap=row["impression_cap"],
        pacing_strategy=PacingStrategy(row["pacing_strategy"]),
        priority=row["priority"],
        flight_start=row["flight_start"],
        flight_end=row["flight_end"],
        targeting=_targeting(row["targeting"]),
        frequency_cap_max=row["frequency_cap_max"],
        frequency_cap_days=row["frequency_cap_days"],
        promo_code=row["promo_code"],
        vanity_url=row["vanity_url"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


_LINE_ITEM_SELECT = """
    SELECT l.*, c.currency_code FROM line_items l
    JOIN campaigns c ON c.tenant_id = l.tenant_id AND c.campaign_id = l.campaign_id
"""


async def insert_line_item(conn: Conn, tenant_id: uuid.UUID, li: LineItem) -> None:
    assert li.rate is not None
    assert li.ad_type
    assert li.pricing_model
    await conn.execute(
        """
        INSERT INTO line_items (tenant_id, line_item_id, campaign_id, display_name, state,
            ad_type, pricing_model, rate_minor, impression_goal, impression_cap,
            pacing_strategy, priority, flight_start, flight_end, targeting,
            frequency_cap_max, frequency_cap_days, promo_code, vanity_url)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15::jsonb,
            $16, $17, $18, $19)
        """,
        tenant_id,
        li.id,
        li.campaign_id,
        li.display_name,
        int(li.state),
        int(li.ad_type),
        int(li.pricing_model),
        li.rate.minor_units,
        li.impression_goal,
        li.impression_cap,
        int(li.pacing_strategy),
        li.priority,
        li.flight_start,
        li.flight_end,
        _targeting_json(li.targeting),
        li.frequency_cap_max,
        li.frequency_cap_days,
        li.promo_code,
        li.vanity_url,
    )


async def get_line_item(
    conn: Conn, line_item_id: uuid.UUID, *, for_update: bool = False
) -> LineItem | None:
    lock = " FOR UPDATE OF l" if for_update else ""
    row = await conn.fetchrow(f"{_LINE_ITEM_SELECT} WHERE l.line_item_id = $1{lock}", line_item_id)
    return _line_item(row) if row else None


async def line_items_by_id(conn: Conn, line_item_ids: Sequence[uuid.UUID]) -> list[LineItem]:
    rows = await conn.fetch(
        f"{_LINE_ITEM_SELECT} WHERE l.line_item_id = ANY($1::uuid[])", list(line_item_ids)
    )
    return [_line_item(r) for r in rows]


async def list_line_items(
    conn: Conn,
    campaign_id: uuid.UUID | None,
    states: Sequence[CampaignState],
    ad_type: AdType | None,
    podcast_id: uuid.UUID | None,
    after: tuple[int, datetime, uuid.UUID] | None,
    limit: int,
) -> list[LineItem]:
    rows = await conn.fetch(
        f"""
        {_LINE_ITEM_SELECT}
        WHERE ($1::uuid IS NULL OR l.campaign_id = $1)
          AND (cardinality($2::int[]) = 0 OR l.state = ANY($2::int[]))
          AND ($3::int IS NULL OR l.ad_type = $3)
          AND ($4::text IS NULL OR (
              (jsonb_array_length(l.targeting->'podcast_ids') = 0
               OR l.targeting->'podcast_ids' ? $4)
              AND NOT l.targeting->'excluded_podcast_ids' ? $4))
          AND ($5::int IS NULL
               OR (l.priority, l.flight_start, l.line_item_id) > ($5, $6, $7::uuid))
        ORDER BY l.priority, l.flight_start, l.line_item_id
        LIMIT $8
        """,
        campaign_id,
        [int(s) for s in states],
        int(ad_type) if ad_type else None,
        str(podcast_id) if podcast_id else None,
        after[0] if after else None,
        after[1] if after else None,
        after[2] if after else None,
        limit,
    )
    return [_line_item(r) for r in rows]


async def line_items_of(conn: Conn, campaign_id: uuid.UUID) -> list[LineItem]:
    rows = await conn.fetch(
        f"{_LINE_ITEM_SELECT} WHERE l.campaign_id = $1 "
        "ORDER BY l.priority, l.flight_start, l.line_item_id",
        campaign_id,
    )
    return [_line_item(r) for r in rows]


async def update_line_item(conn: Conn, li: LineItem) -> None:
    assert li.rate is not None
    await conn.execute(
        """
        UPDATE line_items SET display_name = $2, state = $3, rate_minor = $4,
            impression_goal = $5, impression_cap = $6, pacing_strategy = $7, priority = $8,
            flight_start = $9, flight_end = $10, targeting = $11::jsonb,
            frequency_cap_max = $12, frequency_cap_days = $13, promo_code = $14,
            vanity_url = $15, updated_at = now()
        WHERE line_item_id = $1
        """,
        li.id,
        li.display_name,
        int(li.state),
        li.rate.minor_units,
        li.impression_goal,
        li.impression_cap,
        int(li.pacing_strategy),
        li.priority,
        li.flight_start,
        li.flight_end,
        _targeting_json(li.targeting),
        li.frequency_cap_max,
        li.frequency_cap_days,
        li.promo_code,
        li.vanity_url,
    )


async def delete_line_item(conn: Conn, line_item_id: uuid.UUID) -> None:
    await conn.execute("DELETE FROM line_items WHERE line_item_id = $1", line_item_id)


async def set_line_item_states(
    conn: Conn, campaign_id: uuid.UUID, from_states: Sequence[CampaignState], to: CampaignState
) -> list[uuid.UUID]:
    rows = await conn.fetch(
        """
        UPDATE line_items SET state = $3, updated_at = now()
        WHERE campaign_id = $1 AND state = ANY($2::int[]) RETURNING line_item_id
        """,
        campaign_id,
        [int(s) for s in from_states],
        int(to),
    )
    return [r["line_item_id"] for r in rows]


# Placements


def _placement(row: Mapping[str, Any]) -> Placement:
    flight = row["flight"]
    return Placement(
        id=row["placement_id"],
        line_item_id=row["line_item_id"],
        campaign_id=row["campaign_id"],
        episode_id=row["episode_id"],
        podcast_id=row["podcast_id"],
        ad_slot_id=row["ad_slot_id"],
        position=AdPosition(row["position"]),
        start_byte=row["start_byte"],
        end_byte=row["end_byte"],
        state=PlacementState(row["state"]),
        impression_goal=row["impression_goal"],
        flight_start=flight.lower if flight is not None else None,
        flight_end=flight.upper if flight is not None else None,
        makegood_for_line_item_id=row["makegood_for_line_item_id"],
        episode_publish_at=row["episode_publish_at"],
        book_time=row["book_time"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _flight(p: Placement) -> asyncpg.Range | None:
    if p.flight_start is None or p.flight_end is None:
        return None
    return asyncpg.Range(p.flight_start, p.flight_end, lower_inc=True, upper_inc=False)


async def insert_placement(
    conn: Conn,
    tenant_id: uuid.UUID,
    p: Placement,
    sponsor: Sponsor,
    request_id: str,
) -> Placement:
    row = await conn.fetchrow(
        """
        INSERT INTO placements (tenant_id, placement_id, line_item_id, campaign_id, sponsor_id,
            competitive_key, episode_id, podcast_id, episode_publish_at, ad_slot_id, position,
            start_byte, end_byte, state, impression_goal, flight, makegood_for_line_item_id,
            request_id, book_time)
        VALUES ($1, $2, $3, $4, $5, lower(btrim($6)), $7, $8, $9, $10, $11, $12, $13, $14, $15,
            $16, $17, $18, CASE WHEN $14::smallint = 1 THEN NULL ELSE now() END)
        RETURNING *
        """,
        tenant_id,
        p.id,
        p.line_item_id,
        p.campaign_id,
        sponsor.id,
        sponsor.competitive_category,
        p.episode_id,
        p.podcast_id,
        p.episode_publish_at,
        p.ad_slot_id,
        int(p.position),
        p.start_byte,
        p.end_byte,
        int(p.state),
        p.impression_goal,
        _flight(p),
        p.makegood_for_line_item_id,
        request_id,
    )
    return _placement(row)


async def book_placement(conn: Conn, p: Placement, sponsor: Sponsor, request_id: str) -> Placement:
    row = await conn.fetchrow(
        """
        UPDATE placements SET state = $2, ad_slot_id = $3, position = $4, start_byte = $5,
            end_byte = $6, flight = $7, impression_goal = $8, makegood_for_line_item_id = $9,
            request_id = $10, sponsor_id = $11, competitive_key = lower(btrim($12)),
            book_time = now(), updated_at = now()
        WHERE placement_id = $1 RETURNING *
        """,
        p.id,
        int(PlacementState.BOOKED),
        p.ad_slot_id,
        int(p.position),
        p.start_byte,
        p.end_byte,
        _flight(p),
        p.impression_goal,
        p.makegood_for_line_item_id,
        request_id,
        sponsor.id,
        sponsor.competitive_category,
    )
    return _placement(row)


async def get_placement(
    conn: Conn, placement_id: uuid.UUID, *, for_update: bool = False
) -> Placement | None:
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(
        f"SELECT * FROM placements WHERE placement_id = $1{lock}", placement_id
    )
    return _placement(row) if row else None


async def placement_by_request_id(conn: Conn, request_id: str) -> Placement | None:
    row = await conn.fetchrow(
        "SELECT * FROM placements WHERE request_id = $1 AND request_id <> ''", request_id
    )
    return _placement(row) if row else None


async def list_placements(
    conn: Conn,
    where: dict[str, Any],
    states: Sequence[PlacementState],
    after: tuple[datetime, int, uuid.UUID] | None,
    limit: int,
) -> list[Placement]:
    rows = await conn.fetch(
        """
        SELECT * FROM placements
        WHERE ($1::uuid IS NULL OR campaign_id = $1)
          AND ($2::uuid IS NULL OR line_item_id = $2)
          AND ($3::uuid IS NULL OR podcast_id = $3)
          AND ($4::uuid IS NULL OR episode_id = $4)
          AND (cardinality($5::int[]) = 0 OR state = ANY($5::int[]))
          AND ($6::timestamptz IS NULL
               OR (episode_publish_at, position, placement_id) > ($6, $7, $8::uuid))
        ORDER BY episode_publish_at, position, placement_id
        LIMIT $9
        """,
        where.get("campaign_id"),
        where.get("line_item_id"),
        where.get("podcast_id"),
        where.get("episode_id"),
        [int(s) for s in states],
        after[0] if after else None,
        after[1] if after else None,
        after[2] if after else None,
        limit,
    )
    return [_placement(r) for r in rows]


async def slot_placements(conn: Conn, ad_slot_ids: Sequence[uuid.UUID]) -> list[Placement]:
    """Placements that reserved one of the slots (cancelled ones too)."""
    rows = await conn.fetch(
        "SELECT * FROM placements WHERE ad_slot_id = ANY($1::uuid[]) AND flight IS NOT NULL",
        list(ad_slot_ids),
    )
    return [_placement(r) for r in rows]


async def update_placement(conn: Conn, p: Placement) -> Placement:
    row = await conn.fetchrow(
        """
        UPDATE placements SET impression_goal = $2, ad_slot_id = $3, position = $4,
            updated_at = now()
        WHERE placement_id = $1 RETURNING *
        """,
        p.id,
        p.impression_goal,
        p.ad_slot_id,
        int(p.position),
    )
    return _placement(row)


async def delete_placement(conn: Conn, placement_id: uuid.UUID) -> None:
    await conn.execute("DELETE FROM placements WHERE placement_id = $1", placement_id)


async def placements_for_pacing(conn: Conn, line_item_ids: Sequence[uuid.UUID]) -> list[Placement]:
    """Placements that reserved a slot (cancelled ones too: what they delivered counts),
    of these line items or booked as makegoods for them."""
    rows = await conn.fetch(
        """
        SELECT * FROM placements
        WHERE (line_item_id = ANY($1::uuid[]) OR makegood_for_line_item_id = ANY($1::uuid[]))
          AND flight IS NOT NULL
        """,
        list(line_item_ids),
    )
    return [_placement(r) for r in rows]


@dataclass(frozen=True)
class CommitmentTerms:
    """What a line item's bookings commit of the budget depends on."""

    pricing_model: PricingModel
    rate_minor: int
    # Impression goals of its booked, live and completed placements, and whether it has any.
    booked_goal: int
    booked: bool


# Every line item of campaign $1 with what its booked, live and completed placements
# commit (kept on the line item by a trigger on placements, migration 0055).
_COMMITMENT_TERMS = """
    SELECT line_item_id, pricing_model, rate_minor, booked_goal AS goal, booked_placements AS n
    FROM line_items WHERE campaign_id = $1
"""


def _terms(rows: Sequence[Sequence[Any]]) -> dict[uuid.UUID, CommitmentTerms]:
    """Rows of _COMMITMENT_TERMS' columns, in its order."""
    return {
        item_id: CommitmentTerms(PricingModel(model), rate, goal, n > 0)
        for item_id, model, rate, goal, n in rows
    }


async def commitment_terms(conn: Conn, campaign_id: uuid.UUID) -> dict[uuid.UUID, CommitmentTerms]:
    """Every line item of a campaign with its placements' goals."""
    return _terms(await conn.fetch(_COMMITMENT_TERMS, campaign_id))


@dataclass(frozen=True)
class BookingLookup:
    """What a booking reads before it asks the catalog: the placement an earlier send of
    its request_id booked, and the line item."""

    earlier: Placement | None
    item: LineItem | None


# $1 line item, $2 request id.
BOOKING_LOOKUP = """
    SELECT e AS earlier, l AS item, c.currency_code
    FROM (SELECT) one
    LEFT JOIN placements e ON e.request_id = $2 AND e.request_id <> ''
    LEFT JOIN line_items l ON l.line_item_id = $1
    LEFT JOIN campaigns c ON c.tenant_id = l.tenant_id AND c.campaign_id = l.campaign_id
"""


async def booking_lookup(conn: Conn, line_item_id: uuid.UUID, request_id: str) -> BookingLookup:
    """One statement: the placement booked by `request_id` (if any) and the line item."""
    row = await conn.fetchrow(BOOKING_LOOKUP, line_item_id, request_id)
    assert row is not None
    item = row["item"]
    return BookingLookup(
        earlier=_placement(row["earlier"]) if row["earlier"] is not None else None,
        item=_line_item({**item, "currency_code": row["currency_code"]}) if item else None,
    )


@dataclass(frozen=True)
class BookingLocks:
    campaign: Campaign
    item: LineItem
    sponsor: Sponsor


async def lock_for_booking(
    conn: Conn, campaign_id: uuid.UUID, line_item_id: uuid.UUID
) -> BookingLocks | None:
    """Locks the campaign, then the line item (the order every writer of both takes), and
    reads the campaign's sponsor: one statement. None when either is gone."""
    row = await conn.fetchrow(
        """
        SELECT c AS campaign, l AS item, s AS sponsor
        FROM campaigns c
        JOIN line_items l ON l.tenant_id = c.tenant_id AND l.campaign_id = c.campaign_id
        JOIN sponsors s ON s.tenant_id = c.tenant_id AND s.sponsor_id = c.sponsor_id
        WHERE c.campaign_id = $1 AND l.line_item_id = $2
        FOR UPDATE OF c, l
        """,
        campaign_id,
        line_item_id,
    )
    if row is None:
        return None
    campaign = row["campaign"]
    return BookingLocks(
        campaign=_campaign(campaign),
        item=_line_item({**row["item"], "currency_code": campaign["currency_code"]}),
        sponsor=_sponsor(row["sponsor"]),
    )


@dataclass(frozen=True)
class BookingChecks:
    """What a booking checks once it holds its locks, read in one statement (so in one
    snapshot taken after the locks were granted)."""

    earlier: Placement | None
    # The first of the candidate slots no running placement holds over the flight.
    free_slot: uuid.UUID | None
    competitor: bool
    terms: dict[uuid.UUID, CommitmentTerms]


# $1 campaign, $2 request id, $3 candidate slots in order, $4 episode, $5 competitive
# category, $6 and $7 the flight, $8 sponsor.
BOOKING_CHECKS = f"""
    SELECT
        (SELECT e FROM placements e WHERE e.request_id = $2 AND e.request_id <> '')
            AS earlier,
        -- A lateral probe per candidate into placements_slot_running (0056),
        -- whatever the planner believes of the table's size.
        (SELECT u.slot FROM unnest($3::uuid[]) WITH ORDINALITY AS u(slot, n)
         LEFT JOIN LATERAL (
             SELECT true AS taken FROM placements p
             WHERE p.ad_slot_id = u.slot AND {_RUNNING_PROBE}
               AND p.flight && tstzrange($6, $7)
             LIMIT 1) t ON true
         WHERE t.taken IS NULL
         ORDER BY u.n LIMIT 1) AS free_slot,
        lower(btrim($5)) <> '' AND EXISTS (
            SELECT FROM placements p
            WHERE p.episode_id = $4 AND p.competitive_key = lower(btrim($5))
              AND p.competitive_key <> '' AND p.sponsor_id <> $8
              AND {_RUNNING_PROBE}
              AND p.flight && tstzrange($6, $7)) AS competitor,
        ARRAY(SELECT row(t.*) FROM ({_COMMITMENT_TERMS}) t) AS terms
"""


async def booking_checks(
    conn: Conn,
    *,
    campaign_id: uuid.UUID,
    request_id: str,
    slots: Sequence[uuid.UUID],
    episode_id: uuid.UUID,
    sponsor: Sponsor,
    start: datetime,
    end: datetime,
) -> BookingChecks:
    row = await conn.fetchrow(
        BOOKING_CHECKS,
        campaign_id,
        request_id,
        list(slots),
        episode_id,
        sponsor.competitive_category,
        start,
        end,
        sponsor.id,
    )
    assert row is not None
    return BookingChecks(
        earlier=_placement(row["earlier"]) if row["earlier"] is not None else None,
        free_slot=row["free_slot"],
        competitor=row["competitor"],
        terms=_terms(row["terms"]),
    )


async def release_placements(
    conn: Conn, *, campaign_id: uuid.UUID | None = None, line_item_id: uuid.UUID | None = None
) -> list[uuid.UUID]:
    """Cancels the booked and live placements of a cancelled campaign or line item and
    deletes its proposals."""
    await conn.execute(
        """
        DELETE FROM placements WHERE state = 1
          AND ($1::uuid IS NULL OR campaign_id = $1) AND ($2::uuid IS NULL OR line_item_id = $2)
        """,
        campaign_id,
        line_item_id,
    )
    rows = await conn.fetch(
        """
        UPDATE placements SET state = 5, updated_at = now()
        WHERE state IN (2, 3)
          AND ($1::uuid IS NULL OR campaign_id = $1) AND ($2::uuid IS NULL OR line_item_id = $2)
        RETURNING placement_id
        """,
        campaign_id,
        line_item_id,
    )
    return [r["placement_id"] for r in rows]


# The sweep


async def sweep_tenants(conn: Conn, now: datetime) -> list[uuid.UUID]:
    rows = await conn.fetch("SELECT tenant_id FROM campaign_sweep_tenants($1)", now)
    return [r["tenant_id"] for r in rows]


async def sweep_tenant(conn: Conn, now: datetime) -> dict[str, list[uuid.UUID]]:
    """Moves one tenant's resources along with the clock; returns what changed."""
    campaigns = await conn.fetch(
        """
        UPDATE campaigns SET state = 4, updated_at = now()
        WHERE state IN (2, 3) AND flight_end <= $1 RETURNING campaign_id
        """,
        now,
    )
    line_items = await conn.fetch(
        """
        UPDATE line_items l SET state = 4, updated_at = now()
        WHERE l.state IN (2, 3) AND (l.flight_end <= $1 OR EXISTS (
            SELECT 1 FROM campaigns c WHERE c.tenant_id = l.tenant_id
              AND c.campaign_id = l.campaign_id AND c.state = 4))
        RETURNING line_item_id
        """,
        now,
    )
    completed = await conn.fetch(
        """
        UPDATE placements SET state = 4, updated_at = now()
        WHERE state IN (2, 3) AND upper(flight) <= $1 RETURNING placement_id
        """,
        now,
    )
    live = await conn.fetch(
        """
        UPDATE placements p SET state = 3, updated_at = now()
        FROM line_items l, campaigns c
        WHERE p.state = 2 AND lower(p.flight) <= $1
          AND l.tenant_id = p.tenant_id AND l.line_item_id = p.line_item_id AND l.state = 2
          AND c.tenant_id = p.tenant_id AND c.campaign_id = p.campaign_id AND c.state = 2
        RETURNING p.placement_id
        """,
        now,
    )
    return {
        "campaign": [r["campaign_id"] for r in campaigns],
        "line_item": [r["line_item_id"] for r in line_items],
        "placement_completed": [r["placement_id"] for r in completed],
        "placement_live": [r["placement_id"] for r in live],
    }


# Deals


def _deal(row: asyncpg.Record) -> Deal:
    return Deal(
        id=row["deal_id"],
        display_name=row["display_name"],
        sponsor_id=row["sponsor_id"],
        campaign_id=row["campaign_id"],
        stage=DealStage(row["stage"]),
        amount=Money(row["amount_currency"], row["amount_minor"])
        if row["amount_currency"]
        else None,
        owner_user_id=row["owner_user_id"],
        expected_close_at=row["expected_close_at"],
        notes=row["notes"],
        stage_changed_at=row["stage_changed_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def insert_deal(conn: Conn, tenant_id: uuid.UUID, d: Deal) -> Deal:
    row = await conn.fetchrow(
        """
        INSERT INTO deals (tenant_id, deal_id, display_name, sponsor_id, campaign_id, stage,
            amount_currency, amount_minor, owner_user_id, expected_close_at, notes)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING *
        """,
        tenant_id,
        d.id,
        d.display_name,
        d.sponsor_id,
        d.campaign_id,
        int(d.stage),
        d.amount.currency_code if d.amount else "",
        d.amount.minor_units if d.amount else 0,
        d.owner_user_id,
        d.expected_close_at,
        d.notes,
    )
    return _deal(row)


async def get_deal(conn: Conn, deal_id: uuid.UUID, *, for_update: bool = False) -> Deal | None:
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(f"SELECT * FROM deals WHERE deal_id = $1{lock}", deal_id)
    return _deal(row) if row else None


async def list_deals(
    conn: Conn,
    sponsor_id: uuid.UUID | None,
    stages: Sequence[DealStage],
    owner_user_id: str,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[Deal]:
    rows = await conn.fetch(
        """
        SELECT * FROM deals
        WHERE ($1::uuid IS NULL OR sponsor_id = $1)
          AND (cardinality($2::int[]) = 0 OR stage = ANY($2::int[]))
          AND ($3 = '' OR owner_user_id = $3)
          AND ($4::timestamptz IS NULL OR (updated_at, deal_id) < ($4, $5::uuid))
        ORDER BY updated_at DESC, deal_id DESC
        LIMIT $6
        """,
        sponsor_id,
        [int(s) for s in stages],
        owner_user_id,
        after[0] if after else None,
        after[1] if after else None,
        limit,
    )
    return [_deal(r) for r in rows]


async def update_deal(conn: Conn, d: Deal, *, stage_changed: bool = False) -> Deal:
    row = await conn.fetchrow(
        """
        UPDATE deals SET display_name = $2, campaign_id = $3, stage = $4, amount_currency = $5,
            amount_minor = $6, owner_user_id = $7, expected_close_at = $8, notes = $9,
            stage_changed_at = CASE WHEN $10 THEN clock_timestamp() ELSE stage_changed_at END,
            updated_at = clock_timestamp()
        WHERE deal_id = $1 RETURNING *
        """,
        d.id,
        d.display_name,
        d.campaign_id,
        int(d.stage),
        d.amount.currency_code if d.amount else "",
        d.amount.minor_units if d.amount else 0,
        d.owner_user_id,
        d.expected_close_at,
        d.notes,
        stage_changed,
    )
    return _deal(row)


async def delete_deal(conn: Conn, deal_id: uuid.UUID) -> None:
    await conn.execute("DELETE FROM deals WHERE deal_id = $1", deal_id)


def _deal_event(row: asyncpg.Record) -> DealEvent:
    return DealEvent(
        id=row["deal_event_id"],
        deal_id=row["deal_id"],
        from_stage=DealStage(row["from_stage"]),
        to_stage=DealStage(row["to_stage"]),
        event_time=row["event_time"],
        actor_type=row["actor_type"],
        actor_id=row["actor_id"],
        note=row["note"],
    )


async def insert_deal_event(
    conn: Conn,
    tenant_id: uuid.UUID,
    deal_id: uuid.UUID,
    from_stage: DealStage,
    to_stage: DealStage,
    actor: tuple[str, str],
    note: str,
) -> DealEvent:
    row = await conn.fetchrow(
        """
        INSERT INTO deal_events (tenant_id, deal_event_id, deal_id, from_stage, to_stage,
            actor_type, actor_id, note)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING *
        """,
        tenant_id,
        uuid.uuid4(),
        deal_id,
        int(from_stage),
        int(to_stage),
        actor[0],
        actor[1],
        note,
    )
    return _deal_event(row)


async def list_deal_events(
    conn: Conn, deal_id: uuid.UUID, after: tuple[datetime, uuid.UUID] | None, limit: int
) -> list[DealEvent]:
    rows = await conn.fetch(
        """
        SELECT * FROM deal_events
        WHERE deal_id = $1
          AND ($2::timestamptz IS NULL OR (event_time, deal_event_id) > ($2, $3::uuid))
        ORDER BY event_time, deal_event_id
        LIMIT $4
        """,
        deal_id,
        after[0] if after else None,
        after[1] if after else None,
        limit,
    )
    return [_deal_event(r) for r in rows]


# Matchmaking


async def held_slots(
    conn: Conn, slot_ids: Sequence[uuid.UUID], start: datetime, end: datetime
) -> set[uuid.UUID]:
    rows = await conn.fetch(
        """
        SELECT DISTINCT ad_slot_id FROM placements
        WHERE ad_slot_id = ANY($1::uuid[]) AND state = ANY($4::int[])
          AND flight && tstzrange($2, $3)
        """,
        list(slot_ids),
        start,
        end,
        _RUNNING,
    )
    return {r["ad_slot_id"] for r in rows}


async def competitor_in_podcast(
    conn: Conn, podcast_id: uuid.UUID, sponsor: Sponsor, start: datetime, end: datetime
) -> bool:
    found: bool = await conn.fetchval(
        """
        SELECT EXISTS (SELECT 1 FROM placements
        WHERE podcast_id = $1 AND competitive_key = lower(btrim($2)) AND competitive_key <> ''
          AND sponsor_id <> $3 AND state = ANY($6::int[]) AND flight && tstzrange($4, $5))
        """,
        podcast_id,
        sponsor.competitive_category,
        sponsor.id,
        start,
        end,
        _RUNNING,
    )
    return found
