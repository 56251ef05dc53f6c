"""The idempotency keys of stored site events: one batch's keys stay as long as any of
its rows, a resend of a stored event or order is a duplicate in a later batch, and the
keys go with the last day of their batch."""

from __future__ import annotations

import datetime as dt
import uuid

import asyncpg
import pytest

from devstack.stack import Stack
from services.attribution.sites.records import Row
from services.attribution.sites.store import SiteEventStore
from services.shared.db import Database

pytestmark = pytest.mark.stack

SPONSOR = uuid.UUID("5b0c4d0e-63a6-4c36-9d1c-2a7f2a2f0002")


def _row(tenant_id: uuid.UUID, event_id: str, moment: dt.datetime, order_id: str = "") -> Row:
    return Row(
        tenant_id,
        moment,
        moment,
        SPONSOR,
        None,
        3 if order_id else 1,
        0,
        b"\x01" * 16,
        event_id,
        "",
        "",
        "",
        "",
        order_id,
        "",
    )


async def _stored(owner: asyncpg.Connection, tenant_id: uuid.UUID) -> tuple[set[str], set[str]]:
    rows = await owner.fetch("SELECT event_id FROM site_events WHERE tenant_id = $1", tenant_id)
    keys = await owner.fetch(
        "SELECT key FROM attribution_keys WHERE tenant_id = $1 AND kind = 1", tenant_id
    )
    return {r["event_id"] for r in rows}, {k["key"] for k in keys}


async def test_keys_outlive_every_row_of_their_batch_and_go_with_the_last(
    stack: Stack, owner_conn: asyncpg.Connection
) -> None:
    today = dt.datetime.now(dt.UTC).date()
    old, newer = (
        dt.datetime.combine(today - dt.timedelta(days=days), dt.time(12), dt.UTC)
        for days in (60, 35)
    )
    tenant_id = uuid.uuid4()
    db = await Database.connect(stack.app_dsn, min_size=1, max_size=2)
    try:
        store = await SiteEventStore.create(db)
        batch = [
            _row(tenant_id, "newer-1", newer),
            _row(tenant_id, "old-1", old),
            _row(tenant_id, "old-2", old, order_id="order-1"),
        ]
        assert await store.commit(tenant_id, batch) == 3
        # Resent in later batches, alone or among new ones, they are not stored again.
        assert await store.commit(tenant_id, batch[1:]) == 0
        assert await store.commit(tenant_id, [_row(tenant_id, "x", newer), batch[0]]) == 1
        assert await store.commit(tenant_id, [_row(tenant_id, "y", newer, "order-1")]) == 0

        await store.drop_partitions_before(today - dt.timedelta(days=40))
        rows, keys = await _stored(owner_conn, tenant_id)
        assert rows == {"newer-1", "x"}
        assert rows <= keys

        await store.drop_partitions_before(today - dt.timedelta(days=30))
        assert await _stored(owner_conn, tenant_id) == (set(), set())
    finally:
        await db.close()


ODD_IDS = [
    'quote"d',
    "back\\slash",
    "\\u0041 is not A",
    "tab\tnew\nline\r\x01\x1f\x7f",
    "emoji 🎧 and 中文",
    "\u2028\u2029",
    '["not", "an array"]',
    "i" * 128,
]


async def test_any_event_or_order_id_is_its_own_key(
    stack: Stack, owner_conn: asyncpg.Connection
) -> None:
    moment = dt.datetime.now(dt.UTC).replace(microsecond=0)
    tenant_id = uuid.uuid4()
    db = await Database.connect(stack.app_dsn, min_size=1, max_size=2)
    try:
        store = await SiteEventStore.create(db)
        batch = [_row(tenant_id, event_id, moment, order_id=event_id) for event_id in ODD_IDS]
        assert await store.commit(tenant_id, batch) == len(ODD_IDS)
        assert await store.commit(tenant_id, batch) == 0
        # The same orders under new event ids are refused; new ids and orders are not.
        again = [_row(tenant_id, f"new {i}", moment, order_id=o) for i, o in enumerate(ODD_IDS)]
        assert await store.commit(tenant_id, again) == 0
        assert await store.commit(tenant_id, [_row(tenant_id, "new", moment, "o")]) == 1
    finally:
        await db.close()
    keys = await owner_conn.fetch(
        "SELECT kind, key FROM attribution_keys WHERE tenant_id = $1", tenant_id
    )
    event_ids = [*ODD_IDS, *(f"new {i}" for i in range(len(ODD_IDS))), "new"]
    assert sorted((k["kind"], k["key"]) for k in keys) == sorted(
        [(1, i) for i in event_ids] + [(2, f"{SPONSOR}/{o}") for o in [*ODD_IDS, "o"]]
    )
