"""Site events with their own time are identified by id and time in the day partitions
(migration 0071): a resend is a duplicate in any later batch, alone, among new events or
sent concurrently, without an idempotency key; purchases' orders are still claimed."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from devstack.stack import Stack
from services.attribution.sites.records import Row
from services.attribution.sites.store import SiteEventStore
from services.shared.db import Database

pytestmark = pytest.mark.stack

SPONSOR = uuid.UUID("5b0c4d0e-63a6-4c36-9d1c-2a7f2a2f0002")
WHEN = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=1)


def timed(tenant_id: uuid.UUID, event_id: str, at: dt.datetime = WHEN, order: str = "") -> Row:
    """An event whose time the sender gave (it arrived later)."""
    return Row(
        tenant_id,
        at,
        at + dt.timedelta(seconds=30),
        SPONSOR,
        None,
        3 if order else 1,
        0,
        b"\x02" * 16,
        event_id,
        "",
        "",
        "",
        "",
        order,
        "",
    )


@pytest.fixture
async def store(stack: Stack) -> AsyncIterator[SiteEventStore]:
    db = await Database.connect(stack.app_dsn, min_size=1, max_size=4)
    try:
        yield await SiteEventStore.create(db)
    finally:
        await db.close()


async def stored(owner: asyncpg.Connection, tenant_id: uuid.UUID) -> list[tuple[str, dt.datetime]]:
    rows = await owner.fetch(
        "SELECT event_id, event_time FROM site_events WHERE tenant_id = $1 ORDER BY 1, 2",
        tenant_id,
    )
    return [(r["event_id"], r["event_time"]) for r in rows]


async def keys(owner: asyncpg.Connection, tenant_id: uuid.UUID) -> set[tuple[int, str]]:
    rows = await owner.fetch(
        "SELECT kind, key FROM attribution_keys WHERE tenant_id = $1", tenant_id
    )
    return {(r["kind"], r["key"]) for r in rows}


async def test_a_resent_event_is_a_duplicate_alone_or_among_new_ones(
    store: SiteEventStore, owner_conn: asyncpg.Connection
) -> None:
    tenant_id = uuid.uuid4()
    yesterday = WHEN - dt.timedelta(days=1)
    batch = [timed(tenant_id, "a"), timed(tenant_id, "b", yesterday)]
    assert await store.commit(tenant_id, batch) == 2
    assert await store.commit(tenant_id, batch) == 0
    mixed = [timed(tenant_id, "c"), batch[1], timed(tenant_id, "d", yesterday), batch[0]]
    assert await store.commit(tenant_id, mixed) == 2
    assert await stored(owner_conn, tenant_id) == sorted(
        [("a", WHEN), ("b", yesterday), ("c", WHEN), ("d", yesterday)]
    )
    assert await keys(owner_conn, tenant_id) == set()


async def test_concurrent_sends_of_one_batch_store_it_once(
    store: SiteEventStore, owner_conn: asyncpg.Connection
) -> None:
    tenant_id = uuid.uuid4()
    batch = [timed(tenant_id, f"e{n}", WHEN + dt.timedelta(seconds=n)) for n in range(200)]
    counts = await asyncio.gather(*(store.commit(tenant_id, batch) for _ in range(4)))
    assert sum(counts) == 200
    assert len(await stored(owner_conn, tenant_id)) == 200


async def test_an_id_at_another_time_is_another_event(
    store: SiteEventStore, owner_conn: asyncpg.Connection
) -> None:
    tenant_id = uuid.uuid4()
    later = WHEN + dt.timedelta(minutes=1)
    assert await store.commit(tenant_id, [timed(tenant_id, "same")]) == 1
    assert await store.commit(tenant_id, [timed(tenant_id, "same", later)]) == 1
    assert await stored(owner_conn, tenant_id) == [("same", WHEN), ("same", later)]


async def test_orders_stay_one_purchase_per_sponsor(
    store: SiteEventStore, owner_conn: asyncpg.Connection
) -> None:
    tenant_id = uuid.uuid4()
    purchase = timed(tenant_id, "p1", order="o-1")
    assert await store.commit(tenant_id, [purchase]) == 1
    assert await store.commit(tenant_id, [purchase]) == 0
    other = timed(tenant_id, "p2", WHEN + dt.timedelta(seconds=5), order="o-1")
    assert await store.commit(tenant_id, [other, timed(tenant_id, "v")]) == 1
    assert await stored(owner_conn, tenant_id) == [("p1", WHEN), ("v", WHEN)]
    assert await keys(owner_conn, tenant_id) == {(2, f"{SPONSOR}/o-1")}
