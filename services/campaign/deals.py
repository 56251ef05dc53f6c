"""The deal pipeline: the standard methods, TransitionDeal with optimistic concurrency,
and its events (stored, audited, and published best effort to a Redis stream)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

import redis.asyncio as aioredis

from services.campaign import repository as repo
from services.campaign.domain import (
    DEAL_TRANSITIONS,
    DEAL_UPDATABLE,
    DELETABLE_DEAL_STAGES,
    Deal,
    DealEvent,
    DealStage,
    check_note,
    check_transition,
    state_name,
    validate_deal,
)
from services.campaign.operations import Operations, campaign_or_fail, sponsor_or_fail
from services.shared.auth import Principal
from services.shared.context import current_principal
from services.shared.errors import Aborted, FailedPrecondition, NotFound
from services.shared.pagination import Keyset, split_page
from services.shared.validation import mask_paths

log = logging.getLogger("podmesh.campaign")
DEAL_EVENTS_STREAM = "podmesh:campaign:deal_events"


class DealOps(Operations):
    async def create_deal(self, tenant_id: uuid.UUID, deal: Deal) -> Deal:
        deal = validate_deal(replace(deal, id=uuid.uuid4(), stage=DealStage.PROSPECT))
        async with self._db.tenant_transaction(tenant_id) as conn:
            await sponsor_or_fail(conn, deal.sponsor_id, for_update=True)
            if deal.campaign_id is not None:
                await _check_deal_campaign(conn, deal)
            created = await repo.insert_deal(conn, tenant_id, deal)
            await self._audit(conn, tenant_id, ("deal", str(created.id)), {"stage": "prospect"})
            return created

    async def get_deal(self, tenant_id: uuid.UUID, deal_id: uuid.UUID) -> Deal:
        async with self._db.tenant_transaction(tenant_id) as conn:
            return await _deal_or_fail(conn, deal_id)

    async def list_deals(
        self,
        tenant_id: uuid.UUID,
        sponsor_id: uuid.UUID | None,
        stages: Sequence[DealStage],
        owner_user_id: str,
        page_size: int,
        page_token: str,
    ) -> tuple[list[Deal], str]:
        keyset = Keyset(
            self._tokens,
            {
                "list": "deals",
                "sponsor_id": str(sponsor_id or ""),
                "stages": sorted(int(s) for s in stages),
                "owner_user_id": owner_user_id,
            },
        )
        async with self._db.tenant_transaction(tenant_id) as conn:
            rows = await repo.list_deals(
                conn, sponsor_id, stages, owner_user_id, keyset.after(page_token), page_size + 1
            )
        page, more = split_page(rows, page_size)
        last = page[-1] if more else None
        token = keyset.next_token((last.updated_at, last.id) if last and last.updated_at else None)
        return list(page), token

    async def update_deal(self, tenant_id: uuid.UUID, patch: Deal, paths: Sequence[str]) -> Deal:
        requested = mask_paths(paths, DEAL_UPDATABLE)
        async with self._db.tenant_transaction(tenant_id) as conn:
            current = await repo.get_deal(conn, patch.id, for_update=True)
            if current is None:
                raise NotFound("deal", str(patch.id))
            changes: dict[str, Any] = {}
            for name in requested:
                attr = {"expected_close_time": "expected_close_at", "amount": "amount"}.get(
                    name, name
                )
                changes[attr] = getattr(patch, attr)
            updated = validate_deal(replace(current, **changes))
            if "campaign_id" in requested:
                if updated.campaign_id is not None:
                    await _check_deal_campaign(conn, updated)
                elif current.stage not in (
                    DealStage.PROSPECT,
                    DealStage.PROPOSAL,
                    DealStage.HOLD,
                    DealStage.LOST,
                ):
                    raise FailedPrecondition(
                        f"a {state_name(current.stage)} deal needs its campaign",
                        reason="DEAL_CAMPAIGN_REQUIRED",
                    )
            saved = await repo.update_deal(conn, updated)
            await self._audit(
                conn, tenant_id, ("deal", str(saved.id)), {"fields": sorted(requested)}
            )
            return saved

    async def delete_deal(self, tenant_id: uuid.UUID, deal_id: uuid.UUID) -> None:
        async with self._db.tenant_transaction(tenant_id) as conn:
            current = await repo.get_deal(conn, deal_id, for_update=True)
            if current is None:
                raise NotFound("deal", str(deal_id))
            if current.stage not in DELETABLE_DEAL_STAGES:
                raise FailedPrecondition(
                    f"a deal at the {state_name(current.stage)} stage is kept; only prospect, "
                    "proposal and lost deals can be deleted",
                    reason="DEAL_NOT_DELETABLE",
                    metadata={"current_stage": state_name(current.stage)},
                )
            await repo.delete_deal(conn, deal_id)
            await self._audit(conn, tenant_id, ("deal", str(deal_id)), {})

    async def transition_deal(
        self,
        tenant_id: uuid.UUID,
        deal_id: uuid.UUID,
        stage: DealStage,
        expected: DealStage | None,
        note: str,
    ) -> tuple[Deal, DealEvent]:
        check_note(note)
        principal = current_principal()
        async with self._db.tenant_transaction(tenant_id) as conn:
            current = await repo.get_deal(conn, deal_id, for_update=True)
            if current is None:
                raise NotFound("deal", str(deal_id))
            if expected is not None and current.stage is not expected:
                raise Aborted(
                    f"the deal is at the {state_name(current.stage)} stage now, not "
                    f"{state_name(expected)}: read it again",
                    reason="DEAL_STAGE_CHANGED",
                    metadata={
                        "current_stage": state_name(current.stage),
                        "expected_stage": state_name(expected),
                    },
                )
            check_transition("deal", current.stage, stage, DEAL_TRANSITIONS, "stage")
            if stage is DealStage.BOOKED and current.campaign_id is None:
                raise FailedPrecondition(
                    "a deal needs its campaign before it is booked: set campaign_id first",
                    reason="DEAL_CAMPAIGN_REQUIRED",
                )
            saved = await repo.update_deal(conn, replace(current, stage=stage), stage_changed=True)
            event = await repo.insert_deal_event(
                conn, tenant_id, deal_id, current.stage, stage, _actor(principal), note
            )
            await self._audit(
                conn,
                tenant_id,
                ("deal", str(deal_id)),
                {
                    "from_stage": state_name(current.stage),
                    "to_stage": state_name(stage),
                    "deal_event_id": str(event.id),
                    "note": note,
                },
            )
        await self._publish(tenant_id, event)
        return saved, event

    async def _publish(self, tenant_id: uuid.UUID, event: DealEvent) -> None:
        """Best effort: the deal event and its audit record are already durable."""
        if self._redis is None:
            return
        try:
            await self._redis.xadd(
                DEAL_EVENTS_STREAM,
                {
                    "tenant_id": str(tenant_id),
                    "deal_id": str(event.deal_id),
                    "deal_event_id": str(event.id),
                    "from_stage": state_name(event.from_stage),
                    "to_stage": state_name(event.to_stage),
                    "event_time": event.event_time.isoformat(),
                },
                maxlen=100_000,
                approximate=True,
            )
        except (aioredis.RedisError, OSError):
            log.warning("deal event not published: Redis unavailable")

    async def list_deal_events(
        self, tenant_id: uuid.UUID, deal_id: uuid.UUID, page_size: int, page_token: str
    ) -> tuple[list[DealEvent], str]:
        query = {"list": "deal_events", "deal_id": str(deal_id)}
        cursor = self._tokens.decode(page_token, query)
        after = (datetime.fromisoformat(cursor["t"]), uuid.UUID(cursor["id"])) if cursor else None
        async with self._db.tenant_transaction(tenant_id) as conn:
            await _deal_or_fail(conn, deal_id)
            rows = await repo.list_deal_events(conn, deal_id, after, page_size + 1)
        page, more = split_page(rows, page_size)
        token = ""
        if more:
            last = page[-1]
            token = self._tokens.encode(
                {"t": last.event_time.isoformat(), "id": str(last.id)}, query
            )
        return list(page), token


# Helpers


def _actor(principal: Principal) -> tuple[str, str]:
    return principal.type.value, principal.subject_id


async def _deal_or_fail(conn: Any, deal_id: uuid.UUID) -> Deal:
    deal = await repo.get_deal(conn, deal_id)
    if deal is None:
        raise NotFound("deal", str(deal_id))
    return deal


async def _check_deal_campaign(conn: Any, deal: Deal) -> None:
    assert deal.campaign_id is not None
    campaign = await campaign_or_fail(conn, deal.campaign_id)
    if campaign.sponsor_id != deal.sponsor_id:
        raise FailedPrecondition(
            "the campaign belongs to another sponsor than the deal",
            reason="DEAL_SPONSOR_MISMATCH",
        )
