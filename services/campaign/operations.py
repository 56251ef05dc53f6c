"""What the parts of the campaign service's operations share: the collaborators they
are built from, the audit record every write makes in its transaction, lookups that fail
NOT_FOUND, the check that a campaign is open, and what bookings commit of a budget."""

from __future__ import annotations

import uuid
from typing import Any

import redis.asyncio as aioredis

from services.campaign import repository as repo
from services.campaign.domain import (
    Campaign,
    CampaignState,
    LineItem,
    Sponsor,
    committed_cost,
    state_name,
)
from services.campaign.pacing import PacingCache
from services.campaign.peers import Analytics, Catalog
from services.shared import audit_outbox
from services.shared.db import Database
from services.shared.errors import FailedPrecondition, NotFound
from services.shared.pagination import PageTokens

CLOSED = (CampaignState.COMPLETED, CampaignState.CANCELLED)


class Operations:
    def __init__(
        self,
        db: Database,
        page_tokens: PageTokens,
        catalog: Catalog,
        analytics: Analytics,
        redis: aioredis.Redis | None = None,
        pacing_cache_ttl_s: float = 0.0,
    ) -> None:
        self._db = db
        self._tokens = page_tokens
        self._catalog = catalog
        self._analytics = analytics
        self._redis = redis
        self._pacing = PacingCache(pacing_cache_ttl_s)

    async def _audit(
        self, conn: Any, tenant_id: uuid.UUID, resource: tuple[str, str], details: dict[str, Any]
    ) -> None:
        """Records a change in the audit outbox, in the change's transaction; every write
        goes through here, so it is also where this replica's pacing answers of the
        tenant are dropped."""
        self._pacing.forget(tenant_id)
        await audit_outbox.record(conn, repo.AUDIT, tenant_id, resource, details)


async def sponsor_or_fail(conn: Any, sponsor_id: uuid.UUID, *, for_update: bool = False) -> Sponsor:
    sponsor = await repo.get_sponsor(conn, sponsor_id, for_update=for_update)
    if sponsor is None:
        raise NotFound("sponsor", str(sponsor_id))
    return sponsor


async def campaign_or_fail(
    conn: Any, campaign_id: uuid.UUID, *, for_update: bool = False
) -> Campaign:
    campaign = await repo.get_campaign(conn, campaign_id, for_update=for_update)
    if campaign is None:
        raise NotFound("campaign", str(campaign_id))
    return campaign


async def line_item_or_fail(
    conn: Any, line_item_id: uuid.UUID, *, for_update: bool = False
) -> LineItem:
    item = await repo.get_line_item(conn, line_item_id, for_update=for_update)
    if item is None:
        raise NotFound("line item", str(line_item_id))
    return item


def check_open(campaign: Campaign) -> None:
    if campaign.state in CLOSED:
        raise FailedPrecondition(
            f"the campaign is {state_name(campaign.state)}",
            reason="CAMPAIGN_CLOSED",
            metadata={"current_state": state_name(campaign.state)},
        )


async def committed_spend(
    conn: Any, campaign: Campaign, extra: tuple[uuid.UUID, int] | None = None
) -> int:
    return (await commitments(conn, campaign, extra))[-1]


async def commitments(
    conn: Any, campaign: Campaign, extra: tuple[uuid.UUID, int] | None = None
) -> tuple[int, int]:
    """What the campaign's bookings commit of its budget, without and with `extra`
    (a line item and the impressions a new booking adds to it)."""
    return commitments_of(await repo.commitment_terms(conn, campaign.id), extra)


def commitments_of(
    terms: dict[uuid.UUID, repo.CommitmentTerms], extra: tuple[uuid.UUID, int] | None = None
) -> tuple[int, int]:
    goals = {i: t.booked_goal for i, t in terms.items() if t.booked}
    with_extra = dict(goals)
    if extra is not None:
        with_extra[extra[0]] = with_extra.get(extra[0], 0) + extra[1]

    def cost(by_item: dict[uuid.UUID, int]) -> int:
        return sum(
            committed_cost(terms[i].pricing_model, terms[i].rate_minor, goal)
            for i, goal in by_item.items()
        )

    return cost(goals), cost(with_extra)
