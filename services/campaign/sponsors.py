"""Sponsors: the standard methods, each write one tenant transaction with its audit
record."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import replace

from services.campaign import repository as repo
from services.campaign.domain import SPONSOR_UPDATABLE, Sponsor, competitive_key, validate_sponsor
from services.campaign.operations import Operations, sponsor_or_fail
from services.shared.errors import FailedPrecondition, NotFound
from services.shared.pagination import split_page
from services.shared.validation import mask_paths


class SponsorOps(Operations):
    async def create_sponsor(self, tenant_id: uuid.UUID, sponsor: Sponsor) -> Sponsor:
        sponsor = validate_sponsor(replace(sponsor, id=uuid.uuid4()))
        async with self._db.tenant_transaction(tenant_id) as conn:
            created = await repo.insert_sponsor(conn, tenant_id, sponsor)
            await self._audit(
                conn,
                tenant_id,
                ("sponsor", str(created.id)),
                {"display_name": created.display_name},
            )
            return created

    async def get_sponsor(self, tenant_id: uuid.UUID, sponsor_id: uuid.UUID) -> Sponsor:
        async with self._db.tenant_transaction(tenant_id) as conn:
            return await sponsor_or_fail(conn, sponsor_id)

    async def list_sponsors(
        self, tenant_id: uuid.UUID, category: str, page_size: int, page_token: str
    ) -> tuple[list[Sponsor], str]:
        key = competitive_key(category)
        query = {"list": "sponsors", "competitive_category": key}
        cursor = self._tokens.decode(page_token, query)
        after = (cursor["t"], uuid.UUID(cursor["id"])) if cursor else None
        async with self._db.tenant_transaction(tenant_id) as conn:
            rows = await repo.list_sponsors(conn, key, after, page_size + 1)
        page, more = split_page(rows, page_size)
        token = ""
        if more:
            last = page[-1]
            token = self._tokens.encode({"t": last.display_name.lower(), "id": str(last.id)}, query)
        return list(page), token

    async def update_sponsor(
        self, tenant_id: uuid.UUID, patch: Sponsor, paths: Sequence[str]
    ) -> Sponsor:
        requested = mask_paths(paths, SPONSOR_UPDATABLE)
        async with self._db.tenant_transaction(tenant_id) as conn:
            current = await repo.get_sponsor(conn, patch.id, for_update=True)
            if current is None:
                raise NotFound("sponsor", str(patch.id))
            changes = {name: getattr(patch, name) for name in requested}
            updated = validate_sponsor(replace(current, **changes))
            saved = await repo.update_sponsor(conn, updated)
            await self._audit(
                conn, tenant_id, ("sponsor", str(patch.id)), {"fields": sorted(requested)}
            )
            return saved

    async def delete_sponsor(self, tenant_id: uuid.UUID, sponsor_id: uuid.UUID) -> None:
        async with self._db.tenant_transaction(tenant_id) as conn:
            if await repo.get_sponsor(conn, sponsor_id, for_update=True) is None:
                raise NotFound("sponsor", str(sponsor_id))
            campaigns, deals = await repo.sponsor_usage(conn, sponsor_id)
            if campaigns or deals:
                raise FailedPrecondition(
                    f"the sponsor has {campaigns} campaigns and {deals} deals: delete those first",
                    reason="SPONSOR_IN_USE",
                    metadata={"campaign_count": str(campaigns), "deal_count": str(deals)},
                )
            await repo.delete_sponsor(conn, sponsor_id)
            await self._audit(conn, tenant_id, ("sponsor", str(sponsor_id)), {})
